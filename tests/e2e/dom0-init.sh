#!/bin/sh
# dom0's /init in the end-to-end run: start the Xen daemons, then play the scenario and
# report each step on the console as "E2E: ..." lines the harness reads.
export PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/lib/xen-4.17/bin
t0=$(cut -d' ' -f1 /proc/uptime 2>/dev/null || echo 0)
mark() { echo "E2E: $* uptime=$(cut -d' ' -f1 /proc/uptime)"; }
fail() { mark "result=fail reason=$*"; finish; }
finish() {
  for f in /var/log/xen/usbdom-serial.log /var/log/xen/console/guest-*.log; do
    [ -f "$f" ] && sed "s|^|LOG $(basename "$f"): |" "$f"
  done
  xl dmesg 2>/dev/null | grep -E '\(d[0-9]+\)' | tail -n 200 | sed 's|^|LOG xl-dmesg: |'
  mark "done"
  echo o > /proc/sysrq-trigger
  sleep 60
}
# wait_for FILE PATTERN SECONDS
wait_for() {
  i=0
  while [ $i -lt "$3" ]; do
    grep -q -- "$2" "$1" 2>/dev/null && return 0
    sleep 1; i=$((i + 1))
  done
  return 1
}

mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /run /tmp && mount -t devpts devpts /dev/pts && mount -t tmpfs tmpfs /run
mkdir -p /run/xen /run/xenstored /var/run/xenstored /var/log/xen/console /var/lib/xen /var/lib/xenstored
mark "phase=dom0_init"
for m in xenfs xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xen-pciback; do modprobe $m || fail "modprobe_$m"; done
mount -t xenfs xenfs /proc/xen
xenstored --pid-file /run/xenstored.pid || fail "xenstored"
xen-init-dom0 || fail "xen-init-dom0"
xenconsoled --log=guest --log-dir=/var/log/xen/console || fail "xenconsoled"
mark "phase=xen_tools_up"

# The driver domain, HVM, with the xHCI controller passed through.
xhci=$(lspci -D -n | awk '$2 ~ /^0c03:/ && $3 == "1b36:000d" {print $1; exit}')
[ -n "$xhci" ] || fail "no_xhci_in_dom0"
xl pci-assignable-add "$xhci" || fail "pci_assignable_add"
sed -e "s|^kernel = .*|kernel = \"/e2e/usbdom.elf\"|" -e "s|0000:00:05.0|$xhci|" \
    -e "s|^extra = .*|extra = \"loglevel=debug\"|" /e2e/xen-cfg/usbdom.cfg > /tmp/usbdom.cfg
mark "phase=usbdom_create xhci=$xhci"
xl create /tmp/usbdom.cfg || fail "xl_create_usbdom"
wait_for /var/log/xen/usbdom-serial.log "event=ready" 90 || fail "usbdom_not_ready"
mark "phase=usbdom_ready"

# A Linux guest with the PVUSB frontend, then a virtual controller served by usbdom.
xl create /e2e/xen-cfg/guest-pvh.cfg || fail "xl_create_guest"
glog=/var/log/xen/console/guest-guest.log
wait_for "$glog" "guest: ready" 120 || fail "guest_not_ready"
mark "phase=guest_ready"
usbctl hc-create guest 2 8 || fail "hc_create"
mark "phase=hc_created"
wait_for /var/log/xen/usbdom-serial.log "event=frontend_connected" 60 || fail "frontend_not_connected"
mark "phase=frontend_connected"
wait_for "$glog" "guest: hc usb[0-9]* ports=8" 60 || fail "guest_hc_missing"
mark "phase=guest_hc_registered"
usbctl list guest | sed 's|^|usbctl-list: |'
usbctl list-assignable-devices | sed 's|^|ASSIGNABLE |'
# Devices through usbdom to the guest's own xen-hcd: the keyboard (high speed) and the
# stick (SuperSpeed on the host, offered as high speed with its descriptors rewritten).
usbctl attach guest 0 1 1-2 || fail "attach_keyboard"
usbctl attach guest 0 2 2-1 || fail "attach_stick"
wait_for "$glog" "guest: usbdev .* vid=0627 pid=0001" 60 || fail "guest_no_keyboard"
mark "phase=guest_keyboard"
wait_for "$glog" "guest: usbdev .* vid=46f4 pid=0001" 60 || fail "guest_no_stick"
mark "phase=guest_stick"
usbctl list-assignable-devices | sed 's|^|ASSIGNED |'
# Data through usbdom: the guest's usb-storage and sd drivers read the stick's first 16 MiB.
wait_for "$glog" "guest: sda sha256=" 120 || fail "guest_no_disk"
wait_for "$glog" "guest: sda wrote=" 60 || fail "guest_no_write"
mark "phase=guest_disk"
# The devices leave before their controller, as libxl removes usbdevs first: Linux's
# xen-hcd cannot finish a device's URBs once its backend is gone.
usbctl detach guest 0 1 || fail "detach_keyboard"
usbctl detach guest 0 2 || fail "detach_stick"
wait_for "$glog" "usb 1-2: USB disconnect" 30 || fail "guest_no_disconnect"
mark "phase=guest_detached"
usbdom_id=$(xl domid usbdom)
guest_id=$(xl domid guest)
usbctl hc-destroy guest 0 || fail "hc_destroy"
xenstore-exists "/local/domain/$usbdom_id/backend/vusb/$guest_id/0" && fail "backend_dir_left"
xenstore-exists "/local/domain/$guest_id/device/vusb/0" && fail "frontend_dir_left"
wait_for /var/log/xen/usbdom-serial.log "event=vusb_removed" 30 || fail "usbdom_did_not_remove"
mark "phase=hc_destroyed"

# The same image as a PVH domU: no passthrough there, but it serves xenstore and PVUSB.
sed -e "s|^kernel = .*|kernel = \"/e2e/usbdom.elf\"|" /e2e/xen-cfg/usbdom-pvh.cfg > /tmp/usbdom-pvh.cfg
xl create /tmp/usbdom-pvh.cfg || fail "xl_create_usbdom_pvh"
plog=/var/log/xen/console/guest-usbdom-pvh.log
wait_for "$plog" "event=ready" 90 || fail "usbdom_pvh_not_ready"
mark "phase=usbdom_pvh_ready"
usbctl --backend usbdom-pvh hc-create guest 1 4 || fail "hc_create_pvh"
wait_for "$plog" "event=frontend_connected" 60 || fail "pvh_frontend_not_connected"
wait_for "$glog" "guest: hc usb[0-9]* ports=4" 60 || fail "pvh_guest_hc_missing"
mark "phase=pvh_frontend_connected"
usbctl hc-destroy guest 0 || fail "hc_destroy_pvh"
mark "phase=pvh_hc_destroyed"

mark "result=pass"
finish
