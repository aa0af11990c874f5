# Sourced by dom0-init.sh with usbdom.mode=devices (`cargo xtask devices`): the device
# table. QEMU's class devices on the outer machine's second controller go to a PVH guest
# with Linux's stock xen-hcd and class drivers, which uses each as a user would
# (tests/e2e/guest-init.sh, `usbdom_devices`): first through QEMU's qusb backend in dom0
# (what users have), then through usbdom. The host checks what came out of QEMU
# (tests/examples/devices_e2e.rs). Reported as `E2E: device …` lines.

# The devices by ID: QEMU's usb-audio, its FTDI usb-serial and its usb-ccid smartcard reader.
DEVICES="46f4:0002 0403:6001 08e6:4433"

# devices_guest NAME PATH HCD WORDS [CONFIG LINE…]: a guest that uses its devices with
# frontend HCD (xen-hcd, pvusb-hcd), WORDS more on its command line; its lines reported.
devices_guest() {
  name=$1 path=$2 hcd=$3 words=$4
  shift 4
  log=/var/log/xen/console/guest-$name.log
  sed -e "s|^name = .*|name = \"$name\"|" \
      -e "s|^extra = .*|extra = \"console=hvc0 usbdom_devices=$path usbdom_hcd=$hcd $words\"|" \
    /e2e/xen-cfg/guest-pvh.cfg > "/tmp/$name.cfg"
  printf 'on_reboot = "destroy"\non_crash = "destroy"\n' >> "/tmp/$name.cfg"
  for line in "$@"; do echo "$line" >> "/tmp/$name.cfg"; done
  xl_create "$name" "/tmp/$name.cfg" || fail "xl_create_$name"
  # A guest the nested machine ended while it booted (a triple fault) is made once more.
  ready "$name" "$log" "xl_create $name /tmp/$name.cfg" "guest: devices ready" || fail "${name}_not_ready"
  mark "phase=${path}_guest_ready"
}

# devices_report NAME PATH: waits for the guest's devices, reports and destroys it.
devices_report() {
  log=/var/log/xen/console/guest-$1.log
  wait_for "$log" "guest: devices done" 300 || fail "$2_devices_not_done"
  whole_lines "$log" | grep "guest: device " | sed -e 's|\r||' -e 's|^.*guest: device |E2E: device |'
  whole_lines "$log" | grep -E "snd|ftdi|ttyUSB|usb 1-|rndis|cdc_ether|usb0|eth0|ccid" | tail -n 30 | sed "s|^|GUEST-$2 |"
  xl_destroy "$1" || fail "xl_destroy_$1"
  mark "phase=$2_done"
}

# Two sticks beside them, by bus id (both are QEMU's 46f4:0001): the SuperSpeed one on the
# first controller, and a full-speed one behind the hub there.
STICKS="2-1 1-3.2"

# qusb: dom0 drives both controllers, QEMU's PV backend in dom0 serves the guest.
start_qusb
usbdev=
port=1
for id in $DEVICES; do
  for d in /sys/bus/usb/devices/*; do
    [ "$(cat "$d/idVendor" 2>/dev/null):$(cat "$d/idProduct" 2>/dev/null)" = "$id" ] || continue
    usbdev="${usbdev:+$usbdev, }'hostbus=$(cat "$d/busnum"),hostaddr=$(cat "$d/devnum"),controller=0,port=$port'"
    port=$((port + 1))
  done
done
for busid in $STICKS; do
  d=/sys/bus/usb/devices/$busid
  [ -e "$d" ] || fail "dom0_no_$busid"
  usbdev="$usbdev, 'hostbus=$(cat "$d/busnum"),hostaddr=$(cat "$d/devnum"),controller=0,port=$port'"
  port=$((port + 1))
done
devices_guest guest-q qusb xen-hcd "" "usbctrl = [ 'type=qusb,version=2,ports=8' ]" "usbdev = [ $usbdev ]"
devices_report guest-q qusb
kill "$(cat /run/qemu-dom0.pid)" 2>/dev/null

# usbdom: the controllers go to the driver domain; the devices by their IDs, as a user
# names them, the sticks and the USB Ethernet adapter (two of the same IDs) by bus id.
create_usbdom
devices_guest guest-d usbdom xen-hcd usbdom_net=1
usbctl_step hc-create guest-d 2 8 || fail "hc_create_d"
port=1
for id in $DEVICES $STICKS 3-4; do
  usbctl_step attach guest-d 0 $port "$id" || fail "attach_$id"
  port=$((port + 1))
done

# At the same time, a second guest, with our pvusb-hcd: UAS, QEMU's usb-uas (high speed, on
# the third controller, whose ports are all USB 2: bus 5; pvusb-hcd does scatter-gather as
# Linux's uas driver requires), and the other USB Ethernet adapter, behind the hub: the two
# guests ping each other over the QEMU-internal hub the adapters share.
devices_guest guest-p uas pvusb-hcd usbdom_net=2
usbctl_step hc-create guest-p 2 8 || fail "hc_create_p"
usbctl_step attach guest-p 0 1 5-1 || fail "attach_uas"
usbctl_step attach guest-p 0 2 1-3.3 || fail "attach_net_p"
devices_report guest-d usbdom
devices_report guest-p uas
grep -E "urb_iso_done|port_" /var/log/xen/console/guest-usbdom.log | tail -n 40 | sed 's|^|USBDOM |'
mark "result=pass"
