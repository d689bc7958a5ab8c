#!/usr/bin/env python3
"""hvm's nested test lab: a real KVM for machines whose own /dev/kvm cannot
run Linux.

It boots a stock Debian 6.12 cloud kernel (L1) under QEMU's TCG with an
emulated AMD CPU (SVM + nested paging), loads kvm and kvm_amd there, and runs
tests/lab/cases.sh: hvm (the binary under test, with the libraries it links)
boots the bundled guest images and the stock kernel as L2 guests. Results
come back on L1's second serial port. Where the host has hardware KVM
(vmx/svm in /proc/cpuinfo) the same cases run directly, without QEMU.

    tests/lab/lab.py --hvm target/x86_64-unknown-linux-gnu/debug/hvm --out target/lab/results.txt

Downloads (apt-get download) are cached in target/lab-cache.
Needs: qemu-system-x86, busybox-static, cpio, xz-utils (Debian packages).
"""
import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
KERNEL_PACKAGE = r"^linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64-unsigned$"
# dummy: an interface with a default route, which passt needs.
L1_MODULES = ["kvm-amd", "tun", "dummy"]
# Seconds without new results before an L1 is declared stuck (the slowest
# cases, 4 MiB each way over virtio-net or 256 MiB through virtio-blk, take
# 20 to 60 s; a busy host can double that).
STALL = 180
# What the stock kernel needs as modules to use hvm's virtio-mmio devices.
STOCK_GUEST_MODULES = ["virtio-mmio", "virtio-blk", "virtio-rng"]


def log(msg):
    print(f"lab: {msg}", file=sys.stderr, flush=True)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def hardware_kvm():
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return os.path.exists("/dev/kvm") and re.search(r"\b(vmx|svm)\b", flags) is not None


def fetch_kernel(cache):
    """The newest Debian 6.12 cloud kernel package, unpacked (cached)."""
    os.makedirs(cache, exist_ok=True)
    debs = sorted(glob.glob(os.path.join(cache, "linux-image-6.12.*cloud-amd64-unsigned*.deb")))
    if not debs:
        out = subprocess.run(["apt-cache", "search", "--names-only", KERNEL_PACKAGE],
                             capture_output=True, text=True, check=True).stdout
        names = sorted((line.split()[0] for line in out.splitlines() if line.strip()),
                       key=lambda n: [int(x) for x in re.findall(r"\d+", n)])
        if not names:
            raise SystemExit("lab: no linux-image-6.12.*-cloud-amd64-unsigned package; run apt-get update")
        log(f"downloading {names[-1]}")
        run(["apt-get", "download", "-q", names[-1]], cwd=cache, stdout=subprocess.DEVNULL)
        debs = sorted(glob.glob(os.path.join(cache, "linux-image-6.12.*cloud-amd64-unsigned*.deb")))
    deb = debs[-1]
    tree = os.path.join(cache, os.path.basename(deb)[:-4])
    if not os.path.isdir(tree):
        tmp = tree + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        run(["dpkg-deb", "-x", deb, tmp])
        os.rename(tmp, tree)
    vmlinuz = glob.glob(os.path.join(tree, "boot", "vmlinuz-*"))[0]
    moddir = glob.glob(os.path.join(tree, "lib", "modules", "*"))[0]
    return vmlinuz, moddir


def module_paths(moddir, names):
    """Module files for `names` and their dependencies, dependencies first."""
    version = os.path.basename(moddir)
    dep = os.path.join(moddir, "modules.dep")
    if not os.path.exists(dep):
        run(["depmod", "-b", os.path.dirname(os.path.dirname(os.path.dirname(moddir))), version])
    deps = {}
    for line in open(dep):
        mod, _, rest = line.partition(":")
        deps[mod] = rest.split()
    by_name = {os.path.basename(m).split(".ko")[0].replace("_", "-"): m for m in deps}
    order = []

    def visit(m):
        for d in deps.get(m, []):
            visit(d)
        if m not in order:
            order.append(m)

    for n in names:
        visit(by_name[n])
    return [os.path.join(moddir, m) for m in order]


def copy_modules(moddir, names, dst_dir):
    """Copies (decompressed) `names` and their dependencies into dst_dir;
    returns the file names in load order."""
    os.makedirs(dst_dir, exist_ok=True)
    order = []
    for path in module_paths(moddir, names):
        name = os.path.basename(path).split(".ko")[0] + ".ko"
        dst = os.path.join(dst_dir, name)
        if path.endswith(".xz"):
            with open(dst, "wb") as f:
                run(["xz", "-dc", path], stdout=f)
        else:
            shutil.copy(path, dst)
        order.append(name)
    return order


def modules_cpio(moddir, names, work, out_name):
    """A cpio with /modules/*.ko (decompressed) and /modules/order."""
    root = os.path.join(work, out_name + ".root")
    order = copy_modules(moddir, names, os.path.join(root, "modules"))
    with open(os.path.join(root, "modules", "order"), "w") as f:
        f.write("\n".join(order) + "\n")
    out = os.path.join(work, out_name)
    files = subprocess.run(["find", "."], cwd=root, capture_output=True, text=True, check=True).stdout
    with open(out, "wb") as f:
        subprocess.run(["cpio", "--quiet", "-o", "-H", "newc"], cwd=root, input=files.encode(), stdout=f, check=True)
    return out


def concat_initrd(out, *parts):
    """Concatenates initramfs archives. Linux reads them one after the other;
    an uncompressed cpio must start 4-byte aligned, and zero padding between
    archives is skipped."""
    with open(out, "wb") as f:
        for part in parts:
            with open(part, "rb") as src:
                data = src.read()
            f.write(data + b"\0" * (-len(data) % 512))


def shared_libs(binary):
    out = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
    libs = []
    for line in out.splitlines():
        m = re.search(r"(/\S+)", line.split("=>")[-1])
        if m and os.path.exists(m.group(1)):
            libs.append(m.group(1))
    return libs


def copy_with_libs(binary, root, dst):
    """Copies binary to root/dst and the shared libraries it links to their own paths."""
    target = os.path.join(root, dst.lstrip("/"))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copy(binary, target)
    for lib in shared_libs(binary):
        lib_dst = os.path.join(root, lib.lstrip("/"))
        os.makedirs(os.path.dirname(lib_dst), exist_ok=True)
        shutil.copy(lib, lib_dst)


def add_qemu(root):
    """QEMU for the boot benchmark's peer: its binary, libraries and microvm firmware."""
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        raise SystemExit("lab: qemu-system-x86_64 is missing: apt-get install qemu-system-x86")
    copy_with_libs(os.path.realpath(qemu), root, "/usr/bin/qemu-system-x86_64")
    firmware = os.path.join(os.path.dirname(os.path.realpath(qemu)), "..", "share", "qemu", "bios-microvm.bin")
    os.makedirs(os.path.join(root, "usr/share/qemu"), exist_ok=True)
    shutil.copy(firmware, os.path.join(root, "usr/share/qemu/bios-microvm.bin"))


def build_l1_initramfs(work, hvm, images, vmlinuz, moddir, with_qemu=False, firecracker=None):
    root = os.path.join(work, "root")
    # etc, var, home, root and run as on a real system: the --rootfs cases
    # boot L1's own root, and hvm's init puts overlays on the first four.
    for d in ["bin", "proc", "sys", "dev", "tmp", "modules", "hvm/guest-images", "hvm/examples",
              "etc", "var", "home", "root", "run"]:
        os.makedirs(os.path.join(root, d), exist_ok=True)
    shutil.copy("/bin/busybox", os.path.join(root, "bin/busybox"))
    applets = subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            os.symlink("busybox", os.path.join(root, "bin", applet))
    names = copy_modules(moddir, L1_MODULES, os.path.join(root, "modules"))
    copy_with_libs(hvm, root, "/hvm/hvm")
    # gdb for the GDB stub case: Debian's gdb-minimal (no Python, whose
    # standard library L1 does not have).
    gdb = shutil.which("gdb")
    if gdb and not any("libpython" in lib for lib in shared_libs(gdb)):
        copy_with_libs(gdb, root, "/hvm/gdb")
    else:
        log("no gdb without Python (apt-get install gdb-minimal): the lab skips its gdb case")
    # util-linux's script(1): a pseudo-terminal for the interactive
    # one-command case (busybox has none).
    script = shutil.which("script")
    if script:
        copy_with_libs(script, root, "/usr/bin/script")
    # passt for the user-mode network cases, and setpriv to run hvm there
    # as an ordinary user (no root, no capabilities).
    for tool, where, package in [("passt", "/usr/bin/passt", "passt"), ("setpriv", "/usr/bin/setpriv", "util-linux")]:
        found = shutil.which(tool)
        if found:
            copy_with_libs(os.path.realpath(found), root, where)
        else:
            log(f"no {tool} (apt-get install {package}): the lab's user-mode network cases will fail")
    # virtiofsd for the virtio-fs cases, where hvm looks for one.
    virtiofsd = next((p for p in [shutil.which("virtiofsd"), "/usr/libexec/virtiofsd",
                                  "/usr/lib/qemu/virtiofsd"] if p and os.path.exists(p)), None)
    if virtiofsd:
        copy_with_libs(os.path.realpath(virtiofsd), root, "/usr/libexec/virtiofsd")
    else:
        log("no virtiofsd (apt-get install qemu-system-common): the lab's share cases will fail")
    # iproute2's ip for the TCP-over-tap benchmark's persistent tap
    # (busybox ip has no tuntap).
    ip = shutil.which("ip")
    if ip and os.path.realpath(ip) != os.path.realpath("/bin/busybox"):
        copy_with_libs(os.path.realpath(ip), root, "/hvm/ip")
    if firecracker:
        # The boot benchmark's second peer (test equipment, given with --firecracker).
        copy_with_libs(firecracker, root, "/usr/bin/firecracker")
    if with_qemu:
        add_qemu(root)
        # The virtio-fs benchmark's tree: 100 directories of 100 small
        # files (made here: busybox under TCG would take a minute).
        for d in range(100):
            os.makedirs(os.path.join(root, f"hvm/tree/d{d}"), exist_ok=True)
            for f in range(100):
                with open(os.path.join(root, f"hvm/tree/d{d}/f{f}"), "w") as out:
                    out.write(f"file {d}/{f} of the hvm tree benchmark\n")
    for img in ["bzImage", "vmlinux", "initramfs.cpio.gz", "example-disk.img", "hvm-tools"]:
        shutil.copy(os.path.join(images, img), os.path.join(root, "hvm/guest-images", img))
    # L1's side of the vsock and network cases runs the guest's tools too.
    for tool in ["hvm-vsock", "hvm-netio"]:
        os.symlink("hvm-tools", os.path.join(root, "hvm/guest-images", tool))
    shutil.copy(os.path.join(images, "tiny", "hvmtest.elf"), os.path.join(root, "hvm/guest-images/hvmtest.elf"))
    with open(os.path.join(root, "hvm/keepalive.toml"), "w") as f:
        f.write('[machine]\nmemory = "16M"\n[kernel]\npath = "/hvm/guest-images/hvmtest.elf"\n'
                'cmdline = "mode=spin"\nreplace_cmdline = true\n[serial]\noutput = "off"\n')
    for example in glob.glob(os.path.join(ROOT, "examples", "*.toml")):
        shutil.copy(example, os.path.join(root, "hvm/examples"))
    shutil.copy(vmlinuz, os.path.join(root, "hvm/guest-images/stock-vmlinuz"))
    # The stock kernel's initrd: the bundled initramfs plus its virtio modules.
    extra = modules_cpio(moddir, STOCK_GUEST_MODULES, work, "stock-modules.cpio")
    concat_initrd(os.path.join(root, "hvm/guest-images/stock-initrd"), os.path.join(images, "initramfs.cpio.gz"), extra)
    shutil.copy(os.path.join(HERE, "cases.sh"), os.path.join(root, "hvm/cases.sh"))
    # The loader's cache, as every Debian host has one: without it each
    # program started in L1 (and hvm's init, over virtio-fs) probes a dozen
    # directories for every library it links.
    with open(os.path.join(root, "etc/ld.so.conf"), "w") as f:
        f.write("/lib/x86_64-linux-gnu\n/usr/lib/x86_64-linux-gnu\n")
    if subprocess.run(["ldconfig", "-r", root], capture_output=True).returncode != 0:
        log("ldconfig failed: L1's programs search for their libraries (slower starts)")
    insmods = "\n".join(f"insmod /modules/{n} || echo '@@LAB insmod {n} failed' >/dev/ttyS1" for n in names)
    init = f"""#!/bin/sh
# The root is the initramfs itself (rootfs), where pivot_root fails, and
# with it the sandboxes of passt and virtiofsd: first move a bind mount of
# it over / and go on from there, as from a disk.
if [ -z "$HVM_LAB_REROOTED" ]; then
    mkdir -p /l1root
    mount -o rbind / /l1root && cd /l1root && mount -o move . / &&
        HVM_LAB_REROOTED=1 exec chroot . /init
    echo "@@LAB cannot re-root L1: sandboxes will fail" >/dev/ttyS1
fi
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
mount -t tmpfs tmp /tmp
{insmods}
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        hvm_lab.skip=*) export HVM_LAB_SKIP="$(echo "${{arg#hvm_lab.skip=}}" | tr , ' ')" ;;
        hvm_lab.only=*) export HVM_LAB_ONLY="$(echo "${{arg#hvm_lab.only=}}" | tr , ' ')" ;;
        hvm_lab.runs=*) export HVM_LAB_RUNS="${{arg#hvm_lab.runs=}}" ;;
    esac
done
if [ -e /dev/kvm ]; then
    # A vCPU that lives as long as L1: KVM flips the scheduler's preempt-notifier
    # static key when the first vCPU appears and the last one goes, and
    # TCG's multi-threaded CPUs race with that text patching (int3 oopses in
    # __schedule). With one vCPU always there, the key never flips again.
    /hvm/hvm run /hvm/keepalive.toml </dev/null >/dev/null 2>&1 &
    echo "@@LAB kvm ready" >/dev/ttyS1
    export PATH=/usr/bin:/bin HVM_LAB_L1=1
    sh /hvm/cases.sh /hvm/hvm /hvm/guest-images /hvm/guest-images/stock-vmlinuz /hvm/examples >/dev/ttyS1 2>&1
else
    echo "@@LAB no /dev/kvm in L1" >/dev/ttyS1
    dmesg | tail -20 >/dev/ttyS1
fi
poweroff -f
"""
    with open(os.path.join(root, "init"), "w") as f:
        f.write(init)
    os.chmod(os.path.join(root, "init"), 0o755)
    cpio = os.path.join(work, "l1.cpio")
    files = subprocess.run(["find", "."], cwd=root, capture_output=True, text=True, check=True).stdout
    with open(cpio, "wb") as f:
        subprocess.run(["cpio", "--quiet", "-o", "-H", "newc"], cwd=root, input=files.encode(),
                       stdout=f, check=True)
    return cpio


def completed_cases(text):
    """The blocks of cases that finished ("@@CASE name" .. "@@EXIT name code")."""
    blocks, current, name = {}, [], None
    for line in text.splitlines(keepends=True):
        if line.startswith("@@CASE "):
            name, current = line.split()[1], [line]
        elif name:
            current.append(line)
            if line.startswith(f"@@EXIT {name} "):
                blocks[name] = "".join(current)
                name = None
    return blocks


def run_l1(vmlinuz, cpio, results, console_log, timeout, skip=(), only="", runs=0):
    # The boot benchmark reports every ~20 s; a silent minute is a stuck L1.
    stall = 60 if runs else STALL
    # tsc=reliable: no clocksource watchdog, whose verdict under TCG would
    # flip sched_clock's static key (more text patching; see the init script).
    append = "console=ttyS0 quiet panic=-1 oops=panic tsc=reliable"
    if runs:
        append += f" hvm_lab.runs={runs}"
    if only:
        append += " hvm_lab.only=" + only
    if skip:
        append += " hvm_lab.skip=" + ",".join(skip)
    cmd = [
        "qemu-system-x86_64", "-accel", "tcg,thread=multi", "-smp", os.environ.get("HVM_LAB_SMP", "2"), "-m", "4096",
        "-cpu", "EPYC,+svm,+npt", "-nographic", "-no-reboot", "-nodefaults",
        "-kernel", vmlinuz, "-initrd", cpio,
        "-append", append,
        "-serial", f"file:{console_log}", "-serial", f"file:{results}",
    ]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # A watchdog: L1 under TCG has been seen to go idle for good in the
    # middle of a case (timers stop); when the results stop growing for
    # STALL seconds, L1 is killed and the next attempt resumes.
    last_size, last_change = -1, time.monotonic()
    while proc.poll() is None:
        time.sleep(2)
        size = os.path.getsize(results) if os.path.exists(results) else 0
        now = time.monotonic()
        if size != last_size:
            last_size, last_change = size, now
        if now - last_change > stall or now - started > timeout:
            log(f"L1 made no progress for {now - last_change:.0f} s; stopping it")
            proc.kill()
            proc.wait()
            break
    log(f"L1 ran {time.monotonic() - started:.1f} s")
    return os.path.exists(results) and "@@DONE" in open(results, errors="replace").read()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hvm", required=True, help="the hvm binary to test")
    ap.add_argument("--images", default=os.path.join(ROOT, "guest-images"))
    ap.add_argument("--cache", default=os.path.join(ROOT, "target", "lab-cache"))
    ap.add_argument("--out", required=True, help="where the results go")
    ap.add_argument("--timeout", type=int, default=900, help="seconds for one L1 run")
    ap.add_argument("--nested", action="store_true", help="use the nested lab even with hardware KVM")
    ap.add_argument("--bench", action="store_true", help="run only the throughput case (virtio-blk 256 MiB)")
    ap.add_argument("--only", default="", help="comma-separated case names to run (default: all)")
    ap.add_argument("--boot-bench", type=int, metavar="RUNS", default=0,
                    help="run only the Linux boot benchmark, hvm against QEMU microvm (and Firecracker), RUNS times each")
    ap.add_argument("--firecracker", metavar="PATH", help="a Firecracker binary for the boot benchmark (optional)")
    args = ap.parse_args()
    if args.bench:
        args.only = "blk-256M"
    if args.boot_bench and not args.only:
        # (--only with --boot-bench N: those cases, with N as their
        # HVM_LAB_RUNS; boot-dmesg takes it as its vCPU count.)
        args.only = "boot-bench"
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    vmlinuz, moddir = fetch_kernel(args.cache)

    if hardware_kvm() and not args.nested:
        log("hardware KVM: running the cases directly")
        with tempfile.TemporaryDirectory(prefix="hvm-lab-") as work:
            images = os.path.join(work, "guest-images")
            shutil.copytree(args.images, images, ignore=shutil.ignore_patterns("tiny", "*.sh"))
            extra = modules_cpio(moddir, STOCK_GUEST_MODULES, work, "stock-modules.cpio")
            concat_initrd(os.path.join(images, "stock-initrd"), os.path.join(images, "initramfs.cpio.gz"), extra)
            env = dict(os.environ, HVM_LAB_ONLY=args.only.replace(",", " "), HVM_LAB_RUNS=str(args.boot_bench),
                       HVM_LAB_FIRECRACKER=os.path.abspath(args.firecracker) if args.firecracker else "")
            with open(args.out, "w") as f:
                subprocess.run(["sh", os.path.join(HERE, "cases.sh"), os.path.abspath(args.hvm), images, vmlinuz,
                                os.path.join(ROOT, "examples")],
                               stdout=f, stderr=subprocess.STDOUT, env=env)
        return 0

    if shutil.which("qemu-system-x86_64") is None:
        raise SystemExit("lab: qemu-system-x86_64 is missing: apt-get install qemu-system-x86")
    with tempfile.TemporaryDirectory(prefix="hvm-lab-") as work:
        cpio = build_l1_initramfs(work, args.hvm, args.images, vmlinuz, moddir,
                                  with_qemu=args.boot_bench > 0 or "net-bench" in args.only,
                                  firecracker=args.firecracker)
        console = os.path.splitext(args.out)[0] + "-l1-console.log"
        text = run_until_done(args, vmlinuz, cpio, console, args.only)
        if text is None:
            return 1
        # One more L1 for the cases whose guest died of a triple fault: the
        # guests' CPU is TCG's emulation of AMD's SVM, and once in a while a
        # busy Linux guest triple-faults in it without a word on its console
        # (KVM on AMD resets the vCPU at a shutdown, so the registers tell
        # nothing). No tier-2 case expects one, so a guest that does it
        # again is reported; the first attempt stays in OUT.before-retry.
        blocks = completed_cases(text)
        retry = [name for name, block in blocks.items() if "guest crashed: triple fault" in block]
        if retry:
            log(f"the guest of {', '.join(retry)} triple-faulted; running once more in a new L1")
            with open(f"{args.out}.before-retry", "w") as f:
                f.write(text)
            again = run_until_done(args, vmlinuz, cpio, console, ",".join(retry))
            if again is not None:
                redone = completed_cases(again)
                for name in retry:
                    if name in redone:
                        note = f"@@RETRIED {name}: the first attempt's guest triple-faulted ({args.out}.before-retry)\n"
                        text = text.replace(blocks[name], note + redone[name])
        with open(args.out, "w") as f:
            f.write(text)
        return 0


def run_until_done(args, vmlinuz, cpio, console, only):
    """Boots L1 until every case in `only` (or every case) has finished;
    returns the results, or None if L1 never finished.

    L1 under TCG is not reliable: with -smp 2 it often oopses in KVM (an
    int3 in kvm_arch_vcpu_ioctl_run, a cross-CPU text-patching race of
    TCG's), and with -smp 1 it sometimes stalls for good (caught by the
    watchdog). -smp 2 (HVM_LAB_SMP overrides) crashes fast and runs the
    cases fastest. A dead L1 is booted again and runs only the cases it had
    not finished."""
    done, crashes = {}, {}
    for attempt in range(1, 6):
        if os.path.exists(args.out):
            os.remove(args.out)
        log(f"booting L1 (attempt {attempt}; {len(done)} cases already done)")
        ok = run_l1(vmlinuz, cpio, args.out, console, args.timeout, skip=sorted(done), only=only,
                    runs=args.boot_bench)
        text = open(args.out, errors="replace").read() if os.path.exists(args.out) else ""
        if ok:
            return "".join(done.values()) + text
        for path in (console, args.out):
            if os.path.exists(path):
                shutil.copy(path, f"{path}.attempt{attempt}")
        finished = completed_cases(text)
        done.update(finished)
        # The case that was running when L1 died: after two deaths it is
        # reported as failed (exit -1) instead of being run a third time.
        # The rounds of a benchmark (NAME-1, NAME-2, ...) count together:
        # a workload that kills L1 twice is not run in its other rounds.
        started_cases = re.findall(r"^@@START (\S+)", text, re.M)
        if started_cases and started_cases[-1] not in finished:
            stuck = started_cases[-1]
            series = re.sub(r"-\d+$", "", stuck)
            crashes[series] = crashes.get(series, 0) + 1
            if crashes[series] >= 2:
                rounds = [f"{series}-{i}" for i in range(max(args.boot_bench, 1) + 1)] if series != stuck else []
                for name in [stuck] + [r for r in rounds if r not in done and r != stuck]:
                    done[name] = f"@@CASE {name}\n(L1 died twice during this case)\n@@STDERR\n@@EXIT {name} -1\n"
    log(f"L1 never finished; see {console}.attempt*")
    # What did finish, for the benchmark (without @@DONE: tests fail on it).
    with open(args.out, "w") as f:
        f.write("".join(done.values()) + text)
    return None

if __name__ == "__main__":
    sys.exit(main())
