# Sourced by dom0-init.sh with usbdom.mode=bench: the same stick read and written with direct
# I/O by a Linux guest in three ways, one after the other in this one boot:
#   qusb    a PVH guest whose xen-hcd talks to QEMU's qusb PVUSB backend in dom0, which
#           reaches the stick through dom0's own xhci_hcd (what users have today);
#   usbdom  a PVH guest whose xen-hcd talks to usbdom, which has the controller;
#   native  an HVM guest with the controller passed through, its own xhci_hcd driving it.
# Each guest prints `guest: bench op=… round=… bytes=… seconds=…` (tests/e2e/guest-init.sh);
# they are reported as `E2E: bench path=… op=…` lines for `cargo xtask bench e2e`.
mib=$(sed -n 's/.*usbdom\.mib=\([0-9]*\).*/\1/p' /proc/cmdline)
mib=${mib:-16}

# dom0's busy CPU time in ms, both vCPUs (user, nice, system, irq, softirq, steal).
dom0_busy_ms() { awk '/^cpu / {print ($2 + $3 + $4 + $7 + $8 + $9) * 10}' /proc/stat; }

# bench_guest PATH LOG: waits for the guest's rounds, with dom0's CPU time during each op,
# and reports them.
bench_guest() {
  for op in read write; do
    wait_for "$2" "guest: bench start op=$op" 900 || fail "bench_$1_not_started"
    c0=$(dom0_busy_ms)
    wait_for "$2" "guest: bench end op=$op" 900 || fail "bench_$1_not_done"
    echo "E2E: bench dom0 path=$1 op=$op cpu_ms=$(( $(dom0_busy_ms) - c0 ))"
  done
  wait_for "$2" "guest: bench done" 900 || fail "bench_$1_not_done"
  grep "guest: bench disk" "$2" | sed -e 's|\r||' -e "s|^.*guest: bench disk |E2E: bench path=$1 disk |"
  grep "guest: bench op=" "$2" | sed -e 's|\r||' -e "s|^.*guest: bench |E2E: bench path=$1 |"
  grep -q "guest: bench.*error=" "$2" && fail "bench_$1_$(grep -o 'error=[a-z_]*' "$2" | head -n1)"
  mark "phase=bench_$1_done"
}

# A PVH guest running the benchmark: guest_cfg NAME [EXTRA CONFIG LINE]
guest_cfg() {
  sed -e "s|^name = .*|name = \"$1\"|" -e "s|^extra = .*|extra = \"console=hvc0 usbdom_bench=$mib\"|" \
    /e2e/xen-cfg/guest-pvh.cfg > "/tmp/$1.cfg"
  [ -z "${2:-}" ] || echo "$2" >> "/tmp/$1.cfg"
}

# qusb: dom0 drives the controller; QEMU's PV backends run in dom0's device model.
start_qusb
guest_cfg guest-q "usbctrl = [ 'type=qusb,version=2,ports=4' ]"
echo "usbdev = [ 'hostbus=$bus,hostaddr=$addr,controller=0,port=1' ]" >> /tmp/guest-q.cfg
timeout 120 xl create /tmp/guest-q.cfg || fail "xl_create_guest_q"
bench_guest qusb /var/log/xen/console/guest-guest-q.log
xl destroy guest-q
kill "$(cat /run/qemu-dom0.pid)" 2>/dev/null

# usbdom: the controller goes to the driver domain (pci-assignable-add unbinds xhci_hcd).
create_usbdom info

guest_cfg guest-u
timeout 120 xl create /tmp/guest-u.cfg || fail "xl_create_guest_u"
wait_for /var/log/xen/console/guest-guest-u.log "guest: ready" 120 || fail "guest_u_not_ready"
usbctl hc-create guest-u 2 8 || fail "hc_create_u"
usbctl attach guest-u 0 1 2-1 || fail "attach_u"
bench_guest usbdom /var/log/xen/console/guest-guest-u.log
grep "event=stats" /var/log/xen/console/guest-usbdom.log | tail -n1 | sed 's|^|E2E: bench usbdom_stats |'
# How busy usbdom's CPU was while the guest read and wrote.
grep "event=cpu " /var/log/xen/console/guest-usbdom.log | sed 's|^.*event=cpu |E2E: bench usbdom_cpu |'
xl destroy guest-u
wait_for /var/log/xen/console/guest-usbdom.log "reason=frontend_gone" 30 || fail "usbdom_kept_guest_u"
xl destroy usbdom
i=0
while xl list | awk 'NR > 1 {print $1}' | grep -qE '^(usbdom|\(null\))$'; do
  i=$((i + 1)); [ $i -lt 30 ] || fail "usbdom_still_dying"; sleep 1
done

# native: an HVM guest with the controller, booted by its device model straight into Linux.
cat > /tmp/guest-n.cfg <<EOF
name = "guest-n"
type = "hvm"
kernel = "/boot/vmlinuz"
ramdisk = "/boot/guest-initrd.img"
extra = "console=ttyS0 usbdom_bench=$mib"
memory = 512
vcpus = 1
tsc_mode = "native"
vnc = 0
vga = "none"
serial = "file:/var/log/xen/guest-n-serial.log"
pci = [ "$xhci" ]
on_poweroff = "destroy"
EOF
timeout 120 xl create /tmp/guest-n.cfg || fail "xl_create_guest_n"
bench_guest native /var/log/xen/guest-n-serial.log
xl destroy guest-n
mark "result=pass"
