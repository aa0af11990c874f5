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

mark "result=pass"
finish
