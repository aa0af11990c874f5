#!/usr/bin/env bash
# Builds this repository's PVUSB frontend, pvusb-hcd.ko (frontend-linux/pvusb-hcd), for a
# Debian guest kernel the way a guest would: with DKMS, in a private DKMS tree (nothing is
# installed on this machine). Then checks its style with the kernel's own
# `checkpatch.pl --strict`, taken from Debian's kernel source package: an ERROR or a WARNING
# fails the build.
#
# Usage: build-pvusb-hcd.sh KERNEL_VERSION OUT_DIR [PACKAGE.deb]
#   KERNEL_VERSION  e.g. 6.1.0-57-amd64 (the guest's `uname -r`)
#   OUT_DIR         where pvusb-hcd.ko is written (and the kernel source package cached)
#   PACKAGE.deb     usbdom-frontend-dkms (`cargo xtask deb`): the source is taken from the
#                   package, from /usr/src as its installation leaves it for DKMS, instead of
#                   from this directory
# Needs (installed here through apt when missing, as root): dkms, linux-headers-KERNEL_VERSION,
# make, gcc, xz-utils, perl; the source comes from linux-source-<major.minor> via
# `apt-get download`.
set -euo pipefail
kver=${1:?kernel version, e.g. 6.1.0-57-amd64}
out=${2:?output directory}
here=$(cd "$(dirname "$0")" && pwd)
src=$here/pvusb-hcd
deb=${3:-}
series=$(echo "$kver" | sed -E 's/^([0-9]+\.[0-9]+).*/\1/')
mkdir -p "$out"
out=$(cd "$out" && pwd)

. "$(dirname "$0")/apt-packages.sh"
need_packages build-pvusb-hcd dkms "linux-headers-$kver" make gcc xz-utils perl

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -n "$deb" ]; then
  dpkg-deb -x "$deb" "$work/root"
  src=$(dirname "$(ls "$work"/root/usr/src/*/dkms.conf)")
fi
name=$(sed -n 's/^PACKAGE_NAME="\(.*\)"/\1/p' "$src/dkms.conf")
version=$(sed -n 's/^PACKAGE_VERSION="\(.*\)"/\1/p' "$src/dkms.conf")
mkdir -p "$work/dkms"
if [ -n "$deb" ]; then
  sourcetree=$work/root/usr/src
else
  sourcetree=$work/src
  mkdir -p "$sourcetree/$name-$version"
  cp "$src"/*.c "$src"/*.h "$src/Kbuild" "$src/Makefile" "$src/dkms.conf" "$sourcetree/$name-$version/"
fi
dkms build --dkmstree "$work/dkms" --sourcetree "$sourcetree" -m "$name" -v "$version" -k "$kver" >&2
ko=$(find "$work/dkms/$name/$version/$kver" -name "$name.ko*" | head -n1)
[ -n "$ko" ] || { echo "build-pvusb-hcd: dkms built no $name.ko" >&2; exit 1; }
cp "$ko" "$out/$name.ko"

# checkpatch.pl with the data files it reads, from the kernel source package.
if ! ls "$out"/linux-source-"$series"_*.deb >/dev/null 2>&1; then
  (cd "$out" && apt-get download -q "linux-source-$series" >&2)
fi
dpkg -x "$out"/linux-source-"$series"_*.deb "$work/deb"
mkdir "$work/linux"
tar -xJf "$work/deb/usr/src/linux-source-$series.tar.xz" -C "$work/linux" --strip-components=1 \
  "linux-source-$series/scripts/checkpatch.pl" "linux-source-$series/scripts/spelling.txt" \
  "linux-source-$series/scripts/const_structs.checkpatch"
mkdir "$work/linux/include"
report=$(cd "$work/linux" && perl scripts/checkpatch.pl --strict --no-tree --root "$work/linux" --terse \
  --ignore CAMELCASE -f "$src"/*.c "$src"/*.h || true)
errors=$(printf '%s\n' "$report" | grep -c ': ERROR:' || true)
warnings=$(printf '%s\n' "$report" | grep -c ': WARNING:' || true)
checks=$(printf '%s\n' "$report" | grep -c ': CHECK:' || true)
printf '%s\n' "$report" | grep -E ': (ERROR|WARNING|CHECK):' >&2 || true
echo "build-pvusb-hcd: checkpatch --strict errors=$errors warnings=$warnings checks=$checks (CamelCase of kernel API names ignored)" >&2
[ "$errors" -eq 0 ] && [ "$warnings" -eq 0 ] || exit 1
echo "$out/$name.ko"
