#!/usr/bin/env python3
"""Soak: boot and end the tiny test guest many times, several at once, and
check that nothing grows or stays behind.

Each run has a drive (read by the guest), an entropy device, a vsock
socket and a control socket, so each one opens, locks, binds and removes
what a real VM does. After every run this checks hvm's exit code and the
guest's output; at the end, that hvm's open descriptors and RSS at exit
(its `-v` line "at exit: N descriptors open, RSS K KiB") did not grow
from the first runs to the last, and that no hvm file is left in the
runtime directory or the temp directory.

    python3 tests/soak.py --hvm target/x86_64-unknown-linux-gnu/debug/hvm --runs 1000 --parallel 8

Needs /dev/kvm (tier 1). CI runs 100.
"""
import argparse
import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUEST = os.path.join(ROOT, "guest-images", "tiny", "hvmtest.elf")
AT_EXIT = re.compile(r"at exit: (\d+) descriptors open, RSS (\d+) KiB")


def runtime_dir():
    if os.environ.get("HVM_RUNTIME_DIR"):
        return os.environ["HVM_RUNTIME_DIR"]
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base:
        return os.path.join(base, "hvm")
    return "/run/hvm" if os.geteuid() == 0 else os.path.join(tempfile.gettempdir(), f"hvm-{os.getuid()}")


def hvm_files(folder):
    """hvm's files in a folder: what a run may have left behind."""
    try:
        return {n for n in os.listdir(folder) if n.startswith("hvm") or n.startswith("soak-")}
    except FileNotFoundError:
        return set()


def one_run(hvm, work, slot, i):
    disk = os.path.join(work, f"disk{slot}.img")
    spec = os.path.join(work, f"vm{slot}.toml")
    with open(spec, "w") as f:
        f.write(
            "[machine]\nvcpus = 1\nmemory = \"64M\"\n"
            f"[kernel]\npath = \"{GUEST}\"\ncmdline = \"mode=blkread\"\n"
            f"[[drive]]\npath = \"{disk}\"\n[rng]\n"
            f"[vsock]\ncid = 3\nsocket = \"{work}/vsock{slot}.sock\"\n"
        )
    p = subprocess.run(
        [hvm, "-v", "run", "--timeout", "30s", "--name", f"soak-{os.getpid()}-{slot}", spec],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    m = AT_EXIT.search(p.stderr)
    if p.returncode != 0 or "hvmtest: blkread status 0" not in p.stdout or not m:
        raise RuntimeError(f"run {i} (slot {slot}): exit {p.returncode}\n--- stdout\n{p.stdout}\n--- stderr\n{p.stderr}")
    return i, int(m.group(1)), int(m.group(2))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hvm", default=os.path.join(ROOT, "target", "x86_64-unknown-linux-gnu", "debug", "hvm"))
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--parallel", type=int, default=8)
    args = ap.parse_args()
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        sys.exit("soak: needs /dev/kvm (it boots the tiny guest)")
    tmp = tempfile.gettempdir()
    before = (hvm_files(runtime_dir()), hvm_files(tmp))
    work = tempfile.mkdtemp(prefix="soak-")
    results = []
    try:
        for slot in range(args.parallel):
            with open(os.path.join(work, f"disk{slot}.img"), "wb") as f:
                f.write(bytes(range(256)) * 16 + bytes(1 << 20))
        with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
            free = list(range(args.parallel))
            pending = {}
            i = 0
            while i < args.runs or pending:
                while free and i < args.runs:
                    slot = free.pop()
                    pending[pool.submit(one_run, args.hvm, work, slot, i)] = slot
                    i += 1
                done, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
                for fut in done:
                    free.append(pending.pop(fut))
                    results.append(fut.result())
                    if len(results) % 100 == 0:
                        print(f"soak: {len(results)} runs", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results.sort()
    n = max(1, len(results) // 10)
    first, last = results[:n], results[-n:]
    fds_first = max(r[1] for r in first)
    fds_last = max(r[1] for r in last)
    rss_first = sorted(r[2] for r in first)[n // 2]
    rss_last = sorted(r[2] for r in last)[n // 2]
    print(f"soak: {len(results)} runs, {args.parallel} at a time; at exit: descriptors {fds_first} -> {fds_last}, "
          f"median RSS {rss_first} -> {rss_last} KiB (first and last tenth)")
    problems = []
    if fds_last > fds_first:
        problems.append(f"open descriptors at exit grew from {fds_first} to {fds_last}")
    # Allocator noise moves RSS a little; growth is a trend well beyond it.
    if rss_last > rss_first * 1.2 + 1024:
        problems.append(f"RSS at exit grew from {rss_first} to {rss_last} KiB")
    after = (hvm_files(runtime_dir()), hvm_files(tmp))
    for where, b, a in (("runtime directory " + runtime_dir(), before[0], after[0]), ("temp directory " + tmp, before[1], after[1])):
        left = sorted(a - b)
        if left:
            problems.append(f"left behind in the {where}: {', '.join(left[:10])}")
    if problems:
        sys.exit("soak: FAILED: " + "; ".join(problems))
    print("soak: ok")


if __name__ == "__main__":
    main()
