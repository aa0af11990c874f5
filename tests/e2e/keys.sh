# Sourced by dom0-init.sh with usbdom.mode=keys (`cargo xtask bench keys`,
# tests/examples/bench_keys.rs): key latency, from a QMP key press on the host to the evdev
# event in guest-b, first with guest-a idle, then with guest-a writing its stick flat out.
# guest-b runs Linux's stock xen-hcd; guest-a too, or our pvusb-hcd on a USB 3 controller
# (usbdom.load_hcd=pvusb-hcd: the stick at SuperSpeed, several times the rate). The keyboard
# (second controller) is guest-b's, the SuperSpeed stick (first controller) guest-a's. guest-b's keyprobe reports
# each press on Xen's console, which the host reads; each phase ends with an Escape, which
# it also prints on its own console for this script. Reported as `E2E: keys …` lines.
klog=/var/log/xen/console/guest-guest-b.log
llog=/var/log/xen/console/guest-guest-a.log
load_hcd=$(sed -n 's/.*usbdom\.load_hcd=\([a-z-]*\).*/\1/p' /proc/cmdline)
load_hcd=${load_hcd:-xen-hcd}
create_usbdom info
for g in a:usbdom_load:$load_hcd b:usbdom_keyprobe:xen-hcd; do
  name=guest-${g%%:*} rest=${g#*:}
  hcd=${rest#*:}
  sed -e "s|^name = .*|name = \"$name\"|" \
      -e "s|^extra = .*|extra = \"console=hvc0 ${rest%%:*} usbdom_hcd=$hcd\"|" \
    /e2e/xen-cfg/guest-pvh.cfg > "/tmp/$name.cfg"
  printf 'on_reboot = "destroy"\non_crash = "destroy"\n' >> "/tmp/$name.cfg"
  xl_create "$name" "/tmp/$name.cfg" || fail "xl_create_$name"
  ready "$name" "/var/log/xen/console/guest-$name.log" "xl_create $name /tmp/$name.cfg" \
    || fail "${name}_not_ready"
  version=2
  [ "$hcd" = pvusb-hcd ] && version=3
  usbctl_step hc-create "$name" $version 8 || fail "hc_create_$name"
done
usbctl_step attach guest-b 0 1 0627:0001 || fail "attach_keyboard"
wait_for "$klog" "guest: keyprobe ready" 120 || fail "keyprobe_not_ready"
grep -a "guest: keyprobe ready" "$klog" | sed -e 's|\r||' -e 's|^.*guest: |E2E: keys guest_b |'
echo "E2E: keys load_hcd=$load_hcd"

# keys_phase NAME N: the host's presses for phase NAME; done at guest-b's Nth phase end.
keys_phase() {
  echo "E2E: want=keys_$1"
  i=0
  while [ "$(grep -ac "guest: keyprobe phase_end" "$klog")" -lt "$2" ] && [ $i -lt 300 ]; do
    sleep 1; i=$((i + 1))
  done
  [ $i -lt 300 ] || fail "keys_$1_not_done"
  mark "phase=keys_$1_done"
}
keys_phase idle 1

# The load: guest-a gets the stick and writes it on and on.
usbctl_step attach guest-a 0 1 2-1 || fail "attach_stick"
wait_for "$llog" "guest: load mib=16" 120 || fail "load_not_writing"
cpu0=$(grep -c "event=cpu " /var/log/xen/console/guest-usbdom.log)
keys_phase load 2
grep "event=cpu " /var/log/xen/console/guest-usbdom.log | tail -n +$((cpu0 + 1)) \
  | sed "s|^.*event=cpu |E2E: keys usbdom_cpu |"
grep -a "guest: load " "$llog" | sed -e 's|\r||' -e 's|^.*guest: load |E2E: keys load |'
grep -a "event=stats" /var/log/xen/console/guest-usbdom.log | tail -n 4 | sed 's|^.*event=stats |E2E: keys usbdom_stats |'
mark "result=pass"
