#!/usr/bin/env bash
# Packs dom0's initramfs for one end-to-end run: the cached root (dom0-base.cpio) followed by
# a small archive with /init (dom0-init.sh), the usbdom image, the xl configs, the guest's
# kernel and initramfs. Linux unpacks concatenated cpio archives in order.
# Usage: pack.sh CACHE_DIR IMAGE OUT
set -euo pipefail
cache=$1 image=$2 out=$3
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/e2e/xen-cfg" "$stage/boot"
install -m 0755 "$here/dom0-init.sh" "$stage/init"
cp "$image" "$stage/e2e/usbdom.elf"
cp "$repo"/xen-cfg/*.cfg "$stage/e2e/xen-cfg/"
cp "$cache/vmlinuz" "$stage/boot/vmlinuz"
cp "$cache/guest.cpio" "$stage/boot/guest-initrd.img"
if [ -n "${USBCTL:-}" ]; then mkdir -p "$stage/usr/local/bin"; cp "$USBCTL" "$stage/usr/local/bin/usbctl"; fi
(cd "$stage" && find . | cpio -o -H newc --quiet) > "$out.extra"
cat "$cache/dom0-base.cpio" "$out.extra" > "$out"
rm -f "$out.extra"
