#!/usr/bin/env bash
# Builds the bundled test guest: a small Linux kernel (bzImage and ELF vmlinux)
# from Debian's linux-source-6.12 and a busybox-static initramfs.
#
#   guest-images/build.sh            # kernel + initramfs (about 10 minutes on 2 cores)
#   guest-images/build.sh initramfs  # initramfs only (seconds)
#
# Needs (Debian): linux-source-6.12 busybox-static bc bison flex libelf-dev
# libssl-dev cpio xz-utils gcc make (gcc and libc6-dev also build hvm-tools,
# the guest's own test and benchmark tools).
# The outputs are committed with their checksums
# (SHA256SUMS) so a fresh clone boots without building anything; the build
# pins timestamps and names so it is reproducible byte for byte with the same
# toolchain and source package.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=${HVM_GUEST_BUILD_DIR:-$here/../target/guest-build}
what=${1:-all}
mkdir -p "$work"

export SOURCE_DATE_EPOCH=1700000000
export KBUILD_BUILD_TIMESTAMP="2023-11-14 22:13:20 UTC"
export KBUILD_BUILD_USER=hvm KBUILD_BUILD_HOST=hvm KBUILD_BUILD_VERSION=1

build_kernel() {
    local tarball
    tarball=$(ls /usr/src/linux-source-6.12*.tar.xz | head -n1)
    local src=$work/linux
    if [ ! -f "$src/Makefile" ]; then
        rm -rf "$src" && mkdir -p "$src"
        tar -xf "$tarball" -C "$src" --strip-components=1
    fi
    if [ -f "$here/kernel.config" ]; then
        cp "$here/kernel.config" "$src/.config"
        make -C "$src" olddefconfig >/dev/null
    else
        make -C "$src" tinyconfig >/dev/null
        "$src/scripts/kconfig/merge_config.sh" -m -O "$src" "$src/.config" "$here/kernel.fragment" >/dev/null
        make -C "$src" olddefconfig >/dev/null
        cp "$src/.config" "$here/kernel.config"
    fi
    make -C "$src" -j"$(nproc)" bzImage vmlinux
    cp "$src/arch/x86/boot/bzImage" "$here/bzImage"
    # The ELF vmlinux: same kernel, loaded without decompression. Only debug
    # sections are stripped (there is no DWARF anyway); the symbol table stays
    # so gdb can use it (`gdb guest-images/vmlinux`, `break start_kernel`, `bt`).
    objcopy --strip-debug "$src/vmlinux" "$here/vmlinux"
}

build_initramfs() {
    local root=$work/initramfs
    rm -rf "$root" && mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,tmp,mnt,root}
    cp /bin/busybox "$root/bin/busybox"
    for applet in $("$root/bin/busybox" --list); do
        [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
    done
    install -m 0755 "$here/init" "$root/init"
    # The guest's own test and benchmark tools, one static binary (see
    # hvm-tools.c): hvm-vsock (busybox has no AF_VSOCK), hvm-netio (bulk
    # TCP; busybox's nc and wc would measure themselves) and hvm-randio
    # (random 4 KiB I/O; no fio here). The lab's L1 runs the same binary
    # for the host side, so it is kept next to the images too.
    gcc -static -Os -Wall -o "$work/hvm-tools" "$here"/hvm-tools.c "$here"/hvm-vsock.c \
        "$here"/hvm-netio.c "$here"/hvm-randio.c
    strip "$work/hvm-tools"
    install -m 0755 "$work/hvm-tools" "$root/bin/hvm-tools"
    for tool in hvm-vsock hvm-netio hvm-randio; do ln -s hvm-tools "$root/bin/$tool"; done
    install -m 0755 "$work/hvm-tools" "$here/hvm-tools"
    find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
    (cd "$root" && find . -print0 | LC_ALL=C sort -z |
        cpio --null --create --format=newc --owner=0:0 --reproducible 2>/dev/null) |
        gzip -9 -n >"$here/initramfs.cpio.gz"
}

case "$what" in
    all) build_kernel; build_initramfs ;;
    kernel) build_kernel ;;
    initramfs) build_initramfs ;;
    *) echo "usage: $0 [all|kernel|initramfs]" >&2; exit 2 ;;
esac
(cd "$here" && sha256sum bzImage vmlinux initramfs.cpio.gz hvm-tools >SHA256SUMS 2>/dev/null || true)
echo "built in $here"
