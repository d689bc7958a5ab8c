#!/usr/bin/env python3
"""Writes link-order/hot-functions.txt: the functions of hvm's release binary
that its usual runs enter, in the order they are first entered. build.rs
hands the list to the linker, which puts those functions first, together.

Each run happens under gdb with a one-shot breakpoint on every function of
the binary (its symbol table: the release profile keeps symbols); a hit
means the function was entered. The runs boot the tiny test guest
(guest-images/tiny) on the local KVM: print and exit, 4 KiB reads from a
virtio-blk disk, port writes, the CMOS clock, the machine checks of its
default mode (two vCPUs, an initrd), and idling until --timeout.

Then come the functions of `linux-functions.txt`: what a Linux guest's
boot and idle run through that the tiny guest does not (the keyboard
controller, ACPI's power-management and GED ports, pvpanic, ...), found in
the nested lab, whose KVM runs Linux: its `idle-text` case turns the
kernel's fault-around off and lists the pages of hvm's code that are
resident, and `--lab RESULTS` turns them into names (on the very binary
that ran there):

    python3 tests/lab/lab.py --hvm target/x86_64-unknown-linux-gnu/release/hvm \
        --only idle-text --boot-bench 1 --out target/lab/idle-text.txt
    python3 link-order/profile.py --lab target/lab/idle-text.txt

Last come the C library's CPU-specific string functions (memcpy's AVX2,
EVEX, SSE2 ... variants; one of each is picked at start by the CPU), every
variant of those used, grouped by instruction set, so whichever set a CPU
picks is together, wherever the list was made.

    cargo build --release && python3 link-order/profile.py

Regenerate after a toolchain or dependency update (symbol names carry
hashes that change with them; bench/bench.py warns when the list no longer
matches the binary) or when the code a VM runs through changes much.
Needs gdb and /dev/kvm; takes about a minute.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(ROOT, "target", "x86_64-unknown-linux-gnu", "release", "hvm")
GUEST = os.path.join(ROOT, "guest-images", "tiny", "hvmtest.elf")
OUT = os.path.join(ROOT, "link-order", "hot-functions.txt")
LINUX = os.path.join(ROOT, "link-order", "linux-functions.txt")
# glibc's multiarch variants: __memchr_avx2, __memmove_avx_unaligned_erms,
# __strcasecmp_l_sse42, ... (base name, instruction set, rest).
VARIANT = re.compile(r"^(__\w+?)_(sse2|ssse3|sse4_1|sse4_2|sse42|avx2|avx512|avx|evex512|evex|erms)(_\w+)?$")


def spec(dir, name, cmdline, drive=None, vcpus=1, initrd=None):
    path = os.path.join(dir, f"{name}.toml")
    with open(path, "w") as f:
        f.write(f'[machine]\nvcpus = {vcpus}\nmemory = "128M"\n[kernel]\npath = "{GUEST}"\n'
                f'cmdline = "{cmdline}"\nreplace_cmdline = true\n')
        if initrd:
            f.write(f'initrd = "{initrd}"\n')
        if drive:
            f.write(f'[[drive]]\npath = "{drive}"\n')
    return path


def functions(binary):
    """(offset, size, name) of the binary's functions, every alias (size 0
    where the symbol table gives none)."""
    listing = subprocess.run(["nm", "-S", "--defined-only", binary], capture_output=True, text=True,
                             check=True).stdout
    found = []
    for parts in (line.split() for line in listing.splitlines()):
        if len(parts) == 4 and parts[2] in "tTwW":
            found.append((int(parts[0], 16), int(parts[1], 16), parts[3]))
        elif len(parts) == 3 and parts[1] in "tTwW":
            found.append((int(parts[0], 16), 0, parts[2]))
    return found


def text_symbols(funcs):
    """{offset: name} of `functions()`, one name per offset."""
    syms = {}
    for offset, _, name in funcs:
        syms.setdefault(offset, name)
    return syms


def load_base(binary, args):
    """Where gdb (which turns address randomization off) loads the binary."""
    out = subprocess.run(["gdb", "-batch", "-ex", "starti", "-ex", "info proc mappings", "--args", binary] + args,
                         capture_output=True, text=True, stdin=subprocess.DEVNULL).stdout
    for line in out.splitlines():
        fields = line.split()
        if fields and fields[-1] == binary and fields[-2].endswith("p"):
            return int(fields[0], 16) - int(fields[3], 16)
    raise SystemExit(f"profile: gdb did not start {binary}:\n{out}")


def entered(binary, args, base, syms, work):
    """Offsets of the functions entered while `binary args` runs."""
    script = os.path.join(work, "breakpoints.gdb")
    with open(script, "w") as f:
        f.write("set pagination off\nset confirm off\nset breakpoint always-inserted on\n"
                "handle all nostop noprint pass\nstarti\n")
        for offset in syms:
            f.write(f"tbreak *{base + offset:#x}\n")
        f.write("continue\n" * (len(syms) + 10))
    out = subprocess.run(["gdb", "-batch", "-x", script, "--args", binary] + args,
                         capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=900).stdout
    return [int(a, 16) - base for a in re.findall(r"Temporary breakpoint \d+, (0x[0-9a-f]+)", out)]


def isa_group(name):
    """Which CPUs pick this string-function variant, roughly; 0 first."""
    m = VARIANT.match(name)
    isa, rest = m.group(2), m.group(3) or ""
    if "rtm" in rest:
        return 3
    if isa in ("evex", "evex512", "avx512"):
        return 0
    if isa in ("avx2", "avx", "erms"):
        return 1
    return 2


def string_variants(order, all_names):
    """`order` without glibc's string-function variants, and every variant
    of the functions among them, grouped by instruction set."""
    bases = {VARIANT.match(n).group(1) for n in order if VARIANT.match(n)}
    variants = sorted((n for n in all_names if VARIANT.match(n) and VARIANT.match(n).group(1) in bases),
                      key=lambda n: (isa_group(n), n))
    return [n for n in order if not VARIANT.match(n)], variants


def lab_pages(results):
    """(file offset, resident page indices) of hvm's code mapping in a lab
    idle-text run."""
    m = re.search(r"^IDLE-PAGES r-xp ([0-9a-f]+) ([0-9,]*)", open(results).read(), re.M)
    if not m:
        raise SystemExit(f"profile: {results} has no IDLE-PAGES line for hvm's code (the lab's idle-text case)")
    return int(m.group(1), 16), [int(p) for p in m.group(2).split(",") if p]


def functions_on_pages(binary, funcs, offset, pages, hot):
    """The functions after the binary's hot ones (`hot`, already placed
    first) that overlap its code pages `pages` of the executable mapping at
    file offset `offset`."""
    headers = subprocess.run(["readelf", "-lW", binary], capture_output=True, text=True, check=True).stdout
    load = next(line.split() for line in headers.splitlines()
                if line.split()[:1] == ["LOAD"] and "E" in line.split()[6:-1])
    file_start, vaddr_start = int(load[1], 16), int(load[2], 16)
    # .text only: the list also names start-up code in .init and glibc's
    # own sections, which the linker cannot move and which lie after .text.
    sections = subprocess.run(["readelf", "-SW", binary], capture_output=True, text=True, check=True).stdout
    text = next(line.split("]", 1)[1].split() for line in sections.splitlines() if " .text " in line)
    text_start, text_end = int(text[2], 16), int(text[2], 16) + int(text[4], 16)
    funcs = [f for f in funcs if text_start <= f[0] < text_end]
    hot_end = max((start + size for start, size, name in funcs if name in hot), default=0)
    names = []
    for start, size, name in funcs:
        if start < hot_end:
            continue
        for page in pages:
            lo = vaddr_start + offset + page * 4096 - file_start
            if start < lo + 4096 and start + size > lo:
                names.append(name)
                break
    return names


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hvm", default=BINARY, help="the release binary (default: %(default)s)")
    ap.add_argument("--out", default=OUT, help="default: %(default)s")
    ap.add_argument("--lab", metavar="RESULTS",
                    help="rewrite linux-functions.txt from a lab idle-text run of --hvm, and stop")
    args = ap.parse_args()
    binary = os.path.abspath(args.hvm)
    if args.lab:
        hot = set(open(OUT).read().split())
        found = functions_on_pages(binary, functions(binary), *lab_pages(args.lab), hot)
        with open(LINUX, "w") as f:
            f.writelines(name + "\n" for name in dict.fromkeys(found))
        print(f"profile: {len(found)} functions a Linux guest enters beyond the tiny guest's -> {LINUX}",
              file=sys.stderr)
        return
    funcs = functions(binary)
    syms = text_symbols(funcs)
    if len(syms) < 1000:
        raise SystemExit(f"profile: {binary} has {len(syms)} function symbols; build it with the release profile")
    with tempfile.TemporaryDirectory(prefix="hvm-profile-") as work:
        disk = os.path.join(work, "disk.img")
        with open(disk, "wb") as f:
            f.truncate(64 << 20)
        runs = [
            ["run", spec(work, "hello", "mode=hello")],
            ["run", spec(work, "blklat", "mode=blklat n=50", drive=disk)],
            ["run", spec(work, "ioloop", "mode=ioloop n=1000")],
            ["run", spec(work, "rtc", "mode=rtc")],
            # What a Linux boot also goes through: an initrd, two vCPUs, the
            # ACPI tables, PCI configuration space and unused ports read.
            ["run", spec(work, "check", "mem=128 cpus=2", vcpus=2, initrd=GUEST)],
            ["run", "--timeout", "1s", spec(work, "spin", "mode=spin")],
        ]
        base = load_base(binary, runs[0])
        order, seen = [], set()
        for run in runs:
            hits = entered(binary, run, base, syms, work)
            print(f"profile: {' '.join(os.path.basename(a) for a in run)}: {len(hits)} functions entered", file=sys.stderr)
            if len(hits) < 100:
                raise SystemExit("profile: too few functions entered; does the run work outside gdb?")
            for offset in hits:
                if offset in syms and offset not in seen:
                    seen.add(offset)
                    order.append(syms[offset])
    names = set(syms.values())
    if os.path.exists(LINUX):
        order += [n for n in open(LINUX).read().split() if n in names and n not in order]
    order, variants = string_variants(order, [name for _, _, name in funcs])
    order += variants
    with open(args.out, "w") as f:
        f.writelines(name + "\n" for name in order)
    print(f"profile: {len(order)} functions of {len(syms)} -> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
