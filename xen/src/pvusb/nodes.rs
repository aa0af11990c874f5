//! A PVUSB device's xenstore nodes: the keys the frontend, the backend and the toolstack
//! write, usbdom's own directories beside them (port assignments, their status, the device
//! inventory), the bus ids and device selectors an assignment names, and the nodes the
//! toolstack creates for a virtual controller ([`ControllerNodes`]).

use super::*;

/// The frontend's keys in its device directory (`usbif.h`): its rings' grant references and
/// its event channel.
pub const URB_RING_REF_KEY: &str = "urb-ring-ref";
/// See [`URB_RING_REF_KEY`].
pub const CONN_RING_REF_KEY: &str = "conn-ring-ref";
/// See [`URB_RING_REF_KEY`].
pub const EVENT_CHANNEL_KEY: &str = "event-channel";
/// Multi-page URB ring (`docs/pvusb-features.md`), after blkif's: the backend offers up to
/// 2^`max-ring-page-order` pages in its directory; a frontend that wants more than one writes
/// `ring-page-order` and the pages' grant references as `urb-ring-ref0`, `urb-ring-ref1`, …
/// ([`urb_ring_ref_key`]) instead of `urb-ring-ref`. The conn ring stays one page.
pub const MAX_RING_PAGE_ORDER_KEY: &str = "max-ring-page-order";
/// See [`MAX_RING_PAGE_ORDER_KEY`].
pub const RING_PAGE_ORDER_KEY: &str = "ring-page-order";
/// Persistent grants (`docs/pvusb-features.md`), after blkif's: `1` in the backend
/// directory offers them; `1` in the frontend directory promises that each grant reference
/// stays bound to one page, granted writable, while connected, so the backend may keep it
/// mapped.
pub const FEATURE_PERSISTENT_KEY: &str = "feature-persistent";
/// Indirect segments (`docs/pvusb-features.md`), after blkif's: the backend writes the most
/// data segments one indirect bulk request may list ([`super::MAX_INDIRECT_SEGMENTS`]); a
/// frontend that reads it may send such requests ([`super::USBIF_F_INDIRECT`]) and writes
/// nothing.
pub const FEATURE_MAX_INDIRECT_SEGMENTS_KEY: &str = "feature-max-indirect-segments";

/// A controller's `usb-ver` of 3 (`docs/pvusb-features.md`): a USB 3 controller, whose
/// frontend presents a USB 3 root hub. Stock xen-hcd refuses it at probe (it takes 1 or 2),
/// so the toolstack writes it only for guests that run a frontend that knows it.
pub const USB_VER_SUPERSPEED: u32 = 3;
/// The conn-ring speed code of a SuperSpeed device on a USB 3 controller; stock usbif has
/// none (xen-hcd takes anything above high speed for a protocol error).
pub const USBIF_SPEED_SUPER: u8 = 4;

/// The largest `ring-page-order` of the protocol: 16 pages, 256 URB ring entries.
pub const MAX_RING_PAGE_ORDER: u32 = 4;

/// The key of the multi-page URB ring's page `index`: `urb-ring-ref<index>`.
pub fn urb_ring_ref_key(index: u32) -> String {
    format!("{URB_RING_REF_KEY}{index}")
}

/// The backend directory's keys the toolstack writes (libxl's): the virtual controller's
/// USB version (1 or 2) and its number of ports.
pub const USB_VER_KEY: &str = "usb-ver";
/// See [`USB_VER_KEY`].
pub const NUM_PORTS_KEY: &str = "num-ports";
/// xenbus' keys: where the other end's directory is, and its domain.
pub const FRONTEND_KEY: &str = "frontend";
/// See [`FRONTEND_KEY`].
pub const FRONTEND_ID_KEY: &str = "frontend-id";
/// See [`FRONTEND_KEY`].
pub const BACKEND_KEY: &str = "backend";
/// See [`FRONTEND_KEY`].
pub const BACKEND_ID_KEY: &str = "backend-id";
/// The toolstack's switch of a backend device: `1`, or `0` to have it removed.
pub const ONLINE_KEY: &str = "online";

/// Where a port's assignment lives in the backend directory: `usbdom-port/<N>` = a
/// [`DeviceSelector`] (bus id or `vid:pid[:serial]`).
/// Not libxl's `port/<N>`: libxl reads those as dom0 sysfs bus ids and would fail for every
/// domain on finding one it does not know.
pub const ASSIGN_DIR: &str = "usbdom-port";

/// The frontend domain's name, as the toolstack (dom0) knew it when it created the
/// controller, in the backend directory: the driver domain's policy names domains, and it
/// may not read `/local/domain/<id>/name` itself.
pub const FRONTEND_NAME_KEY: &str = "usbdom-frontend-name";

/// Where the backend says what became of each assignment: `usbdom-port-status/<N>` =
/// `connected`, `waiting <reason>` or `refused <reason>`.
pub const PORT_STATUS_DIR: &str = "usbdom-port-status";

/// Checks a bus id's form: `<bus>-<port>[.<port>…]`, decimal, ports 1..=31.
pub fn valid_busid(busid: &str) -> bool {
    let Some((bus, path)) = busid.split_once('-') else {
        return false;
    };
    crate::abi::parse_decimal(bus).is_some_and(|b| b >= 1)
        && !path.is_empty()
        && path
            .split('.')
            .all(|p| crate::abi::parse_decimal(p).is_some_and(|p| (1..=31).contains(&p)))
}

/// What an assignment (`usbdom-port/<N>`) names: a place on the host, or a device wherever
/// it is plugged in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceSelector {
    /// A bus id ([`valid_busid`]): whatever is plugged in there.
    BusId(String),
    /// `vid:pid[:serial]`, four hex digits each: the device with these IDs (and serial
    /// number string), on any port.
    Ids {
        /// idVendor.
        vendor_id: u16,
        /// idProduct.
        product_id: u16,
        /// The serial number string; any when absent.
        serial: Option<String>,
    },
}

/// The longest serial number a selector may name (USB string descriptors hold at most 126
/// UTF-16 units; real serials are far shorter).
pub const MAX_SERIAL_LEN: usize = 64;

/// Whether a serial number string can be named in a [`DeviceSelector`]: 1 to
/// [`MAX_SERIAL_LEN`] ASCII letters, digits, `.`, `_` and `-` (what xenstore values and shell
/// arguments carry safely).
pub fn valid_serial(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_SERIAL_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

impl DeviceSelector {
    /// Parses `1-2.3` or `0627:0001` or `0627:0001:SN42` (a serial as [`valid_serial`]).
    pub fn parse(text: &str) -> Option<DeviceSelector> {
        if valid_busid(text) {
            return Some(DeviceSelector::BusId(text.into()));
        }
        let mut parts = text.splitn(3, ':');
        let hex4 = |p: Option<&str>| {
            p.filter(|p| p.len() == 4 && p.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|p| u16::from_str_radix(p, 16).ok())
        };
        let vendor_id = hex4(parts.next())?;
        let product_id = hex4(parts.next())?;
        let serial = match parts.next() {
            None => None,
            Some(s) if valid_serial(s) => Some(s.into()),
            Some(_) => return None,
        };
        Some(DeviceSelector::Ids {
            vendor_id,
            product_id,
            serial,
        })
    }

    /// Whether a device at `busid` with these IDs and serial is the one named.
    pub fn matches(
        &self,
        busid: &str,
        vendor_id: u16,
        product_id: u16,
        serial: Option<&str>,
    ) -> bool {
        match self {
            DeviceSelector::BusId(b) => b == busid,
            DeviceSelector::Ids {
                vendor_id: v,
                product_id: p,
                serial: s,
            } => {
                *v == vendor_id
                    && *p == product_id
                    && s.as_deref().is_none_or(|s| Some(s) == serial)
            }
        }
    }
}

impl core::fmt::Display for DeviceSelector {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DeviceSelector::BusId(b) => f.write_str(b),
            DeviceSelector::Ids {
                vendor_id,
                product_id,
                serial,
            } => {
                write!(f, "{vendor_id:04x}:{product_id:04x}")?;
                match serial {
                    Some(s) => write!(f, ":{s}"),
                    None => Ok(()),
                }
            }
        }
    }
}

/// Where a driver domain publishes the USB devices it can assign, relative to its xenstore
/// home: one key per device ([`busid_key`]), the value `vid=… pid=… speed=… class=…
/// product=…`. The domain owns `data`, dom0 reads it (`usbctl list-assignable-devices`).
pub const DEVICES_DIR: &str = "data/usbdom/devices";

/// The xenstore key of a Linux-style bus id: xenstored allows no `.` in node names, so
/// `1-4.3` is stored as `1-4_3` (bus ids have no `_`).
pub fn busid_key(busid: &str) -> String {
    busid.replace('.', "_")
}

/// The xenstore nodes of one PVUSB controller, as libxl writes them for a `type=pv` usbctrl
/// (`libxl__device_generic_add`): the backend directory owned by the backend domain and
/// readable by the frontend, the frontend directory the other way round, both in state
/// Initialising. The toolstack side of usbdom (`usbctl`) writes them; tests and the demo too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControllerNodes {
    /// The domain that gets the controller.
    pub frontend: DomId,
    /// The domain that serves it.
    pub backend: DomId,
    /// Device number under the frontend.
    pub devid: u32,
    /// USB version, 1 or 2.
    pub usb_ver: u8,
    /// Root-hub ports, 1..=31.
    pub ports: u8,
}

impl ControllerNodes {
    /// `/local/domain/<frontend>/device/vusb/<devid>`.
    pub fn frontend_dir(&self) -> String {
        format!("/local/domain/{}/device/vusb/{}", self.frontend, self.devid)
    }

    /// `/local/domain/<backend>/backend/vusb/<frontend>/<devid>`.
    pub fn backend_dir(&self) -> String {
        format!(
            "/local/domain/{}/backend/vusb/{}/{}",
            self.backend, self.frontend, self.devid
        )
    }

    /// Writes both directories inside transaction `tx` (as dom0: children inherit the
    /// directories' permissions).
    pub fn write<T: XsTransport>(&self, xs: &mut XenStore<T>, tx: TxId) -> Result<(), XsError> {
        let (bdir, fdir) = (self.backend_dir(), self.frontend_dir());
        let backend_root = format!("/local/domain/{}/backend/vusb", self.backend);
        let (fe, be) = (self.frontend.to_string(), self.backend.to_string());
        let (ver, ports) = (self.usb_ver.to_string(), self.ports.to_string());
        let owner = |d: DomId, reader: DomId| {
            [
                Perm {
                    domid: d,
                    access: Access::None,
                },
                Perm {
                    domid: reader,
                    access: Access::Read,
                },
            ]
        };
        xs.mkdir(tx, &backend_root)?;
        xs.set_perms(
            tx,
            &backend_root,
            &[Perm {
                domid: self.backend,
                access: Access::None,
            }],
        )?;
        xs.mkdir(tx, &bdir)?;
        xs.set_perms(tx, &bdir, &owner(self.backend, self.frontend))?;
        for (k, v) in [
            (FRONTEND_KEY, fdir.as_str()),
            (FRONTEND_ID_KEY, fe.as_str()),
            (ONLINE_KEY, "1"),
            ("state", XenbusState::Initialising.as_str()),
            ("type", "pv"),
            (USB_VER_KEY, ver.as_str()),
            (NUM_PORTS_KEY, ports.as_str()),
        ] {
            xs.write(tx, &format!("{bdir}/{k}"), v.as_bytes())?;
        }
        xs.mkdir(tx, &format!("{bdir}/port"))?;
        for p in 1..=self.ports {
            xs.write(tx, &format!("{bdir}/port/{p}"), b"")?;
        }
        xs.mkdir(tx, &fdir)?;
        xs.set_perms(tx, &fdir, &owner(self.frontend, self.backend))?;
        for (k, v) in [
            (BACKEND_KEY, bdir.as_str()),
            (BACKEND_ID_KEY, be.as_str()),
            ("state", XenbusState::Initialising.as_str()),
        ] {
            xs.write(tx, &format!("{fdir}/{k}"), v.as_bytes())?;
        }
        Ok(())
    }
}
