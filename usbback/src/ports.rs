//! Virtual ports: the toolstack's assignments (`usbdom-port/<N>`) followed, a host device
//! reported on the frontend's conn ring once it is present and allowed, reported gone when
//! it leaves; and the host's devices published for the dom0 tool.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use log::{info, warn};
use usb::Speed;
use xen::hypervisor::{EventChannels, GrantCopier, GrantMapper, LocalFrames};
use xen::page::SharedPage;
use xen::pvusb;
use xen::xenstore::{TxId, XsTransport};

use crate::host::UsbHost;
use crate::*;

impl<H, T> Backend<H, T>
where
    H: GrantMapper + GrantCopier + LocalFrames + EventChannels,
    H::Page: Clone + SharedPage,
    T: XsTransport,
{
    /// Publishes the host's devices under our `data/usbdom/devices` for the dom0 tool (what
    /// changed only): one key per device ([`xen::pvusb::busid_key`]), the value
    /// `vid=… pid=… speed=… class=… assigned=<domid>/<devid>/<port>|none [serial=…]
    /// product=…` (a serial only when an assignment could name it:
    /// [`pvusb::DeviceSelector`]). Hubs are not offered (libxl refuses them too).
    pub fn publish_inventory(&mut self) {
        use xen::pvusb::{busid_key, DEVICES_DIR};
        if !core::mem::take(&mut self.inventory_changed) {
            return;
        }
        let now: BTreeMap<String, String> = self
            .known
            .iter()
            .filter(|d| !d.is_hub)
            .map(|d| {
                let assigned = self
                    .devices
                    .iter()
                    .find_map(|(id, dev)| {
                        dev.ports
                            .iter()
                            .zip(1u8..)
                            .find(|(p, _)| p.device == Some(d.id))
                            .map(|(_, n)| format!("{}/{}/{n}", id.frontend, id.devid))
                    })
                    .unwrap_or_else(|| String::from("none"));
                let serial = d
                    .serial
                    .as_deref()
                    .filter(|s| pvusb::valid_serial(s))
                    .map(|s| format!("serial={s} "))
                    .unwrap_or_default();
                let description = format!(
                    "vid={:04x} pid={:04x} speed={} class={:02x} assigned={assigned} {serial}product={}",
                    d.vendor_id,
                    d.product_id,
                    d.speed.name(),
                    d.class,
                    d.product.as_deref().unwrap_or("")
                );
                (busid_key(&d.busid), description)
            })
            .collect();
        if now == self.published {
            return;
        }
        for key in self.published.keys().filter(|k| !now.contains_key(*k)) {
            let path = format!("{DEVICES_DIR}/{key}");
            if let Err(e) = self.xs.rm(TxId::NONE, &path) {
                warn!("event=xenstore_error op=rm path={path} error={e}");
            }
        }
        for (key, value) in now
            .iter()
            .filter(|(k, v)| self.published.get(*k) != Some(*v))
        {
            let path = format!("{DEVICES_DIR}/{key}");
            if let Err(e) = self.xs.write(TxId::NONE, &path, value.as_bytes()) {
                warn!("event=xenstore_error op=write path={path} error={e}");
            }
        }
        info!("event=usb_devices_published count={}", now.len());
        self.published = now;
    }

    /// Reads the toolstack's port assignments (`usbdom-port/<N>`) and follows their changes.
    pub(crate) fn read_assignments<U: UsbHost<H::Page> + ?Sized>(
        &mut self,
        id: DeviceId,
        host: &mut U,
    ) {
        let Some(dev) = self.devices.get(&id) else {
            return;
        };
        let (dir, num_ports) = (dev.dir.clone(), dev.num_ports);
        let mut changed = false;
        for n in 1..=num_ports {
            let value = self
                .xs
                .read_string(TxId::NONE, &format!("{dir}/{ASSIGN_DIR}/{n}"))
                .unwrap_or_default();
            let value = value.trim();
            let want = if value.is_empty() {
                None
            } else if let Some(s) = pvusb::DeviceSelector::parse(value) {
                Some(s)
            } else {
                warn!(
                    "event=port_refused domid={} devid={} port={n} reason=bad_device value={:?}",
                    id.frontend,
                    id.devid,
                    value.get(..32).unwrap_or(value)
                );
                None
            };
            let Some(dev) = self.devices.get(&id) else {
                return;
            };
            let p = &dev.ports[usize::from(n) - 1];
            if p.assigned == want {
                continue;
            }
            changed = true;
            if p.device.is_some() {
                self.disconnect_port(id, n, "unassigned", host);
            }
            if let Some(dev) = self.devices.get_mut(&id) {
                dev.ports[usize::from(n) - 1].assigned = want.clone();
            }
            if want.is_some() {
                self.connect_port(id, n, host);
            } else {
                let key = format!("{dir}/{PORT_STATUS_DIR}/{n}");
                let _ = self.xs.rm(TxId::NONE, &key);
            }
        }
        if changed && !self.flush(id) {
            self.misbehaving(id, "reason=conn_ring_overrun", host);
        }
    }

    /// Connects the device assigned to port `n` of `id`, if it is present and may be.
    pub(crate) fn connect_port<U: UsbHost<H::Page> + ?Sized>(
        &mut self,
        id: DeviceId,
        n: u8,
        host: &mut U,
    ) {
        let Some(dev) = self.devices.get(&id) else {
            return;
        };
        let Some(want) = dev.ports[usize::from(n) - 1].assigned.clone() else {
            return;
        };
        let usb_ver = dev.usb_ver;
        // Of several devices with the same IDs, one no other port holds.
        let held: Vec<u32> = self
            .devices
            .iter()
            .flat_map(|(other, d)| {
                d.ports
                    .iter()
                    .zip(1u8..)
                    .filter(move |(_, m)| (*other, *m) != (id, n))
                    .filter_map(|(p, _)| p.device)
            })
            .collect();
        let mut candidates = self
            .known
            .iter()
            .filter(|k| want.matches(&k.busid, k.vendor_id, k.product_id, k.serial.as_deref()));
        let first = candidates.clone().next();
        let Some(info) = candidates
            .find(|k| !held.contains(&k.id))
            .or(first)
            .cloned()
        else {
            info!(
                "event=port_waiting domid={} devid={} port={n} device={want} reason=device_absent",
                id.frontend, id.devid
            );
            self.port_status(id, n, "waiting device_absent");
            return;
        };
        let busid = info.busid.clone();
        if info.is_hub {
            return self.refuse_port(id, n, &busid, "hub");
        }
        if usb_ver == 1 && info.speed >= Speed::High {
            return self.refuse_port(id, n, &busid, "high_speed_device_on_usb1_controller");
        }
        if let Some((rule, text)) = self.policy_denies(id, &info) {
            return self.refuse_port(id, n, &busid, &format!("policy rule={rule} text={text}"));
        }
        let elsewhere = self.devices.iter().find_map(|(other, d)| {
            d.ports
                .iter()
                .zip(1u8..)
                .find(|(p, m)| p.device == Some(info.id) && (*other, *m) != (id, n))
                .map(|(_, m)| (*other, m))
        });
        if let Some((other, m)) = elsewhere {
            return self.refuse_port(
                id,
                n,
                &busid,
                &format!(
                    "assigned_elsewhere domid_holding={} port_holding={m}",
                    other.frontend
                ),
            );
        }
        // A fresh device for the guest, as on a real plug.
        if let Err(e) = host.reset(info.id) {
            warn!(
                "event=port_reset_failed domid={} devid={} port={n} busid={busid} error={e}",
                id.frontend, id.devid
            );
        }
        let Some(dev) = self.devices.get_mut(&id) else {
            return;
        };
        let p = &mut dev.ports[usize::from(n) - 1];
        p.device = Some(info.id);
        p.superspeed =
            info.speed >= Speed::Super && u32::from(dev.usb_ver) < pvusb::USB_VER_SUPERSPEED;
        p.address = 0;
        p.configs.clear();
        let code = speed_code(info.speed, dev.usb_ver);
        info!(
            "event=port_connected domid={} devid={} port={n} busid={busid} vid={:04x} pid={:04x} speed={} reported_speed={code}",
            id.frontend,
            id.devid,
            info.vendor_id,
            info.product_id,
            info.speed.name()
        );
        if let Some(c) = dev.conn.as_mut() {
            queue_change(c, n, code);
        }
        self.port_status(id, n, "connected");
        self.inventory_changed = true;
    }

    /// Refuses the assignment of `busid` to port `n` of `id`, in the log and in the port's
    /// status key (`usbctl attach` shows it).
    pub(crate) fn refuse_port(&mut self, id: DeviceId, n: u8, busid: &str, reason: &str) {
        warn!(
            "event=port_refused domid={} devid={} port={n} busid={busid} reason={reason}",
            id.frontend, id.devid
        );
        self.port_status(id, n, &format!("refused {reason}"));
    }

    /// Writes what became of port `n`'s assignment to `usbdom-port-status/<n>`.
    pub(crate) fn port_status(&mut self, id: DeviceId, n: u8, text: &str) {
        let Some(dev) = self.devices.get(&id) else {
            return;
        };
        let key = format!("{}/{PORT_STATUS_DIR}/{n}", dev.dir);
        if let Err(e) = self.xs.write(TxId::NONE, &key, text.as_bytes()) {
            warn!("event=xenstore_error op=write path={key} error={e}");
        }
    }

    /// Takes the device off port `n` of `id`: its transfers are cancelled (their answers
    /// follow) and the frontend told.
    pub(crate) fn disconnect_port<U: UsbHost<H::Page> + ?Sized>(
        &mut self,
        id: DeviceId,
        n: u8,
        why: &str,
        host: &mut U,
    ) {
        let Some(dev) = self.devices.get_mut(&id) else {
            return;
        };
        let p = &mut dev.ports[usize::from(n) - 1];
        let Some(device) = p.device.take() else {
            return;
        };
        p.address = 0;
        let busid = self
            .known
            .iter()
            .find(|k| k.id == device)
            .map(|k| k.busid.clone())
            .unwrap_or_default();
        if let Some(c) = dev.conn.as_mut() {
            for f in c.inflight.values().filter(|f| f.device == device) {
                host.cancel(device, f.token);
            }
            queue_change(c, n, USBIF_SPEED_NONE);
        }
        info!(
            "event=port_disconnected domid={} devid={} port={n} busid={busid} reason={why}",
            id.frontend, id.devid
        );
        self.inventory_changed = true;
    }
}

/// Queues a port change for the conn ring, dropping it when the frontend has let too many
/// pile up.
pub(crate) fn queue_change<P>(c: &mut Connection<P>, port: u8, speed: u8) {
    if c.changes.len() < MAX_PENDING_CHANGES {
        c.changes.push_back((port, speed));
    }
}
