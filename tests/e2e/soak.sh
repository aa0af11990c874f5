# Sourced by dom0-init.sh with usbdom.mode=soak (`cargo xtask soak`): does the nested machine
# itself corrupt processes, and does usbdom's traffic change that? Two guests of one type
# (usbdom.soak_type=pvh|pv) start short-lived processes for usbdom.soak_seconds while guest-s1
# reads the stick through usbdom.soak_usb: none, usbdom (the driver domain has the controller)
# or qusb (dom0 drives it, QEMU's backend serves the guest). dom0 starts processes too.
# Every crash the kernels report (`segfault at`, `general protection`) and every triple
# fault Xen reports is counted per domain: `E2E: soak …` lines.
usb=$(sed -n 's/.*usbdom\.soak_usb=\([a-z]*\).*/\1/p' /proc/cmdline)
gtype=$(sed -n 's/.*usbdom\.soak_type=\([a-z]*\).*/\1/p' /proc/cmdline)
seconds=$(sed -n 's/.*usbdom\.soak_seconds=\([0-9]*\).*/\1/p' /proc/cmdline)
vcpus=$(sed -n 's/.*usbdom\.soak_vcpus=\([0-9]*\).*/\1/p' /proc/cmdline)
usb=${usb:-none} gtype=${gtype:-pvh} seconds=${seconds:-60} vcpus=${vcpus:-1}
mark "phase=soak usb=$usb type=$gtype seconds=$seconds vcpus=$vcpus"

soak_cfg() {
  sed -e "s|^name = .*|name = \"$1\"|" -e "s|^type = .*|type = \"$gtype\"|" -e "s|^vcpus = .*|vcpus = $vcpus|" \
      -e "s|^extra = .*|extra = \"console=hvc0 usbdom_soak=$seconds\"|" \
      /e2e/xen-cfg/guest-pvh.cfg > "/tmp/$1.cfg"
}
soak_cfg guest-s1
soak_cfg guest-s2
case "$usb" in
  usbdom) create_usbdom info ;;
  qusb)
    start_qusb
    echo "usbctrl = [ 'type=qusb,version=2,ports=4' ]" >> /tmp/guest-s1.cfg
    echo "usbdev = [ 'hostbus=$bus,hostaddr=$addr,controller=0,port=1' ]" >> /tmp/guest-s1.cfg
    ;;
esac
xl_create guest-s1 /tmp/guest-s1.cfg || fail "xl_create_guest_s1"
xl_create guest-s2 /tmp/guest-s2.cfg || fail "xl_create_guest_s2"
if [ "$usb" = usbdom ]; then
  wait_for /var/log/xen/console/guest-guest-s1.log "guest: ready" 120 || fail "guest_s1_not_ready"
  usbctl hc-create guest-s1 2 8 || fail "hc_create_s1"
  usbctl attach guest-s1 0 1 2-1 || fail "attach_s1"
fi
# dom0's own share of short-lived processes, for as long as the guests run theirs.
end=$(( $(cut -d. -f1 /proc/uptime) + seconds + 30 ))
n=0
while [ "$(cut -d. -f1 /proc/uptime)" -lt "$end" ]; do
  /bin/busybox true; n=$((n + 1))
  for g in guest-s1 guest-s2; do
    grep -q "guest: soak execs=" "/var/log/xen/console/guest-$g.log" 2>/dev/null || continue 2
  done
  break
done
for g in guest-s1 guest-s2; do
  wait_for "/var/log/xen/console/guest-$g.log" "guest: soak execs=" 120 || mark "soak_guest_unfinished guest=$g"
done
crashes() { grep -cE "segfault at|general protection|traps:" "$1" 2>/dev/null || echo 0; }
dmesg > /tmp/dom0-dmesg
mark "soak domain=dom0 execs=$n crashes=$(crashes /tmp/dom0-dmesg)"
for g in guest-s1 guest-s2; do
  f=/var/log/xen/console/guest-$g.log
  line=$(grep -o "guest: soak execs=.*" "$f" | tr -d '\r' | head -n1)
  mark "soak domain=$g ${line#guest: soak } reads=$(grep -c "guest: soak read mib=16" "$f") crashes=$(crashes "$f")"
done
xl dmesg > /tmp/xl-dmesg
mark "soak triple_faults=$(grep -c "Triple fault" /tmp/xl-dmesg)"
grep -hE "segfault at|general protection|traps:" /tmp/dom0-dmesg /var/log/xen/console/guest-guest-s*.log \
  | head -n 20 | sed 's|^|E2E-CRASH |'
grep -A14 "Triple fault" /tmp/xl-dmesg | head -n 40 | sed 's|^|E2E-CRASH |'
mark "result=pass"
