#!/bin/sh
# dom0's /init in the end-to-end run: start the Xen daemons, then play the scenario and
# report each step on the console as "E2E: ..." lines the harness reads.
export PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/lib/xen-4.17/bin
t0=$(cut -d' ' -f1 /proc/uptime 2>/dev/null || echo 0)
mark() {
  echo "E2E: $* uptime=$(cut -d' ' -f1 /proc/uptime)"
  # Written whole, then renamed: the watchdog must never read it half-written.
  cut -d. -f1 /proc/uptime > /tmp/last_mark.new && mv /tmp/last_mark.new /tmp/last_mark
  [ -n "${canary:-}" ] || return 0
  # A check reads the whole canary (slow under nested emulation): a few places only.
  case "$1" in phase=guest_disk|phase=attack_done|phase=hc_destroyed) canary_check "${1#phase=}" ;; esac
}
# A failed step names what it waited for; usbdom's last lines come with it (the whole log
# follows in finish).
fail() {
  mark "result=fail reason=$*"
  # A domain the emulated CPU ended (see the guests' note below): Xen's dump of its state
  # is Xen's own, RIP in Xen's text (e008:ffff82d0…) after its VMRUN.
  xl dmesg 2>/dev/null | awk '/Triple fault/ {d = $2} d && /RIP:/ {print d, $3; d = ""}' \
    | while read -r vcpu rip; do
        case "$rip" in e008:*) mark "environment_fault what=vmrun_triple_fault vcpu=$vcpu rip=$rip" ;; esac
      done
  [ -n "${canary:-}" ] && canary_check fail
  tail -n 15 /var/log/xen/console/guest-usbdom.log 2>/dev/null | sed 's|^|E2E-LAST usbdom: |'
  [ "${mode:-}" = shell ] && shell
  finish
}
# `cargo xtask run --xen`: the user gets dom0's console.
shell() {
  cat <<EOF

usbdom serves guest-a (the USB stick) and guest-b (the keyboard) on Xen. Try:
  xl list                                       the domains
  usbctl list guest-a                           guest-a's virtual controller and its ports
  usbctl list-assignable-devices                what usbdom offers, and to whom
  tail /var/log/xen/console/guest-usbdom.log     usbdom's log (PV console; the serial file lags)
  tail /var/log/xen/console/guest-guest-a.log   guest-a's console
  xl console guest-b                            a guest's console (Ctrl-] leaves it)
(Xen's serial console may drop characters typed fast.) Ctrl-C here ends QEMU.

EOF
  exec setsid -c /bin/bash -i <>/dev/hvc0 >&0 2>&1
}
finish() {
  # What dom0 had left, for a run that failed for want of it.
  free -m | sed 's|^|LOG dom0-free: |'
  dmesg | tail -n 30 | sed 's|^|LOG dom0-dmesg: |'
  for f in /var/log/xen/usbdom-serial.log /var/log/xen/console/guest-*.log; do
    [ -f "$f" ] && whole_lines "$f" | sed "s|^|LOG $(basename "$f"): |"
  done
  xl dmesg 2>/dev/null | grep -E '\(d[0-9]+\)' | tail -n 200 | sed 's|^|LOG xl-dmesg: |'
  mark "done"
  echo o > /proc/sysrq-trigger
  sleep 60
}
# The nested machine now and then hands a process memory that is not what it wrote: with
# no USB and no usbdom at all, `cargo xtask soak` sees about one exec'd process in 3000 of
# a PVH guest (one in 100 of a PV guest) die of SIGSEGV before main, and forked toolstack
# processes here died in malloc (xl's monitoring child in libc, "XZ decompression failed"
# in libxc). A toolstack step (xl create/destroy, usbctl) whose process died of a signal
# is run once more, counted and named (`E2E: environment_retry what=…`); the guests do the
# same for their own steps (guest-init.sh: `again`). Nothing usbdom does is ever retried.
env_retries=0
# The guests' own (tests/e2e/guest-init.sh: `again`), for the result line.
guest_env_retries() { cat /var/log/xen/console/guest-guest-*.log 2>/dev/null | grep -c "guest: environment_retry"; }
env_retry() {
  env_retries=$((env_retries + 1))
  mark "environment_retry what=$1 count=$env_retries"
}
# xl_create NAME CFG: creates a domain, once more (after removing what is left) if xl failed.
xl_create() {
  timeout 120 xl create "$2" > /tmp/xl-create.out 2>&1; rc=$?
  cat /tmp/xl-create.out
  [ "$rc" -eq 0 ] && return 0
  mark "xl_create_failed name=$1 status=$rc said=\"$(tail -n 3 /tmp/xl-create.out | tr '\n' ' ' | cut -c1-300)\""
  env_retry "xl_create_$1"
  timeout 60 xl destroy "$1" 2>/dev/null
  timeout 120 xl create "$2"
}
# usbctl_step ARGS…: one usbctl command, once more if the process died of a signal or could
# not be started (exit 126/127 from timeout: seen, "failed to run command 'usbctl': No such
# file or directory" between two usbctl steps that ran).
usbctl_step() {
  timeout 120 usbctl "$@"; rc=$?
  [ "$rc" -gt 128 ] || [ "$rc" -eq 126 ] || [ "$rc" -eq 127 ] || return "$rc"
  env_retry "usbctl_$1"
  timeout 120 usbctl "$@"
}
# xl_destroy NAME: once more if xl failed and the domain is still there. (Seen: xl's
# destroying child died of SIGSEGV after the domain was already gone, and the second xl
# then failed on the name.)
xl_destroy() {
  timeout 60 xl destroy "$1" && return 0
  env_retry "xl_destroy_$1"
  xl domid "$1" >/dev/null 2>&1 || return 0
  timeout 60 xl destroy "$1"
}
# ready NAME LOG REMAKE [LINE]: waits for a domain's LINE ("guest: ready" by default) in
# LOG; a domain that died first (gone: destroyed when it died, see the configs) is made
# again once with REMAKE.
ready() {
  line=${4:-guest: ready}
  i=0
  while [ $i -lt 120 ]; do
    grep -q -- "$line" "$2" 2>/dev/null && return 0
    xl domid "$1" >/dev/null 2>&1 || break
    sleep 1; i=$((i + 1))
  done
  xl domid "$1" >/dev/null 2>&1 && return 1
  env_retry "guest_$1_died_booting"
  eval "$3" && wait_for "$2" "$line" 120
}
# keys_ms PATTERN: waits up to 60 s for guest-b to show PATTERN; $latency is how long it
# took, in ms (the host sends each key event 100 ms after the last).
keys_ms() {
  t0=$(cut -d' ' -f1 /proc/uptime)
  i=0
  while [ $i -lt 300 ]; do
    if grep -q -- "$1" "$blog" 2>/dev/null; then
      latency=$(awk -v a="$t0" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN {printf "%d", (b - a) * 1000}')
      return 0
    fi
    sleep 0.2; i=$((i + 1))
  done
  return 1
}
# whole_lines FILE: FILE without a last line xenconsoled has written only part of yet (no
# newline): read as it stood, "n=1" of "n=105" once made guest-a's read count go back
# ("reads=-2"), and a keys line cut short looked like keys lost.
whole_lines() {
  cat "$1" > /tmp/whole_lines 2>/dev/null || return 0
  if [ -n "$(tail -c1 /tmp/whole_lines)" ]; then head -n -1 /tmp/whole_lines; else cat /tmp/whole_lines; fi
}
# reads_done: the number of guest-a's last 16 MiB read. (Counting the lines once gave a
# count lower than 20 s before, with pvusb-hcd's 6 reads a second: the number cannot.)
reads_done() {
  n=$(whole_lines "$alog" | grep -ao "guest: sda read mib=16 n=[0-9]*" | tail -n1)
  echo "${n##*=}" | grep -x "[0-9][0-9]*" || echo 0
}
# reads_in SECONDS: how many of guest-a's 16 MiB reads finished in that time ($reads). The
# time is kept by the uptime clock, a second at a time: one `sleep` the nested machine killed
# at its start (see the note above env_retry) once made a 20 s window 2 s long.
reads_in() {
  r0=$(reads_done)
  end=$(( $(cut -d. -f1 /proc/uptime) + $1 ))
  while [ "$(cut -d. -f1 /proc/uptime)" -lt "$end" ]; do sleep 1; done
  reads=$(( $(reads_done) - r0 ))
}
# wait_more FILE PATTERN COUNT SECONDS: waits for FILE to have more than COUNT lines with PATTERN.
wait_more() {
  i=0
  while [ $i -lt "$4" ]; do
    [ "$(grep -c -- "$2" "$1" 2>/dev/null)" -gt "$3" ] && return 0
    sleep 1; i=$((i + 1))
  done
  return 1
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
# The watchdog: a scenario with no mark for 90 s (no step waits that long in a passing run)
# says, three times 10 s apart, what dom0's processes are doing and where they wait in the
# kernel, and the last lines of usbdom's and the guests' logs. (Seen: the whole nested
# machine silent for minutes after guest-c's controller got its device. Its lines show
# whether dom0 itself still runs; the harness asks QEMU and Xen after 150 s of silence,
# tests/src/stall.rs.)
watchdog() {
  n=0
  while sleep 10; do
    # A bad number would end this shell (an arithmetic error is fatal in dash).
    last=$(cat /tmp/last_mark 2>/dev/null)
    case "$last" in ''|*[!0-9]*) continue ;; esac
    silent=$(( $(cut -d. -f1 /proc/uptime) - last ))
    if [ "$silent" -lt 90 ]; then n=0; continue; fi
    n=$((n + 1)); [ $n -le 3 ] || continue
    echo "E2E-WATCHDOG silent=${silent}s report=$n"
    # Also through the kernel's own console path: if only this line comes, the tty is stuck.
    echo "E2E-WATCHDOG kmsg silent=${silent}s report=$n" > /dev/kmsg
    ps -eo pid,ppid,stat,etime,time,pcpu,wchan:24,args | awk '$2 != 2 && $1 != 2' \
      | cut -c1-160 | sed 's|^|E2E-WATCHDOG ps |'
    for f in /var/log/xen/console/guest-*.log; do
      [ -f "$f" ] && tail -n 3 "$f" | cut -c1-200 | sed "s|^|E2E-WATCHDOG $(basename "$f"): |"
    done
  done
}
for m in xenfs xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xen-pciback; do modprobe $m || fail "modprobe_$m"; done
mount -t xenfs xenfs /proc/xen
xenstored --pid-file /run/xenstored.pid || fail "xenstored"
xen-init-dom0 || fail "xen-init-dom0"
xenconsoled --log=guest --log-dir=/var/log/xen/console || fail "xenconsoled"
mark "phase=xen_tools_up"

# `usbdom.canary=<MiB>` on dom0's command line (USBDOM_E2E_CANARY for `cargo xtask e2e`):
# that much of dom0's memory holds a known byte, compared after each step, to catch any
# other party writing into dom0's pages and to show what it wrote.
canary=$(sed -n 's/.*usbdom\.canary=\([0-9]*\).*/\1/p' /proc/cmdline)
canary_stream() { tr '\0' 'U' < /dev/zero | head -c $((canary << 20)); }
if [ -n "$canary" ]; then
  mkdir -p /run/canary && mount -t tmpfs -o size=$((canary + 8))m tmpfs /run/canary
  canary_stream > /run/canary/pattern
fi
canary_check() {
  [ -n "$canary" ] || return 0
  canary_stream | cmp -l - /run/canary/pattern > /tmp/canary.diff 2>/dev/null
  n=$(wc -l < /tmp/canary.diff)
  [ "$n" -eq 0 ] && return 0
  first=$(awk 'NR == 1 {print $1 - 1}' /tmp/canary.diff)
  echo "E2E-CANARY after=$1 changed_bytes=$n first_offset=$first pages=$(awk '{print int(($1 - 1) / 4096)}' /tmp/canary.diff | sort -u | tr '\n' ' ')"
  for pg in $(awk '{print int(($1 - 1) / 4096)}' /tmp/canary.diff | sort -u | head -n 4); do
    dd if=/run/canary/pattern bs=4096 skip="$pg" count=1 2>/dev/null | od -A d -t x1 | grep -v '55 55 55 55 55 55 55 55 55 55 55 55 55 55 55 55' | head -n 40 | sed "s|^|E2E-CANARY page=$pg |"
  done
  # Reported once per place: the pattern is restored.
  canary_stream > /run/canary/pattern
}

# usbdom.mode= on dom0's command line: test (the scenario below), bench (tests/e2e/bench.sh),
# soak (tests/e2e/soak.sh), devices (tests/e2e/devices.sh), keys (tests/e2e/keys.sh)
# or shell (`cargo xtask run --xen`: the scenario's first half, then a shell on the console).
mode=$(sed -n 's/.*usbdom\.mode=\([a-z]*\).*/\1/p' /proc/cmdline)
[ "$mode" = test ] && watchdog &
# usbdom.datapath=copy|map (USBDOM_E2E_DATAPATH): usbdom's datapath= option.
datapath=$(sed -n 's/.*usbdom\.datapath=\([a-z]*\).*/\1/p' /proc/cmdline)
# usbdom.memory=<MiB> (USBDOM_E2E_MEMORY): usbdom's memory instead of xen-cfg/usbdom.cfg's.
memory=$(sed -n 's/.*usbdom\.memory=\([0-9]*\).*/\1/p' /proc/cmdline)
# Every xHCI controller (the outer machine has two, as laptops do), and the first, the stick's.
xhcis=$(lspci -D -n | awk '$2 ~ /^0c03:/ && $3 == "1b36:000d" {print $1}')
xhci=$(echo "$xhcis" | head -n1)
[ -n "$xhci" ] || fail "no_xhci_in_dom0"
# The usbdom package (`cargo xtask deb`) installed as on any Debian dom0: the image, usbctl,
# /etc/xen/usbdom.cfg and usbdom.service.
install_usbdom() {
  dpkg -i /e2e/usbdom.deb > /tmp/dpkg.out 2>&1 || { sed 's|^|dpkg: |' /tmp/dpkg.out; fail "dpkg_install_usbdom"; }
  mark "phase=usbdom_installed version=$(dpkg-query -W -f='${Version}' usbdom) usbctl=$(command -v usbctl)"
}
# dom0 here has no systemd, so its init runs usbdom.service's own commands as systemd would.
# unit_cmd KEY: the unit's command for KEY (ExecStart, ExecStop).
unit_cmd() {
  cmd=$(sed -n "s/^$1=//p" /lib/systemd/system/usbdom.service)
  [ -n "$cmd" ] || fail "unit_has_no_$1"
  echo "$cmd"
}
# unit_start: ExecStart, its process kept running (Type=notify: it stays, following the
# guests); started once it says it serves ("usbctl: following", what it tells systemd as
# READY=1), or failed when it ends first. Its output goes on to /tmp/unit-start.out.
unit_start() {
  cmd=$(unit_cmd ExecStart)
  echo "unit: ExecStart=$cmd"
  : > /tmp/unit-start.out
  $cmd >> /tmp/unit-start.out 2>&1 &
  unit_pid=$!
  i=0
  while [ $i -lt 300 ] && ! grep -q "usbctl: following" /tmp/unit-start.out; do
    kill -0 "$unit_pid" 2>/dev/null || break
    sleep 1; i=$((i + 1))
  done
  sed 's|^|unit: |' /tmp/unit-start.out
}
# unit_stop: ExecStop, then the main process must end by itself, successfully.
unit_stop() {
  cmd=$(unit_cmd ExecStop)
  echo "unit: ExecStop=$cmd"
  timeout 300 $cmd 2>&1 | sed 's|^|unit: |'
  i=0
  while kill -0 "$unit_pid" 2>/dev/null && [ $i -lt 30 ]; do sleep 1; i=$((i + 1)); done
  wait "$unit_pid"; unit_status=$?
  sed 's|^|unit-main: |' /tmp/unit-start.out
}
# The driver domain, HVM, with every xHCI controller passed through, started by the service's
# ExecStart after the administrator's edits to /etc/xen/usbdom.cfg: the controllers, and
# this run's log level, datapath and memory.
create_usbdom() {
  [ -f /lib/systemd/system/usbdom.service ] || install_usbdom
  pci=
  for x in $xhcis; do pci="${pci:+$pci, }\"$x\""; done
  sed -i -e "s|^pci = .*|pci = [ $pci ]|" \
      -e "s|^extra = .*|extra = \"loglevel=${1:-debug}${datapath:+ datapath=$datapath}\"|" \
      ${memory:+-e "s|^memory = .*|memory = $memory|" -e "s|^maxmem = .*|maxmem = $memory|"} \
      /etc/xen/usbdom.cfg
  mark "phase=usbdom_create xhci=$(echo $xhcis | tr ' ' ,)"
  start_usbdom
  mark "phase=usbdom_ready"
}
# start_usbdom: the unit's ExecStart, for a usbdom not running. The nested machine now and
# then ends an HVM domain in its firmware, before usbdom runs (a triple fault at a BIOS
# address): started again then, from nothing.
start_usbdom() {
  unit_start
  if ! grep -q "event=ready" /var/log/xen/console/guest-usbdom.log 2>/dev/null; then
    env_retry "usbdom_start"
    kill "$unit_pid" 2>/dev/null
    xl destroy usbdom 2>/dev/null
    unit_start
  fi
  wait_for /var/log/xen/console/guest-usbdom.log "event=ready" 30 || fail "usbdom_not_ready"
}
# start_qusb: dom0 drives the controller itself (xhci_hcd) and runs QEMU's PV backends in its
# device model, as users have it today; sets $bus and $addr of the stick.
start_qusb() {
  for m in usb-common usbcore xhci-hcd xhci-pci; do
    insmod "/e2e/mods/$m.ko" || fail "insmod_$m"
  done
  i=0; bus=; addr=
  while [ -z "$bus" ] && [ $i -lt 60 ]; do
    for d in /sys/bus/usb/devices/*; do
      [ "$(cat "$d/idVendor" 2>/dev/null)" = 46f4 ] || continue
      bus=$(cat "$d/busnum"); addr=$(cat "$d/devnum")
    done
    sleep 1; i=$((i + 1))
  done
  [ -n "$bus" ] || fail "dom0_no_stick"
  mark "phase=dom0_stick bus=$bus addr=$addr"
  /usr/libexec/xen-qemu-system-i386 -xen-domid 0 -xen-attach -name dom0 -nographic -M xenpv \
    -daemonize -monitor none -serial none -parallel none -pidfile /run/qemu-dom0.pid \
    || fail "qemu_xenpv"
}
if [ "$mode" = bench ]; then
  . /e2e/bench.sh
  finish
fi
if [ "$mode" = soak ]; then
  . /e2e/soak.sh
  finish
fi
if [ "$mode" = devices ]; then
  . /e2e/devices.sh
  finish
fi
if [ "$mode" = keys ]; then
  . /e2e/keys.sh
  finish
fi
create_usbdom

# Two Linux guests with the PVUSB frontend, each with a virtual controller served by usbdom:
# the stick goes to guest-a, the keyboard to guest-b.
# usbdom's log as its PV console carries it (every line at once; the serial file gets them
# paced, see driver-domain/src/kernel/logger.rs).
ulog=/var/log/xen/console/guest-usbdom.log
alog=/var/log/xen/console/guest-guest-a.log
blog=/var/log/xen/console/guest-guest-b.log
clog=/var/log/xen/console/guest-guest-c.log
# A guest that dies booting (the nested machine's triple faults) is destroyed, not restarted
# by xl: a restart would bring it back without the controller usbctl made for it (xl knows
# nothing of those), and `ready` makes it again the way it was made.
# guest-b alone is restarted when it reboots, as guests usually are: the service's main process
# gives it its controller back then (at the end of the scenario).
for g in guest-a guest-b guest-c; do
  sed -e "s|^name = .*|name = \"$g\"|" /e2e/xen-cfg/guest-pvh.cfg > "/tmp/$g.cfg"
  reboot=destroy; [ "$g" = guest-b ] && reboot=restart
  printf 'on_reboot = "%s"\non_crash = "destroy"\n' "$reboot" >> "/tmp/$g.cfg"
done
# guest-a runs our own frontend (frontend-linux/pvusb-hcd) on a USB 3 controller; guest-b
# Linux's stock xen-hcd: both at once against one usbdom.
sed -i -e 's|^extra = .*|extra = "console=hvc0 usbdom_hcd=pvusb-hcd"|' /tmp/guest-a.cfg
# guest-c is hostile: instead of xen-hcd it runs usbattack, which speaks PVUSB from user
# space and breaks it every way it can (frontend-linux/src/attack), once it has a controller.
sed -i -e 's|^extra = .*|extra = "console=hvc0 usbdom_attack=all usbdom_attack_seconds=64"|' /tmp/guest-c.cfg
xl_create guest-a /tmp/guest-a.cfg || fail "xl_create_guest-a"
xl_create guest-c /tmp/guest-c.cfg || fail "xl_create_guest-c"
# guest-b as users configure it: the original PVUSB vusb entry in its own xl config, the
# keyboard named by its IDs; usbctl up runs xl create, then creates and attaches.
echo "vusb = [ 'usbver=2, numports=8, port_1=0627:0001' ]" >> /tmp/guest-b.cfg
timeout 240 usbctl up /tmp/guest-b.cfg 2>&1 | sed 's|^|usbctl-up: |'
if ! xl domid guest-b >/dev/null 2>&1; then
  # Seen once: libxc failed to decompress the same kernel it had just loaded for guest-a
  # ("unable to XZ decompress kernel"). Retried once, visibly.
  env_retry "usbctl_up_guest-b"
  timeout 240 usbctl up /tmp/guest-b.cfg 2>&1 | sed 's|^|usbctl-up: |'
  xl domid guest-b >/dev/null 2>&1 || fail "usbctl_up_guest-b"
fi
ready guest-a "$alog" "xl_create guest-a /tmp/guest-a.cfg" || fail "guest_a_not_ready"
ready guest-b "$blog" "timeout 240 usbctl up /tmp/guest-b.cfg 2>&1 | sed 's|^|usbctl-up: |'" || fail "guest_b_not_ready"
ready guest-c "$clog" "xl_create guest-c /tmp/guest-c.cfg" || fail "guest_c_not_ready"
mark "phase=guest_ready"
a_id=$(xl domid guest-a)
b_id=$(xl domid guest-b)
c_id=$(xl domid guest-c)
usbdom_id=$(xl domid usbdom)
mark "phase=domains usbdom=$usbdom_id guest_a=$a_id guest_b=$b_id guest_c=$c_id"
usbctl_step hc-create guest-a 3 8 || fail "hc_create_a"
usbctl_step list guest-b > /tmp/usbctl-list-b.out 2>&1
if ! grep -q "port 1: 0627:0001" /tmp/usbctl-list-b.out; then
  sed 's|^|usbctl-list-b: |' /tmp/usbctl-list-b.out
  fail "usbctl_up_no_assignment"
fi
mark "phase=hc_created"
wait_for "$ulog" "event=frontend_connected domid=$a_id " 60 || fail "frontend_a_not_connected"
wait_for "$ulog" "event=frontend_connected domid=$b_id " 60 || fail "frontend_b_not_connected"
mark "phase=frontend_connected"
wait_for "$alog" "guest: hc usb[0-9]* ports=8" 60 || fail "guest_a_hc_missing"
wait_for "$blog" "guest: hc usb[0-9]* ports=8" 60 || fail "guest_b_hc_missing"
mark "phase=guest_hc_registered"
usbctl list guest-a | sed 's|^|usbctl-list: |'
usbctl list-assignable-devices | sed 's|^|ASSIGNABLE |'
# The stick is SuperSpeed on the host, and to guest-a on its USB 3 controller; the keyboard
# is high speed.
usbctl_step attach guest-a 0 1 2-1 || fail "attach_stick"
wait_for "$alog" "guest: usbdev .* vid=46f4 pid=0001" 60 || fail "guest_no_stick"
mark "phase=guest_stick"
wait_for "$blog" "guest: usbdev .* vid=0627 pid=0001" 60 || fail "guest_no_keyboard"
mark "phase=guest_keyboard"
usbctl list-assignable-devices | sed 's|^|ASSIGNED |'
# Data through usbdom: guest-a's usb-storage and sd drivers read the stick's first 16 MiB,
# then write.
wait_for "$alog" "guest: sda sha256=.* round=1" 120 || fail "guest_no_disk"
wait_for "$alog" "guest: sda wrote=" 60 || fail "guest_no_write"
mark "phase=guest_disk"
[ "$mode" = shell ] && shell

# Keys typed on the host's keyboard (the outer QEMU's QMP) reach guest-b's evdev, in order.
wait_for "$blog" "guest: kbd listening" 60 || fail "guest_b_not_listening"
mark "want=keys_abc"
keys_ms "guest: keys 30:1 30:0 48:1 48:0 46:1 46:0 " || fail "guest_b_no_keys"
mark "phase=keys_typed latency_ms=$latency"
# What an operator's monitor makes of usbdom's log now.
usbctl monitor --json "$ulog" | sed 's|^|MONITOR |'
usbctl monitor "$ulog" | sed 's|^|monitor: |'

# The stick pulled out on the host (QMP device_del) and put back (device_add): guest-a sees
# it go and come back on the same port, as the assignment waits for its bus id.
mark "want=unplug"
wait_for "$alog" "USB disconnect" 60 || fail "guest_a_no_disconnect"
wait_for "$ulog" "event=port_disconnected domid=$a_id devid=0 port=1 busid=2-1 reason=unplugged" 30 || fail "usbdom_no_unplug"
wait_for "$alog" "guest: sda gone" 30 || fail "guest_a_sda_stays"
mark "phase=unplugged"
usbctl list guest-a | sed 's|^|usbctl-list-unplugged: |'
mark "want=replug"
wait_for "$alog" "guest: sda sha256=.* round=2" 120 || fail "guest_a_no_disk_after_replug"
mark "phase=replugged"

# The attacker (guest-c) gets a controller with the tablet on the hub, while guest-a reads
# its stick on and on and guest-b types: guest-a's reads in 20 s without the attacker and
# with it, and the keys' way from the host to guest-b's evdev, are measured.
wait_for "$alog" "guest: sda reading" 30 || fail "guest_a_not_reading"
reads_in 20; base=$reads
mark "phase=victim_alone reads=$base seconds=20"
usbctl_step hc-create guest-c 2 8 || fail "hc_create_c"
usbctl_step attach guest-c 0 1 1-3.1 || fail "attach_tablet_c"
wait_for "$clog" "attack: start" 60 || fail "attacker_not_started"
# Where the machine's CPU goes meanwhile (the attacker spins on its own vCPU).
(xentop -b -d 8 -i 2 2>/dev/null | awk '/NAME/ {n++} n == 2' | sed 's|^|XENTOP |') &
reads_in 20; under=$reads
mark "phase=victim_under_attack reads=$under seconds=20"
mark "want=keys_fg"
keys_ms "guest: keys 30:1 30:0 48:1 48:0 46:1 46:0 33:1 33:0 34:1 34:0 " || fail "guest_b_no_keys_under_attack"
mark "phase=keys_under_attack latency_ms=$latency"
wait_for "$clog" "attack: done" 240 || fail "attack_not_done"
grep "attack: " "$clog" | sed 's|^|ATTACK |'
mark "phase=attack_done"
xl_destroy guest-c || fail "xl_destroy_guest_c"
wait_for "$ulog" "event=vusb_removed domid=$c_id devid=0 reason=frontend_gone" 30 || fail "usbdom_kept_guest_c"
mark "phase=attacker_gone"

# guest-a destroyed in the middle of a read: usbdom takes its transfers back, unmaps its
# grants and removes the controller's directory; the domain is then really gone (no
# mapping keeps it dying), and guest-b's keyboard still works.
sleep 3
mark "phase=destroying_guest_a"
xl_destroy guest-a || fail "xl_destroy_guest_a"
wait_for "$ulog" "event=vusb_removed domid=$a_id devid=0 reason=frontend_gone" 30 || fail "usbdom_kept_guest_a"
i=0
while xenstore-exists "/local/domain/$usbdom_id/backend/vusb/$a_id"; do
  i=$((i + 1)); [ $i -lt 30 ] || fail "backend_dir_of_guest_a_left"; sleep 1
done
i=0
while xl list | awk 'NR > 1 {print $1}' | grep -qE '^(guest-a|\(null\))$'; do
  i=$((i + 1)); [ $i -lt 30 ] || { xl list | sed 's|^|xl-list: |'; fail "guest_a_still_dying"; }; sleep 1
done
mark "phase=guest_a_gone"
xl list | sed 's|^|xl-list: |'
mark "want=keys_de"
wait_for "$blog" "guest: keys 30:1 30:0 48:1 48:0 46:1 46:0 33:1 33:0 34:1 34:0 32:1 32:0 18:1 18:0 " 60 || fail "guest_b_no_keys_after"
mark "phase=keys_after_destroy"

# Sticky ports. The keyboard, assigned to guest-b by its IDs, is moved on the host to
# another port of its controller (QMP device_del, device_add): guest-b's port 1 gets it
# there, and the keys go on.
mark "want=move_keyboard"
wait_for "$ulog" "event=port_connected domid=$b_id devid=0 port=1 busid=3-2 vid=0627 pid=0001" 60 \
  || fail "keyboard_did_not_follow"
wait_for "$blog" "guest: kbd listening .* n=2 " 60 || fail "guest_b_no_keyboard_after_move"
mark "want=keys_hi"
wait_for "$blog" "guest: keys 30:1 30:0 48:1 48:0 46:1 46:0 33:1 33:0 34:1 34:0 32:1 32:0 18:1 18:0 35:1 35:0 23:1 23:0 " 60 \
  || fail "guest_b_no_keys_after_move"
mark "phase=keyboard_followed"
# The tablet, assigned to guest-b by its bus id, is replaced by a mouse at the same port, as
# a device that switches modes comes back with other IDs: the port stays guest-b's.
usbctl_step attach guest-b 0 3 1-3.1 || fail "attach_tablet_b"
wait_for "$blog" "guest: usbdev 1-3 vid=056a" 60 || fail "guest_b_no_tablet"
mark "want=swap_tablet"
wait_for "$ulog" "event=port_connected domid=$b_id devid=0 port=3 busid=1-3.1 vid=0627 pid=0001" 60 \
  || fail "usbdom_did_not_keep_the_port"
wait_for "$blog" "guest: usbdev 1-3 vid=0627 pid=0001 .*product=\"QEMU USB Mouse\"" 60 || fail "guest_b_no_mouse"
mark "phase=port_kept"
# The mouse works: moves sent on the host (QMP) reach guest-b's evdev. (The tablet's pen
# was read as a mouse too, before.)
wait_for "$blog" "guest: mouse listening .* name=\"QEMU QEMU USB Mouse\"" 60 || fail "guest_b_not_reading_the_mouse"
mark "want=mouse_moves"
wait_for "$blog" "guest: mouse rel_x=15" 60 || fail "guest_b_no_mouse_moves"
mark "phase=mouse_moved"

# The stick, free again, to guest-b's USB 2 controller: its xen-hcd gets the SuperSpeed
# stick as a high-speed one with rewritten descriptors, which Linux takes as they are
# (a configuration header that disagreed with the body made it warn "descriptor too short").
usbctl_step attach guest-b 0 2 2-1 || fail "attach_stick_b"
wait_for "$blog" "guest: usbdev .* vid=46f4 pid=0001" 60 || fail "guest_b_no_stick"
wait_for "$blog" "guest: sda sha256=.* round=1" 120 || fail "guest_b_no_disk"
mark "phase=guest_b_disk"

# The device leaves before its controller, as libxl removes usbdevs first: Linux's xen-hcd
# cannot finish a device's URBs once its backend is gone.
usbctl_step detach guest-b 0 1 || fail "detach_keyboard"
wait_for "$blog" "usb 1-1: USB disconnect" 30 || fail "guest_b_no_disconnect"
mark "phase=guest_detached"
usbctl_step hc-destroy guest-b 0 || fail "hc_destroy"
xenstore-exists "/local/domain/$usbdom_id/backend/vusb/$b_id/0" && fail "backend_dir_left"
xenstore-exists "/local/domain/$b_id/device/vusb/0" && fail "frontend_dir_left"
wait_for "$ulog" "event=vusb_removed domid=$b_id " 30 || fail "usbdom_did_not_remove"
mark "phase=hc_destroyed"

# The same image as a PVH domU: no passthrough there, but it serves xenstore and PVUSB.
# The image the package installed, where the config has it.
cp /e2e/xen-cfg/usbdom-pvh.cfg /tmp/usbdom-pvh.cfg
xl_create usbdom-pvh /tmp/usbdom-pvh.cfg || fail "xl_create_usbdom_pvh"
plog=/var/log/xen/console/guest-usbdom-pvh.log
wait_for "$plog" "event=ready" 90 || fail "usbdom_pvh_not_ready"
mark "phase=usbdom_pvh_ready"
usbctl_step --backend usbdom-pvh hc-create guest-b 1 4 || fail "hc_create_pvh"
wait_for "$plog" "event=frontend_connected" 60 || fail "pvh_frontend_not_connected"
wait_for "$blog" "guest: hc usb[0-9]* ports=4" 60 || fail "pvh_guest_hc_missing"
mark "phase=pvh_frontend_connected"
usbctl_step hc-destroy guest-b 0 || fail "hc_destroy_pvh"
mark "phase=pvh_hc_destroyed"

# usbdom.service's main process follows the guests: guest-b reboots (xl makes it again,
# under a new id) and gets its config's controller back, with a 0627:0001 on port 1 (the
# keyboard or the mouse: QEMU gives both those IDs).
b_hid=$(grep -c "guest: usbdev .* vid=0627 pid=0001" "$blog")
b_ready=$(grep -c "guest: ready" "$blog")
xl reboot guest-b || fail "xl_reboot_guest_b"
i=0
while [ "$(xl domid guest-b 2>/dev/null)" = "$b_id" ] || ! xl domid guest-b >/dev/null 2>&1; do
  i=$((i + 1)); [ $i -lt 60 ] || fail "guest_b_not_remade"; sleep 1
done
b_id=$(xl domid guest-b)
mark "phase=guest_b_rebooting domid=$b_id"
if ! wait_more "$blog" "guest: ready" "$b_ready" 120; then
  # The nested machine ended the rebooted guest as it booted (destroyed on a crash, see the
  # configs): made again as users make it, with usbctl up; the service's main process or up
  # gives it its controller.
  xl domid guest-b >/dev/null 2>&1 && fail "guest_b_not_ready_after_reboot"
  env_retry "guest_b_died_rebooting"
  timeout 240 usbctl up /tmp/guest-b.cfg 2>&1 | sed 's|^|usbctl-up: |'
  b_id=$(xl domid guest-b) || fail "guest_b_not_remade"
  wait_more "$blog" "guest: ready" "$b_ready" 120 || fail "guest_b_not_ready_after_reboot"
fi
wait_for "$ulog" "event=port_connected domid=$b_id devid=0 port=1 .* vid=0627 pid=0001" 60 \
  || fail "service_did_not_follow_the_reboot"
wait_more "$blog" "guest: usbdev .* vid=0627 pid=0001" "$b_hid" 60 || fail "guest_b_no_device_after_reboot"
mark "phase=guest_b_rebooted domid=$b_id"
# Stopped: every controller usbdom serves goes, devices first, and usbdom with them; the
# main process then ends, successfully.
b_gone=$(grep -c "USB disconnect" "$blog")
unit_stop
[ "$unit_status" -eq 0 ] || fail "unit_main_process_status_$unit_status"
xl domid usbdom >/dev/null 2>&1 && fail "service_left_usbdom"
xenstore-exists "/local/domain/$b_id/device/vusb/0" && fail "service_left_a_controller"
wait_more "$blog" "USB disconnect" "$b_gone" 30 || fail "guest_b_no_disconnect_on_stop"
mark "phase=service_stopped"
# Started from nothing, as at boot with guest-b running: a new usbdom, and guest-b's
# controller and device from its recorded config. The first usbdom's logs are set aside
# meanwhile and put back, for the checks of the scenario above (usbctl start would move the
# serial one to .old, once for each start); the new one's console log is
# guest-usbdom-restarted.log.
b_hid=$(grep -c "guest: usbdev .* vid=0627 pid=0001" "$blog")
mv "$ulog" /tmp/usbdom-first.log
mv /var/log/xen/usbdom-serial.log /tmp/usbdom-first-serial.log
start_usbdom
wait_for "$ulog" "event=port_connected domid=$b_id devid=0 port=1 .* vid=0627 pid=0001" 60 \
  || fail "service_restart_not_reapplied"
wait_more "$blog" "guest: usbdev .* vid=0627 pid=0001" "$b_hid" 60 || fail "guest_b_no_device_on_restart"
mark "phase=service_restarted usbdom=$(xl domid usbdom)"
mv "$ulog" /var/log/xen/console/guest-usbdom-restarted.log
mv /tmp/usbdom-first.log "$ulog"
mv /var/log/xen/usbdom-serial.log /var/log/xen/usbdom-restarted-serial.log
mv /tmp/usbdom-first-serial.log /var/log/xen/usbdom-serial.log

mark "result=pass environment_retries=$env_retries guest_environment_retries=$(guest_env_retries)"
finish
