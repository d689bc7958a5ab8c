#!/bin/sh
# Tier-2 cases: real Linux boots under hvm on a real KVM. Runs inside the
# nested lab's L1 (or directly on a host with hardware KVM). Usage:
#   cases.sh HVM IMAGES STOCK_KERNEL EXAMPLES
# (IMAGES is a guest-images folder beside EXAMPLES, as in the repository.)
# Prints, per case: "@@CASE name", the guest's console, "@@STDERR", hvm's
# stderr, "@@EXIT name code". The Rust test (tests/tier2.rs) parses this.
HVM=$1
IMG=$2
STOCK=$3
EXAMPLES=$4
TMP=${TMPDIR:-/tmp}/hvm-cases.$$
mkdir -p "$TMP"

# case NAME KERNEL INITRD VCPUS MEMORY CMDLINE [hvm options...]
# $EXTRA (if set) is appended to the spec: drives, rng, ...
# $AFTER (if set) is a command run after hvm exits; its output joins the console part.
# $HVM_LAB_SKIP lists cases an earlier, crashed L1 already ran (see lab.py);
# $HVM_LAB_ONLY, if set, the only cases to run (lab.py --only).
wanted() {
    case " $HVM_LAB_SKIP " in *" $1 "*) return 1 ;; esac
    [ -z "$HVM_LAB_ONLY" ] && return 0
    case " $HVM_LAB_ONLY " in *" $1 "*) return 0 ;; esac
    return 1
}

case_() {
    name=$1 kernel=$2 initrd=$3 vcpus=$4 memory=$5 cmdline=$6
    shift 6
    if ! wanted "$name"; then EXTRA= AFTER= INPUT=; return; fi
    echo "@@START $name"
    spec=$TMP/$name.toml
    {
        echo "[machine]"
        echo "vcpus = $vcpus"
        echo "memory = \"$memory\""
        echo "[kernel]"
        echo "path = \"$kernel\""
        [ -n "$initrd" ] && echo "initrd = \"$initrd\""
        echo "cmdline = \"$cmdline\""
        [ -n "$EXTRA" ] && printf '%b\n' "$EXTRA"
    } >"$spec"
    if [ -n "$INPUT" ]; then
        # Type $INPUT once the guest printed $READY (a getty flushes earlier input).
        rm -f "$TMP/in" && mkfifo "$TMP/in"
        "$HVM" -v run --timeout 120s "$@" "$spec" <"$TMP/in" >"$TMP/$name.out" 2>"$TMP/$name.err" &
        pid=$!
        exec 3>"$TMP/in"
        i=0
        while ! grep -q "$READY" "$TMP/$name.out" 2>/dev/null && [ $i -lt 100 ]; do sleep 1; i=$((i + 1)); done
        printf '%b' "$INPUT" >&3
        wait $pid
        code=$?
        exec 3>&-
    else
        # An int3 oops in a guest is TCG racing the guest's own text patching
        # (a static key flipped while another vCPU runs that code), a lab
        # artifact never seen on hardware: such a case runs once more.
        for try in 1 2; do
            "$HVM" -v run --timeout 300s "$@" "$spec" >"$TMP/$name.out" 2>"$TMP/$name.err" </dev/null
            code=$?
            grep -q "Oops: int3" "$TMP/$name.out" || break
        done
        [ "$try" = 2 ] && echo "lab: the first run's guest hit an int3 oops (TCG's text-patching race): this is the second" >>"$TMP/$name.err"
    fi
    echo "@@CASE $name"
    cat "$TMP/$name.out"
    echo
    [ -n "$AFTER" ] && sh -c "$AFTER"
    echo "@@STDERR"
    cat "$TMP/$name.err"
    echo "@@EXIT $name $code"
    EXTRA= AFTER= INPUT=
}

Q="quiet"
# Centiseconds since boot (busybox date has no %N).
now_cs() { tr -d . </proc/uptime | cut -d' ' -f1 | sed 's/^0*//'; }
# The same inside a bundled guest's hvm.run (commas are spaces); leading zeros
# go, or ash reads an uptime under 1 s ("098") as a bad octal number.
GUEST_CS="tr,-d,.,</proc/uptime|cut,-d',',-f1|sed,s/^0*//"

case_ bzimage-1cpu-128M "$IMG/bzImage" "$IMG/initramfs.cpio.gz" 1 128M "$Q"
case_ vmlinux-2cpu-512M "$IMG/vmlinux" "$IMG/initramfs.cpio.gz" 2 512M "$Q"
# One package of four cores, as hvm's CPUID describes it (not four packages).
case_ smp4-1536M "$IMG/bzImage" "$IMG/initramfs.cpio.gz" 4 1536M "$Q hvm.run=echo,TOPOLOGY,packages,\$(cat,/sys/devices/system/cpu/cpu*/topology/physical_package_id),cores,\$(cat,/sys/devices/system/cpu/cpu*/topology/core_id);dmesg|grep,MP-table"
# Without ACPI the kernel takes its CPUs and interrupt routing from hvm's MP
# table (the serial console's IRQ among them); reboot=k, as there is no ACPI
# power-off.
case_ mptable-acpi-off "$IMG/vmlinux" "$IMG/initramfs.cpio.gz" 2 512M "$Q acpi=off hvm.mode=reboot hvm.run=dmesg|grep,-e,MPTABLE,-e,Processors:,-e,ExtINT"
case_ mem-3584M "$IMG/vmlinux" "$IMG/initramfs.cpio.gz" 1 3584M "$Q"
case_ mem-6G "$IMG/vmlinux" "$IMG/initramfs.cpio.gz" 2 6G "$Q"
case_ debug-exit-7 "$IMG/vmlinux" "$IMG/initramfs.cpio.gz" 1 256M "$Q hvm.mode=exit hvm.exit=7"
case_ reboot "$IMG/vmlinux" "$IMG/initramfs.cpio.gz" 1 256M "$Q hvm.mode=reboot"
case_ panic "$IMG/vmlinux" "$IMG/initramfs.cpio.gz" 1 256M "$Q rdinit=/does-not-exist"
# virtio-blk: the guest reads a host-made image; writes a pattern the host then checks.
D=$TMP/disks
mkdir -p "$D"
yes hvm-block-read | head -c 8388608 >"$D/read.img"
echo "HOST-SHA256-READ $(sha256sum "$D/read.img" | cut -d' ' -f1)"
EXTRA="[[drive]]\npath = \"$D/read.img\"\nread_only = true\nid = \"ro-disk\""
case_ blk-read "$IMG/vmlinux" "$IMG/initramfs.cpio.gz" 1 256M "$Q hvm.run=echo,GUEST-SHA256-READ,\$(sha256sum</dev/vda|cut,-d',',-f1);echo,SERIAL,\$(cat</sys/block/vda/serial)"
dd if=/dev/zero of="$D/write.img" bs=1M count=8 2>/dev/null
EXTRA="[[drive]]\npath = \"$D/write.img\""
AFTER="echo HOST-SHA256-WRITTEN \$(head -c 4194304 $D/write.img | sha256sum | cut -d' ' -f1); echo HOST-SHA256-EXPECTED \$(yes hvm-block-written | head -c 4194304 | sha256sum | cut -d' ' -f1)"
case_ blk-write "$IMG/vmlinux" "$IMG/initramfs.cpio.gz" 1 256M "$Q hvm.run=yes,hvm-block-written|head,-c,4194304,>/dev/vda;sync"
cp "$D/read.img" "$D/ro.img"
EXTRA="[[drive]]\npath = \"$D/ro.img\"\nread_only = true"
AFTER="cmp -s $D/read.img $D/ro.img && echo HOST-RO-UNCHANGED"
case_ blk-read-only "$IMG/vmlinux" "$IMG/initramfs.cpio.gz" 1 256M "$Q hvm.run=echo,x|dd,of=/dev/vda,bs=512,count=1,conv=fsync||echo,GUEST-WRITE-REFUSED"
EXTRA="[[drive]]\npath = \"$D/read.img\"\nread_only = true\nid = \"first\"\n[[drive]]\npath = \"$D/write.img\"\nid = \"second\""
case_ blk-two-drives "$IMG/vmlinux" "$IMG/initramfs.cpio.gz" 1 256M "$Q hvm.run=echo,DRIVES,\$(cat</sys/block/vda/serial),\$(cat</sys/block/vdb/serial),\$(cat</sys/block/vdb/size)"
# Discard: the guest discards its disk's first MiB; this side finds zeros there and the rest intact.
cp "$D/read.img" "$D/discard.img"
EXTRA="[[drive]]\npath = \"$D/discard.img\""
AFTER="echo HOST-DISCARDED-NONZERO \$(head -c 1048576 $D/discard.img | tr -d '\\000' | wc -c); cmp -s $D/read.img $D/discard.img 1048576 1048576 && echo HOST-REST-INTACT"
case_ blk-discard "$IMG/vmlinux" "$IMG/initramfs.cpio.gz" 1 256M "$Q hvm.run=blkdiscard,-o,0,-l,1048576,/dev/vda&&echo,GUEST-DISCARD-OK;sync"

# virtio-rng: the guest reads from /dev/hwrng.
EXTRA="[rng]"
case_ rng "$IMG/vmlinux" "$IMG/initramfs.cpio.gz" 1 256M "$Q hvm.run=echo,RNG,\$(cat</sys/class/misc/hw_random/rng_current);echo,RNG-BYTES,\$(head,-c,4096,</dev/hwrng|wc,-c)"

# virtio-net: hvm creates tap hvmnet0; this side puts 169.254.10.1 on it (a
# link-local address on a link that exists only inside this machine). The
# guest (169.254.10.2) pings it, then 4 MiB go each way over TCP. Transfers
# use busybox nc with -e on both ends (its copy loop drops data at EOF, and
# the static busybox's wget crashes in getaddrinfo).
net_case() {
    name=net-tap
    wanted "$name" || return
    echo "@@START $name"
    W=$TMP/net
    mkdir -p "$W"
    yes hvm-net-down | head -c 4194304 >"$W/down"
    nc -l -p 5002 -e cat "$W/down" &
    down_pid=$!
    # The upload lands in up.part and is renamed when the listener's cat has
    # drained the socket: the guest may power off before that (TCG is slow).
    nc -l -p 5001 -e sh -c "cat >$W/up.part && mv $W/up.part $W/up" &
    up_pid=$!
    # The guest's nc returns while its kernel still holds unsent data: the
    # guest powers off only after this port answers, i.e. after all 4 MiB
    # arrived here.
    (while [ ! -e "$W/up" ]; do sleep 0.1; done; nc -l -p 5003 -e true) &
    ack_pid=$!
    spec=$TMP/$name.toml
    t=$GUEST_CS
    printf '[machine]\nmemory = "256M"\n[kernel]\npath = "%s"\ninitrd = "%s"\ncmdline = "%s"\n[[net]]\ntap = "hvmnet0"\n' \
        "$IMG/vmlinux" "$IMG/initramfs.cpio.gz" \
        "$Q hvm.run=ip,addr,add,169.254.10.2/24,dev,eth0;ip,link,set,eth0,up;ping,-c,3,-W,2,169.254.10.1;i=0;d0=\$($t);until,nc,169.254.10.1,5002,-e,sh,-c,'sha256sum>/tmp/down.sha'||[,\$i,-gt,20,];do,sleep,1;i=\$((i+1));done;d1=\$($t);echo,GUEST-NET-DOWN,\$(cut,-c1-64,/tmp/down.sha);echo,GUEST-NET-DOWN-4MIB-CENTISECONDS,\$((d1-d0));yes,hvm-net-up|head,-c,4194304,>/tmp/up;t0=\$($t);nc,169.254.10.1,5001,-e,cat,/tmp/up;i=0;until,nc,169.254.10.1,5003,-e,true||[,\$i,-gt,600,];do,sleep,0.1;i=\$((i+1));done;t1=\$($t);echo,GUEST-NET-UP-4MIB-CENTISECONDS,\$((t1-t0))" >"$spec"
    "$HVM" -v run --timeout 150s "$spec" >"$TMP/$name.out" 2>"$TMP/$name.err" </dev/null &
    pid=$!
    i=0
    while ! ip link show hvmnet0 >/dev/null 2>&1 && [ $i -lt 60 ]; do sleep 1; i=$((i + 1)); done
    ip addr add 169.254.10.1/24 dev hvmnet0
    ip link set hvmnet0 up

    wait $pid
    code=$?
    i=0
    while [ ! -e "$W/up" ] && [ $i -lt 60 ]; do sleep 1; i=$((i + 1)); done
    pkill -P $ack_pid 2>/dev/null
    kill $down_pid $up_pid $ack_pid 2>/dev/null
    echo "@@CASE $name"
    cat "$TMP/$name.out"
    echo
    echo "HOST-NET-UP-BYTES $(cat "$W/up" "$W/up.part" 2>/dev/null | wc -c)"
    echo "HOST-NET-UP $(cat "$W/up" 2>/dev/null | sha256sum | cut -c1-64)"
    echo "HOST-NET-UP-EXPECTED $(yes hvm-net-up | head -c 4194304 | sha256sum | cut -c1-64)"
    echo "HOST-NET-DOWN-EXPECTED $(sha256sum <"$W/down" | cut -c1-64)"
    echo "@@STDERR"
    cat "$TMP/$name.err"
    echo "@@EXIT $name $code"
}
net_case

# What passt needs in L1: an interface with a default route (a dummy one;
# passt copies the guest's address and gateway from it) and a resolv.conf.
# (A host that has a default route, when the lab runs on hardware KVM
# without L1, is left alone.)
user_net_setup() {
    ip link set lo up
    ip route | grep -q '^default' && return
    ip link add hvmup0 type dummy 2>/dev/null
    ip addr add 192.0.2.2/24 dev hvmup0 2>/dev/null
    ip link set hvmup0 up
    ip route add default via 192.0.2.1 dev hvmup0 2>/dev/null
    [ -e /etc/resolv.conf ] || echo "nameserver 192.0.2.53" >/etc/resolv.conf
}

# User-mode networking (passt), run by an ordinary user: no tap, no
# capabilities. L1 gets what passt needs, an interface with a default route
# (a dummy one); the guest leases its address by DHCP, fetches 4 MiB from an
# HTTP server on L1's loopback through the gateway address, and a forwarded
# host port carries 4 MiB to a guest listener and 4 MiB back (the guest
# waits until L1 says it has all of it: its HTTP server gets fdown-ok).
net_user_case() {
    name=net-user
    wanted "$name" || return
    echo "@@START $name"
    user_net_setup
    # uid 1000 needs /dev/kvm: in L1 (disposable) it is opened to all; on a
    # host, uid 1000 gets the device's group.
    if [ -n "$HVM_LAB_L1" ]; then chmod 0666 /dev/kvm; groups=--clear-groups; else groups=--groups=$(stat -c %g /dev/kvm); fi
    W=$TMP/netuser
    mkdir -p "$W" && chmod 0777 "$W"
    yes hvm-user-down | head -c 4194304 >"$W/down"
    yes hvm-fwd-up | head -c 4194304 >"$W/fup"
    httpd -f -p 127.0.0.1:8000 -h "$W" &
    httpd_pid=$!
    spec=$W/$name.toml
    printf '[machine]\nmemory = "256M"\n[kernel]\npath = "%s"\ninitrd = "%s"\ncmdline = "%s"\n[[net]]\nmode = "user"\nforward = ["tcp:127.0.0.1:5555:80"]\n' \
        "$IMG/vmlinux" "$IMG/initramfs.cpio.gz" \
        "$Q hvm.net=dhcp hvm.run=g=\$(ip,route|awk,'/default/{print,\$3}');echo,GUEST-USER-DOWN,\$(wget,-q,-O,-,http://\$g:8000/down|sha256sum|cut,-c1-64);nc,-l,-p,80,-e,sh,-c,'head,-c,4194304|sha256sum|cut,-c1-64>/tmp/f;yes,hvm-fwd-down|head,-c,4194304';i=0;until,wget,-q,-O,/dev/null,http://\$g:8000/fdown-ok||[,\$i,-gt,120,];do,sleep,1;i=\$((i+1));done;echo,GUEST-FWD-UP,\$(cat,/tmp/f)" >"$spec"
    /usr/bin/setpriv --reuid=1000 --regid=1000 $groups env HOME=/tmp \
        "$HVM" -v run --timeout 200s "$spec" >"$TMP/$name.out" 2>"$TMP/$name.err" </dev/null &
    pid=$!
    # The forwarded port: retried until the guest listens (before that,
    # passt accepts and the guest refuses, so nothing arrives).
    i=0
    while [ $i -lt 150 ] && kill -0 $pid 2>/dev/null; do
        nc 127.0.0.1 5555 -e sh -c "cat $W/fup & cat >$W/fdown; wait" 2>/dev/null
        # The guest powers off once told all arrived: data still in its
        # TCP send buffer would be lost with it.
        [ "$(wc -c <"$W/fdown" 2>/dev/null)" = 4194304 ] && echo ok >"$W/fdown-ok" && break
        sleep 1
        i=$((i + 1))
    done
    wait $pid
    code=$?
    kill $httpd_pid 2>/dev/null
    echo "@@CASE $name"
    cat "$TMP/$name.out"
    echo
    echo "HOST-HVM-UID 1000 (no capabilities)"
    echo "HOST-USER-DOWN-EXPECTED $(sha256sum <"$W/down" | cut -c1-64)"
    echo "HOST-FWD-UP-EXPECTED $(sha256sum <"$W/fup" | cut -c1-64)"
    echo "HOST-FWD-DOWN $(cat "$W/fdown" 2>/dev/null | sha256sum | cut -c1-64)"
    echo "HOST-FWD-DOWN-EXPECTED $(yes hvm-fwd-down | head -c 4194304 | sha256sum | cut -c1-64)"
    echo "HOST-LEFTOVER-PASST $(pidof passt | wc -w)"
    echo "@@STDERR"
    cat "$TMP/$name.err"
    echo "@@EXIT $name $code"
}
net_user_case

# virtio-vsock with Firecracker's host-side convention, both ways: 16 MiB
# each way, a host program leaving mid-stream (only its connection resets),
# 32 connections at once, and a guest-initiated connection. The guest's
# script comes on a drive (too long for the command line); hvm-vsock
# (guest-images/hvm-vsock.c) is the guest's nc and the host's.

vsock_case() {
    name=vsock
    wanted "$name" || return
    echo "@@START $name"
    W=$TMP/vsock
    mkdir -p "$W"
    V=/hvm/guest-images/hvm-vsock
    S=$W/vm.vsock
    cat >"$W/guest.sh" <<'EOF'
cs() { tr -d . </proc/uptime | cut -d' ' -f1 | sed 's/^0*//'; }
yes hvm-vsock-reset | hvm-vsock listen 5002 >/dev/null 2>&1
echo GUEST-VSOCK-RESET-RC $?
t0=$(cs)
echo GUEST-VSOCK-UP $(hvm-vsock listen 5000 </dev/null | sha256sum | cut -c1-64)
t1=$(cs)
yes hvm-vsock-down | head -c 16777216 | hvm-vsock listen 5001 >/dev/null
echo GUEST-VSOCK-DOWN-RC $?
t2=$(cs)
echo GUEST-VSOCK-16MIB-CENTISECONDS up=$((t1 - t0)) down=$((t2 - t1))
for p in $(seq 6000 6031); do (hvm-vsock listen $p </dev/null | sha256sum | cut -c1-64 >/tmp/c$p) & done
wait
echo GUEST-VSOCK-MANY $(cat /tmp/c6* | sha256sum | cut -c1-64)
echo GUEST-VSOCK-GUESTINIT $(yes hvm-vsock-guest | head -c 4194304 | hvm-vsock connect 7000 | sha256sum | cut -c1-64)
exit
EOF
    # A drive of whole sectors; the shell stops at "exit", before the padding.
    cp "$W/guest.sh" "$W/guest.img" && truncate -s 8192 "$W/guest.img"
    yes hvm-vsock-reply | head -c 1048576 >"$W/reply"
    spec=$W/$name.toml
    printf '[machine]\nmemory = "256M"\n[kernel]\npath = "%s"\ninitrd = "%s"\ncmdline = "%s"\n[[drive]]\npath = "%s"\nread_only = true\n[vsock]\ncid = 3\nsocket = "%s"\n' \
        "$IMG/vmlinux" "$IMG/initramfs.cpio.gz" "$Q hvm.run=sh,/dev/vda" "$W/guest.img" "$S" >"$spec"
    "$HVM" -v run --timeout 280s "$spec" >"$TMP/$name.out" 2>"$TMP/$name.err" </dev/null &
    pid=$!
    # Minutes under TCG: tell the lab's watchdog that L1 lives.
    (while sleep 20; do echo VSOCK-TICK $(cut -d' ' -f1 /proc/uptime) $(grep -c . "$TMP/$name.out"); done) &
    ticker=$!
    # The guest-initiated connection finds this listener (vm.vsock_7000).
    "$V" unix-listen "${S}_7000" <"$W/reply" >"$W/guestinit" &
    gi_pid=$!
    try() { i=0; until "$@" || [ $i -gt 300 ] || ! kill -0 $pid 2>/dev/null; do sleep 0.2; i=$((i + 1)); done; }
    reset_once() { timeout 60 "$V" unix-connect "$S" 5002 </dev/null 2>/dev/null | head -c 65536 >"$W/reset"; [ "$(wc -c <"$W/reset")" = 65536 ]; }
    try reset_once
    echo VSOCK-HOST reset done $(cut -d' ' -f1 /proc/uptime)
    up() { yes hvm-vsock-up | head -c 16777216 | timeout 120 "$V" unix-connect "$S" 5000 >/dev/null 2>&1; }
    try up
    echo VSOCK-HOST up done $(cut -d' ' -f1 /proc/uptime)
    down() { timeout 120 "$V" unix-connect "$S" 5001 </dev/null >"$W/down" 2>/dev/null; }
    try down
    echo VSOCK-HOST down done $(cut -d' ' -f1 /proc/uptime)
    for p in $(seq 6000 6031); do
        (one() { yes conn-$p | head -c 262144 | timeout 60 "$V" unix-connect "$S" $p >/dev/null 2>&1; }; try one) &
    done
    wait $pid
    code=$?
    kill $gi_pid $ticker 2>/dev/null
    echo "@@CASE $name"
    cat "$TMP/$name.out"
    echo
    echo "HOST-VSOCK-UP-EXPECTED $(yes hvm-vsock-up | head -c 16777216 | sha256sum | cut -c1-64)"
    echo "HOST-VSOCK-DOWN $(sha256sum <"$W/down" | cut -c1-64)"
    echo "HOST-VSOCK-DOWN-EXPECTED $(yes hvm-vsock-down | head -c 16777216 | sha256sum | cut -c1-64)"
    echo "HOST-VSOCK-MANY-EXPECTED $(for p in $(seq 6000 6031); do yes conn-$p | head -c 262144 | sha256sum | cut -c1-64; done | sha256sum | cut -c1-64)"
    echo "HOST-VSOCK-GUESTINIT $(sha256sum <"$W/guestinit" | cut -c1-64)"
    echo "HOST-VSOCK-GUESTINIT-EXPECTED $(yes hvm-vsock-guest | head -c 4194304 | sha256sum | cut -c1-64)"
    echo "HOST-VSOCK-REPLY-EXPECTED $(sha256sum <"$W/reply" | cut -c1-64)"
    echo "HOST-VSOCK-SOCKET-LEFT $([ -e "$S" ] && echo yes || echo no)"
    echo "@@STDERR"
    cat "$TMP/$name.err"
    echo "@@EXIT $name $code"
}
vsock_case

# Durability: the guest writes numbered 4 KiB records to a raw disk, syncing
# each one (dd conv=fsync: a virtio-blk flush) before it prints "synced";
# hvm is SIGKILLed mid-loop, and every record the guest saw synced must be
# in the image.
durability_case() {
    name=durability
    wanted "$name" || return
    echo "@@START $name"
    W=$TMP/durability
    mkdir -p "$W"
    cat >"$W/guest.sh" <<'EOF'
i=1
while [ $i -le 2000 ]; do
    printf 'rec-%08d\n' $i | dd of=/dev/vdb bs=4096 seek=$i count=1 conv=sync,notrunc,fsync 2>/dev/null || { echo DUR-WRITE-FAILED $i; break; }
    echo DUR-SYNCED $i
    i=$((i + 1))
done
exit
EOF
    cp "$W/guest.sh" "$W/guest.img" && truncate -s 8192 "$W/guest.img"
    dd if=/dev/zero of="$W/data.img" bs=1M count=9 2>/dev/null
    spec=$W/$name.toml
    printf '[machine]\nmemory = "256M"\n[kernel]\npath = "%s"\ninitrd = "%s"\ncmdline = "%s"\n[[drive]]\npath = "%s"\nread_only = true\n[[drive]]\npath = "%s"\n' \
        "$IMG/vmlinux" "$IMG/initramfs.cpio.gz" "$Q hvm.run=sh,/dev/vda" "$W/guest.img" "$W/data.img" >"$spec"
    "$HVM" -v run --timeout 280s "$spec" >"$TMP/$name.out" 2>"$TMP/$name.err" </dev/null &
    pid=$!
    i=0
    until grep -q "DUR-SYNCED 40" "$TMP/$name.out" 2>/dev/null || [ $i -gt 1000 ] || ! kill -0 $pid 2>/dev/null; do
        sleep 0.2
        i=$((i + 1))
    done
    kill -KILL $pid 2>/dev/null
    wait $pid
    code=$?
    last=$(grep -o 'DUR-SYNCED [0-9]*' "$TMP/$name.out" | tail -1 | cut -d' ' -f2)
    missing=0
    n=1
    while [ "$n" -le "${last:-0}" ]; do
        rec=$(dd if="$W/data.img" bs=4096 skip=$n count=1 2>/dev/null | head -c 12)
        [ "$rec" = "$(printf 'rec-%08d' $n)" ] || missing=$((missing + 1))
        n=$((n + 1))
    done
    echo "@@CASE $name"
    cat "$TMP/$name.out"
    echo
    echo "HOST-DURABLE synced=${last:-0} missing=$missing"
    echo "@@STDERR"
    cat "$TMP/$name.err"
    echo "@@EXIT $name $code"
}
durability_case

# Lifecycle: a VM driven from the outside while Linux runs in it. hvm runs
# in the background with a name; this side waits for the guest's ready line,
# acts with hvm's control verbs, then collects the VM like case_ does.
# lifecycle NAME VMNAME CMDLINE ACTIONS [hvm options...]
ready_wait() {
    i=0
    while ! grep -q HVM-GUEST-READY "$1" 2>/dev/null && [ $i -lt 300 ]; do sleep 1; i=$((i + 1)); done
}
lifecycle() {
    name=$1 vm=$2 cmdline=$3 actions=$4
    shift 4
    wanted "$name" || return
    echo "@@START $name"
    spec=$TMP/$name.toml
    printf '[machine]\nmemory = "%s"\n[kernel]\npath = "%s"\ninitrd = "%s"\ncmdline = "%s"\n' \
        "${MEM:-256M}" "$IMG/vmlinux" "$IMG/initramfs.cpio.gz" "$cmdline" >"$spec"
    [ -n "$EXTRA" ] && printf '%b\n' "$EXTRA" >>"$spec"
    "$HVM" -v run --name "$vm" --timeout "${TIMEOUT:-400s}" "$@" "$spec" >"$TMP/$name.out" 2>"$TMP/$name.err" </dev/null &
    pid=$!
    : >"$TMP/$name.host"
    (eval "$actions") >>"$TMP/$name.host" 2>&1
    wait $pid
    code=$?
    echo "@@CASE $name"
    cat "$TMP/$name.out"
    echo
    cat "$TMP/$name.host"
    echo "@@STDERR"
    cat "$TMP/$name.err"
    echo "@@EXIT $name $code"
    EXTRA= MEM= TIMEOUT=
}
# Paused for 10 s, then resumed: the guest (which slept through it) shows
# what the kernel logged meanwhile and counts the warnings a long pause can
# cause (soft lockups, a clocksource marked unstable, RCU stalls, hung
# tasks). Linux notes the pause itself once ("Long readout interval,
# skipping watchdog check"): that is its clocksource watchdog declining to
# judge an interval it knows is too long, not a fault. hvm's stderr has the
# pause latency.
lifecycle pause-10s p10 "$Q hvm.run=n=\$(dmesg|wc,-l);sleep,15;dmesg|tail,-n,+\$((n+1))|sed,'s/^/GUEST-DMESG-AFTER-PAUSE,/';echo,GUEST-PAUSE-WARNINGS,\$(dmesg|tail,-n,+\$((n+1))|grep,-ciE,'soft.lockup|unstable|rcu.*stall|hung.task')" '
    ready_wait "$TMP/$name.out"
    "$HVM" pause p10; echo "HOST-PAUSE-RC $?"
    echo "HOST-PS $("$HVM" ps | grep "^p10 ")"
    sleep 10
    "$HVM" resume p10; echo "HOST-RESUME-RC $?"'
# hvm stop: the ACPI power button; the bundled guest's acpid powers it off.
lifecycle stop-graceful s1 "$Q hvm.run=sleep,900" '
    ready_wait "$TMP/$name.out"
    sleep 2
    "$HVM" stop --timeout 120s s1; echo "HOST-STOP-RC $?"'
# gdb (Debian's gdb-minimal, copied into L1 with the lab) on the bundled
# kernel, whose vmlinux keeps its symbols: attached before the first
# instruction, a single step, then Ctrl-C (SIGINT to gdb, as a user's
# keyboard sends it) while Linux runs, a backtrace that names kernel
# functions, kernel memory (linux_banner), every vCPU a thread, another
# step, and the guest boots on and powers off. Breakpoints are not used
# here: QEMU's TCG does not give L1's KVM the #BP and debug-register exits
# of its nested guest (an int3 reaches the guest, a DR7 breakpoint never
# fires), so they can only be tested on a KVM that runs on hardware.
if [ -x /hvm/gdb ]; then
    lifecycle gdb-linux g1 "$Q hvm.run=sleep,6" '
        i=0; while [ ! -S $TMP/g1.sock ] && [ $i -lt 60 ]; do sleep 1; i=$((i + 1)); done
        /hvm/gdb -q -batch -nx "$IMG/vmlinux" -ex "target remote $TMP/g1.sock" \
            -ex "stepi" -ex "echo GDB-STEPPED\\n" -ex "info registers rip" -ex "continue" \
            -ex "bt 3" -ex "x/s &linux_banner" -ex "info threads" -ex "monitor regs" -ex "stepi" \
            -ex "continue" </dev/null 2>&1 | sed "s/^/GDB: /" &
        gdb_pid=$!
        ready_wait "$TMP/$name.out"
        sleep 2
        # gdb, not the pipeline: Ctrl-C to a batch gdb interrupts the target.
        killall -INT gdb
        wait $gdb_pid' \
        --gdb "$TMP/g1.sock"
fi

# virtio-fs through virtiofsd (copied into L1 by lab.py). A 64 MiB host
# file read in the guest, a file the guest writes read back on the host,
# with their checksums; 2 GiB of shared (memfd) guest RAM, of which hvm's
# RSS must stay near what the guest touched (the guest reports its used
# memory, the host hvm's RSS, at the same moment).
S=$TMP/share
if wanted share-rw || wanted share-ro || wanted share-gone; then
    mkdir -p "$S/rw" "$S/ro"
    dd if=/dev/urandom of="$S/rw/big" bs=1M count=64 2>/dev/null
    echo "host file" >"$S/ro/hello"
fi
TIMEOUT=90s MEM=2G EXTRA="[[share]]\npath = \"$S/rw\"\ntag = \"hostshare\"" \
lifecycle share-rw fs1 "$Q hvm.run=mount,-t,virtiofs,hostshare,/mnt&&echo,GUEST-SHARE-READ,\$(sha256sum,/mnt/big|cut,-c1-64);dd,if=/dev/urandom,of=/mnt/out,bs=1M,count=16,2>/dev/null;sync;echo,GUEST-SHARE-WROTE,\$(sha256sum,/mnt/out|cut,-c1-64);echo,GUEST-USED-KIB,\$(awk,'/^MemTotal/{t=\$2}/^MemFree/{f=\$2}END{print,t-f}',/proc/meminfo);echo,GUEST-SHARE-DONE;sleep,4" '
    i=0; while ! grep -q GUEST-SHARE-DONE "$TMP/$name.out" 2>/dev/null && kill -0 $pid 2>/dev/null; do sleep 1; done
    echo "HOST-RSS-KIB $(awk "/^VmRSS/ {print \$2}" /proc/$pid/status)"
    echo "HOST-SHARE-BIG $(sha256sum "$S/rw/big" | cut -c1-64)"
    while kill -0 $pid 2>/dev/null; do sleep 1; done
    echo "HOST-SHARE-OUT $(sha256sum "$S/rw/out" | cut -c1-64)"
    echo "HOST-VIRTIOFSD-LEFT $(pidof virtiofsd | wc -w)"'
# A read-only share refuses writes, and the host file stays as it was.
TIMEOUT=90s EXTRA="[[share]]\npath = \"$S/ro\"\ntag = \"ro\"\nread_only = true" \
lifecycle share-ro fs2 "$Q hvm.run=mount,-t,virtiofs,ro,/mnt&&cat,/mnt/hello;echo,x>/mnt/hello;echo,GUEST-RO-WRITE-RC,\$?;touch,/mnt/new;echo,GUEST-RO-CREATE-RC,\$?" '
    while kill -0 $pid 2>/dev/null; do sleep 1; done
    echo "HOST-RO-CONTENT $(cat "$S/ro/hello")"
    echo "HOST-RO-NEW $(ls "$S/ro" | wc -l)"'
# virtiofsd killed while the guest uses the share: hvm says so, the
# guest's next file operation fails (EIO) instead of hanging, and the
# guest powers off normally.
TIMEOUT=90s EXTRA="[[share]]\npath = \"$S/rw\"\ntag = \"gone\"" \
lifecycle share-gone fs3 "$Q hvm.run=mount,-t,virtiofs,gone,/mnt&&ls,/mnt>/dev/null&&echo,GUEST-MOUNTED;sleep,4;cat,/mnt/big>/dev/null;echo,GUEST-AFTER-KILL-RC,\$?;ls,/mnt;echo,GUEST-LS-RC,\$?" '
    i=0; while ! grep -q GUEST-MOUNTED "$TMP/$name.out" 2>/dev/null && kill -0 $pid 2>/dev/null; do sleep 1; done
    killall -KILL virtiofsd; echo "HOST-KILLED-VIRTIOFSD $?"'

# One-command runs: the guest's root is L1's own root over virtio-fs, hvm
# is the guest's init and runs the command as the caller; stdout and
# stderr arrive apart, the command's status is hvm's. $1 name, $2 the
# input: a printf format for a pipe, @FILE, or "-" for none; the rest: hvm's arguments.
cmdcase() {
    name=$1 input=$2
    shift 2
    wanted "$name" || return
    echo "@@START $name"
    if [ "$input" = "-" ]; then
        "$HVM" run --timeout ${CTIMEOUT:-120s} "$@" >"$TMP/$name.out" 2>"$TMP/$name.err" </dev/null
    elif [ "${input#@}" != "$input" ]; then
        "$HVM" run --timeout ${CTIMEOUT:-120s} "$@" >"$TMP/$name.out" 2>"$TMP/$name.err" <"${input#@}"
    else
        printf "$input" | "$HVM" run --timeout ${CTIMEOUT:-120s} "$@" >"$TMP/$name.out" 2>"$TMP/$name.err"
    fi
    code=$?
    echo "@@CASE $name"
    sed 's/^/STDOUT: /' "$TMP/$name.out"
    echo
    [ -n "$AFTER" ] && sh -c "$AFTER"
    echo "@@STDERR"
    cat "$TMP/$name.err"
    echo "@@EXIT $name $code"
    AFTER=
}

# (The guest's /tmp is its own tmpfs: the file lies elsewhere.)
echo "host file for the guest" >/hvm/rootfs-file
cmdcase rootfs-cmd - --kernel "$IMG/vmlinux" --memory 256M --rootfs / -- \
    sh -c "cat /hvm/rootfs-file; echo oops >&2; echo uid=\$(id -u) cwd=\$(pwd); exit 7"
# No command: a shell, fed from a pipe; its stdin ends where the pipe does.
cmdcase rootfs-shell 'echo piped-$((6*7))\necho to-stderr >&2\nexit 3\n' \
    --kernel "$IMG/vmlinux" --memory 256M --rootfs /
# Binary stdin passes unchanged (3 MB: more than hvm holds for the guest at
# once, so reading stdin pauses and resumes): the command's checksum of it.
head -c 3000000 /dev/urandom >/hvm/stdin.bin
echo "HOST-STDIN-SHA $(sha256sum /hvm/stdin.bin | cut -c1-64)" >/hvm/stdin.sha
AFTER="cat /hvm/stdin.sha" cmdcase rootfs-stdin @/hvm/stdin.bin --kernel "$IMG/vmlinux" --memory 256M \
    --rootfs / -- sh -c "sha256sum | cut -c1-64"
# On a terminal (script(1) gives hvm a pseudo-terminal): the command's
# terminal is hvc0, what is typed reaches a shell, and its status is hvm's.
if [ -x /usr/bin/script ] && wanted rootfs-tty; then
    echo "@@START rootfs-tty"
    printf 'echo typed-$((2+3)); tty\nexit 4\n' | /usr/bin/script -qec \
        "$HVM run --timeout 120s --kernel $IMG/vmlinux --memory 256M --rootfs /" /dev/null \
        >"$TMP/tty.out" 2>"$TMP/tty.err"
    code=$?
    echo "@@CASE rootfs-tty"
    tr -d '\r' <"$TMP/tty.out" | sed 's/^/TTY: /'
    echo
    echo "@@STDERR"
    cat "$TMP/tty.err"
    echo "@@EXIT rootfs-tty $code"
fi
mkdir -p "$TMP/results"
AFTER="echo HOST-RESULT \$(cat $TMP/results/r.txt); echo HOST-ROOT-WRITE \$(ls /hvm-guest-wrote 2>&1 | head -1)" \
cmdcase rootfs-share - --kernel "$IMG/vmlinux" --memory 256M --rootfs / --share "$TMP/results" -- \
    sh -c "echo from-the-guest >$TMP/results/r.txt; touch /hvm-guest-wrote; echo etc-write >/etc/hvm-test && echo ETC-WRITABLE"
# A kernel without virtio-fs built in (Debian's: a module) cannot mount
# the root: hvm says the command never ran and shows the kernel's words.
# With a user-mode network: hvm's init configures eth0 as passt does (the
# command runs as the caller, who could not), and the command fetches a
# file from L1's loopback through the gateway.
if wanted rootfs-net; then
    user_net_setup
    mkdir -p "$TMP/rn" && yes hvm-rootfs-net | head -c 1048576 >"$TMP/rn/blob"
    httpd -f -p 127.0.0.1:8002 -h "$TMP/rn" &
    rn_httpd=$!
    AFTER="echo HOST-ROOTFS-NET-EXPECTED \$(sha256sum <$TMP/rn/blob | cut -c1-64)" \
        cmdcase rootfs-net - --kernel "$IMG/vmlinux" --memory 256M --rootfs / --net user -- \
        sh -c 'g=$(ip route | awk "/default/ {print \$3}"); echo ROOTFS-NET-ROUTE $g; wget -q -O - http://$g:8002/blob | sha256sum | cut -c1-64'
    kill $rn_httpd 2>/dev/null
fi
cmdcase rootfs-nofs - --kernel "$STOCK" --memory 256M --rootfs / -- true

# The shipped examples, run as they are.
example() {
    name=$1
    wanted "$name" || return
    echo "@@START $name"
    "$HVM" -v run --timeout 120s "$EXAMPLES/$2" >"$TMP/$name.out" 2>"$TMP/$name.err" </dev/null
    code=$?
    echo "@@CASE $name"
    cat "$TMP/$name.out"
    echo
    echo "@@STDERR"
    cat "$TMP/$name.err"
    echo "@@EXIT $name $code"
}
if [ -n "$EXAMPLES" ]; then
    example example-hello hello.toml
    example example-smp smp.toml
    example example-disk disk.toml
fi

# virtio-blk with 256 MiB (lab.py --bench runs only this): the guest reads
# it all, copies it to a second disk and syncs, timed in the guest, next to
# the same read on this side; the host then compares both images.
if wanted blk-256M; then
    B=$TMP/bench
    mkdir -p "$B"
    dd if=/dev/urandom of="$B/src.img" bs=1M count=256 2>/dev/null
    dd if=/dev/zero of="$B/dst.img" bs=1M count=256 2>/dev/null
    t0=$(now_cs); dd if="$B/src.img" of=/dev/null bs=1M 2>/dev/null; t1=$(now_cs)
    EXTRA="[[drive]]\npath = \"$B/src.img\"\nread_only = true\n[[drive]]\npath = \"$B/dst.img\""
    # Printed inside the case's block, which survives an L1 crash in a later case.
    AFTER="echo HOST-READ-256M-CENTISECONDS $((t1 - t0)); echo HOST-SRC \$(sha256sum <$B/src.img | cut -c1-64); echo HOST-DST \$(sha256sum <$B/dst.img | cut -c1-64)"
    case_ blk-256M "$IMG/vmlinux" "$IMG/initramfs.cpio.gz" 1 512M "$Q hvm.run=t0=\$($GUEST_CS);dd,if=/dev/vda,of=/dev/null,bs=1M;t1=\$($GUEST_CS);echo,GUEST-READ-256M-CENTISECONDS,\$((t1-t0));dd,if=/dev/vda,of=/dev/vdb,bs=1M;sync;t2=\$($GUEST_CS);echo,GUEST-COPY-256M-CENTISECONDS,\$((t2-t1))"
    rm -rf "$B"
fi

# The interactive shell on ttyS0 (what examples/shell.toml gives) takes commands from stdin.
INPUT='echo SERIAL-SHELL-$((6*7)) $(tty)\npoweroff -f\n'
READY="poweroff' leaves the VM"
case_ serial-shell "$IMG/bzImage" "$IMG/initramfs.cpio.gz" 2 512M "$Q hvm.mode=shell"

# virtio-console: a login shell on hvc0 takes commands from hvm's stdin.
EXTRA="[console]\ndevice = \"virtio\""
INPUT='echo HVC-LOGIN-$((6*7)) $(tty)\npoweroff -f\n'
READY=HVC-SHELL-READY
case_ hvc-login "$IMG/vmlinux" "$IMG/initramfs.cpio.gz" 1 256M "$Q hvm.mode=hvc"

# A kernel panic ends hvm with 125 and a crash report: the panic's line
# from the console's tail, and RIP named from the vmlinux's symbol table;
# the same report as JSON (printed after the console). The guest waits a
# second before the crash: the init's ready line may still sit in the tty's
# transmit buffer, and the panic's printk, which bypasses that buffer, would
# come out interleaved with it character by character (seen once in CI).
AFTER="echo CRASH-JSON-BEGIN; cat $TMP/crash.json; echo; echo CRASH-JSON-END"
case_ crash-sysrq "$IMG/vmlinux" "$IMG/initramfs.cpio.gz" 2 256M "$Q hvm.run=sleep,1;echo,c,>/proc/sysrq-trigger" \
    --crash-report "$TMP/crash.json"

if [ -n "$STOCK" ]; then
    # The CMOS clock as a distro kernel finds it (PNP0B00 in the DSDT):
    # /dev/rtc0, read by hwclock, against L1's clock before hvm started and
    # right after it exited (the guest reads the clock last, then powers off).
    AFTER='echo HOST-END $(date +%s)'
    case_ debian-cloud-rtc "$STOCK" "$IMG/stock-initrd" 1 512M "$Q hvm.run=echo,HOST-START,$(date +%s);ls,/dev/rtc0;hwclock,-r,-u;echo,RTC-NOW,\$(cat,/sys/class/rtc/rtc0/since_epoch),UPTIME,\$(cut,-d.,-f1,/proc/uptime)"
    # tsc=unstable: a distro kernel with two vCPUs flips a static key on
    # its sched_clock once it has judged the TSC (enabled at late init when
    # stable, disabled when a later check finds it is not); under TCG that
    # text patching can race the other vCPU into an int3 oops (twice in the
    # lab, never on hardware). Judged unstable from the start, it never flips.
    case_ debian-cloud-2cpu "$STOCK" "$IMG/initramfs.cpio.gz" 2 512M "$Q tsc=unstable"
    # Debian's kernel has no virtio-mmio command-line devices: it finds them in the DSDT.
    EXTRA="[[drive]]\npath = \"$D/read.img\"\nread_only = true\nid = \"stock-disk\"\n[rng]"
    case_ debian-cloud-virtio "$STOCK" "$IMG/stock-initrd" 1 512M "$Q hvm.run=echo,GUEST-SHA256-READ,\$(sha256sum</dev/vda|cut,-d',',-f1);echo,SERIAL,\$(cat</sys/block/vda/serial);echo,RNG,\$(cat</sys/class/misc/hw_random/rng_current)"
fi
# Linux boot time, hvm against Firecracker and QEMU's microvm machine on the
# same KVM (the benchmark's case 5; runs only when asked: lab.py --boot-bench
# N, which puts QEMU, and Firecracker if given, into L1). Runs alternate hvm,
# Firecracker, QEMU, hvm, ...; each line "BOOT-BENCH vmm config centiseconds"
# is the time from the VMM's start to the guest's ready line on its console.
# All boot the same kernel build, initramfs and command line: hvm and
# Firecracker the ELF vmlinux (Firecracker takes no bzImage), QEMU's qboot
# the bzImage. The guest leaves by the i8042 reset (hvm.mode=reboot), the
# only way out Firecracker has; QEMU, whose microvm has no i8042 (the
# kernel would fall back to a BIOS restart and boot again), leaves by a
# triple fault (reboot=t) and -no-reboot.
# QEMU gets the host's CPUID, as hvm passes it, but no vPMU:
# with one, QEMU's 2-vCPU guests crashed L1 within minutes ("corrupted stack
# end detected inside scheduler"); with pmu=off (or -cpu EPYC) none did.
ready_cs() {
    read -r t0 _ </proc/uptime
    "$@" </dev/null 2>"$TMP/boot.err" | {
        grep -m1 -q HVM-GUEST-READY && read -r t1 _ </proc/uptime &&
            echo $((${t1%.*}${t1#*.} - ${t0%.*}${t0#*.}))
        cat >/dev/null
    }
}
# One round: hvm, Firecracker (when there is one), QEMU, each booting the
# same kernel to its ready line.
boot_pair() {
    label=$1
    echo "$label hvm ${cpus}cpu-${mib}M $(ready_cs timeout 120 "$HVM" run "$spec")"
    if [ -n "$fc" ]; then
        echo "$label firecracker ${cpus}cpu-${mib}M $(ready_cs timeout 120 "$fc" --no-api --level Off \
            --config-file "$fc_json")"
    fi
    echo "$label qemu ${cpus}cpu-${mib}M $(ready_cs timeout 120 "$qemu" -M microvm,x-option-roms=off \
        -accel kvm -cpu host,pmu=off -smp "$cpus" -m "${mib}M" -nodefaults -no-user-config -nographic \
        -no-reboot -serial stdio -kernel "$IMG/bzImage" -initrd "$IMG/initramfs.cpio.gz" \
        -append "$(echo "$cmdline" | sed 's/reboot=k/reboot=t/')")"
    [ -s "$TMP/boot.err" ] && sed 's/^/BOOT-STDERR /' "$TMP/boot.err" | head -5
}
# Starts a VMM whose guest idles once booted ($pid), and returns 2 s after
# the guest is ready; idle_stop ends it.
idle_start() {
    "$@" </dev/null >"$TMP/idle.out" 2>&1 &
    pid=$!
    i=0
    while ! grep -q HVM-GUEST-READY "$TMP/idle.out" && [ $i -lt 600 ]; do sleep 0.2; i=$((i + 1)); done
    sleep 2
}
idle_stop() {
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
}
# A VMM's resident memory beside its idle guest's: VmRSS minus the resident
# part of the guest RAM mappings, 2 s after the guest is ready.
idle_mem() {
    label=$1
    shift
    idle_start "$@"
    rss=$(awk '/^VmRSS/ { print $2 }' "/proc/$pid/status")
    guest=$(awk '/^[0-9a-f]+-[0-9a-f]+ / { anon = (NF < 6) } /^Size:/ { size = $2 }
        /^Rss:/ { if (anon && size >= 102400) g += $2 } END { print g + 0 }' "/proc/$pid/smaps")
    echo "IDLE-MEM $label ${cpus}cpu-${mib}M $rss $guest"
    idle_stop
}
# The centiseconds a command takes, its output dropped.
took_cs() {
    t0=$(now_cs)
    "$@" </dev/null >/dev/null 2>&1
    echo $(($(now_cs) - t0))
}
# Each counted pair is a case of its own (boot-bench-1cpu-128M-3, ...), so a
# crashed L1 resumes with the pairs it had not finished.
boot_bench() {
    cpus=$1 mib=$2 warm=
    # (linux-boot: these boots alone, without the I/O benchmarks.)
    case " $HVM_LAB_ONLY " in *" boot-bench "* | *" linux-boot "*) ;; *) return ;; esac
    qemu=$(command -v qemu-system-x86_64)
    fc=${HVM_LAB_FIRECRACKER:-$(command -v firecracker)}
    cmdline="console=ttyS0 reboot=k panic=-1 i8042.noaux i8042.nomux i8042.dumbkbd quiet hvm.mode=reboot"
    spec=$TMP/boot-$cpus-$mib.toml
    printf '[machine]\nvcpus = %s\nmemory = "%sM"\n[kernel]\npath = "%s"\ninitrd = "%s"\ncmdline = "%s"\nreplace_cmdline = true\n' \
        "$cpus" "$mib" "$IMG/vmlinux" "$IMG/initramfs.cpio.gz" "$cmdline" >"$spec"
    fc_json=$TMP/boot-$cpus-$mib.json
    printf '{"boot-source": {"kernel_image_path": "%s", "initrd_path": "%s", "boot_args": "%s"},\n "drives": [], "machine-config": {"vcpu_count": %s, "mem_size_mib": %s}}\n' \
        "$IMG/vmlinux" "$IMG/initramfs.cpio.gz" "$cmdline" "$cpus" "$mib" >"$fc_json"
    runs=${HVM_LAB_RUNS:-5}
    for i in $(seq 1 "$runs"); do
        name=boot-bench-${cpus}cpu-${mib}M-$i
        case " $HVM_LAB_SKIP " in *" $name "*) continue ;; esac
        # With more than one run, an uncounted pair first (caches, KVM state).
        if [ -z "$warm" ] && [ "$runs" -gt 1 ]; then
            boot_pair BOOT-WARMUP
            warm=1
        fi
        echo "@@START $name"
        echo "@@CASE $name"
        boot_pair BOOT-BENCH
        echo "@@STDERR"
        echo "@@EXIT $name 0"
    done
    # Where the boot's exits go: hvm's --stats and Firecracker's metrics
    # (its vCPU exit counters), one uncounted boot each.
    name=boot-stats-${cpus}cpu-${mib}M
    case " $HVM_LAB_SKIP " in *" $name "*) return ;; esac
    echo "@@START $name"
    echo "@@CASE $name"
    # What each VMM costs beside its guest while a Linux guest idles:
    # "IDLE-MEM vmm config rss_kib guest_kib" (guest_kib: the resident part
    # of its RAM mappings, the anonymous ones of 100 MiB or more).
    idle_spec=$TMP/idle-$cpus-$mib.toml
    sed 's/hvm.mode=reboot/hvm.mode=reboot hvm.run=sleep,60/' "$spec" >"$idle_spec"
    sed 's/hvm.mode=reboot/hvm.mode=reboot hvm.run=sleep,60/' "$fc_json" >"$TMP/idle.json"
    idle_mem hvm "$HVM" run "$idle_spec"
    [ -n "$fc" ] && idle_mem firecracker "$fc" --no-api --level Off --config-file "$TMP/idle.json"
    timeout 120 "$HVM" run --stats "$spec" </dev/null 2>&1 >/dev/null | grep '^hvm: stats' | sed 's/^/BOOT-STATS hvm /'
    # Each VMM's own start and stop in this L1, without Linux: the tiny
    # guest prints a line and leaves (Firecracker: by the i8042 reset).
    # "VMM-START vmm cs", alternating, 3 each.
    printf '[machine]\nvcpus = %s\nmemory = "%sM"\n[kernel]\npath = "%s"\ncmdline = "mode=hello"\n' \
        "$cpus" "$mib" "$IMG/hvmtest.elf" >"$TMP/tiny.toml"
    printf '{"boot-source": {"kernel_image_path": "%s", "boot_args": "mode=hello exit=reset"},\n "drives": [], "machine-config": {"vcpu_count": %s, "mem_size_mib": %s}}\n' \
        "$IMG/hvmtest.elf" "$cpus" "$mib" >"$TMP/tiny.json"
    for _ in 1 2 3; do
        echo "VMM-START hvm ${cpus}cpu-${mib}M $(took_cs timeout 60 "$HVM" run "$TMP/tiny.toml")"
        [ -n "$fc" ] || continue
        echo "VMM-START firecracker ${cpus}cpu-${mib}M $(took_cs timeout 60 "$fc" --no-api --level Off \
            --config-file "$TMP/tiny.json")"
    done
    if [ -n "$fc" ]; then
        rm -f "$TMP/fc-metrics.json"
        timeout 120 "$fc" --no-api --level Off --config-file "$fc_json" --metrics-path "$TMP/fc-metrics.json" \
            </dev/null >/dev/null 2>&1
        # One JSON object per flush; the vCPU counters are in "vcpu".
        tr -d '\n' <"$TMP/fc-metrics.json" | sed 's/}{/}\n{/g' | tail -1 |
            grep -o '"vcpu":{[^}]*}' | sed 's/^/BOOT-STATS firecracker /'
    fi
    echo "@@STDERR"
    echo "@@EXIT $name 0"
}
boot_bench 1 128
boot_bench 2 512

# Which pages of hvm's own code an idle Linux guest keeps resident, page by
# page (fault-around off for the run), for link-order/profile.py: "IDLE-PAGES
# perms file_offset_hex page,page,..." for each mapping of the binary. Run on
# demand (--only idle-text --boot-bench 1); it is a diagnostic, not a
# benchmark (--only linux-boot gives the IDLE-MEM figures beside Firecracker's).
idle_text() {
    case " $HVM_LAB_ONLY " in *" idle-text "*) ;; *) return ;; esac
    around=/sys/kernel/debug/fault_around_bytes
    [ -f $around ] || mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
    [ -w $around ] || { echo "IDLE-PAGES-SKIPPED no $around"; return; }
    echo "@@START idle-text"
    echo "@@CASE idle-text"
    spec=$TMP/idle-text.toml
    printf '[machine]\nvcpus = 2\nmemory = "512M"\n[kernel]\npath = "%s"\ninitrd = "%s"\ncmdline = "%s"\nreplace_cmdline = true\n' \
        "$IMG/vmlinux" "$IMG/initramfs.cpio.gz" \
        "console=ttyS0 reboot=k panic=-1 i8042.noaux i8042.nomux i8042.dumbkbd quiet hvm.mode=reboot hvm.run=sleep,60" >"$spec"
    saved=$(cat $around)
    echo 4096 >$around
    idle_start "$HVM" run "$spec"
    awk '$6 ~ /hvm$/ { print $1, $2, $3 }' "/proc/$pid/maps" | while read -r range perms off; do
        lo=$((0x${range%-*})) hi=$((0x${range#*-}))
        pages=$(dd if="/proc/$pid/pagemap" bs=8 skip=$((lo / 4096)) count=$(((hi - lo) / 4096)) 2>/dev/null |
            od -An -v -tx8 -w8 | awk '$1 ~ /^[89a-f]/ { printf "%d,", NR - 1 }')
        echo "IDLE-PAGES $perms $off $pages"
    done
    grep VmRSS "/proc/$pid/status"
    idle_stop
    echo "$saved" >$around
    echo "@@STDERR"
    echo "@@EXIT idle-text 0"
}
idle_text

# virtio-blk throughput beside Firecracker (with --boot-bench, or alone
# with --only blk-bench): the same kernel, command line and images; the
# guest reads a 256 MiB disk (vda) with dd and copies it to a second (vdb)
# and syncs, timed by the guest: "BLK-BENCH vmm READ|COPY centiseconds";
# then 4 KiB random reads of vda and writes to vdb, O_DIRECT, one at a
# time, for 5 s each (hvm-randio): "BLK-BENCH vmm RANDREAD|RANDWRITE ops
# milliseconds"; alternating hvm and Firecracker.
blk_bench() {
    case " $HVM_LAB_ONLY " in *" boot-bench "* | *" blk-bench "*) ;; *) return ;; esac
    fc=${HVM_LAB_FIRECRACKER:-$(command -v firecracker)}
    B=$TMP/blk-bench
    mkdir -p "$B"
    [ -f "$B/src.img" ] || dd if=/dev/urandom of="$B/src.img" bs=1M count=256 2>/dev/null
    cmdline="console=ttyS0 reboot=k panic=-1 i8042.noaux i8042.nomux i8042.dumbkbd quiet hvm.mode=reboot \
hvm.run=t0=\$($GUEST_CS);dd,if=/dev/vda,of=/dev/null,bs=1M;t1=\$($GUEST_CS);echo,BLK-READ,\$((t1-t0));\
dd,if=/dev/vda,of=/dev/vdb,bs=1M;sync;t2=\$($GUEST_CS);echo,BLK-COPY,\$((t2-t1));\
hvm-randio,read,/dev/vda,5;hvm-randio,write,/dev/vdb,5"
    printf '[machine]\nvcpus = 1\nmemory = "512M"\n[kernel]\npath = "%s"\ninitrd = "%s"\ncmdline = "%s"\nreplace_cmdline = true\n[[drive]]\npath = "%s"\nread_only = true\n[[drive]]\npath = "%s"\n' \
        "$IMG/vmlinux" "$IMG/initramfs.cpio.gz" "$cmdline" "$B/src.img" "$B/dst.img" >"$B/vm.toml"
    printf '{"boot-source": {"kernel_image_path": "%s", "initrd_path": "%s", "boot_args": "%s"},\n "drives": [{"drive_id": "src", "path_on_host": "%s", "is_root_device": false, "is_read_only": true}, {"drive_id": "dst", "path_on_host": "%s", "is_root_device": false, "is_read_only": false}],\n "machine-config": {"vcpu_count": 1, "mem_size_mib": 512}}\n' \
        "$IMG/vmlinux" "$IMG/initramfs.cpio.gz" "$cmdline" "$B/src.img" "$B/dst.img" >"$B/vm.json"
    for i in $(seq 1 "${HVM_LAB_RUNS:-3}"); do
        name=blk-bench-$i
        case " $HVM_LAB_SKIP " in *" $name "*) continue ;; esac
        echo "@@START $name"
        echo "@@CASE $name"
        for vmm in hvm firecracker; do
            dd if=/dev/zero of="$B/dst.img" bs=1M count=256 2>/dev/null
            case $vmm in
            hvm) timeout 300 "$HVM" run "$B/vm.toml" ;;
            firecracker) [ -n "$fc" ] && timeout 300 "$fc" --no-api --level Off --config-file "$B/vm.json" ;;
            esac </dev/null 2>&1 | tr -d '\r' | sed -n -e "s/^BLK-\(READ\|COPY\) \([0-9]*\)/BLK-BENCH $vmm \1 \2/p" \
                -e "s/^RANDIO read \([0-9]* [0-9]*\)/BLK-BENCH $vmm RANDREAD \1/p" \
                -e "s/^RANDIO write \([0-9]* [0-9]*\)/BLK-BENCH $vmm RANDWRITE \1/p"
        done
        echo "@@STDERR"
        echo "@@EXIT $name 0"
    done
}
blk_bench

# TCP over tap beside Firecracker (with --boot-bench, or alone with --only
# tap-bench): one persistent tap both VMMs attach to (169.254.20.1 on L1's
# side, 169.254.20.2 in the guest), the same kernel and command line; the
# guest takes 32 MiB from hvm-netio on L1 and sends 32 MiB back, timed by
# the guest: "TAP-BENCH vmm DOWN|UP centiseconds". An upload counts once
# L1 has all of it (hvm-netio's sink answers with its count, which the
# guest waits for).
tap_bench() {
    case " $HVM_LAB_ONLY " in *" boot-bench "* | *" tap-bench "*) ;; *) return ;; esac
    fc=${HVM_LAB_FIRECRACKER:-$(command -v firecracker)}
    W=$TMP/tap-bench
    mkdir -p "$W"
    # iproute2's ip (the lab puts it at /hvm/ip; busybox ip has no tuntap).
    iproute=/hvm/ip
    [ -x "$iproute" ] || iproute=ip
    "$iproute" link show hvmtb0 >/dev/null 2>&1 || "$iproute" tuntap add hvmtb0 mode tap || { echo "TAP-BENCH-SKIPPED no persistent tap (needs iproute2's ip)"; return; }
    ip addr add 169.254.20.1/24 dev hvmtb0 2>/dev/null
    ip link set hvmtb0 up
    t=$GUEST_CS
    mib=32
    bytes=$((mib * 1048576))
    cmdline="console=ttyS0 reboot=k panic=-1 i8042.noaux i8042.nomux i8042.dumbkbd quiet hvm.mode=reboot \
hvm.run=ip,addr,add,169.254.20.2/24,dev,eth0;ip,link,set,eth0,up;i=0;until,ping,-c,1,-W,1,169.254.20.1;do,[,\$i,-gt,20,]&&break;i=\$((i+1));done;\
d0=\$($t);n=\$(hvm-netio,recv,169.254.20.1,5022);d1=\$($t);echo,TAP-DOWN,\$n,\$((d1-d0));\
u0=\$($t);hvm-netio,send,169.254.20.1,5021,$bytes;u1=\$($t);echo,TAP-UP,\$((u1-u0));echo,TAP-NETDEV,\$(grep,eth0,/proc/net/dev);echo,TAP-IRQS,\$(grep,virtio,/proc/interrupts)"
    printf '[machine]\nvcpus = 1\nmemory = "256M"\n[kernel]\npath = "%s"\ninitrd = "%s"\ncmdline = "%s"\nreplace_cmdline = true\n[[net]]\ntap = "hvmtb0"\nmac = "06:00:a9:fe:14:02"\n' \
        "$IMG/vmlinux" "$IMG/initramfs.cpio.gz" "$cmdline" >"$W/vm.toml"
    printf '{"boot-source": {"kernel_image_path": "%s", "initrd_path": "%s", "boot_args": "%s"},\n "drives": [], "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "hvmtb0", "guest_mac": "06:00:a9:fe:14:02"}],\n "machine-config": {"vcpu_count": 1, "mem_size_mib": 256}}\n' \
        "$IMG/vmlinux" "$IMG/initramfs.cpio.gz" "$cmdline" >"$W/vm.json"
    for i in $(seq 1 "${HVM_LAB_RUNS:-3}"); do
        name=tap-bench-$i
        case " $HVM_LAB_SKIP " in *" $name "*) continue ;; esac
        echo "@@START $name"
        echo "@@CASE $name"
        # A slow round says nothing for a minute: tell the lab's watchdog L1 lives.
        (while sleep 20; do echo TAP-BENCH-TICK; done) &
        ticker=$!
        for vmm in hvm firecracker; do
            [ "$vmm" = firecracker ] && [ -z "$fc" ] && continue
            rm -f "$W/up"
            /hvm/guest-images/hvm-netio serve 169.254.20.1:5022 "$bytes" &
            down_pid=$!
            /hvm/guest-images/hvm-netio sink 169.254.20.1:5021 >"$W/up" &
            up_pid=$!
            case $vmm in
            hvm) timeout 300 "$HVM" run "$W/vm.toml" ;;
            firecracker) timeout 300 "$fc" --no-api --level Off --config-file "$W/vm.json" ;;
            esac </dev/null 2>&1 | tr -d '\r' | sed -n -e "s/^TAP-DOWN *\([0-9]*\) \([0-9]*\)$/TAP-BENCH $vmm DOWN \2 \1/p" \
                -e "s/^TAP-UP \([0-9]*\)$/TAP-BENCH $vmm UP \1/p" -e "s/^TAP-\(NETDEV\|IRQS\) /TAP-GUEST $vmm \1 /p"
            echo "TAP-BENCH-HOST $vmm UP-BYTES $(cat "$W/up" 2>/dev/null | tr -dc 0-9)"
            kill $down_pid $up_pid 2>/dev/null
            wait $down_pid $up_pid 2>/dev/null
        done
        kill $ticker
        echo "@@STDERR"
        echo "@@EXIT $name 0"
    done
    "$iproute" tuntap del hvmtb0 mode tap 2>/dev/null
}
tap_bench

# Where a boot's time goes, kernel message by message, under hvm and under
# Firecracker (lab.py --only boot-dmesg --firecracker PATH): the boot
# benchmark's kernel and command line without `quiet`, each line with the
# guest's timestamp, prefixed "DMESG vmm".
# Where a --rootfs boot's time goes in the guest (lab.py --only
# rootfs-dmesg): `hvm run --rootfs /` as the benchmark runs it (quiet: the
# console prints next to nothing), its command the guest's uptime and its
# kernel log, timestamped, with every initcall's time and (-vv) each step
# of hvm's init, prefixed "DMESG-ROOTFS".
if case " $HVM_LAB_ONLY " in *" rootfs-dmesg "*) true ;; *) false ;; esac; then
    echo "@@START rootfs-dmesg"
    echo "@@CASE rootfs-dmesg"
    "$HVM" -vv run --stats --kernel "$IMG/bzImage" --memory 256M --append "printk.time=1 initcall_debug" \
        --rootfs / -- sh -c 'echo UPTIME $(cat /proc/uptime); dmesg' </dev/null 2>"$TMP/rootfs-dmesg.err" |
        sed 's/^/DMESG-ROOTFS /'
    grep -v '^\[DEBUG\]' "$TMP/rootfs-dmesg.err" | sed 's/^/DMESG-ROOTFS /'
    echo "@@STDERR"
    echo "@@EXIT rootfs-dmesg 0"
fi
if case " $HVM_LAB_ONLY " in *" boot-dmesg "*) true ;; *) false ;; esac; then
    fc=${HVM_LAB_FIRECRACKER:-$(command -v firecracker)}
    cmdline="console=ttyS0 reboot=k panic=-1 i8042.noaux i8042.nomux i8042.dumbkbd hvm.mode=reboot printk.time=1"
    spec=$TMP/dmesg.toml
    # HVM_LAB_RUNS picks the vCPUs (1 by default), with 256 MiB each.
    cpus=${HVM_LAB_RUNS:-1}
    [ "$cpus" -ge 1 ] 2>/dev/null || cpus=1
    mib=$((cpus * 256))
    printf '[machine]\nvcpus = %s\nmemory = "%sM"\n[kernel]\npath = "%s"\ninitrd = "%s"\ncmdline = "%s"\nreplace_cmdline = true\n' \
        "$cpus" "$mib" "$IMG/vmlinux" "$IMG/initramfs.cpio.gz" "$cmdline" >"$spec"
    echo "@@START boot-dmesg"
    echo "@@CASE boot-dmesg"
    timeout 120 "$HVM" run --stats "$spec" </dev/null 2>&1 | tr -d '\r' | sed 's/^/DMESG hvm /'
    if [ -n "$fc" ]; then
        printf '{"boot-source": {"kernel_image_path": "%s", "initrd_path": "%s", "boot_args": "%s"},\n "drives": [], "machine-config": {"vcpu_count": %s, "mem_size_mib": %s}}\n' \
            "$IMG/vmlinux" "$IMG/initramfs.cpio.gz" "$cmdline" "$cpus" "$mib" >"$TMP/dmesg.json"
        timeout 120 "$fc" --no-api --level Off --config-file "$TMP/dmesg.json" </dev/null 2>&1 | tr -d '\r' |
            sed 's/^/DMESG firecracker /'
    fi
    echo "@@STDERR"
    echo "@@EXIT boot-dmesg 0"
fi

# The virtio-fs benchmark (the benchmark's case 7; with --boot-bench): L1's
# root as the guest's root over virtio-fs, with the same virtiofsd and
# kernel under both VMMs. "FS-BENCH vmm roundtrip cs": from the VMM's start
# to its exit, for a guest that only boots and leaves (hvm: `hvm run
# --rootfs / -- true`, through hvm's init; QEMU: microvm, vhost-user-fs,
# busybox as init powering off; virtio-mmio made modern, as libvhost-user
# refuses legacy devices). "FS-BENCH vmm tree cs": the guest's own
# time to read a tree of 10,000 small files (tar to wc), timed in the guest.
fs_bench() {
    # (fs-bench: this case alone.)
    case " $HVM_LAB_ONLY " in *" boot-bench "* | *" fs-bench "*) ;; *) return ;; esac
    qemu=$(command -v qemu-system-x86_64)
    vfsd=/usr/libexec/virtiofsd
    [ -x "$vfsd" ] || { echo "FS-BENCH-SKIPPED no virtiofsd in L1"; return; }
    [ -d /hvm/tree ] || { echo "FS-BENCH-SKIPPED no /hvm/tree (lab.py makes it)"; return; }
    # All 10,000 files; a quick run (one pair: bench.py --quick, CI) reads 1,000.
    # A script on the shared root, run by both guests (no quoting through a
    # kernel command line); as QEMU's init it mounts /proc and powers off.
    dirs=/hvm/tree
    runs=${HVM_LAB_RUNS:-5}
    # A read that hangs (QEMU's has, now and then) ends at this limit: the
    # 10,000 files take ~80 s under QEMU, the 1,000 ~8 s.
    limit=300
    [ "$runs" = 1 ] && dirs=$(for d in $(seq 0 9); do printf '/hvm/tree/d%s ' $d; done) && limit=90
    cat >/hvm/fs-tree.sh <<EOF
[ "\$1" = init ] && /bin/busybox mount -t proc proc /proc
read t0 x </proc/uptime
n=\$(/bin/busybox tar cf - $dirs 2>/dev/null | /bin/busybox wc -c)
read t1 x </proc/uptime
echo FS-TREE-TIMES \$t0 \$t1 \$n
[ "\$1" = init ] && /bin/busybox poweroff -f
EOF
    echo 'exec /bin/busybox poweroff -f' >/hvm/fs-off.sh
    # (busybox sh aborts on "08" in arithmetic: L1's awk subtracts.)
    tree_cs() { tr -d '\r' | sed -n 's/^FS-TREE-TIMES //p' | awk '{printf "%d %d", ($2 - $1) * 100, $3}'; }
    # reboot=t: a panicking guest ends QEMU (-no-reboot) instead of looping.
    base="console=ttyS0 reboot=t panic=-1 i8042.noaux i8042.nomux i8042.dumbkbd quiet"
    qemu_fs() {
        # $1: what busybox as init runs (sh ARGS...); it powers off (ACPI GED).
        rm -f "$TMP/vfs.sock"
        "$vfsd" --socket-path="$TMP/vfs.sock" -o source=/ -o cache=auto -o sandbox=chroot 2>/dev/null &
        vfsd_pid=$!
        i=0; while [ ! -S "$TMP/vfs.sock" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
        timeout "$limit" "$qemu" -M microvm,x-option-roms=off,memory-backend=mem -accel kvm -cpu host,pmu=off \
            -m 256M -object memory-backend-memfd,id=mem,size=256M,share=on -nodefaults -no-user-config \
            -nographic -no-reboot -serial stdio -global virtio-mmio.force-legacy=false \
            -chardev socket,id=fs,path="$TMP/vfs.sock" -device vhost-user-fs-device,chardev=fs,tag=rootfs \
            -kernel "$IMG/bzImage" \
            -append "$base rootfstype=virtiofs root=rootfs ro init=/bin/busybox -- sh $1" \
            </dev/null 2>"$TMP/qemu-fs.err"
        wait $vfsd_pid
    }
    # With more than one run, an uncounted run first (as boot_bench does).
    first=1; [ "$runs" -gt 1 ] && first=0
    for i in $(seq $first "$runs"); do
        label=FS-BENCH; [ "$i" = 0 ] && label=FS-WARMUP
        name=fs-bench-$i
        case " $HVM_LAB_SKIP " in *" $name "*) continue ;; esac
        echo "@@START $name"
        echo "@@CASE $name"
        # A tree read takes minutes under TCG: tell the lab's watchdog L1 lives.
        (while sleep 20; do echo FS-BENCH-TICK; done) &
        ticker=$!
        read -r t0 _ </proc/uptime
        "$HVM" run --kernel "$IMG/bzImage" --memory 256M --rootfs / -- true </dev/null
        read -r t1 _ </proc/uptime
        echo "$label hvm roundtrip $((${t1%.*}${t1#*.} - ${t0%.*}${t0#*.}))"
        read -r t0 _ </proc/uptime
        qemu_fs /hvm/fs-off.sh >/dev/null
        read -r t1 _ </proc/uptime
        echo "$label qemu roundtrip $((${t1%.*}${t1#*.} - ${t0%.*}${t0#*.}))"
        echo "$label hvm tree $("$HVM" run --timeout "${limit}s" --kernel "$IMG/bzImage" --memory 256M --rootfs / -- sh /hvm/fs-tree.sh </dev/null 2>/dev/null | tree_cs)"
        echo "$label qemu tree $(qemu_fs "/hvm/fs-tree.sh init" | tree_cs)"
        [ -s "$TMP/qemu-fs.err" ] && sed 's/^/FS-QEMU-STDERR /' "$TMP/qemu-fs.err" | head -5
        kill $ticker
        echo "@@STDERR"
        echo "@@EXIT $name 0"
    done
    # Where hvm's round trip goes (uncounted): its phases and exits.
    case " $HVM_LAB_SKIP " in *" fs-stats "*) return ;; esac
    echo "@@START fs-stats"
    echo "@@CASE fs-stats"
    t0=$(now_cs)
    "$HVM" -v run --stats --kernel "$IMG/bzImage" --memory 256M --rootfs / -- true </dev/null 2>"$TMP/fs-stats.err"
    echo "FS-STATS process $(($(now_cs) - t0)) cs"
    grep -E '^hvm: stats|^\[INFO \]' "$TMP/fs-stats.err" | sed 's/^/FS-STATS /'
    echo "@@STDERR"
    echo "@@EXIT fs-stats 0"
}
fs_bench

# The network benchmark (the benchmark's case 8; with --boot-bench): TCP
# through user-mode networking, timed in the guest (the bundled one, DHCP):
# 32 MiB down and 32 MiB up between the guest and hvm-netio on L1's
# loopback (reached through the gateway address), under hvm with passt,
# QEMU with passt (-netdev stream) and QEMU with libslirp (-netdev user);
# then vsock under hvm alone (QEMU's needs /dev/vhost-vsock): 64 MiB from
# L1 to the guest. "NET-BENCH vmm down|up|vsock cs". Both ends are
# hvm-netio (guest-images/hvm-netio.c), 64 KiB per system call: busybox's
# nc (1 KiB per poll, read and write) and wc -c (byte by byte) cost more
# than the network under TCG and made every VMM look alike. On demand
# (--only net-stats), instead of the rounds: one hvm + passt transfer with
# `hvm run --stats`, whose report ("NET-STATS") says which part was busy.
net_bench() {
    case " $HVM_LAB_ONLY " in *" boot-bench "* | *" net-bench "* | *" net-stats "*) ;; *) return ;; esac
    stats_only=
    case " $HVM_LAB_ONLY " in *" net-stats "*) stats_only=1 ;; esac
    [ -x /usr/bin/passt ] || { echo "NET-BENCH-SKIPPED no passt in L1"; return; }
    qemu=$(command -v qemu-system-x86_64)
    user_net_setup
    N=$TMP/netbench
    mkdir -p "$N"
    netio=/hvm/guest-images/hvm-netio
    # (vsock's 64 MiB come from a file: L1's busybox yes | head would be
    # the slowest part.)
    dd if=/dev/zero of="$N/vsock.blob" bs=1048576 count=64 2>/dev/null
    # L1's ends, fresh for every VM (a transfer that stalled would keep
    # them busy): the download's server, and the upload's sink, which
    # counts what arrives (one line per connection) and answers with the
    # count, so the guest's clock stops when L1 has every byte, not when
    # its kernel still holds unsent data.
    fresh_ends() {
        for pid in $serve_pid $sink_pid; do { kill "$pid"; wait "$pid"; } 2>/dev/null; done
        "$netio" serve 8001 33554432 &
        serve_pid=$!
        : >"$N/up.bytes"
        "$netio" sink 5100 >>"$N/up.bytes" &
        sink_pid=$!
    }
    serve_pid= sink_pid=
    t=$GUEST_CS
    # (In two halves: net-stats reads the guest's counters between them.)
    down="g=\$(ip,route|awk,'/default/{print,\$3}');[,-z,\$g,]&&poweroff,-f;t0=\$($t);n=\$(hvm-netio,recv,\$g,8001);t1=\$($t);"
    up="hvm-netio,send,\$g,5100,33554432;t2=\$($t);echo,NET-BENCH-TIMES,\$((t1-t0)),\$((t2-t1)),\$n"
    run="$down$up"
    base="console=ttyS0 reboot=k panic=-1 i8042.noaux i8042.nomux i8042.dumbkbd quiet hvm.net=dhcp"
    # net_spec FILE RUN: the guest on a user-mode network, running RUN.
    net_spec() {
        printf '[machine]\nmemory = "256M"\n[kernel]\npath = "%s"\ninitrd = "%s"\ncmdline = "%s hvm.run=%s"\nreplace_cmdline = true\n[[net]]\n' \
            "$IMG/bzImage" "$IMG/initramfs.cpio.gz" "$base" "$2" >"$1"
    }
    spec=$N/net.toml
    net_spec "$spec" "$run"
    # "down up": the transfer times, or "-" for one that did not move all
    # 32 MiB (the guest's byte count, the sink's last line); the console
    # goes to $N/last.out, and its DHCP and error lines to the results.
    net_times() {
        tr -d '\r' >"$N/last.out"
        grep -E "HVM-GUEST-NET|hvm-netio:|hvm-vsock:" "$N/last.out" | sed 's/^/NET-BENCH-CONSOLE /' >&2
        sed -n 's/^NET-BENCH-TIMES //p' "$N/last.out" | {
            read -r down up bytes
            [ "$bytes" = 33554432 ] || down=-
            echo "NET-BENCH-UPBYTES $(tr '\n' ' ' <"$N/up.bytes")" >&2
            [ "$(tail -n1 "$N/up.bytes" 2>/dev/null)" = 33554432 ] || up=-
            echo "${down:--} ${up:--}"
        }
    }
    qemu_net() {
        timeout 300 "$qemu" -M microvm,x-option-roms=off -accel kvm -cpu host,pmu=off -m 256M \
            -nodefaults -no-user-config -nographic -no-reboot -serial stdio "$@" \
            -device virtio-net-device,netdev=n -kernel "$IMG/bzImage" -initrd "$IMG/initramfs.cpio.gz" \
            -append "$base hvm.run=$run" </dev/null 2>"$TMP/qemu-net.err"
    }
    runs=${HVM_LAB_RUNS:-5}
    first=1; [ "$runs" -gt 1 ] && first=0
    [ -n "$stats_only" ] && runs=-1
    for i in $(seq $first "$runs"); do
        label=NET-BENCH; [ "$i" = 0 ] && label=NET-WARMUP
        name=net-bench-$i
        case " $HVM_LAB_SKIP " in *" $name "*) continue ;; esac
        echo "@@START $name"
        echo "@@CASE $name"
        (while sleep 20; do echo NET-BENCH-TICK; done) &
        ticker=$!
        fresh_ends
        set -- $("$HVM" run --timeout 300s "$spec" </dev/null 2>/dev/null | net_times)
        echo "$label hvm-passt down $1"; echo "$label hvm-passt up $2"
        # In /tmp itself: passt binds after dropping to nobody, and $TMP is root's only.
        rm -f /tmp/hvm-bench-passt.sock
        passt -f -q -1 --runas 65534:65534 -s /tmp/hvm-bench-passt.sock 2>"$N/passt.err" &
        j=0; while [ ! -S /tmp/hvm-bench-passt.sock ] && [ $j -lt 100 ]; do sleep 0.05; j=$((j + 1)); done
        fresh_ends
        set -- $(qemu_net -netdev stream,id=n,server=off,addr.type=unix,addr.path=/tmp/hvm-bench-passt.sock | net_times)
        echo "$label qemu-passt down $1"; echo "$label qemu-passt up $2"
        [ -s "$TMP/qemu-net.err" ] && sed 's/^/NET-QEMU-PASST-STDERR /' "$TMP/qemu-net.err" | head -5
        [ -s "$N/passt.err" ] && grep -v syslog "$N/passt.err" | sed 's/^/NET-PASST-STDERR /' | head -5
        fresh_ends
        set -- $(qemu_net -netdev user,id=n | net_times)
        echo "$label qemu-slirp down $1"; echo "$label qemu-slirp up $2"
        [ -s "$TMP/qemu-net.err" ] && sed 's/^/NET-QEMU-STDERR /' "$TMP/qemu-net.err" | head -5
        # vsock: 64 MiB from L1 into the guest, timed in the guest.
        vspec=$N/vsock.toml
        rm -f "$N/vm.vsock"
        vrun="t0=\$($t);hvm-vsock,listen,5000,</dev/null|hvm-netio,count;t1=\$($t);echo,NET-BENCH-TIMES,\$((t1-t0))"
        printf '[machine]\nmemory = "256M"\n[kernel]\npath = "%s"\ninitrd = "%s"\ncmdline = "%s hvm.run=%s"\nreplace_cmdline = true\n[vsock]\ncid = 3\nsocket = "%s"\n' \
            "$IMG/bzImage" "$IMG/initramfs.cpio.gz" "${base% hvm.net=dhcp}" "$vrun" "$N/vm.vsock" >"$vspec"
        "$HVM" run --timeout 300s "$vspec" </dev/null 2>/dev/null >"$N/vsock.out" &
        vm=$!
        j=0
        until /hvm/guest-images/hvm-vsock unix-connect "$N/vm.vsock" 5000 <"$N/vsock.blob" >/dev/null 2>&1 ||
            [ $j -gt 300 ] || ! kill -0 $vm 2>/dev/null; do sleep 0.2; j=$((j + 1)); done
        wait $vm
        tr -d '\r' <"$N/vsock.out" | grep -E "hvm-vsock:|^[0-9]+$" | sed 's/^/NET-BENCH-CONSOLE /'
        v=$(tr -d '\r' <"$N/vsock.out" | sed -n 's/^NET-BENCH-TIMES //p')
        tr -d '\r' <"$N/vsock.out" | grep -qx 67108864 || v=-
        echo "$label hvm vsock ${v:--}"
        kill $ticker
        echo "@@STDERR"
        echo "@@EXIT $name 0"
    done
    if [ -n "$stats_only" ]; then
        echo "@@START net-stats"
        echo "@@CASE net-stats"
        # First as the rounds run it (the times alone), then with --stats
        # and the guest's interface and interrupt counters.
        fresh_ends
        echo "NET-STATS plain down/up $("$HVM" run --timeout 300s "$spec" </dev/null 2>/dev/null | net_times)"
        # As an ordinary user (net.core.wmem_max caps passt's socket buffer);
        # /dev/kvm as net_user_case opens it to uid 1000.
        if [ -n "$HVM_LAB_L1" ]; then chmod 0666 /dev/kvm; groups=--clear-groups; else groups=--groups=$(stat -c %g /dev/kvm); fi
        fresh_ends
        echo "NET-STATS unprivileged down/up $(/usr/bin/setpriv --reuid=1000 --regid=1000 $groups env HOME=/tmp \
            "$HVM" run --timeout 300s "$spec" </dev/null 2>/dev/null | net_times)"
        # (The guest's CPU line around each half: busy or waiting.)
        cpu="head,-1,/proc/stat;"
        net_spec "$N/stats.toml" "$cpu${down}${cpu}cat,/proc/net/dev;$up;${cpu}cat,/proc/net/dev,/proc/interrupts"
        fresh_ends
        echo "NET-STATS down/up $("$HVM" run --stats --timeout 300s "$N/stats.toml" </dev/null 2>"$N/stats.err" | net_times)"
        sed 's/^/NET-STATS /' "$N/stats.err"
        grep -E "eth0|lo:|virtio|Inter-|face|^cpu " "$N/last.out" | sed 's/^/NET-STATS guest /'
        echo "@@STDERR"
        echo "@@EXIT net-stats 0"
    fi
    kill $serve_pid $sink_pid 2>/dev/null
    wait $serve_pid $sink_pid 2>/dev/null
}
net_bench

rm -rf "$TMP"
echo "@@DONE"
