# Sourced by dom0-init.sh with usbdom.mode=bench: the same stick read and written with direct
# I/O by a Linux guest in five ways, one after the other in this one boot:
#   qusb        a PVH guest whose xen-hcd talks to QEMU's qusb PVUSB backend in dom0, which
#               reaches the stick through dom0's own xhci_hcd (what users have today);
#   qusb_pvusb  the same with our frontend, pvusb-hcd: qusb offers none of its features, so
#               this is the stock protocol (it shows the module works against any backend);
#   usbdom      a PVH guest whose xen-hcd talks to usbdom, which has the controller;
#   pvusb       a PVH guest whose pvusb-hcd talks to usbdom on a USB 3 controller: a
#               16-page URB ring, persistent grants, the stick at SuperSpeed;
#   native      an HVM guest with the controller passed through, its own xhci_hcd driving it.
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

# A PVH guest running the benchmark: guest_cfg NAME HCD [EXTRA CONFIG LINE], HCD being
# xen-hcd or pvusb-hcd.
guest_cfg() {
  sed -e "s|^name = .*|name = \"$1\"|" \
      -e "s|^extra = .*|extra = \"console=hvc0 usbdom_bench=$mib usbdom_hcd=$2\"|" \
    /e2e/xen-cfg/guest-pvh.cfg > "/tmp/$1.cfg"
  [ -z "${3:-}" ] || echo "$3" >> "/tmp/$1.cfg"
}

# qusb: dom0 drives the controller; QEMU's PV backends run in dom0's device model. The same
# controller and stick for xen-hcd (guest-q), then for pvusb-hcd (guest-r).
start_qusb
for g in q:qusb:xen-hcd r:qusb_pvusb:pvusb-hcd; do
  name=guest-${g%%:*} rest=${g#*:}
  path=${rest%%:*} hcd=${rest#*:}
  guest_cfg "$name" "$hcd" "usbctrl = [ 'type=qusb,version=2,ports=4' ]"
  echo "usbdev = [ 'hostbus=$bus,hostaddr=$addr,controller=0,port=1' ]" >> "/tmp/$name.cfg"
  xl_create "$name" "/tmp/$name.cfg" || fail "xl_create_$name"
  bench_guest "$path" "/var/log/xen/console/guest-$name.log"
  xl destroy "$name"
done
kill "$(cat /run/qemu-dom0.pid)" 2>/dev/null

# usbdom: the controller goes to the driver domain (pci-assignable-add unbinds xhci_hcd).
create_usbdom info

# usbdom_path PATH NAME HCD USB_VER: one guest through usbdom; usbdom's per-second CPU lines
# of its op are reported for PATH.
cpu_lines=0
usbdom_path() {
  guest_cfg "$2" "$3"
  xl_create "$2" "/tmp/$2.cfg" || fail "xl_create_$2"
  wait_for "/var/log/xen/console/guest-$2.log" "guest: ready" 120 || fail "$2_not_ready"
  usbctl hc-create "$2" "$4" 8 || fail "hc_create_$2"
  usbctl attach "$2" 0 1 2-1 || fail "attach_$2"
  bench_guest "$1" "/var/log/xen/console/guest-$2.log"
  grep "event=frontend_connected domid=$(xl domid "$2") " /var/log/xen/console/guest-usbdom.log \
    | sed "s|^.*event=frontend_connected |E2E: bench usbdom_frontend path=$1 |"
  grep "event=stats" /var/log/xen/console/guest-usbdom.log | tail -n1 | sed "s|^|E2E: bench usbdom_stats path=$1 |"
  # How busy usbdom's CPU was while the guest read and wrote.
  grep "event=cpu " /var/log/xen/console/guest-usbdom.log | tail -n +$((cpu_lines + 1)) \
    | sed "s|^.*event=cpu |E2E: bench usbdom_cpu path=$1 |"
  cpu_lines=$(grep -c "event=cpu " /var/log/xen/console/guest-usbdom.log)
  domid=$(xl domid "$2")
  xl destroy "$2"
  wait_for /var/log/xen/console/guest-usbdom.log "event=vusb_removed domid=$domid .*reason=frontend_gone" 30 \
    || fail "usbdom_kept_$2"
}
usbdom_path usbdom guest-u xen-hcd 2
usbdom_path pvusb guest-p pvusb-hcd 3
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
xl_create guest-n /tmp/guest-n.cfg || fail "xl_create_guest_n"
bench_guest native /var/log/xen/guest-n-serial.log
xl destroy guest-n
mark "result=pass"
