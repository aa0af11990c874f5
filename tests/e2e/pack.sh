#!/usr/bin/env bash
# Packs dom0's initramfs for one end-to-end run: the cached root (dom0-base.cpio) followed by
# a small archive with /init (dom0-init.sh), the usbdom package (its image, usbctl, its config
# and unit: dom0 installs it), the guests' xl configs, the guest's kernel and initramfs.
# Linux unpacks concatenated cpio archives in order.
# Usage: pack.sh CACHE_DIR USBDOM.deb OUT
set -euo pipefail
cache=$1 deb=$2 out=$3
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/e2e/xen-cfg" "$stage/boot"
install -m 0755 "$here/dom0-init.sh" "$stage/init"
cp "$here/bench.sh" "$here/soak.sh" "$here/devices.sh" "$here/keys.sh" "$stage/e2e/"
cp "$deb" "$stage/e2e/usbdom.deb"
cp "$repo"/xen-cfg/*.cfg "$stage/e2e/xen-cfg/"
cp "$cache/vmlinuz" "$stage/boot/vmlinuz"
# The guest's initramfs: busybox, the USB core modules, xen-hcd.ko, pvusb-hcd.ko, guest-init.sh and
# (when USBATTACK, KEYPROBE and CCIDPROBE name them) usbattack, keyprobe and ccidprobe.
guest=$(mktemp -d)
mkdir -p "$guest/bin" "$guest/lib/modules" "$guest/proc" "$guest/sys" "$guest/dev"
cp "$cache/dom0/bin/busybox" "$guest/bin/busybox"
cp "$cache"/usbmods/usb-common.ko* "$cache"/usbmods/usbcore.ko* "$cache/xen-hcd.ko" "$cache/pvusb-hcd.ko" "$guest/lib/modules/"
cp "$cache"/guestmods/*.ko* "$cache/guestmods/order" "$cache/guestmods/devices" "$guest/lib/modules/"
install -m 0755 "$here/guest-init.sh" "$guest/init"
# The hostile frontend a guest runs when its command line says usbdom_attack=<phases>, and
# the key benchmark's keyprobe (usbdom_keyprobe) and the device table's ccidprobe.
if [ -n "${USBATTACK:-}" ]; then install -m 0755 "$USBATTACK" "$guest/bin/usbattack"; fi
if [ -n "${KEYPROBE:-}" ]; then install -m 0755 "$KEYPROBE" "$guest/bin/keyprobe"; fi
if [ -n "${CCIDPROBE:-}" ]; then install -m 0755 "$CCIDPROBE" "$guest/bin/ccidprobe"; fi
(cd "$guest" && find . | cpio -o -H newc --quiet) > "$stage/boot/guest-initrd.img"
rm -rf "$guest"
# dom0 drives the controller itself while the benchmark measures QEMU's qusb backend.
mkdir -p "$stage/e2e/mods"
cp "$cache"/usbmods/usb-common.ko* "$cache"/usbmods/usbcore.ko* "$cache"/guestmods/xhci-*.ko* "$stage/e2e/mods/"
(cd "$stage" && find . | cpio -o -H newc --quiet) > "$out.extra"
cat "$cache/dom0-base.cpio" "$out.extra" > "$out"
rm -f "$out.extra"
