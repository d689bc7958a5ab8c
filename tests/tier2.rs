//! Tier 2: real Linux boots under a real KVM. On hosts without hardware
//! virtualization the cases run in the nested lab (tests/lab/lab.py: QEMU
//! TCG with an emulated AMD SVM CPU running Debian's kernel and kvm_amd);
//! with hardware KVM they run directly. One lab run serves every test here.
//!
//! HVM_SKIP_LAB=1 (or HVM_SKIP_KVM_TESTS=1) skips these tests explicitly;
//! CI never sets either.

mod common;

use common::*;
use std::collections::HashMap;
use std::process::Command;
use std::sync::OnceLock;

/// One case's result, as cases.sh reported it.
#[derive(Debug, Default)]
struct Case {
    console: String,
    stderr: String,
    code: i32,
}

fn parse(results: &str) -> HashMap<String, Case> {
    let mut cases = HashMap::new();
    let mut current: Option<(String, Case, bool)> = None;
    for line in results.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(name) = line.strip_prefix("@@CASE ") {
            current = Some((name.to_string(), Case::default(), false));
        } else if line == "@@STDERR" {
            if let Some(c) = current.as_mut() {
                c.2 = true;
            }
        } else if let Some(rest) = line.strip_prefix("@@EXIT ") {
            if let Some((name, mut case, _)) = current.take() {
                case.code = rest
                    .rsplit(' ')
                    .next()
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(-1);
                cases.insert(name, case);
            }
        } else if let Some((_, case, in_stderr)) = current.as_mut() {
            let buf = if *in_stderr {
                &mut case.stderr
            } else {
                &mut case.console
            };
            buf.push_str(line);
            buf.push('\n');
        }
    }
    cases
}

fn skipped() -> bool {
    let set = |v: &str| std::env::var_os(v).is_some_and(|x| x == "1");
    if set("HVM_SKIP_LAB") || set("HVM_SKIP_KVM_TESTS") {
        eprintln!("skipped: HVM_SKIP_LAB=1 or HVM_SKIP_KVM_TESTS=1");
        return true;
    }
    false
}

fn lab() -> &'static Result<HashMap<String, Case>, String> {
    static LAB: OnceLock<Result<HashMap<String, Case>, String>> = OnceLock::new();
    LAB.get_or_init(|| {
        let out = root().join("target/lab/results.txt");
        let status = Command::new("python3")
            .arg(root().join("tests/lab/lab.py"))
            .args(["--hvm", HVM, "--out"])
            .arg(&out)
            .status()
            .map_err(|e| format!("cannot run tests/lab/lab.py with python3: {e}"))?;
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        if !status.success() || !text.contains("@@DONE") {
            return Err(format!(
                "the KVM lab did not complete (status {status}); no real KVM could be reached. \
                 Results so far:\n{text}\nSee target/lab/results-l1-console.log"
            ));
        }
        Ok(parse(&text))
    })
}

fn case(name: &str) -> Option<&'static Case> {
    if skipped() {
        return None;
    }
    match lab() {
        Ok(cases) => Some(
            cases
                .get(name)
                .unwrap_or_else(|| panic!("the lab did not run case {name}")),
        ),
        Err(e) => panic!("{e}"),
    }
}

fn assert_case(c: &Case, code: i32, needles: &[&str]) {
    let show = || format!("--- console\n{}\n--- hvm stderr\n{}", c.console, c.stderr);
    assert_eq!(c.code, code, "hvm exit code\n{}", show());
    for n in needles {
        assert!(c.console.contains(n), "console lacks {n:?}\n{}", show());
    }
    assert!(!c.stderr.contains("panicked at"), "{}", show());
}

/// RAM the guest's e820 map reports for `mib`: all of it but the legacy hole.
fn e820_ram(mib: u64) -> String {
    format!("e820_ram_bytes={}", (mib << 20) - (0x10_0000 - 0x9_fc00))
}

#[test]
fn bundled_bzimage_boots_to_ready_marker_and_powers_off_with_0() {
    let Some(c) = case("bzimage-1cpu-128M") else {
        return;
    };
    assert_case(
        c,
        0,
        &[
            "HVM-GUEST-READY cpus=1",
            &e820_ram(128),
            "reboot: Power down",
        ],
    );
    assert!(
        c.stderr.contains("guest boot marker 1 after"),
        "{}",
        c.stderr
    );
}

#[test]
fn bundled_vmlinux_boots_with_two_vcpus() {
    let Some(c) = case("vmlinux-2cpu-512M") else {
        return;
    };
    assert_case(c, 0, &["HVM-GUEST-READY cpus=2", &e820_ram(512)]);
}

#[test]
fn four_vcpus_in_one_package_and_1536_mib_are_what_the_guest_sees() {
    let Some(c) = case("smp4-1536M") else { return };
    assert_case(
        c,
        0,
        &[
            "HVM-GUEST-READY cpus=4",
            &e820_ram(1536),
            // One package of four cores (CPUID leaf 0xb's core level).
            "TOPOLOGY packages 0 0 0 0 cores 0 1 2 3",
            // The kernel finds hvm's MP table at once (no 64 KiB scan).
            "found SMP MP-table at [mem 0x0009fc00-0x0009fc0f]",
        ],
    );
}

#[test]
fn without_acpi_the_mp_table_gives_the_guest_its_vcpus_and_interrupts() {
    let Some(c) = case("mptable-acpi-off") else {
        return;
    };
    assert_case(
        c,
        0,
        &[
            "MPTABLE: OEM ID: HVM",
            "Processors: 2",
            // Printed through the serial port's interrupt as the table routes it.
            "HVM-GUEST-READY cpus=2",
        ],
    );
    assert!(
        !c.console.contains("ExtINT not setup"),
        "the table claims an ExtINT pin:\n{}",
        c.console
    );
}

#[test]
fn memory_of_3584_mib_is_what_the_guest_sees() {
    let Some(c) = case("mem-3584M") else { return };
    assert_case(c, 0, &["HVM-GUEST-READY cpus=1", &e820_ram(3584)]);
}

#[test]
fn memory_above_4_gib_is_what_the_guest_sees() {
    let Some(c) = case("mem-6G") else { return };
    assert_case(c, 0, &["HVM-GUEST-READY cpus=2", &e820_ram(6144)]);
}

#[test]
fn guest_debug_exit_code_is_hvms_exit_code() {
    let Some(c) = case("debug-exit-7") else {
        return;
    };
    assert_case(c, 7, &["HVM-GUEST-READY"]);
}

#[test]
fn guest_reboot_ends_hvm_with_0() {
    let Some(c) = case("reboot") else { return };
    assert_case(c, 0, &["HVM-GUEST-READY"]);
    assert!(c.stderr.contains("Reset"), "{}", c.stderr);
}

#[test]
fn guest_kernel_panic_ends_hvm_with_125() {
    let Some(c) = case("panic") else { return };
    assert_case(c, 125, &["Kernel panic"]);
    assert!(c.stderr.contains("guest kernel panicked"), "{}", c.stderr);
}

#[test]
fn stock_debian_cloud_kernel_boots_to_init_and_sees_every_vcpu() {
    let Some(c) = case("debian-cloud-2cpu") else {
        return;
    };
    assert_case(
        c,
        0,
        &[
            "HVM-GUEST-READY cpus=2",
            "deb12-cloud-amd64",
            &e820_ram(512),
        ],
    );
}

#[test]
fn linux_boot_neither_stalls_nor_complains_about_legacy_devices() {
    let Some(c) = case("vmlinux-2cpu-512M") else {
        return;
    };
    for stall in [
        "i8042: Can't read CTR",
        "rtc_cmos rtc_cmos: probe",
        "PCI: Fatal",
    ] {
        assert!(
            !c.console.contains(stall),
            "guest logged {stall:?}:\n{}",
            c.console
        );
    }
}

#[test]
fn results_parser_reads_cases() {
    let cases = parse("junk\n@@CASE a\nhello\n@@STDERR\nwarn\n@@EXIT a 7\n@@DONE\n");
    let a = &cases["a"];
    assert_eq!(
        (a.code, a.console.as_str(), a.stderr.as_str()),
        (7, "hello\n", "warn\n")
    );
}

/// The value after `key` on the line that starts with it.
/// The value after `key` on the first line that starts with `key` and a space.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix(' '))
        .map(str::trim)
}

#[test]
fn virtio_blk_guest_reads_exactly_the_host_image() {
    let Some(c) = case("blk-read") else { return };
    assert_case(c, 0, &["HVM-GUEST-READY", "SERIAL ro-disk"]);
    let guest = field(&c.console, "GUEST-SHA256-READ").expect("guest hash");
    assert_eq!(guest, host_read_hash(), "{}", c.console);
    assert_eq!(guest.len(), 64);
}

/// The hash cases.sh printed for the image it made for the read cases.
fn host_read_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| {
        let text =
            std::fs::read_to_string(root().join("target/lab/results.txt")).unwrap_or_default();
        field(&text, "HOST-SHA256-READ")
            .unwrap_or("missing")
            .to_string()
    })
}

#[test]
fn virtio_blk_data_the_guest_wrote_and_synced_is_on_the_host_disk() {
    let Some(c) = case("blk-write") else { return };
    assert_case(c, 0, &["HVM-GUEST-READY"]);
    let written = field(&c.console, "HOST-SHA256-WRITTEN").expect("host hash of the image");
    let expected = field(&c.console, "HOST-SHA256-EXPECTED").expect("hash of the pattern");
    assert_eq!(written, expected, "{}", c.console);
}

#[test]
fn virtio_blk_read_only_drive_refuses_writes() {
    let Some(c) = case("blk-read-only") else {
        return;
    };
    assert_case(c, 0, &["GUEST-WRITE-REFUSED", "HOST-RO-UNCHANGED"]);
}

#[test]
fn virtio_blk_two_drives_are_both_there() {
    let Some(c) = case("blk-two-drives") else {
        return;
    };
    // vdb: 8 MiB = 16384 sectors.
    assert_case(c, 0, &["DRIVES first second 16384"]);
}

#[test]
fn virtio_rng_feeds_dev_hwrng() {
    let Some(c) = case("rng") else { return };
    assert_case(c, 0, &["RNG virtio_rng.0", "RNG-BYTES 4096"]);
}

#[test]
fn stock_debian_kernel_finds_virtio_devices_through_acpi() {
    let Some(c) = case("debian-cloud-virtio") else {
        return;
    };
    assert_case(
        c,
        0,
        &["deb12-cloud-amd64", "SERIAL stock-disk", "RNG virtio_rng.0"],
    );
    assert_eq!(
        field(&c.console, "GUEST-SHA256-READ"),
        Some(host_read_hash()),
        "{}",
        c.console
    );
}

#[test]
fn virtio_devices_are_probed_once() {
    let Some(c) = case("blk-two-drives") else {
        return;
    };
    assert!(!c.console.contains("can't request region"), "{}", c.console);
}

#[test]
fn virtio_console_carries_a_login_shell_on_hvc0() {
    let Some(c) = case("hvc-login") else { return };
    assert_case(c, 0, &["login shell on hvc0", "HVC-LOGIN-42 /dev/hvc0"]);
}

#[test]
fn shipped_linux_examples_run_as_they_are() {
    let Some(hello) = case("example-hello") else {
        return;
    };
    assert_case(hello, 0, &["HVM-GUEST-READY cpus=1"]);
    let smp = case("example-smp").expect("case");
    assert_case(smp, 0, &["HVM-GUEST-READY cpus=4", &e820_ram(1536)]);
    let disk = case("example-disk").expect("case");
    assert_case(disk, 0, &["Hello from hvm's example disk"]);
}

#[test]
fn virtio_net_link_to_a_host_tap_carries_ping_and_tcp_both_ways() {
    let Some(c) = case("net-tap") else { return };
    assert_case(c, 0, &["3 packets transmitted, 3 packets received"]);
    assert!(
        c.stderr.contains("mergeable rx buffers: true"),
        "Linux should take mergeable receive buffers\n{}",
        c.stderr
    );
    let down = field(&c.console, "GUEST-NET-DOWN").expect("guest hash of what it fetched");
    assert_eq!(
        Some(down),
        field(&c.console, "HOST-NET-DOWN-EXPECTED"),
        "{}",
        c.console
    );
    let up = field(&c.console, "HOST-NET-UP").expect("host hash of what it fetched");
    assert_eq!(
        Some(up),
        field(&c.console, "HOST-NET-UP-EXPECTED"),
        "{}",
        c.console
    );
}

/// Each (what arrived, what was sent) pair of SHA-256 fields is there and equal.
fn assert_checksums_match(c: &Case, pairs: &[(&str, &str)]) {
    for (got, expected) in pairs {
        let value = field(&c.console, got);
        assert!(
            value.is_some_and(|v| v.len() == 64),
            "{got} missing\n{}",
            c.console
        );
        assert_eq!(value, field(&c.console, expected), "{got}\n{}", c.console);
    }
}

#[test]
fn user_mode_network_without_privileges_leases_fetches_and_forwards() {
    let Some(c) = case("net-user") else { return };
    // (In L1, passt copies 192.0.2.2/24 via 192.0.2.1 from the dummy interface.)
    assert_case(c, 0, &["HVM-GUEST-NET ip=", "HOST-HVM-UID 1000"]);
    assert!(
        c.stderr.contains("mergeable rx buffers: true"),
        "Linux should take mergeable receive buffers\n{}",
        c.stderr
    );
    assert_checksums_match(
        c,
        &[
            ("GUEST-USER-DOWN", "HOST-USER-DOWN-EXPECTED"),
            ("GUEST-FWD-UP", "HOST-FWD-UP-EXPECTED"),
            ("HOST-FWD-DOWN", "HOST-FWD-DOWN-EXPECTED"),
        ],
    );
    assert_eq!(
        field(&c.console, "HOST-LEFTOVER-PASST"),
        Some("0"),
        "passt outlived hvm\n{}",
        c.console
    );
}

#[test]
fn vsock_carries_16_mib_each_way_many_connections_and_guest_initiated_ones() {
    let Some(c) = case("vsock") else { return };
    assert_case(
        c,
        0,
        &[
            "GUEST-VSOCK-16MIB-CENTISECONDS",
            "HOST-VSOCK-SOCKET-LEFT no",
        ],
    );
    // The host program that left after 64 KiB reset the guest's sender
    // (EPIPE or SIGPIPE), and only that connection: the others follow.
    let reset = field(&c.console, "GUEST-VSOCK-RESET-RC");
    assert!(
        reset.is_some_and(|rc| rc != "0"),
        "the guest's sender should fail: {reset:?}\n{}",
        c.console
    );
    assert_eq!(
        field(&c.console, "GUEST-VSOCK-DOWN-RC"),
        Some("0"),
        "{}",
        c.console
    );
    assert_checksums_match(
        c,
        &[
            ("GUEST-VSOCK-UP", "HOST-VSOCK-UP-EXPECTED"),
            ("HOST-VSOCK-DOWN", "HOST-VSOCK-DOWN-EXPECTED"),
            ("GUEST-VSOCK-MANY", "HOST-VSOCK-MANY-EXPECTED"),
            ("HOST-VSOCK-GUESTINIT", "HOST-VSOCK-GUESTINIT-EXPECTED"),
            ("GUEST-VSOCK-GUESTINIT", "HOST-VSOCK-REPLY-EXPECTED"),
        ],
    );
}

#[test]
fn virtio_blk_moves_256_mib_intact() {
    let Some(c) = case("blk-256M") else { return };
    assert_case(
        c,
        0,
        &[
            "GUEST-READ-256M-CENTISECONDS",
            "GUEST-COPY-256M-CENTISECONDS",
        ],
    );
    let src = field(&c.console, "HOST-SRC").expect("source hash");
    assert_eq!(
        Some(src),
        field(&c.console, "HOST-DST"),
        "the copy differs:\n{}",
        c.console
    );
}

#[test]
fn serial_console_shell_takes_commands_from_stdin() {
    let Some(c) = case("serial-shell") else {
        return;
    };
    assert_case(c, 0, &["SERIAL-SHELL-42 /dev/ttyS0"]);
}

#[test]
fn virtio_blk_discard_zeroes_the_range_on_the_host_disk() {
    let Some(c) = case("blk-discard") else { return };
    assert_case(
        c,
        0,
        &[
            "GUEST-DISCARD-OK",
            "HOST-DISCARDED-NONZERO 0",
            "HOST-REST-INTACT",
        ],
    );
}

#[test]
fn linux_paused_for_10_s_resumes_without_lockup_or_clocksource_warnings() {
    let Some(c) = case("pause-10s") else {
        return;
    };
    assert_case(
        c,
        0,
        &[
            "HVM-GUEST-READY",
            "HOST-PAUSE-RC 0",
            "HOST-RESUME-RC 0",
            "GUEST-PAUSE-WARNINGS 0",
        ],
    );
    let ps = field(&c.console, "HOST-PS").unwrap_or_default();
    assert!(ps.contains("paused"), "hvm ps during the pause: {ps:?}");
    assert!(
        c.stderr.contains("VM paused: vCPUs out of KVM_RUN in"),
        "{}",
        c.stderr
    );
}

#[test]
fn hvm_stop_presses_the_power_button_and_linux_powers_off_with_0() {
    let Some(c) = case("stop-graceful") else {
        return;
    };
    assert_case(c, 0, &["HVM-GUEST-READY", "HOST-STOP-RC 0", "power button"]);
    assert!(c.stderr.contains("power button pressed"), "{}", c.stderr);
}

#[test]
fn gdb_debugs_the_bundled_linux_kernel_then_lets_it_boot() {
    let Some(c) = case("gdb-linux") else {
        return;
    };
    assert_case(
        c,
        0,
        &[
            // Attached before the first instruction, at the kernel's entry.
            "GDB: 0x0000000001000000 in ?? ()",
            "GDB-STEPPED",
            // Ctrl-C while Linux runs, then a backtrace with kernel symbols.
            "received signal SIGINT",
            "GDB: #0  0xffffffff8",
            "GDB: #1  0xffffffff8",
            // Kernel memory by virtual address.
            "<linux_banner>:\t\"Linux version 6.12",
            "Thread 1.1",
            "GDB: vCPU 0: cr0=0x8",
            // The guest boots on to its marker and powers off; gdb sees it.
            "HVM-GUEST-READY",
            "exited normally",
        ],
    );
}

/// A number after `key` in the console.
fn number(c: &Case, key: &str) -> u64 {
    field(&c.console, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no number after {key} in:\n{}", c.console))
}

#[test]
fn shared_directory_reads_and_writes_with_the_hosts_checksums() {
    let Some(c) = case("share-rw") else { return };
    assert_case(c, 0, &["GUEST-SHARE-DONE", "HOST-VIRTIOFSD-LEFT 0"]);
    let read = field(&c.console, "GUEST-SHARE-READ").expect("guest read hash");
    assert_eq!(read.len(), 64, "{}", c.console);
    assert_eq!(
        Some(read),
        field(&c.console, "HOST-SHARE-BIG"),
        "64 MiB host file read in the guest"
    );
    let wrote = field(&c.console, "GUEST-SHARE-WROTE").expect("guest write hash");
    assert_eq!(wrote.len(), 64, "{}", c.console);
    assert_eq!(
        Some(wrote),
        field(&c.console, "HOST-SHARE-OUT"),
        "guest's file on the host"
    );
    // 2 GiB configured, shared memfd: hvm's RSS is what the guest touched
    // (its used memory, and the RAM its kernel reserved at boot) plus hvm's
    // own few MiB, never the configured size.
    let rss = number(c, "HOST-RSS-KIB");
    let used = number(c, "GUEST-USED-KIB");
    let e820_kib = number_after(c, "e820_ram_bytes=") / 1024;
    let reserved = e820_kib - number_after(c, "memtotal_kib=");
    assert!(
        rss <= used + reserved + 64 * 1024,
        "RSS {rss} KiB > guest used {used} + reserved {reserved} + 64 MiB"
    );
}

fn number_after(c: &Case, prefix: &str) -> u64 {
    c.console
        .split_whitespace()
        .find_map(|w| w.strip_prefix(prefix))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in:\n{}", c.console))
}

#[test]
fn read_only_share_refuses_writes_and_the_host_file_stays() {
    let Some(c) = case("share-ro") else { return };
    assert_case(
        c,
        0,
        &[
            "host file",
            "GUEST-RO-WRITE-RC 1",
            "GUEST-RO-CREATE-RC 1",
            "Read-only file system",
            "HOST-RO-CONTENT host file",
            "HOST-RO-NEW 1",
        ],
    );
}

#[test]
fn killed_virtiofsd_gives_the_guest_io_errors_not_a_hang() {
    let Some(c) = case("share-gone") else { return };
    assert_case(
        c,
        0,
        &[
            "GUEST-MOUNTED",
            "HOST-KILLED-VIRTIOFSD 0",
            "Input/output error",
            "GUEST-AFTER-KILL-RC 1",
            "reboot: Power down",
        ],
    );
    assert!(c.stderr.contains("the file server is gone"), "{}", c.stderr);
}

#[test]
fn one_command_run_splits_stdout_from_stderr_and_returns_the_status() {
    let Some(c) = case("rootfs-cmd") else { return };
    assert_case(
        c,
        7,
        &["STDOUT: host file for the guest", "STDOUT: uid=0 cwd=/"],
    );
    assert!(
        !c.console.contains("oops"),
        "stderr leaked into stdout:\n{}",
        c.console
    );
    assert!(c.stderr.contains("oops"), "{}", c.stderr);
    // The kernel's messages stay off both.
    assert!(!c.console.contains("Linux version") && !c.stderr.contains("Linux version"));
}

#[test]
fn one_command_run_without_a_command_is_a_shell_fed_by_stdin() {
    let Some(c) = case("rootfs-shell") else {
        return;
    };
    assert_case(c, 3, &["STDOUT: piped-42"]);
    assert!(c.stderr.contains("to-stderr"), "{}", c.stderr);
    assert!(!c.console.contains("to-stderr"), "{}", c.console);
}

#[test]
fn one_command_run_passes_binary_stdin_unchanged() {
    let Some(c) = case("rootfs-stdin") else {
        return;
    };
    assert_case(c, 0, &[]);
    let host = field(&c.console, "HOST-STDIN-SHA").expect("host hash");
    assert_eq!(host.len(), 64);
    assert!(
        c.console.contains(&format!("STDOUT: {host}")),
        "the command's sha256 of its stdin differs:\n{}",
        c.console
    );
}

#[test]
fn one_command_run_with_a_user_network_is_online_as_the_caller() {
    let Some(c) = case("rootfs-net") else {
        return;
    };
    assert_case(c, 0, &["STDOUT: ROOTFS-NET-ROUTE "]);
    let host = field(&c.console, "HOST-ROOTFS-NET-EXPECTED").expect("host hash");
    assert_eq!(host.len(), 64);
    assert!(
        c.console.contains(&format!("STDOUT: {host}")),
        "the command did not fetch the file intact:\n{}",
        c.console
    );
}

#[test]
fn one_command_run_writes_results_to_a_share_and_never_to_the_root() {
    let Some(c) = case("rootfs-share") else {
        return;
    };
    assert_case(
        c,
        0,
        &[
            "HOST-RESULT from-the-guest",
            "HOST-ROOT-WRITE ls: /hvm-guest-wrote: No such file",
            "STDOUT: ETC-WRITABLE",
        ],
    );
    // Only the command's own words on stderr (no console echo).
    assert!(
        c.stderr
            .starts_with("touch: /hvm-guest-wrote: Read-only file system"),
        "{:?}",
        c.stderr
    );
}

#[test]
fn rootfs_with_a_kernel_lacking_virtio_fs_says_why() {
    let Some(c) = case("rootfs-nofs") else { return };
    assert_case(c, 125, &[]);
    for needle in [
        "without reporting the command's exit status",
        "the kernel's last messages",
        "Unable to mount root",
    ] {
        assert!(
            c.stderr.contains(needle),
            "stderr lacks {needle:?}:\n{}",
            c.stderr
        );
    }
}

#[test]
fn one_command_run_on_a_terminal_gives_the_shell_hvc0_as_its_tty() {
    let Some(c) = case("rootfs-tty") else { return };
    assert_case(c, 4, &["typed-5", "/dev/hvc0"]);
}

/// hvm killed (SIGKILL) while the guest writes and syncs records in a
/// loop: every record the guest saw synced is in the image.
#[test]
fn virtio_blk_writes_the_guest_synced_survive_hvm_being_killed() {
    let Some(c) = case("durability") else {
        return;
    };
    assert_eq!(c.code, 137, "killed hvm's status\n{}", c.console);
    let result = field(&c.console, "HOST-DURABLE").expect("the host's check");
    let synced: u32 = result
        .trim_start_matches("synced=")
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        synced >= 40,
        "the guest synced only {synced} records\n{}",
        c.console
    );
    assert!(result.ends_with("missing=0"), "{result}\n{}", c.console);
    assert!(!c.console.contains("DUR-WRITE-FAILED"), "{}", c.console);
}

/// A kernel panic (sysrq c) ends hvm with 125 and a crash report that
/// has the panic's line and RIP named from vmlinux's symbols; the JSON
/// file says the same.
#[test]
fn kernel_panic_gets_a_crash_report_with_symbols_and_the_panic_line() {
    let Some(c) = case("crash-sysrq") else { return };
    let show = || format!("--- console\n{}\n--- hvm stderr\n{}", c.console, c.stderr);
    assert_eq!(c.code, 125, "{}", show());
    for needle in [
        "hvm: guest kernel panicked (pvpanic)",
        "hvm: crash report (function names from",
        "Kernel panic - not syncing: sysrq triggered crash",
        "  vCPU 0",
        "  vCPU 1",
    ] {
        assert!(
            c.stderr.contains(needle),
            "stderr lacks {needle:?}\n{}",
            show()
        );
    }
    let rip = c
        .stderr
        .lines()
        .find(|l| l.trim_start().starts_with("RIP ") && l.contains(" <"))
        .unwrap_or_else(|| panic!("no symbolized RIP\n{}", show()));
    assert!(rip.contains("+0x"), "{rip}");
    let json = c
        .console
        .split("CRASH-JSON-BEGIN")
        .nth(1)
        .and_then(|rest| rest.split("CRASH-JSON-END").next())
        .unwrap_or_else(|| panic!("no JSON report\n{}", show()));
    let report: serde_json::Value = serde_json::from_str(json.trim()).expect("valid JSON");
    assert_eq!(report["exit_code"], 125);
    assert_eq!(report["vcpus"].as_array().map(Vec::len), Some(2));
    let tail = report["console_tail"].to_string();
    assert!(tail.contains("sysrq triggered crash"), "{tail}");
}

/// A Debian kernel finds the CMOS clock (/dev/rtc0) and reads the host's
/// UTC time from it.
#[test]
fn stock_debian_kernel_has_a_real_time_clock_at_the_hosts_time() {
    let Some(c) = case("debian-cloud-rtc") else {
        return;
    };
    assert_case(c, 0, &["/dev/rtc0"]);
    let num = |key| -> i64 {
        field(&c.console, key)
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in\n{}", c.console))
    };
    let (start, rtc, end) = (num("HOST-START"), num("RTC-NOW"), num("HOST-END"));
    // Read between L1's two readings, and within 2 s of the second: the
    // guest powered off right after reading it.
    assert!(
        start <= rtc && rtc <= end + 1 && end - rtc <= 2,
        "RTC {rtc}, L1 before {start} and after {end}\n{}",
        c.console
    );
    // hwclock read the same clock: it printed this year.
    let year = 1970 + rtc / 31_556_952;
    assert!(c.console.contains(&year.to_string()), "{}", c.console);
}
