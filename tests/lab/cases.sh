#!/bin/sh
# Tier-2 cases: real Linux boots under hvm on a real KVM. Runs inside the
# nested lab's L1 (or directly on a host with hardware KVM). Usage:
#   cases.sh HVM IMAGES STOCK_KERNEL
# Prints, per case: "@@CASE name", the guest's console, "@@STDERR", hvm's
# stderr, "@@EXIT name code". The Rust test (tests/tier2.rs) parses this.
HVM=$1
IMG=$2
STOCK=$3
TMP=${TMPDIR:-/tmp}/hvm-cases.$$
mkdir -p "$TMP"

# case NAME KERNEL INITRD VCPUS MEMORY CMDLINE [hvm options...]
case_() {
    name=$1 kernel=$2 initrd=$3 vcpus=$4 memory=$5 cmdline=$6
    shift 6
    spec=$TMP/$name.toml
    {
        echo "[machine]"
        echo "vcpus = $vcpus"
        echo "memory = \"$memory\""
        echo "[kernel]"
        echo "path = \"$kernel\""
        [ -n "$initrd" ] && echo "initrd = \"$initrd\""
        echo "cmdline = \"$cmdline\""
    } >"$spec"
    "$HVM" -v run --timeout 180s "$@" "$spec" >"$TMP/$name.out" 2>"$TMP/$name.err" </dev/null
    code=$?
    echo "@@CASE $name"
    cat "$TMP/$name.out"
    echo
    echo "@@STDERR"
    cat "$TMP/$name.err"
    echo "@@EXIT $name $code"
}

Q="quiet"
case_ bzimage-1cpu-128M "$IMG/bzImage" "$IMG/initramfs.cpio.gz" 1 128M "$Q"
case_ vmlinux-2cpu-512M "$IMG/vmlinux" "$IMG/initramfs.cpio.gz" 2 512M "$Q"
case_ smp4-1536M "$IMG/bzImage" "$IMG/initramfs.cpio.gz" 4 1536M "$Q"
case_ mem-3584M "$IMG/vmlinux" "$IMG/initramfs.cpio.gz" 1 3584M "$Q"
case_ mem-6G "$IMG/vmlinux" "$IMG/initramfs.cpio.gz" 2 6G "$Q"
case_ debug-exit-7 "$IMG/vmlinux" "$IMG/initramfs.cpio.gz" 1 256M "$Q hvm.mode=exit hvm.exit=7"
case_ reboot "$IMG/vmlinux" "$IMG/initramfs.cpio.gz" 1 256M "$Q hvm.mode=reboot"
case_ panic "$IMG/vmlinux" "$IMG/initramfs.cpio.gz" 1 256M "$Q rdinit=/does-not-exist"
if [ -n "$STOCK" ]; then
    case_ debian-cloud-2cpu "$STOCK" "$IMG/initramfs.cpio.gz" 2 512M "$Q"
fi
rm -rf "$TMP"
echo "@@DONE"
