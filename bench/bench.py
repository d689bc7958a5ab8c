#!/usr/bin/env python3
"""hvm's benchmark: hvm against Firecracker and QEMU's microvm machine,
measured in the same run, interleaved (hvm, Firecracker, QEMU, hvm, ...),
reported as medians with min and max and the hvm/peer ratios of medians.

Firecracker is optional test equipment: --firecracker PATH, $HVM_FIRECRACKER,
../shared/peers/firecracker beside the project, or `firecracker` on PATH;
without one its columns say "skipped" and everything else runs.

    bench/bench.py            # full run: 2 warm-up + 10 counted runs per case; writes docs/benchmarks.md
    bench/bench.py --quick    # 1 run per case, nothing written to docs (CI uses this so the script never rots)

All VMMs boot the same tier-1 test guest (guest-images/tiny/hvmtest.elf):
hvm through its 64-bit Linux boot path, QEMU and Firecracker through the
guest's PVH note. The guest prints one line on COM1 and leaves through port
0xf4 (hvm's debug-exit; QEMU's isa-debug-exit) or, under Firecracker, which
has neither that nor ACPI power-off, through the i8042 reset line; or it
idles in HLT, or loops on port writes.

Cases:
 1. start-up and teardown (256 MiB, 1 vCPU): process start -> first serial
    byte, -> process exit; hvm's own timeline from `hvm -v`; and what the
    system call filters cost (hvm against hvm --seccomp=off, interleaved).
 2. memory: peak RSS at 128 MiB, 1 GiB, 16 GiB and 64 GiB configured, and
    overhead = RSS - resident guest RAM (from /proc/PID/smaps) while idle.
 3. vCPU scaling: case 1's exit time with 1, 2, 4, 8 and 16 vCPUs.
 4. exit path: 100,000 OUTs to an unused port; exits/s = 100000 / (time of
    that run - time of a plain run).
 5. Linux boot: process start -> the bundled Linux guest's ready line, hvm,
    Firecracker and QEMU microvm on the same KVM (tests/lab/lab.py
    --boot-bench: the nested lab's L1, or this host if it has hardware
    KVM), 1 and 2 vCPUs; in the same L1, case 2's Linux rows: what hvm and
    Firecracker hold beside an idle Linux guest (RSS minus the resident
    part of guest RAM).
 6. virtio throughput in the nested lab, from the last tier-2 run if present.
 7. virtio-fs in the same lab run as case 5: a one-command run's round trip
    (`hvm run --rootfs / -- true`) and reading 10,000 small files, against
    QEMU microvm with vhost-user-fs and the same virtiofsd.
 8. user-mode networking in the same lab run: TCP 32 MiB down and up
    (hvm-netio both ends) through hvm + passt, against QEMU + the same passt (-netdev
    stream) and QEMU's libslirp (-netdev user); and vsock 64 MiB into the
    guest under hvm (QEMU's vsock needs /dev/vhost-vsock, which L1 lacks).
"""
import argparse
import datetime
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUEST = os.path.join(ROOT, "guest-images", "tiny", "hvmtest.elf")
HVM = os.path.join(ROOT, "target", "x86_64-unknown-linux-gnu", "release", "hvm")
QEMU = shutil.which("qemu-system-x86_64")
MiB = 1 << 20
# What the lab's TCP-over-tap case moves each way (tests/lab/cases.sh, tap_bench).
TAP_BENCH_BYTES = 32 << 20
# The peers, in column order after hvm's.
PEERS = [("firecracker", "Firecracker"), ("qemu", "QEMU microvm")]


def find_firecracker(given):
    """Firecracker is test equipment the project must not need: None when absent."""
    for path in [given, os.environ.get("HVM_FIRECRACKER"),
                 os.path.join(ROOT, "..", "shared", "peers", "firecracker"), shutil.which("firecracker")]:
        if path and os.access(path, os.X_OK):
            return os.path.realpath(path)
    if given:
        raise SystemExit(f"bench: --firecracker {given}: not an executable file")
    return None


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class Run:
    """One VMM process: wall times from fork, peak RSS, output."""

    first_byte = exit = peak_rss = rss = overhead = None
    code = 0
    stdout = stderr = ""


def run_measured(argv, idle_probe=False):
    """Runs argv and also records peak RSS (ru_maxrss) through wait4."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    r = Run()
    first = proc.stdout.read(1)
    r.first_byte = time.monotonic() - start if first else None
    r.rss = r.overhead = None
    if idle_probe and first:
        time.sleep(0.2)
        r.rss, r.overhead = memory_of(proc.pid)
        os.kill(proc.pid, signal.SIGTERM)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status = os.waitpid(proc.pid, 0)
    r.exit = time.monotonic() - start
    r.code = os.waitstatus_to_exitcode(status)
    r.peak_rss = r.rss
    r.stdout = (first + out).decode(errors="replace")
    r.stderr = err.decode(errors="replace")
    proc.returncode = r.code
    return r


def memory_of(pid):
    """(peak RSS, RSS minus resident guest RAM) in bytes. Guest RAM is every
    anonymous mapping of 100 MiB or more (no VMM here has another that big).
    The peak is VmHWM: wait4's ru_maxrss would count the benchmark's own
    pre-exec fork of Python."""
    with open(f"/proc/{pid}/status") as f:
        hwm = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))
    rss = guest = 0
    size = 0
    anon = False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                lo, hi = (int(x, 16) for x in head[0].split("-"))
                size = hi - lo
                anon = len(head) < 6  # no path: anonymous
            elif head and head[0] == "Rss:":
                kb = int(head[1]) * 1024
                rss += kb
                if anon and size >= 100 * MiB:
                    guest += kb
    return hwm, rss - guest


def check_link_order():
    """Warns when link-order/hot-functions.txt no longer names the binary's
    functions (symbol hashes change with the toolchain and dependencies):
    the binary then works as well but maps more of itself (case 2)."""
    listed = set(open(os.path.join(ROOT, "link-order", "hot-functions.txt")).read().split())
    nm = subprocess.run(["nm", "--defined-only", HVM], capture_output=True, text=True)
    present = {line.split()[-1] for line in nm.stdout.splitlines() if line.strip()}
    found = len(listed & present)
    if found < 0.9 * len(listed):
        log(f"link-order/hot-functions.txt is stale: {found} of its {len(listed)} functions are in {HVM}; "
            "regenerate it (python3 link-order/profile.py) for case 2's memory figures")
    else:
        log(f"link order: {found} of {len(listed)} hot functions placed first")


def hvm_argv(spec_dir, vcpus, mem_mib, cmdline, verbose=False):
    path = os.path.join(spec_dir, f"bench-{vcpus}-{mem_mib}-{abs(hash(cmdline))}.toml")
    with open(path, "w") as f:
        f.write(f'[machine]\nvcpus = {vcpus}\nmemory = "{mem_mib}M"\n'
                f'[kernel]\npath = "{GUEST}"\ncmdline = "{cmdline}"\nreplace_cmdline = true\n')
    return [HVM] + (["-v"] if verbose else []) + ["run", path]


def qemu_argv(vcpus, mem_mib, cmdline):
    return [QEMU, "-M", "microvm,x-option-roms=off,rtc=off", "-accel", "kvm",
            "-smp", str(vcpus), "-m", f"{mem_mib}M", "-nodefaults", "-no-user-config",
            "-nographic", "-serial", "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=1",
            "-kernel", GUEST, "-append", cmdline]


def firecracker_argv(fc, spec_dir, vcpus, mem_mib, cmdline):
    """Firecracker without its API socket, logging off (it logs to stdout);
    the guest leaves by the i8042 reset, Firecracker's way out."""
    path = os.path.join(spec_dir, f"fc-{vcpus}-{mem_mib}-{abs(hash(cmdline))}.json")
    with open(path, "w") as f:
        f.write('{"boot-source": {"kernel_image_path": "%s", "boot_args": "%s exit=reset"},\n'
                ' "drives": [], "machine-config": {"vcpu_count": %d, "mem_size_mib": %d}}\n'
                % (GUEST, cmdline, vcpus, mem_mib))
    return [fc, "--no-api", "--level", "Off", "--config-file", path]


def linux_boots(runs, fc, reuse=False):
    """Case 5: tests/lab/lab.py --boot-bench: {config: {vmm: [seconds]}}.

    An L1 that dies repeatedly (see tests/lab/lab.py) is reported, not fatal;
    an L1 that finishes without numbers is a broken benchmark and is."""
    out = os.path.join(ROOT, "target", "lab", "boot-bench.txt")
    if reuse:
        log(f"cases 5-8: the results of the last lab run ({out})")
        lab = subprocess.CompletedProcess([], 0)
    else:
        log(f"case 5: Linux boot in the nested lab, {runs} run(s) each (a few minutes)")
        lab = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "lab", "lab.py"), "--hvm", HVM,
                              "--out", out, "--boot-bench", str(runs), "--timeout", "3600"]
                             + (["--firecracker", fc] if fc else []))
    boots = {}
    text = open(out, errors="replace").read() if os.path.exists(out) else ""
    for vmm, config, cs in re.findall(r"^BOOT-BENCH (hvm|firecracker|qemu) (\S+) (\d+)$", text, re.M):
        boots.setdefault(config, {}).setdefault(vmm, []).append(int(cs) / 100)
    if lab.returncode != 0 or "(L1 died twice during this case)" in text:
        log(f"case 5: the nested lab's L1 kept dying (exit {lab.returncode}); see {out}")
    elif len(boots) != 2 or any(not t.get("hvm") for t in boots.values()):
        # L1 ran every round, yet hvm printed no time: the benchmark is broken.
        raise SystemExit(f"bench: case 5 produced no hvm results; see {out}")
    for config, times in boots.items():
        if not times.get("qemu"):
            # QEMU's 2-vCPU guests sometimes crash early in L1 (see
            # tests/lab/cases.sh): a peer's miss is reported, not fatal.
            log(f"case 5: {config}: QEMU printed no time (BOOT-STDERR lines in {out} say why, if it did)")
    for config, times in boots.items():
        counts = {vmm: len(times.get(vmm, [])) for vmm in ("hvm", "firecracker", "qemu")}
        if min(counts.values()) < runs:
            log(f"case 5: {config}: runs of {runs} per VMM: {counts} (an L1 crash, or no Firecracker in L1)")
    # Case 7 runs in the same L1: virtio-fs (FS-BENCH vmm what centiseconds [bytes]).
    fs = {}
    for vmm, what, cs in re.findall(r"^FS-BENCH (hvm|qemu) (roundtrip|tree) (\d+)", text, re.M):
        pair = fs.setdefault(what, ([], []))
        pair[0 if vmm == "hvm" else 1].append(int(cs) / 100)
    if "FS-BENCH-SKIPPED" in text:
        log("case 7: skipped: no virtiofsd in L1 (apt-get install qemu-system-common)")
    # Case 8, the same L1: NET-BENCH vmm what centiseconds.
    net = {}
    for vmm, what, cs in re.findall(r"^NET-BENCH (hvm-passt|qemu-passt|qemu-slirp|hvm) (down|up|vsock) (\d+)",
                                    text, re.M):
        net.setdefault((vmm, what), []).append(int(cs) / 100)
    if "NET-BENCH-SKIPPED" in text:
        log("case 8: skipped: no passt in L1 (apt-get install passt)")
    # Case 2's Linux rows, the same L1: IDLE-MEM vmm config rss_kib guest_kib.
    idle = {}
    for vmm, config, rss, guest in re.findall(r"^IDLE-MEM (hvm|firecracker) (\S+) (\d+) (\d+)", text, re.M):
        idle.setdefault(config, {}).setdefault(vmm, []).append((int(rss) - int(guest)) * 1024)
    # Case 6 beside Firecracker, the same L1: BLK-BENCH vmm READ|COPY
    # centiseconds (MiB/s), and RANDREAD|RANDWRITE ops milliseconds (IOPS).
    blk = {}
    for vmm, what, cs in re.findall(r"^BLK-BENCH (hvm|firecracker) (READ|COPY) (\d+)$", text, re.M):
        if int(cs) > 0:
            blk.setdefault(what, {}).setdefault(vmm, []).append(256 / (int(cs) / 100))
    for vmm, what, ops, ms in re.findall(r"^BLK-BENCH (hvm|firecracker) (RANDREAD|RANDWRITE) (\d+) (\d+)$",
                                         text, re.M):
        if int(ms) > 0:
            blk.setdefault(what, {}).setdefault(vmm, []).append(int(ops) / (int(ms) / 1000))
    # TCP over tap beside Firecracker, the same L1: "TAP-BENCH vmm DOWN cs
    # bytes" (counted when every byte came), "TAP-BENCH vmm UP cs" (counted
    # when the next "TAP-BENCH-HOST vmm UP-BYTES n" says L1 got them all).
    pending_up = {}
    for line in text.splitlines():
        m = re.match(r"^TAP-BENCH (hvm|firecracker) DOWN (\d+) (\d+)$", line)
        if m and int(m[2]) > 0 and int(m[3]) == TAP_BENCH_BYTES:
            blk.setdefault("TCP-DOWN", {}).setdefault(m[1], []).append(TAP_BENCH_BYTES / MiB / (int(m[2]) / 100))
        m = re.match(r"^TAP-BENCH (hvm|firecracker) UP (\d+)$", line)
        if m:
            pending_up[m[1]] = int(m[2])
        m = re.match(r"^TAP-BENCH-HOST (hvm|firecracker) UP-BYTES (\d*)$", line)
        if m:
            cs = pending_up.pop(m[1], 0)
            if cs > 0 and m[2] == str(TAP_BENCH_BYTES):
                blk.setdefault("TCP-UP", {}).setdefault(m[1], []).append(TAP_BENCH_BYTES / MiB / (cs / 100))
    # Beside case 5, the same L1: each VMM's own start and stop with the
    # tiny guest (VMM-START vmm config centiseconds).
    start = {}
    for vmm, config, cs in re.findall(r"^VMM-START (hvm|firecracker) (\S+) (\d+)$", text, re.M):
        start.setdefault(config, {}).setdefault(vmm, []).append(int(cs) / 100)
    return boots, fs, net, idle, blk, start


def stats(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return statistics.median(values), min(values), max(values)


TIMELINE = ["command line parsed", "spec parsed", "seccomp filters compiled", "memory mapped", "KVM VM created", "kernel loaded",
            "virtio devices attached", "file access limited", "first KVM_RUN"]


def timeline(stderr):
    out = {}
    for name in TIMELINE:
        m = re.search(re.escape(name) + r": ([0-9.]+) ms", stderr)
        if m:
            out[name] = float(m.group(1)) / 1e3
    return out


class Table:
    """Rows of medians (min–max) per VMM and hvm/peer ratios of medians.
    A peer that is not installed shows "skipped"; one that has no run for
    a row (it cannot do that work) shows "n/a"."""

    def __init__(self, skipped=()):
        self.rows = []
        self.skipped = set(skipped)

    def add(self, case, unit, values, scale=1.0):
        """values: {"hvm": [...], "firecracker": [...], "qemu": [...]}."""
        self.rows.append((case, unit, {k: stats(v) for k, v in values.items()}, scale))

    def markdown(self):
        def cell(s, scale):
            if s is None:
                return "n/a"
            med, lo, hi = (v * scale for v in s)
            # Three significant digits, never in exponent form.
            num = lambda v: f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
            return f"{num(med)} ({num(lo)}–{num(hi)})"

        head = "| case | unit | hvm median (min–max) |"
        for _, label in PEERS:
            head += f" {label} median (min–max) | hvm / {label.split()[0]} |"
        lines = [head, "|" + " --- |" * (3 + 2 * len(PEERS))]
        for case, unit, values, scale in self.rows:
            h = values.get("hvm")
            line = f"| {case} | {unit} | {cell(h, scale)} |"
            for key, _ in PEERS:
                p = values.get(key)
                if key in self.skipped and key in values:
                    line += " skipped | – |"
                    continue
                ratio = f"{h[0] / p[0]:.2f}" if h and p and p[0] else "n/a"
                line += f" {cell(p, scale)} | {ratio} |"
            lines.append(line)
        return "\n".join(lines)


def kvm_kind():
    if os.path.exists("/sys/module/kvm_pvm"):
        return "kvm_pvm (software KVM without VMX/SVM)"
    try:
        if re.search(r"\b(vmx|svm)\b", open("/proc/cpuinfo").read()):
            return "hardware KVM (vmx/svm)"
    except OSError:
        pass
    return "unknown"


def interleaved(runs, warmup, makers, idle_probe=False):
    """Runs each of makers' VMMs in turn (hvm, peer, peer, hvm, ...),
    warmup+runs rounds; returns {name: [counted Run, ...]}. A maker that
    is None (its VMM is not installed) is left out."""
    makers = {k: m for k, m in makers.items() if m is not None}
    out = {k: [] for k in makers}
    for i in range(warmup + runs):
        for name, make in makers.items():
            r = run_measured(make(), idle_probe)
            if i >= warmup:
                out[name].append(r)
    return out


def check(run, what, expect_text):
    if expect_text not in run.stdout:
        log(f"{what}: unexpected output (exit {run.code}):\n{run.stdout[-500:]}\n{run.stderr[-500:]}")
        return False
    return True


def built_commit():
    """The commit being built, as `abc1234`, or `abc1234` plus local changes."""
    git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    head = git("rev-parse", "--short", "HEAD") or "?"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "src", "Cargo.toml", "Cargo.lock")
    return f"commit `{head}`" + (" with uncommitted changes to src" if dirty else "")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 run per case, no warm-up; docs untouched")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--no-build", action="store_true", help="use target/x86_64-unknown-linux-gnu/release/hvm as it is")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks.md"))
    ap.add_argument("--no-linux", action="store_true", help="skip case 5 (Linux boots in the nested lab)")
    ap.add_argument("--firecracker", metavar="PATH", help="the Firecracker binary (default: see above)")
    ap.add_argument("--reuse-lab", action="store_true",
                    help="take cases 5-8 from the last lab run (target/lab/boot-bench.txt) instead of a new one")
    # A pair (hvm, then QEMU) takes ~20 s under the lab's TCG; 5 pairs per
    # configuration keep the whole benchmark under 10 minutes on 2 CPUs.
    ap.add_argument("--linux-runs", type=int, default=5, help="counted Linux boot pairs per configuration (case 5)")
    args = ap.parse_args()
    runs, warmup = (1, 0) if args.quick else (args.runs, args.warmup)
    # What is measured is what is built now: commits made during a long run
    # must not be credited with its figures.
    commit = built_commit()
    if not args.no_build:
        log("building hvm (release)")
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    check_link_order()
    if QEMU is None:
        raise SystemExit("bench: qemu-system-x86_64 not found: apt-get install qemu-system-x86")
    fc = find_firecracker(args.firecracker)
    if fc is None:
        log("Firecracker not found (--firecracker PATH, $HVM_FIRECRACKER, ../shared/peers/firecracker "
            "or PATH): its columns are skipped")
    started = time.monotonic()
    table = Table(skipped=[] if fc else ["firecracker"])
    spec_dir = tempfile.mkdtemp(prefix="hvm-bench-")
    hello = "mode=hello"

    def vmms(vcpus, mib, cmdline, verbose=False):
        """The three VMMs' argv makers for one tiny-guest configuration."""
        return {"hvm": lambda: hvm_argv(spec_dir, vcpus, mib, cmdline, verbose),
                "firecracker": (lambda: firecracker_argv(fc, spec_dir, vcpus, mib, cmdline)) if fc else None,
                "qemu": lambda: qemu_argv(vcpus, mib, cmdline)}

    def column(runs_by_vmm, field):
        """{vmm: [field of each run]} for Table.add; skipped peers get an empty list."""
        out = {k: [getattr(r, field) for r in v] for k, v in runs_by_vmm.items()}
        out.setdefault("firecracker", [])
        return out

    # 1. Start-up and teardown.
    log("case 1: start-up and teardown")
    res = interleaved(runs, warmup, vmms(1, 256, hello, verbose=True))
    for r in sum(res.values(), []):
        check(r, "case 1", "Hello from the hvm tiny guest")
    table.add("1. start → first serial byte", "ms", column(res, "first_byte"), 1e3)
    table.add("1. start → process exit", "ms", column(res, "exit"), 1e3)
    tl = [timeline(r.stderr) for r in res["hvm"]]
    for name in TIMELINE:
        table.add(f"1. hvm timeline: {name}", "ms", {"hvm": [t.get(name) for t in tl]}, 1e3)
    baseline = {k: statistics.median(r.exit for r in v) for k, v in res.items()}

    # 1. What the system call filters cost: hvm as it is against hvm
    # --seccomp=off, interleaved; the row is the per-pair difference.
    log("case 1: seccomp filters' cost")

    def without_filters():
        argv = hvm_argv(spec_dir, 1, 256, hello)
        return argv[:2] + ["--seccomp=off"] + argv[2:]

    res = interleaved(runs, warmup, {"on": lambda: hvm_argv(spec_dir, 1, 256, hello), "off": without_filters})
    for r in res["on"] + res["off"]:
        check(r, "case 1 (seccomp)", "Hello from the hvm tiny guest")
    table.add("1. seccomp filters' cost: start → exit, on − off", "ms",
              {"hvm": [a.exit - b.exit for a, b in zip(res["on"], res["off"])]}, 1e3)

    # 2. Memory: peak RSS is VmHWM, read while the guest idles.
    for mib in (128, 1024, 16384, 65536):
        log(f"case 2: memory {mib} MiB")
        res = interleaved(runs if not args.quick else 1, 0 if args.quick else 1, vmms(1, mib, "mode=spin"),
                          idle_probe=True)
        size = f"{mib // 1024 if mib >= 1024 else mib} {'GiB' if mib >= 1024 else 'MiB'}"
        for name, rs in res.items():
            if any(r.first_byte is None for r in rs):
                log(f"  {name} failed at {size}: {rs[0].stderr.strip()[:200]}")
            res[name] = [r for r in rs if r.first_byte is not None]
        table.add(f"2. peak RSS, {size}", "MiB", column(res, "peak_rss"), 1 / MiB)
        table.add(f"2. overhead (RSS − guest RAM), {size}", "MiB", column(res, "overhead"), 1 / MiB)

    # 3. vCPU scaling.
    for n in (1, 2, 4, 8, 16):
        log(f"case 3: {n} vCPUs")
        res = interleaved(runs, warmup, vmms(n, 256, hello))
        table.add(f"3. start → exit, {n} vCPU{'s' if n > 1 else ''}", "ms", column(res, "exit"), 1e3)

    # 4. Exit path.
    log("case 4: 100,000 port writes")
    n = 100_000
    res = interleaved(max(3, runs // 2) if not args.quick else 1, 0 if args.quick else 1,
                      vmms(1, 256, f"mode=ioloop n={n}"))
    for r in sum(res.values(), []):
        check(r, "case 4", "ioloop done")
    rates = {k: [n / max(r.exit - baseline[k], 1e-6) for r in v] for k, v in res.items()}
    rates.setdefault("firecracker", [])
    table.add("4. port-I/O exits per second", "exits/s", rates)

    # 5. Linux boot, hvm and QEMU on a KVM that runs Linux (the nested lab).
    if args.no_linux:
        log("case 5: skipped (--no-linux)")
    else:
        boots, fs, net, idle, blk, start = linux_boots(1 if args.quick else args.linux_runs, fc, args.reuse_lab)
        for what, label, unit in (("READ", "read 256 MiB (dd bs=1M)", "MiB/s"),
                                  ("COPY", "copy 256 MiB disk→disk + sync", "MiB/s"),
                                  ("RANDREAD", "4 KiB random reads (O_DIRECT, 1 in flight)", "IOPS"),
                                  ("RANDWRITE", "4 KiB random writes (O_DIRECT, 1 in flight)", "IOPS")):
            if what in blk:
                blk[what].setdefault("firecracker", [])
                table.add(f"6. virtio-blk {label}, 1 vCPU, nested lab (higher is better)", unit, blk[what])
        for what, label in (("TCP-DOWN", "host→guest"), ("TCP-UP", "guest→host")):
            if what in blk:
                blk[what].setdefault("firecracker", [])
                table.add(f"6. virtio-net TCP over tap {label} 32 MiB (hvm-netio), 1 vCPU, nested lab "
                          "(higher is better)", "MiB/s", blk[what])
        # The lab's rows per machine ("1cpu-128M"), beside Firecracker's.
        for rows, label, unit, scale in ((idle, "2. Linux guest idle, {}: overhead (RSS − guest RAM resident), "
                                          "nested lab", "MiB", 1 / MiB),
                                         (boots, "5. Linux boot → guest ready, {}", "ms", 1e3),
                                         (start, "5. tiny guest start → exit in the same L1 (the VMM's own share "
                                          "of a boot), {}", "ms", 1e3)):
            for config, values in rows.items():
                cpus, mib = config.split("-")
                values.setdefault("firecracker", [])
                machine = f"{cpus[0]} vCPU{'s' if cpus[0] != '1' else ''}, {mib[:-1]} MiB"
                table.add(label.format(machine), unit, values, scale)
        labels = {"roundtrip": "7. `run --rootfs / -- true`: start → exit (QEMU: vhost-user-fs, busybox init)",
                  "tree": f"7. read {'1,000' if args.quick else '10,000'} small files over virtio-fs (tar to wc, in the guest)"}
        for what, (hvm_s, qemu_s) in fs.items():
            table.add(labels[what], "ms", {"hvm": hvm_s, "qemu": qemu_s}, 1e3)
        # Throughput from the guest's own timings (higher is better).
        rate = lambda mib, secs: [mib / s for s in secs if s > 0]
        for what, arrow in (("down", "host→guest"), ("up", "guest→host")):
            hvm_rate = rate(32, net.get(("hvm-passt", what), []))
            for peer, name in (("qemu-passt", "QEMU + passt"), ("qemu-slirp", "QEMU slirp")):
                peer_rate = rate(32, net.get((peer, what), []))
                if hvm_rate or peer_rate:
                    table.add(f"8. TCP {arrow} 32 MiB, user-mode: hvm + passt vs {name}", "MiB/s",
                              {"hvm": hvm_rate, "qemu": peer_rate})
        vsock = rate(64, net.get(("hvm", "vsock"), []))
        if vsock:
            table.add("8. vsock host→guest 64 MiB (hvm alone)", "MiB/s", {"hvm": vsock})

    # 6. virtio throughput in the nested lab (TCG-slow: the ratios tell, not the numbers).
    results = os.path.join(ROOT, "target", "lab", "results.txt")
    text = open(results, errors="replace").read() if os.path.exists(results) else ""
    def centis(key):
        m = re.search(key + r" (\d+)", text)
        return int(m.group(1)) / 100 if m and int(m.group(1)) > 0 else None
    mib_s = lambda mib, secs: mib / secs if secs else None
    for label, key, mib in (("virtio-blk read 256 MiB in the guest", "GUEST-READ-256M-CENTISECONDS", 256),
                            ("same file read by L1 (host side)", "HOST-READ-256M-CENTISECONDS", 256),
                            ("virtio-blk copy 256 MiB disk→disk + sync", "GUEST-COPY-256M-CENTISECONDS", 256),
                            ("virtio-net TCP guest→host 4 MiB", "GUEST-NET-UP-4MIB-CENTISECONDS", 4),
                            ("virtio-net TCP host→guest 4 MiB", "GUEST-NET-DOWN-4MIB-CENTISECONDS", 4)):
        v = mib_s(mib, centis(key))
        if v:
            table.add(f"6. {label}, nested lab", "MiB/s", {"hvm": [v]})

    shutil.rmtree(spec_dir, ignore_errors=True)
    fc_version = (subprocess.run([fc, "--version"], capture_output=True, text=True).stdout.splitlines() or ["?"])[0] \
        if fc else "Firecracker skipped (not found)"
    qemu_version = subprocess.run([QEMU, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    report = f"""# Benchmarks

Measured {datetime.date.today().isoformat()} with the release build of {commit} on {os.cpu_count()} CPUs, host KVM:
{kvm_kind()}. Peers: {fc_version}; {qemu_version}, `-M microvm`. {runs} counted runs per
case after {warmup} warm-up runs ({1 if args.quick else args.linux_runs} boot rounds per configuration
after one warm-up round for case 5), the VMMs interleaved; wall {time.monotonic() - started:.0f} s.

Reproduce: `bench/bench.py --firecracker PATH` (builds hvm in release mode first; needs
qemu-system-x86; without a Firecracker binary its columns say "skipped").

{table.markdown()}

Notes:
- All VMMs boot the same guest (`guest-images/tiny/hvmtest.elf`): hvm
  through its Linux 64-bit boot path, QEMU and Firecracker through the
  guest's PVH note. Under Firecracker the guest leaves by the i8042 reset
  (`exit=reset`), its only way out; hvm and QEMU take the debug-exit port.
- Firecracker runs as `firecracker --no-api --level Off --config-file
  vm.json` (no API socket; logging off, as it logs to stdout).
- Times are from the benchmark's fork to the first byte on the VMM's stdout
  and to its exit. hvm's timeline is measured from the start of `main`.
- Peak RSS is the process's VmHWM while the guest idles (after boot).
  Most of it is each VMM's own code, mapped 64 KiB around every page it
  runs (the kernel's fault-around): hvm is one static binary whose
  start-up functions are laid out together (link-order/); Firecracker
  links glibc and libgcc_s dynamically, and their code counts too.
- Overhead is the process RSS minus the resident part of the guest RAM
  mappings, read from /proc/PID/smaps while the guest idles in HLT.
- Exits per second: 100,000 / (time of the I/O-loop run − median time of a
  plain case-1 run).
- QEMU cannot start a 64 GiB guest on this 24 GiB host ("cannot set up guest
  memory 'microvm.ram': Cannot allocate memory" under the kernel's default
  overcommit heuristic); hvm maps guest RAM with MAP_NORESERVE and can.
- Case 7 runs in the same L1 as case 5, with L1's own root as the guest's
  root over virtio-fs, the same virtiofsd (Debian 12's, from QEMU 7.2) and
  the same bzImage: hvm through `hvm run --rootfs / -- true` (its own init
  mounts, overlays and runs the command), QEMU `-M microvm` with
  `vhost-user-fs-device` on a shared memfd backend and busybox as init
  powering off at once. The file tree is 100 directories of 100 small
  files (`--quick` reads 10 of them), read with `tar cf -` into `wc -c` and
  timed by the guest.
- Case 8 runs in the same L1 too: the bundled guest leases its address
  from the user-mode network by DHCP, then receives 32 MiB from a server
  on L1's loopback (reached at the gateway address) and sends 32 MiB to a
  sink there that answers with its count, timed by the guest; both ends
  are `hvm-netio` (guest-images/hvm-netio.c, 64 KiB per system call:
  busybox's nc moves 1 KiB per poll, read and write and its wc -c counts
  byte by byte, which under TCG cost more than the network); hvm and
  QEMU (`-M microvm`, virtio-net-device) run the same kernel, initramfs and
  command line, QEMU once with the same passt (`-netdev stream`, passt on a
  Unix socket) and once with libslirp (`-netdev user`). The vsock row is
  hvm alone: 64 MiB from a file through `hvm-vsock unix-connect` in L1 to
  `hvm-vsock listen | hvm-netio count` in the guest. A transfer that did
  not move every byte is not counted (n/a). Debian 12's passt
  (0.0~git20230309) drops the frames its socket cannot take in one
  sendmsg and gets them to the guest again only after the guest's TCP
  notices the gap; hvm gives passt's end of the socket a larger send
  buffer and drains it into a buffer of its own while the guest has no
  room (docs/spec.md), QEMU's stream netdev does neither, so QEMU +
  passt's downloads swing with the retransmissions.
- Case 6 beside Firecracker runs in the same L1 as case 5, both VMMs with
  the same vmlinux, initramfs and command line, alternating, timed by the
  guest: virtio-blk reads a 256 MiB image (dd bs=1M) and copies it to a
  second one and syncs, then `hvm-randio` (guest-images/hvm-randio.c)
  does 4 KiB random reads of the first and writes to the second, O_DIRECT,
  one request in flight, 5 s each; TCP over one persistent tap both VMMs
  attach to in turn: 32 MiB host→guest and guest→host with hvm-netio on
  both ends (an upload counts once L1 has every byte). Firecracker's drives use its
  default cache type ("Unsafe": it offers the guest no flush command,
  so its copy + sync never waits for the host disk; hvm's does).
- Case 6's hvm-only rows come from the last tier-2 run: guest-side timings
  (1/100 s) of the blk-256M and net-tap cases, and L1 reading the same
  image file.
- Where hvm's time goes (perf sched_switch stacks, `perf record -e
  sched:sched_switch -g -- target/x86_64-unknown-linux-gnu/release/hvm run SPEC`): hvm registers
  guest RAM before KVM's irqchip exists, because a memory slot added after
  the irqchip's and PIT's I/O-bus registrations waits 5–9 ms for an SRCU
  grace period; it creates no PIT (Linux does not use one on hvm's
  hardware-reduced ACPI machine), whose teardown waited ~9 ms more at exit.
  What remains after "VM stopped" is the kernel destroying the VM:
  `srcu_barrier` in `kvm_destroy_vm` waits for the SRCU callbacks KVM
  queued when the irqchip registered its I/O devices, which complete
  ~12–15 ms after the VM was created. This guest stops sooner (~4 ms) and
  waits ~11 ms; a guest that runs 30 ms exits 1–2 ms after it stops.
- Case 5 runs inside the nested lab's L1 (QEMU TCG with an emulated AMD
  CPU, real KVM via kvm_amd), timed by L1's clock (1/100 s): from the VMM's
  start to the guest's `HVM-GUEST-READY` line. Both VMMs boot the same
  bzImage, initramfs and command line (QEMU: `-M microvm -cpu host`, qboot
  firmware loading the kernel through fw_cfg). The VMMs' own user space runs
  under TCG there, which magnifies every VMM-side start-up cost (QEMU's 50
  shared libraries, its firmware); a hardware host shows the guest's part at
  native speed.
"""
    print(report)
    if not args.quick:
        with open(args.out, "w") as f:
            f.write(report)
        log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
