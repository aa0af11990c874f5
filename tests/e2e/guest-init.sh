#!/bin/busybox sh
# The guest's /init: load the PVUSB frontend and report the USB host controllers it gets.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /tmp
echo "guest: init"
# The nested machine now and then gives a new process wrong memory: with no USB at all
# (`cargo xtask soak`), about one exec'd busybox in 3000 of a PVH guest dies of SIGSEGV
# before main, at the same two instructions of glibc's start-up, and a PV guest's one in
# 100. The steps whose failure would end the scenario run through `again`: a step that
# died of a signal is reported (`guest: environment_retry what=… status=…`, counted by the
# host) and run once more; any other failure stands.
again() {
  "$@"; rc=$?
  [ "$rc" -gt 128 ] || return "$rc"
  echo "guest: environment_retry what=$1 status=$rc" >&2
  "$@"
}
# unxz FILE OUT
unxz() { xz -dc "$1" > "$2"; }
# load_module FILE: unpacks (xz) and inserts one module.
load_module() {
  f=$1
  case "$f" in
    *.xz) again unxz "$f" "${f%.ko.xz}.unpacked.ko" && f=${f%.ko.xz}.unpacked.ko ;;
  esac
  again insmod "$f"
}
# disk_sum: the SHA-256 of the stick's first 16 MiB, printed only when every part worked.
disk_sum() {
  set -o pipefail
  s=$(dd if=/dev/sda bs=1M count=16 2>/dev/null | sha256sum) || return $?
  echo "${s%% *}"
}
# The PVUSB frontend: Linux's xen-hcd, or ours when the command line says
# usbdom_hcd=pvusb-hcd. An attacking guest (`usbdom_attack=<phases>`) speaks PVUSB itself,
# from user space: its kernel must not take the controller, so neither is loaded.
attack=$(sed -n 's/.*usbdom_attack=\([a-z_,]*\).*/\1/p' /proc/cmdline)
hcd=$(sed -n 's/.*usbdom_hcd=\([a-z-]*\).*/\1/p' /proc/cmdline)
hcd=${hcd:-xen-hcd}
[ -n "$attack" ] && hcd=
for m in usb-common usbcore $hcd; do
  set -- /lib/modules/$m.ko*
  if load_module "$1"; then echo "guest: loaded $m"; else echo "guest: failed to load $m"; fi
done
# Storage and HID drivers for the devices usbdom will give this guest.
while read -r mods; do
  for m in $mods; do
    set -- /lib/modules/$m.ko*
    load_module "$1" 2>/dev/null || echo "guest: failed to load $m"
  done
done < /lib/modules/order
echo "guest: ready"
if [ -n "$attack" ]; then
  # Its lines (`attack: …`) go to the console as they come; then it idles until destroyed.
  seconds=$(sed -n 's/.*usbdom_attack_seconds=\([0-9]*\).*/\1/p' /proc/cmdline)
  again /bin/usbattack --devid 0 --phases "$attack" --seconds "${seconds:-60}"
  echo "guest: attack exit=$?"
  exec sleep 100000
fi
# The device-table run (`usbdom_devices=<path>`, tests/e2e/devices.sh): the class drivers
# of the devices it gets, then each device used as a user would, with a `guest: device …`
# line for each; <path> (usbdom, qusb) goes into what it sends, so the host can tell whose
# it is.
devices=$(sed -n 's/.*usbdom_devices=\([a-z]*\).*/\1/p' /proc/cmdline)
if [ -n "$devices" ]; then
  for m in $(cat /lib/modules/devices); do
    set -- /lib/modules/$m.ko*
    load_module "$1" 2>/dev/null || echo "guest: failed to load $m"
  done
  echo "guest: devices ready"
  # bounded SECONDS CMD…: runs CMD in the background and waits for it that long at most;
  # its status, or `stuck` (a backend that never answers an unlink leaves a task in the
  # kernel for good: seen with qusb, closing the serial port). The guest carries on either way.
  bounded() {
    limit=$1
    shift
    # Not on this function's output: a command substitution waits for every writer of it.
    "$@" >/dev/null 2>&1 &
    pid=$!
    n=0
    while kill -0 "$pid" 2>/dev/null && [ $n -lt "$limit" ]; do sleep 1; n=$((n + 1)); done
    if kill -0 "$pid" 2>/dev/null; then echo stuck; else wait "$pid"; echo $?; fi
  }
  # USB Ethernet (`usbdom_net=<n>`: QEMU's usb-net, on a QEMU-internal hub with another
  # guest's): this guest is 192.168.77.<n>, the other 192.168.77.<3-n>, pinged until it
  # answers (it may come up later), then 5 times.
  net_check() {
    n=$(sed -n 's/.*usbdom_net=\([12]\).*/\1/p' /proc/cmdline)
    [ -n "$n" ] || return 0
    iface= i=0
    while [ -z "$iface" ] && [ $i -lt 120 ]; do
      for d in /sys/class/net/*; do
        [ -e "$d/device" ] && iface=${d##*/}
      done
      [ -n "$iface" ] || sleep 1
      i=$((i + 1))
    done
    if [ -z "$iface" ]; then
      echo "guest: device net path=$devices error=no_interface"
      return 0
    fi
    driver=$(basename "$(readlink "/sys/class/net/$iface/device/driver")")
    ip link set "$iface" up
    ip addr add "192.168.77.$n/24" dev "$iface"
    peer=192.168.77.$((3 - n))
    i=0
    while [ $i -lt 180 ] && ! ping -c 1 -W 1 "$peer" >/dev/null 2>&1; do
      sleep 1
      i=$((i + 1))
    done
    got=$(ping -c 5 -W 2 "$peer" 2>/dev/null | sed -n 's/.* \([0-9]*\) packets received.*/\1/p')
    echo "guest: device net path=$devices iface=$iface driver=$driver address=192.168.77.$n peer=$peer sent=5 received=${got:-0} waited_s=$i"
  }
  # UAS (`usbdom_devices=uas`): which driver took the disk, and its first MiB's sha256.
  if [ "$devices" = uas ]; then
    i=0
    while [ ! -b /dev/sda ] && [ $i -lt 120 ]; do sleep 1; i=$((i + 1)); done
    # The SCSI device's target, host, then the USB interface the driver bound.
    driver=$(basename "$(readlink /sys/block/sda/device/../../../driver 2>/dev/null)")
    sum=$(dd if=/dev/sda bs=1M count=1 iflag=direct 2>/dev/null | sha256sum | cut -c1-64)
    echo "guest: device uas path=usbdom driver=${driver:-none} sha256=${sum:-none} hcd=$hcd"
    net_check
    echo "guest: devices done"
    exec sleep 100000
  fi
  i=0
  while { [ ! -e /dev/dsp ] || [ ! -e /dev/ttyUSB0 ] || [ ! -b /dev/sdb ]; } && [ $i -lt 120 ]; do
    sleep 1; i=$((i + 1))
  done
  # Audio: one second of a 444 Hz square wave through the OSS emulation (8-bit unsigned,
  # 8 kHz, mono: what /dev/dsp takes by default); the host finds it in QEMU's wav file.
  if [ -e /dev/dsp ]; then
    # One period (9 samples high, 9 low), doubled to 512 periods, cut to 8000 samples.
    printf '\340\340\340\340\340\340\340\340\340\040\040\040\040\040\040\040\040\040' > /tmp/tone.u8
    for i in 1 2 3 4 5 6 7 8 9; do cat /tmp/tone.u8 /tmp/tone.u8 > /tmp/tone.2 && mv /tmp/tone.2 /tmp/tone.u8; done
    head -c 8000 /tmp/tone.u8 > /tmp/tone.2 && mv /tmp/tone.2 /tmp/tone.u8
    t0=$(cut -d' ' -f1 /proc/uptime)
    rc=$(bounded 30 sh -c 'cat /tmp/tone.u8 > /dev/dsp 2>/tmp/dsp.err')
    t1=$(cut -d' ' -f1 /proc/uptime)
    echo "guest: device audio path=$devices bytes=$(wc -c < /tmp/tone.u8) rc=$rc seconds=$(echo "$t0 $t1" | awk '{printf "%.2f", $2 - $1}') error=\"$(tr '\n' ' ' < /tmp/dsp.err)\""
  else
    echo "guest: device audio path=$devices error=no_dsp"
  fi
  # Serial: a line through the FTDI adapter QEMU writes to a host file.
  if [ -e /dev/ttyUSB0 ]; then
    rc=$(bounded 30 sh -c "echo 'usbdom-device-table serial path=$devices' > /dev/ttyUSB0 2>/tmp/tty.err")
    echo "guest: device serial path=$devices rc=$rc error=\"$(tr '\n' ' ' < /tmp/tty.err 2>/dev/null)\""
  else
    echo "guest: device serial path=$devices error=no_tty"
  fi
  # Smartcard reader: its slot's status through usbfs, as pcscd asks (ccidprobe; Linux has
  # no kernel driver for CCID readers).
  i=0 reader=
  while [ -z "$reader" ] && [ $i -lt 30 ]; do
    for d in /sys/bus/usb/devices/*; do
      [ "$(cat "$d/idVendor" 2>/dev/null):$(cat "$d/idProduct" 2>/dev/null)" = 08e6:4433 ] || continue
      reader=$(printf '/dev/bus/usb/%03d/%03d' "$(cat "$d/busnum")" "$(cat "$d/devnum")")
    done
    [ -n "$reader" ] || sleep 1
    i=$((i + 1))
  done
  if [ -n "$reader" ]; then
    line=$(again /bin/ccidprobe "$reader")
    echo "guest: device ccid path=$devices rc=$? ${line#guest: ccidprobe }"
  else
    echo "guest: device ccid path=$devices error=no_reader"
  fi
  # A full-speed stick behind a hub (the 8 MiB disk) read while the SuperSpeed stick (the
  # other disk) is read flat out beside it: 4 MiB, direct I/O, timed by the uptime clock.
  fs= ss=
  for b in /sys/block/sd*; do
    [ -e "$b" ] || continue
    if [ "$(cat "$b/size")" = 16384 ]; then fs=/dev/${b##*/}; else ss=/dev/${b##*/}; fi
  done
  if [ -n "$fs" ] && [ -n "$ss" ]; then
    (while true; do dd if="$ss" of=/dev/null bs=1M count=16 iflag=direct 2>/dev/null || sleep 1; done) &
    busy=$!
    t0=$(cut -d' ' -f1 /proc/uptime)
    rc=$(bounded 120 sh -c "dd if=$fs of=/dev/null bs=64k count=64 iflag=direct 2>/tmp/fs.err")
    t1=$(cut -d' ' -f1 /proc/uptime)
    kill "$busy"
    echo "guest: device fs_stick path=$devices bytes=4194304 rc=$rc seconds=$(echo "$t0 $t1" | awk '{printf "%.2f", $2 - $1}') busy_disk=$ss"
  else
    echo "guest: device fs_stick path=$devices error=no_disks fs=$fs ss=$ss"
  fi
  net_check
  echo "guest: devices done"
  exec sleep 100000
fi
# The soak (`usbdom_soak=<seconds>`, tests/e2e/soak.sh): new processes, one after the other,
# for that long (each a fresh exec of busybox: the kernel reports any that crash), while a
# stick, if one comes, is read on and on.
soak=$(sed -n 's/.*usbdom_soak=\([0-9]*\).*/\1/p' /proc/cmdline)
if [ -n "$soak" ]; then
  (while true; do
     if [ -b /dev/sda ]; then
       dd if=/dev/sda of=/dev/null bs=1M count=16 iflag=direct 2>/dev/null && echo "guest: soak read mib=16"
     else
       sleep 1
     fi
   done) &
  end=$(( $(cut -d. -f1 /proc/uptime) + soak ))
  n=0 failed=0
  while [ "$(cut -d. -f1 /proc/uptime)" -lt "$end" ]; do
    /bin/busybox true || failed=$((failed + 1))
    n=$((n + 1))
  done
  echo "guest: soak execs=$n failed=$failed"
  exec sleep 100000
fi
# The key benchmark (tests/e2e/keys.sh). `usbdom_keyprobe`: the keyboard's evdev device is
# read by keyprobe, which reports each press through Xen's debug port (frontend-linux/probes).
# `usbdom_load`: the stick, once it comes, is written flat out (direct I/O, after the first
# 64 MiB) until the guest is destroyed, each 16 MiB timed by the uptime clock.
if grep -q usbdom_keyprobe /proc/cmdline; then
  i=0 dev=
  while [ -z "$dev" ] && [ $i -lt 300 ]; do
    for e in /sys/class/input/event*; do
      grep -q "Keyboard" "$e/device/name" 2>/dev/null && dev=/dev/input/${e##*/}
    done
    [ -n "$dev" ] || sleep 1
    i=$((i + 1))
  done
  if [ -n "$dev" ]; then again /bin/keyprobe "$dev"; else echo "guest: keyprobe error=no_keyboard"; fi
  exec sleep 100000
fi
if grep -q usbdom_load /proc/cmdline; then
  i=0
  while [ ! -b /dev/sda ] && [ $i -lt 300 ]; do sleep 1; i=$((i + 1)); done
  echo "guest: load writing"
  while [ -b /dev/sda ]; do
    t0=$(cut -d' ' -f1 /proc/uptime)
    dd if=/dev/zero of=/dev/sda bs=1M count=16 seek=64 oflag=direct 2>/tmp/dd.err || break
    t1=$(cut -d' ' -f1 /proc/uptime)
    echo "guest: load mib=16 $(echo "$t0 $t1" | awk '{printf "seconds=%.2f", $2 - $1}')"
  done
  echo "guest: load end error=\"$(tr '\n' ' ' < /tmp/dd.err)\""
  exec sleep 100000
fi
# The benchmark (`usbdom_bench=<MiB>` on the command line): rounds of direct-I/O reads and
# writes of the stick, each timed by dd, then nothing else.
bench=$(sed -n 's/.*usbdom_bench=\([0-9]*\).*/\1/p' /proc/cmdline)
if [ -n "$bench" ]; then
  i=0
  while [ ! -b /dev/sda ] && [ $i -lt 300 ]; do sleep 1; i=$((i + 1)); done
  [ -b /dev/sda ] || echo "guest: bench error=no_disk"
  usb_speed=
  for d in /sys/bus/usb/devices/*; do
    [ "$(cat "$d/idVendor" 2>/dev/null)" = 46f4 ] && usb_speed=$(cat "$d/speed")
  done
  echo "guest: bench disk model=\"$(cat /sys/block/sda/device/model 2>/dev/null)\" size_sectors=$(cat /sys/block/sda/size) usb_speed=${usb_speed:-none} clocksource=$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
  # Debian's busybox dd prints no timing: the uptime clock (10 ms) brackets each run, and
  # a run that did not move every block is an error, not a figure.
  timed() {
    t0=$(cut -d' ' -f1 /proc/uptime)
    "$@" 2>/tmp/dd.err
    t1=$(cut -d' ' -f1 /proc/uptime)
    if grep -q "^${blocks:-$bench}+0 records out" /tmp/dd.err; then
      echo "$t0 $t1" | awk '{printf "seconds=%.2f", $2 - $1}'
    else
      echo "error=dd_failed dd=\"$(tr '\n' ' ' < /tmp/dd.err)\""
    fi
  }
  # This guest's busy CPU time (user, nice, system, irq, softirq, steal; USER_HZ is 100).
  busy_ms() { awk '/^cpu / {print ($2 + $3 + $4 + $7 + $8 + $9) * 10}' /proc/stat; }
  # What one CPU copy of the data costs in this guest: reading a file that is in memory
  # copies each byte once, page cache to dd's buffer. Direct I/O through a passed-through
  # controller copies nothing; a frontend that copies between its own pages and the I/O's
  # costs at least this per byte on top of the device's time. The file takes at most 64 MiB of
  # this guest's 256.
  blocks=$((bench < 64 ? bench : 64))
  dd if=/dev/zero of=/tmp/copy bs=1M count="$blocks" 2>/dev/null
  for round in 1 2 3; do
    c0=$(busy_ms)
    # Four passes, so the 10 ms clock is a small part of the time.
    r=$(timed sh -c 'for pass in 1 2 3 4; do dd if=/tmp/copy of=/dev/null bs=1M; done')
    echo "guest: bench op=copy round=$round bytes=$((blocks << 22)) $r cpu_ms=$(( $(busy_ms) - c0 ))"
  done
  rm -f /tmp/copy
  blocks=
  # All reads, then all writes, each op bracketed by marks and idle seconds: dom0 (which
  # polls this log each second) samples its own CPU time inside the gaps, and usbdom's
  # per-second lines fall to one op or the other.
  for op in read write; do
    echo "guest: bench start op=$op"
    sleep 2
    for round in 1 2 3; do
      [ -b /dev/sda ] || break
      c0=$(busy_ms)
      if [ "$op" = read ]; then
        r=$(timed dd if=/dev/sda of=/dev/null bs=1M count="$bench" iflag=direct)
      else
        # Written after the first 64 MiB, which the end-to-end test's data lives in.
        r=$(timed dd if=/dev/zero of=/dev/sda bs=1M count="$bench" seek=64 oflag=direct conv=fsync)
      fi
      echo "guest: bench op=$op round=$round bytes=$((bench << 20)) $r cpu_ms=$(( $(busy_ms) - c0 ))"
    done
    echo "guest: bench end op=$op"
    sleep 2
  done
  echo "guest: bench done"
  exec sleep 100000
fi
# What each device does once it is here (the same init runs in every guest):
# - a stick (/dev/sda): each time it appears its first 16 MiB are hashed; the first time a
#   pattern is written at 32 MiB, the second time (after a replug) it is read on and on
#   (the host destroys this guest during such a read);
# - a keyboard: its evdev device is opened (usbhid polls only an opened device) and the
#   EV_KEY events read from it are printed as code:value, repeats left out;
# - a mouse: its horizontal moves are added up.
disk_round=0
disk_present=
keys_file=
keys_pid=
keys_listens=0
keys_seen=
mouse_pid=
mouse_x=0
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
  if [ -b /dev/sda ]; then
    if [ -z "$disk_present" ]; then
      disk_present=1
      disk_round=$((disk_round + 1))
      sum=$(again disk_sum)
      echo "guest: sda sha256=$sum round=$disk_round"
      if [ "$disk_round" = 1 ]; then
        # A pattern written at 32 MiB, for the host to find in the image after the run.
        printf 'usbdom-e2e-written-by-the-guest' > /tmp/pattern
        if again dd if=/tmp/pattern of=/dev/sda bs=512 seek=65536 conv=notrunc 2>/tmp/dd.err && sync; then
          echo "guest: sda wrote=ok"
        else
          echo "guest: sda wrote=failed $(cat /tmp/dd.err)"
        fi
      else
        # Each read numbered: the host counts by the last number it sees, not by lines.
        (n=0
         while [ -b /dev/sda ]; do
           echo 3 > /proc/sys/vm/drop_caches
           dd if=/dev/sda of=/dev/null bs=1M count=16 2>/dev/null && n=$((n + 1)) && echo "guest: sda read mib=16 n=$n"
         done) &
        echo "guest: sda reading"
      fi
    fi
  elif [ -n "$disk_present" ]; then
    disk_present=
    echo "guest: sda gone"
  fi
  if [ -z "$keys_pid" ]; then
    # No reader: none yet, or its keyboard left (the reader ends normally then). A keyboard
    # here (again) is read, its keys after the last one's; n counts the readers started.
    for e in /sys/class/input/event*; do
      grep -q "Keyboard" "$e/device/name" 2>/dev/null || continue
      keys_file=/tmp/keys
      keys_dev=/dev/input/${e##*/}
      cat "$keys_dev" >> "$keys_file" &
      keys_pid=$!
      keys_listens=$((keys_listens + 1))
      echo "guest: kbd listening ${e##*/} n=$keys_listens name=\"$(cat "$e/device/name")\""
      break
    done
  elif ! kill -0 "$keys_pid" 2>/dev/null; then
    # The reader is gone: the keyboard left (it ends normally), or it died of a signal
    # before it read anything (see `again`) and is started once more.
    wait "$keys_pid"; rc=$?
    keys_pid=
    if [ "$rc" -gt 128 ]; then
      echo "guest: environment_retry what=kbd_reader status=$rc"
      cat "$keys_dev" >> "$keys_file" &
      keys_pid=$!
    fi
  fi
  if [ -n "$keys_file" ]; then
    # struct input_event on x86-64: 16 bytes of time, then type, code (u16) and value
    # (s32): 12 u16 words per event.
    keys=$(od -An -v -tu2 "$keys_file" | awk '{for (i = 1; i <= NF; i++) w[n++] = $i}
      END {for (i = 0; i + 11 < n; i += 12) if (w[i+8] == 1 && w[i+10] != 2) printf "%d:%d ", w[i+9], w[i+10]}')
    # The file only grows, so a reading that does not extend the last one is a process the
    # nested machine handed bad memory (see dom0-init.sh), not keys: it is read again.
    case "$keys" in
      "$keys_seen"*) ;;
      *) echo "guest: environment_retry what=keys_read got=\"$keys\""; keys= ;;
    esac
    if [ -n "$keys" ] && [ "$keys" != "$keys_seen" ]; then
      keys_seen=$keys
      echo "guest: keys $keys"
    fi
  fi
  # A mouse: read as a keyboard is; the sum of its REL_X moves (EV_REL 2, REL_X 0, the
  # value an s32 in two u16 words) is printed when it changes.
  if [ -z "$mouse_pid" ]; then
    for e in /sys/class/input/event*; do
      grep -q "Mouse" "$e/device/name" 2>/dev/null || continue
      cat "/dev/input/${e##*/}" >> /tmp/mouse &
      mouse_pid=$!
      echo "guest: mouse listening ${e##*/} name=\"$(cat "$e/device/name")\""
      break
    done
  elif ! kill -0 "$mouse_pid" 2>/dev/null; then
    wait "$mouse_pid"
    mouse_pid=
  fi
  if [ -s /tmp/mouse ]; then
    x=$(od -An -v -tu2 /tmp/mouse | awk '{for (i = 1; i <= NF; i++) w[n++] = $i}
      END {for (i = 0; i + 11 < n; i += 12) if (w[i+8] == 2 && w[i+9] == 0) {
             v = w[i+10] + w[i+11] * 65536; if (v >= 2147483648) v -= 4294967296; s += v }
           printf "%d", s}')
    if [ "$x" != "$mouse_x" ]; then
      mouse_x=$x
      echo "guest: mouse rel_x=$x"
    fi
  fi
  sleep 1
done
