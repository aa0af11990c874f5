#!/bin/busybox sh
# The guest's /init: load the PVUSB frontend and report the USB host controllers it gets.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /tmp
echo "guest: init"
for m in usb-common usbcore xen-hcd; do
  f=$(ls /lib/modules/$m.ko* 2>/dev/null | head -n1)
  case "$f" in
    *.xz) xz -dc "$f" > /lib/modules/$m.unpacked.ko && f=/lib/modules/$m.unpacked.ko ;;
  esac
  if insmod "$f"; then echo "guest: loaded $m"; else echo "guest: failed to load $m"; fi
done
# Storage and HID drivers for the devices usbdom will give this guest.
for m in $(cat /lib/modules/order); do
  f=$(ls /lib/modules/$m.ko* 2>/dev/null | head -n1)
  case "$f" in
    *.xz) xz -dc "$f" > /lib/modules/$m.unpacked.ko && f=/lib/modules/$m.unpacked.ko ;;
  esac
  insmod "$f" 2>/dev/null || echo "guest: failed to load $m"
done
echo "guest: ready"
# The stick, once: its first 16 MiB hashed, then a pattern written.
disk_done=
while true; do
  for hc in /sys/bus/usb/devices/usb*; do
    [ -e "$hc/maxchild" ] && echo "guest: hc $(basename "$hc") ports=$(cat "$hc/maxchild") product=\"$(cat "$hc/product" 2>/dev/null)\""
  done
  # Devices on the virtual controllers' ports, as the guest's USB core enumerated them.
  for d in /sys/bus/usb/devices/[0-9]*-*; do
    case "$d" in *:*) continue ;; esac
    [ -e "$d/idVendor" ] || continue
    echo "guest: usbdev $(basename "$d") vid=$(cat "$d/idVendor") pid=$(cat "$d/idProduct") speed=$(cat "$d/speed") config=$(cat "$d/bConfigurationValue" 2>/dev/null) product=\"$(cat "$d/product" 2>/dev/null)\""
  done
  if [ -z "$disk_done" ] && [ -b /dev/sda ]; then
    disk_done=1
    sum=$(dd if=/dev/sda bs=1M count=16 2>/dev/null | sha256sum | cut -d' ' -f1)
    echo "guest: sda sha256=$sum"
    # A pattern written at 32 MiB, for the host to find in the image after the run.
    printf 'usbdom-e2e-written-by-the-guest' > /tmp/pattern
    if dd if=/tmp/pattern of=/dev/sda bs=512 seek=65536 conv=notrunc 2>/tmp/dd.err && sync; then
      echo "guest: sda wrote=ok"
    else
      echo "guest: sda wrote=failed $(cat /tmp/dd.err)"
    fi
  fi
  sleep 1
done
