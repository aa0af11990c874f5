# Sourced by dom0-init.sh with usbdom.mode=devices (`cargo xtask devices`): the device
# table. QEMU's class devices on the outer machine's second controller go, through usbdom,
# to a PVH guest with Linux's stock xen-hcd and class drivers, which uses each as a user
# would (tests/e2e/guest-init.sh, `usbdom_devices`); the host checks what came out of
# QEMU (tests/examples/devices_e2e.rs). Reported as `E2E: device …` lines.
create_usbdom
dlog=/var/log/xen/console/guest-guest-d.log
sed -e "s|^name = .*|name = \"guest-d\"|" \
    -e "s|^extra = .*|extra = \"console=hvc0 usbdom_devices=1\"|" \
  /e2e/xen-cfg/guest-pvh.cfg > /tmp/guest-d.cfg
printf 'on_reboot = "destroy"\non_crash = "destroy"\n' >> /tmp/guest-d.cfg
xl_create guest-d /tmp/guest-d.cfg || fail "xl_create_guest_d"
wait_for "$dlog" "guest: devices ready" 180 || fail "guest_d_not_ready"
mark "phase=guest_d_ready"
usbctl_step hc-create guest-d 2 8 || fail "hc_create_d"
# The audio device: QEMU's usb-audio on the second controller's second USB 2 port.
usbctl_step attach guest-d 0 1 3-2 || fail "attach_audio"
wait_for "$dlog" "guest: devices done" 300 || fail "devices_not_done"
grep "guest: device " "$dlog" | sed -e 's|\r||' -e 's|^.*guest: device |E2E: device |'
grep -E "snd|usb 1-1|xen_hcd|xen-hcd" "$dlog" | tail -n 40 | sed 's|^|GUEST-D |'
grep -E "urb_iso|port_|frontend_" /var/log/xen/console/guest-usbdom.log | tail -n 60 | sed 's|^|USBDOM |'
mark "result=pass"
