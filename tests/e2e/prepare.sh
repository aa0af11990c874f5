#!/usr/bin/env bash
# Builds (once, cached) what the end-to-end run needs, all from Debian's archive through the
# machine's own apt configuration and debootstrap's default mirror:
#   xen.elf        Xen 4.17 (Debian's xen-hypervisor-4.17-amd64), gunzipped for QEMU -kernel
#   vmlinuz        Debian's kernel, for dom0 and the guest
#   dom0-base.cpio dom0's root: debootstrap'd bookworm with the Xen tools, trimmed
#   xen-hcd.ko     Linux's PVUSB frontend (frontend-linux/build-xen-hcd.sh)
#   guestroot/     a guest's Debian root with dkms and the kernel's headers
#   pvusb-hcd.ko   our own PVUSB frontend: the usbdom-frontend-dkms package FRONTEND_DKMS_DEB
#                  names (`cargo xtask deb`) installed with dpkg in guestroot, where DKMS
#                  builds it; checked with checkpatch (frontend-linux/build-pvusb-hcd.sh);
#                  rebuilt whenever its source or packaging changes
#   usbmods/       the guest's USB core modules (pack.sh builds its initramfs)
#   guestmods/     the guest's SCSI disk, usb-storage, HID, evdev, xHCI, gntalloc and evtchn
#                  modules, in order (`order`), and the device-table run's sound and serial
#                  ones (`devices`)
# Usage: FRONTEND_DKMS_DEB=PACKAGE.deb prepare.sh CACHE_DIR   (prints the kernel version on its
# last line)
set -euo pipefail
cache=${1:?cache dir}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
cd "$cache"
log() { echo "prepare: $*" >&2; }

# apt's lists may be missing on a fresh machine.
apt-cache show linux-image-amd64 >/dev/null 2>&1 || apt-get update -q >&2
kver=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {sub("linux-image-", "", $2); print $2; exit}')
[ -n "$kver" ] || { echo "prepare: cannot tell the kernel version (apt-get update first?)" >&2; exit 1; }

need=()
for p in debootstrap cpio xz-utils "linux-headers-$kver" make gcc; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  apt-get install -y -q --no-install-recommends "${need[@]}" >&2
fi

mkdir -p debs
if [ ! -f xen.elf ] || [ ! -f vmlinuz ]; then
  log "downloading Xen and the kernel"
  (cd debs && apt-get download -q xen-hypervisor-4.17-amd64 "linux-image-$kver" >&2)
fi
if [ ! -f xen.elf ]; then
  rm -rf x && mkdir x && dpkg -x debs/xen-hypervisor-4.17-amd64_*.deb x
  gunzip -c x/boot/xen-4.17-amd64.gz > xen.elf.tmp && mv xen.elf.tmp xen.elf
  rm -rf x
fi
if [ ! -f vmlinuz ]; then
  rm -rf k && mkdir k && dpkg -x "debs/linux-image-${kver}_"*.deb k
  cp "k/boot/vmlinuz-$kver" vmlinuz
  rm -rf k
fi

# The guest's modules beyond the USB core, in the order insmod needs them: SCSI disks over
# usb-storage, the HID keyboard with its evdev device, and the xHCI driver (for the
# benchmark's guest that has the controller passed through, and for dom0 serving qusb), and
# the grant-allocation and event-channel devices usbattack speaks PVUSB through.
guest_modules="scsi_common scsi_mod crct10dif_common crct10dif_generic crc-t10dif crc64 \
  crc64-rocksoft crc64_rocksoft_generic t10-pi sd_mod usb-storage hid usbhid hid-generic evdev \
  xhci-hcd xhci-pci xen-gntalloc xen-evtchn"
# The class drivers of the device-table run (`cargo xtask devices`, tests/e2e/devices.sh), in
# order, loaded only by a guest told usbdom_devices: USB audio with the OSS emulation (a
# guest plays through /dev/dsp with busybox's cat), the FTDI serial driver, UAS, and USB
# Ethernet (QEMU's usb-net: RNDIS or CDC ECM).
device_modules="soundcore snd snd-timer snd-pcm snd-hwdep snd-seq-device snd-rawmidi \
  snd-usbmidi-lib mc snd-usb-audio snd-mixer-oss snd-pcm-oss usbserial ftdi_sio uas \
  mii usbnet cdc_ether rndis_host"
if [ "$(cat guestmods/order 2>/dev/null)" != "$guest_modules" ] || \
   [ "$(cat guestmods/devices 2>/dev/null)" != "$device_modules" ]; then
  log "taking the guest's storage and HID modules from the kernel package"
  [ -f "debs/linux-image-${kver}_"*.deb ] 2>/dev/null || \
    (cd debs && apt-get download -q "linux-image-$kver" >&2)
  rm -rf gm guestmods && mkdir gm guestmods
  dpkg -x "debs/linux-image-${kver}_"*.deb gm
  for m in $guest_modules $device_modules; do
    f=$(find "gm/lib/modules/$kver/kernel" -name "$m.ko*" | head -n1)
    [ -n "$f" ] || { echo "prepare: no module $m in linux-image-$kver" >&2; exit 1; }
    cp "$f" guestmods/
  done
  rm -rf gm
  echo "$guest_modules" > guestmods/order
  echo "$device_modules" > guestmods/devices
fi

if [ ! -f xen-hcd.ko ]; then
  log "building xen-hcd.ko for $kver"
  "$here/../../frontend-linux/build-xen-hcd.sh" "$kver" "$cache/hcd" >&2
  cp hcd/xen-hcd.ko xen-hcd.ko
fi

# The guest's root as a Debian guest with the usbdom-frontend-dkms package has it:
# debootstrap'd once with dkms and the guest kernel's headers, the machine's own apt sources.
if [ ! -f guestroot/.usbdom-root-done ]; then
  log "debootstrap of a guest's root for DKMS (cached after the first run)"
  rm -rf guestroot
  debootstrap --variant=minbase --include=dkms,kmod,make,gcc bookworm guestroot >&2
  cp /etc/apt/sources.list guestroot/etc/apt/ 2>/dev/null || true
  cp -r /etc/apt/sources.list.d/. guestroot/etc/apt/sources.list.d/ 2>/dev/null || true
  chroot guestroot apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive chroot guestroot apt-get install -y -q --no-install-recommends "linux-headers-$kver" >&2
  chroot guestroot apt-get clean
  touch guestroot/.usbdom-root-done
fi

# Keyed by its source and packaging: a change rebuilds (and re-checks) it. The package is
# installed in the guest's root with dpkg: its postinst has DKMS build and install pvusb-hcd
# for the guest's kernel, and that module goes into the guest's initramfs; then it is
# purged (its prerm takes the module out of DKMS). checkpatch checks the same source
# (build-pvusb-hcd.sh, which builds it once more, in a private DKMS tree, to check that too).
deb=${FRONTEND_DKMS_DEB:?the usbdom-frontend-dkms package}
pvusb_src=$(cd "$here/../.." && cat frontend-linux/build-pvusb-hcd.sh frontend-linux/pvusb-hcd/*.[ch] \
  frontend-linux/pvusb-hcd/Kbuild frontend-linux/pvusb-hcd/Makefile frontend-linux/pvusb-hcd/dkms.conf \
  build/debian/usbdom-frontend-dkms.* | sha256sum | cut -c1-16)
if [ "$(cat pvusb-hcd.src 2>/dev/null)" != "$pvusb_src" ] || [ ! -f pvusb-hcd.ko ]; then
  log "checking pvusb-hcd (checkpatch, a DKMS build from $(basename "$deb"))"
  "$here/../../frontend-linux/build-pvusb-hcd.sh" "$kver" "$cache/hcd" "$deb" >&2
  log "installing $(basename "$deb") in the guest's root: DKMS builds pvusb-hcd.ko for $kver"
  cp "$deb" guestroot/tmp/frontend-dkms.deb
  mount -t proc proc guestroot/proc
  trap 'umount guestroot/proc 2>/dev/null || true' EXIT
  chroot guestroot dpkg -i /tmp/frontend-dkms.deb >&2
  ko=guestroot/lib/modules/$kver/updates/dkms/pvusb-hcd.ko
  [ -f "$ko" ] || { echo "prepare: the package's installation left no $ko" >&2; exit 1; }
  cp "$ko" pvusb-hcd.ko
  chroot guestroot dpkg --purge usbdom-frontend-dkms >&2
  [ ! -f "$ko" ] || { echo "prepare: purging the package left $ko" >&2; exit 1; }
  rm -f guestroot/tmp/frontend-dkms.deb
  umount guestroot/proc
  trap - EXIT
  echo "$pvusb_src" > pvusb-hcd.src
fi

if [ ! -f dom0/.usbdom-root-done ]; then
  log "debootstrap of dom0's root (cached after the first run)"
  rm -rf dom0 dom0-base.cpio
  debootstrap --variant=minbase \
    --include=xen-utils-4.17,xenstore-utils,kmod,iproute2,procps,pciutils,usbutils,busybox-static,udev,qemu-system-xen,seabios \
    bookworm dom0 >&2
  # The kernel and the Xen tools must match what the host's apt sees (its security updates
  # included): give the chroot the machine's own apt sources, then install and upgrade.
  cp /etc/apt/sources.list dom0/etc/apt/ 2>/dev/null || true
  cp -r /etc/apt/sources.list.d/. dom0/etc/apt/sources.list.d/ 2>/dev/null || true
  mount -t proc proc dom0/proc
  trap 'umount dom0/proc 2>/dev/null || true' EXIT
  chroot dom0 apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive chroot dom0 apt-get install -y -q --no-install-recommends "linux-image-$kver" >&2
  DEBIAN_FRONTEND=noninteractive chroot dom0 apt-get dist-upgrade -y -q >&2
  chroot dom0 apt-get clean
  umount dom0/proc
  trap - EXIT
  touch dom0/.usbdom-root-done
fi

if [ ! -f dom0-base.cpio ]; then
  log "trimming and packing dom0's root"
  rm -rf dom0/usr/share/doc dom0/usr/share/man dom0/usr/share/locale dom0/usr/share/info \
         dom0/var/cache/apt/archives/*.deb dom0/var/lib/apt/lists/* dom0/boot/initrd.img* \
         dom0/usr/lib/firmware
  # dom0 needs Xen's back ends and PCI; the guest's USB modules are kept aside first.
  mods="dom0/lib/modules/$kver/kernel"
  mkdir -p usbmods
  if [ -d "$mods/drivers/usb" ]; then
    find "$mods/drivers/usb/common" "$mods/drivers/usb/core" -name '*.ko*' -exec cp {} usbmods/ \;
  fi
  find "$mods" -mindepth 1 -maxdepth 1 ! -name drivers ! -name lib ! -name arch ! -name crypto -exec rm -rf {} +
  find "$mods/drivers" -mindepth 1 -maxdepth 1 ! -name xen ! -name pci ! -name block ! -name net -exec rm -rf {} +
  find "$mods/drivers/net" -mindepth 1 -maxdepth 1 ! -name xen-netback -exec rm -rf {} +
  chroot dom0 depmod "$kver"
  (cd dom0 && find . | cpio -o -H newc --quiet) > dom0-base.cpio.tmp
  mv dom0-base.cpio.tmp dom0-base.cpio
fi

echo "$kver"
