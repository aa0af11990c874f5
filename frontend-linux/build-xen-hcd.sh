#!/usr/bin/env bash
# Builds Linux's PVUSB frontend, xen-hcd.ko, for a Debian guest kernel. Debian's kernels do
# not ship it (CONFIG_USB_XEN_HCD is unset), so it is compiled out of tree from Debian's own
# kernel source package; nothing of Linux is kept in this repository.
#
# Usage: build-xen-hcd.sh KERNEL_VERSION OUT_DIR
#   KERNEL_VERSION  e.g. 6.1.0-56-amd64 (the guest's `uname -r`)
#   OUT_DIR         where xen-hcd.ko is written (and the downloaded source cached)
# Needs (installed here through apt when missing, as root): linux-headers-KERNEL_VERSION,
# make, gcc, xz-utils; the source comes from linux-source-<major.minor> via `apt-get download`.
set -euo pipefail
kver=${1:?kernel version, e.g. 6.1.0-56-amd64}
out=${2:?output directory}
series=$(echo "$kver" | sed -E 's/^([0-9]+\.[0-9]+).*/\1/')
mkdir -p "$out"
out=$(cd "$out" && pwd)

. "$(dirname "$0")/apt-packages.sh"
need_packages build-xen-hcd "linux-headers-$kver" make gcc xz-utils

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if ! ls "$out"/linux-source-"$series"_*.deb >/dev/null 2>&1; then
  (cd "$out" && apt-get download -q "linux-source-$series" >&2)
fi
dpkg -x "$out"/linux-source-"$series"_*.deb "$work/src"
mkdir "$work/hcd"
tar -xJf "$work/src/usr/src/linux-source-$series.tar.xz" -C "$work/hcd" --strip-components=4 \
  "linux-source-$series/drivers/usb/host/xen-hcd.c"
echo 'obj-m := xen-hcd.o' > "$work/hcd/Kbuild"
make -s -C "/usr/src/linux-headers-$kver" M="$work/hcd" modules >&2
cp "$work/hcd/xen-hcd.ko" "$out/xen-hcd.ko"
echo "$out/xen-hcd.ko"
