//! Tier 1: boot hvm's own test guest (guest-images/tiny) on the local
//! /dev/kvm through the same loader paths a Linux kernel takes, and let it
//! check hvm's promises from inside the guest.

mod common;

use common::*;
use std::time::Duration;

fn check(kernel: &str, vcpus: u32, mib: u64, extra: &str) -> Outcome {
    let cmdline = format!("mode=check mem={mib} cpus={vcpus} {extra}");
    let out = run_spec("check", &tiny_spec(kernel, vcpus, mib, &cmdline), &[]);
    out.assert_no_panic();
    out
}

#[test]
fn elf_guest_when_booted_passes_every_boot_contract_check() {
    if !require_kvm() {
        return;
    }
    check(&tiny_elf(), 2, 256, "")
        .assert_code(0)
        .assert_stdout("hvmtest: ok e820-total")
        .assert_stdout("hvmtest: ok acpi-checksums")
        .assert_stdout("hvmtest: ok acpi-madt-cpus")
        .assert_stdout("hvmtest: ok cmdline-ptr")
        // rep outsb/insb on COM1's byte-wide scratch register: one access per byte.
        .assert_stdout("hvmtest: ok string-io")
        .assert_stdout("hvmtest: 0 failures");
}

#[test]
fn bzimage_guest_when_booted_passes_every_boot_contract_check() {
    if !require_kvm() {
        return;
    }
    check(&tiny_bzimage(), 1, 128, "")
        .assert_code(0)
        .assert_stdout("hvmtest: 0 failures");
}

#[test]
fn pit_exists_only_when_asked_or_when_the_guest_boots_without_acpi() {
    if !require_kvm() {
        return;
    }
    for (pit, cmdline, expected) in [
        ("", "mode=pit", "hvmtest: pit absent"),
        ("pit = true\n", "mode=pit", "hvmtest: pit present"),
        ("", "mode=pit acpi=off", "hvmtest: pit present"),
        ("pit = false\n", "mode=pit acpi=off", "hvmtest: pit absent"),
    ] {
        let spec = tiny_spec(&tiny_elf(), 1, 128, cmdline).replacen(
            "[kernel]",
            &format!("{pit}[kernel]"),
            1,
        );
        let out = run_spec("pit", &spec, &[]);
        out.assert_no_panic();
        out.assert_code(0).assert_stdout(expected);
    }
}

#[test]
fn command_line_when_given_reaches_the_guest_after_the_defaults() {
    if !require_kvm() {
        return;
    }
    check(&tiny_elf(), 1, 128, "marker=xyzzy")
        .assert_code(0)
        .assert_stdout("hvmtest: cmdline console=ttyS0 reboot=k")
        .assert_stdout("marker=xyzzy");
}

#[test]
fn memory_above_the_gap_is_ram_on_both_sides_when_larger_than_3_gib() {
    if !require_kvm() {
        return;
    }
    check(&tiny_elf(), 1, 6144, "")
        .assert_code(0)
        .assert_stdout("hvmtest: ok ram-first-high-page")
        .assert_stdout("hvmtest: ok ram-last-high-page")
        .assert_stdout("hvmtest: ok e820-high");
}

#[test]
fn memory_of_64_gib_boots_without_costing_the_host() {
    if !require_kvm() {
        return;
    }
    check(&tiny_elf(), 1, 65536, "")
        .assert_code(0)
        .assert_stdout("hvmtest: ok ram-last-high-page");
}

#[test]
fn memory_just_below_the_gap_has_no_high_region() {
    if !require_kvm() {
        return;
    }
    check(&tiny_elf(), 1, 3072, "")
        .assert_code(0)
        .assert_stdout("hvmtest: ok e820-high high_end=0x0");
}

#[test]
fn madt_lists_every_vcpu_for_1_4_and_16() {
    if !require_kvm() {
        return;
    }
    for n in [1, 4, 16] {
        check(&tiny_elf(), n, 128, "")
            .assert_code(0)
            .assert_stdout(&format!("hvmtest: ok acpi-madt-cpus lapics={n:#x}"));
    }
}

#[test]
fn initrd_when_given_is_page_aligned_and_intact() {
    if !require_kvm() {
        return;
    }
    let dir = scratch("initrd");
    let data: Vec<u8> = (0..5000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let initrd = dir.join("initrd.bin");
    std::fs::write(&initrd, &data).unwrap();
    let spec = format!(
        "[machine]\nmemory = \"128M\"\n[kernel]\npath = \"{}\"\ninitrd = \"{}\"\ncmdline = \"mem=128 initrd_fnv={:#x}\"\n",
        tiny_elf(),
        path_str(&initrd),
        fnv1a(&data)
    );
    run_spec("initrd", &spec, &[])
        .assert_code(0)
        .assert_stdout("hvmtest: ok initrd-aligned")
        .assert_stdout("hvmtest: ok initrd-checksum")
        .assert_stdout("size 5000");
}

#[test]
fn debug_exit_byte_becomes_hvms_exit_code() {
    if !require_kvm() {
        return;
    }
    run_spec(
        "exit",
        &tiny_spec(&tiny_elf(), 1, 64, "mode=exit code=42"),
        &[],
    )
    .assert_code(42)
    .assert_stdout("hvmtest: exit 42")
    .assert_no_panic();
}

#[test]
fn boot_marker_write_is_logged_with_time_since_start() {
    if !require_kvm() {
        return;
    }
    run_spec(
        "marker",
        &tiny_spec(&tiny_elf(), 1, 64, "mode=exit code=0"),
        &["-v"],
    )
    .assert_code(0)
    .assert_stderr("guest boot marker 1 after")
    .assert_stderr("first KVM_RUN:");
}

#[test]
fn i8042_reset_ends_hvm_with_0_and_no_more_guest_code_runs() {
    if !require_kvm() {
        return;
    }
    let out = run_spec("reset", &tiny_spec(&tiny_elf(), 1, 64, "mode=reset"), &[]);
    out.assert_code(0).assert_stdout("hvmtest: i8042 reset");
    assert!(!out.stdout.contains("still running"), "{}", out.stdout);
}

#[test]
fn acpi_power_off_ends_hvm_with_0() {
    if !require_kvm() {
        return;
    }
    let out = run_spec(
        "acpioff",
        &tiny_spec(&tiny_elf(), 1, 64, "mode=acpi-off"),
        &[],
    );
    out.assert_code(0).assert_stdout("hvmtest: ACPI power-off");
    assert!(!out.stdout.contains("still running"), "{}", out.stdout);
}

#[test]
fn triple_fault_exits_125_with_a_clear_message() {
    if !require_kvm() {
        return;
    }
    run_spec("triple", &tiny_spec(&tiny_elf(), 1, 64, "mode=triple"), &[])
        .assert_code(125)
        .assert_stderr("guest crashed")
        .assert_no_panic();
}

#[test]
fn timeout_stops_a_guest_that_never_ends_with_124() {
    if !require_kvm() {
        return;
    }
    let started = std::time::Instant::now();
    run_spec(
        "timeout",
        &tiny_spec(&tiny_elf(), 2, 64, "mode=spin"),
        &["--timeout", "500ms"],
    )
    .assert_code(124)
    .assert_stdout("hvmtest: spinning")
    .assert_stderr("timeout");
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn garbage_port_and_mmio_accesses_do_not_hurt_hvm() {
    if !require_kvm() {
        return;
    }
    run_spec(
        "garbage",
        &tiny_spec(&tiny_elf(), 1, 128, "mode=garbage mem=128"),
        &[],
    )
    .assert_code(0)
    .assert_stdout("hvmtest: ok read-past-ram value=0xffffffff")
    .assert_stdout("hvmtest: survived garbage")
    .assert_no_panic();
}

#[test]
fn piped_stdin_reaches_the_guest_serial_port() {
    if !require_kvm() {
        return;
    }
    let spec = write_spec("echo", &tiny_spec(&tiny_elf(), 1, 64, "mode=echo"));
    let child = spawn(&["run", &path_str(&spec)], Some(b"over the wire\n"));
    finish(child, Duration::from_secs(60))
        .assert_code(0)
        .assert_stdout("hvmtest: echo [over the wire]");
}

#[test]
fn serial_log_gets_the_same_output_as_the_console() {
    if !require_kvm() {
        return;
    }
    let dir = scratch("serial-log");
    let log = dir.join("console.log");
    let out = run_spec(
        "serial-log",
        &tiny_spec(&tiny_elf(), 1, 64, "mode=exit code=3"),
        &["--serial-log", &path_str(&log)],
    );
    out.assert_code(3);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert_eq!(logged, out.stdout);
    assert!(logged.contains("hvmtest: exit 3"));
}

#[test]
fn serial_output_to_a_file_keeps_stdout_clean() {
    if !require_kvm() {
        return;
    }
    let spec = format!(
        "{}[serial]\noutput = \"file\"\nfile = \"guest.log\"\n",
        tiny_spec(&tiny_elf(), 1, 64, "mode=exit code=0")
    );
    let path = write_spec("serial-file", &spec);
    let out = hvm(&["run", &path_str(&path)]);
    out.assert_code(0);
    assert_eq!(out.stdout, "");
    let logged = std::fs::read_to_string(path.parent().unwrap().join("guest.log")).unwrap();
    assert!(logged.contains("hvmtest: exit 0"), "{logged}");
}

fn signal_ends_vm(signal: i32, code: i32) {
    let spec = write_spec("signal", &tiny_spec(&tiny_elf(), 1, 64, "mode=spin"));
    let child = spawn(&["run", &path_str(&spec)], None);
    // Let it boot; the guest then sleeps in HLT forever.
    std::thread::sleep(Duration::from_millis(400));
    // SAFETY: sends a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, signal) };
    finish(child, Duration::from_secs(30))
        .assert_code(code)
        .assert_stderr("stopped by signal")
        .assert_no_panic();
}

#[test]
fn sigterm_ends_the_vm_cleanly_with_143() {
    if !require_kvm() {
        return;
    }
    signal_ends_vm(libc::SIGTERM, 143);
}

#[test]
fn sigint_ends_the_vm_cleanly_with_130() {
    if !require_kvm() {
        return;
    }
    signal_ends_vm(libc::SIGINT, 130);
}

#[test]
fn example_tiny_spec_runs_as_shipped() {
    if !require_kvm() {
        return;
    }
    hvm(&["run", &path_str(&root().join("examples/tiny.toml"))])
        .assert_code(0)
        .assert_stdout("hvmtest: 0 failures");
}

#[test]
fn second_vm_on_the_same_disk_is_refused_and_told_who_has_it() {
    if !require_kvm() {
        return;
    }
    let dir = scratch("disk-lock");
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let spec = format!(
        "{}[[drive]]\npath = \"{}\"\n",
        tiny_spec(&tiny_elf(), 1, 64, "mode=spin"),
        path_str(&disk)
    );
    let first_spec = write_spec("disk-lock-1", &spec);
    let first = spawn(&["run", &path_str(&first_spec)], None);
    std::thread::sleep(Duration::from_millis(300));
    let second = run_spec("disk-lock-2", &spec, &[]);
    // SAFETY: ends our own child process.
    unsafe { libc::kill(first.id() as i32, libc::SIGTERM) };
    finish(first, Duration::from_secs(30)).assert_code(143);
    second
        .assert_code(4)
        .assert_stderr("is in use by another VM (pid")
        .assert_stderr("hvm run")
        .assert_no_panic();
}

#[test]
fn read_only_drive_can_be_shared_by_two_vms() {
    if !require_kvm() {
        return;
    }
    let dir = scratch("ro-share");
    let disk = dir.join("ro.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let spec = format!(
        "{}[[drive]]\npath = \"{}\"\nread_only = true\n",
        tiny_spec(&tiny_elf(), 1, 64, "mode=exit code=0"),
        path_str(&disk)
    );
    let a = spawn(&["run", &path_str(&write_spec("ro-a", &spec))], None);
    let b = spawn(&["run", &path_str(&write_spec("ro-b", &spec))], None);
    finish(a, Duration::from_secs(30)).assert_code(0);
    finish(b, Duration::from_secs(30)).assert_code(0);
}

#[test]
fn disk_image_of_partial_sectors_is_a_clear_error() {
    let dir = scratch("odd-disk");
    let disk = dir.join("odd.img");
    std::fs::write(&disk, vec![0u8; 1000]).unwrap();
    let spec = format!(
        "{}[[drive]]\npath = \"{}\"\n",
        tiny_spec(&tiny_elf(), 1, 64, "mode=exit"),
        path_str(&disk)
    );
    run_spec("odd-disk", &spec, &[])
        .assert_code(4)
        .assert_stderr("is 1000 bytes, not a multiple of 512");
}

#[test]
fn tap_without_cap_net_admin_is_a_clear_error() {
    // setpriv drops CAP_NET_ADMIN from what hvm may use, even as root.
    let Ok(setpriv) = which("setpriv") else {
        eprintln!("skipped: setpriv (util-linux) is not installed");
        return;
    };
    let spec = write_spec(
        "noperm",
        &format!(
            "{}[[net]]\ntap = \"hvmnoperm0\"\n",
            tiny_spec(&tiny_elf(), 1, 64, "mode=exit")
        ),
    );
    let out = std::process::Command::new(setpriv)
        .args([
            "--bounding-set",
            "-net_admin",
            "--inh-caps",
            "-net_admin",
            HVM,
            "run",
            &path_str(&spec),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("needs CAP_NET_ADMIN"), "{stderr}");
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|f| f.is_file())
        })
        .ok_or(())
}

/// A driver that gets everything wrong thousands of times (refused
/// features, DRIVER_OK without FEATURES_OK, a bad head index) and a guest
/// that never reads the megabytes piped to its console: hvm's stderr
/// stays a few lines long, one per device and cause.
#[test]
fn misbehaving_guest_cannot_flood_the_log() {
    if !require_kvm() {
        return;
    }
    let dir = scratch("log-flood");
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let spec = format!(
        "{}[[drive]]\npath = \"{}\"\n",
        tiny_spec(&tiny_elf(), 1, 64, "mode=abuse n=5000"),
        path_str(&disk)
    );
    let path = write_spec("log-flood", &spec);
    let input = vec![b'x'; 4 << 20];
    let out = finish(
        spawn(&["run", &path_str(&path)], Some(&input)),
        Duration::from_secs(60),
    );
    out.assert_code(0)
        .assert_stdout("hvmtest: abuse done")
        .assert_stderr("not acceptable")
        .assert_stderr("DRIVER_OK without FEATURES_OK")
        .assert_no_panic();
    let lines = out.stderr.lines().count();
    assert!(lines <= 8, "{lines} lines of log:\n{}", out.stderr);
}

/// A spec whose guest prints for ever (when asked), with one drive.
fn spec_with_drive(cmdline: &str, disk: &std::path::Path, extra: &str) -> String {
    format!(
        "{}{extra}[[drive]]\npath = \"{}\"\n",
        tiny_spec(&tiny_elf(), 1, 64, cmdline),
        path_str(disk)
    )
}

#[test]
fn serial_log_is_never_a_symlink_an_own_input_or_a_locked_file() {
    if !require_kvm() {
        return;
    }
    let dir = scratch("serial-log-safety");
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![7u8; 1 << 20]).unwrap();
    let secret = dir.join("secret");
    std::fs::write(&secret, b"keep me").unwrap();
    let link = dir.join("link.log");
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    let spec = spec_with_drive("mode=hello", &disk, "");

    // A symlink: refused, its target untouched.
    run_spec("log-symlink", &spec, &["--serial-log", &path_str(&link)])
        .assert_code(4)
        .assert_stderr("symbolic link");
    assert_eq!(std::fs::read(&secret).unwrap(), b"keep me");

    // The VM's own drive, through a hard link: refused, not truncated.
    let alias = dir.join("alias.img");
    std::fs::hard_link(&disk, &alias).unwrap();
    run_spec("log-own-drive", &spec, &["--serial-log", &path_str(&alias)])
        .assert_code(4)
        .assert_stderr("is this VM's drive");
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 1 << 20);

    // Another running VM's disk: refused while that VM holds it.
    let other = dir.join("other.img");
    std::fs::write(&other, vec![9u8; 1 << 20]).unwrap();
    let other_spec = write_spec("log-other-vm", &spec_with_drive("mode=spin", &other, ""));
    let running = spawn(&["run", &path_str(&other_spec)], None);
    std::thread::sleep(Duration::from_millis(300));
    let refused = run_spec("log-locked", &spec, &["--serial-log", &path_str(&other)]);
    // SAFETY: ends our own child process.
    unsafe { libc::kill(running.id() as i32, libc::SIGTERM) };
    finish(running, Duration::from_secs(30)).assert_code(143);
    refused.assert_code(4).assert_stderr("is in use (pid");
    assert_eq!(std::fs::metadata(&other).unwrap().len(), 1 << 20);

    // A new log is private to its owner.
    let fresh = dir.join("fresh.log");
    run_spec("log-fresh", &spec, &["--serial-log", &path_str(&fresh)]).assert_code(0);
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&fresh).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    assert!(std::fs::read_to_string(&fresh)
        .unwrap()
        .contains("Hello from"));
}

#[test]
fn one_image_cannot_be_two_drives() {
    if !require_kvm() {
        return;
    }
    let dir = scratch("same-disk");
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let alias = dir.join("alias.img");
    std::os::unix::fs::symlink(&disk, &alias).unwrap();
    let spec = format!(
        "{}[[drive]]\npath = \"{}\"\nid = \"a\"\n[[drive]]\npath = \"{}\"\nid = \"b\"\nread_only = true\n",
        tiny_spec(&tiny_elf(), 1, 64, "mode=hello"),
        path_str(&disk),
        path_str(&alias)
    );
    run_spec("same-disk", &spec, &[])
        .assert_code(4)
        .assert_stderr("drives \"a\" and \"b\" are the same file")
        .assert_no_panic();
}

#[test]
fn console_file_stops_at_max_size() {
    if !require_kvm() {
        return;
    }
    let dir = scratch("max-size");
    let file = dir.join("console.log");
    let log = dir.join("serial.log");
    let spec = format!(
        "{}[serial]\noutput = \"file\"\nfile = \"{}\"\nmax_size = \"8K\"\n",
        tiny_spec(&tiny_elf(), 1, 64, "mode=chatter"),
        path_str(&file)
    );
    run_spec(
        "max-size",
        &spec,
        &["--timeout", "2s", "--serial-log", &path_str(&log)],
    )
    .assert_code(124)
    .assert_stderr("reached its max_size (8192 bytes)")
    .assert_no_panic();
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 8 << 10);
    assert_eq!(std::fs::metadata(&log).unwrap().len(), 8 << 10);
}

/// The vCPU thread's system call filter is really installed: the debug
/// build's probe port makes that thread call getppid, which the filter
/// refuses, and hvm ends (code 1, the usual way out) naming the call and
/// the thread. With
/// --seccomp=off or log the call goes through and the guest goes on.
#[test]
fn seccomp_filter_stops_a_forbidden_call_on_a_vcpu_thread() {
    if !require_kvm() {
        return;
    }
    let spec = tiny_spec(&tiny_elf(), 1, 64, "mode=probe");
    let out = run_spec("seccomp-on", &spec, &[]);
    out.assert_code(1)
        .assert_stdout("hvmtest: seccomp probe")
        .assert_stderr(
            "the vCPU 0 thread made a system call its seccomp filter does not allow: getppid (110)",
        )
        .assert_stderr("a thread made a system call its filter does not allow")
        .assert_no_panic();
    for mode in ["--seccomp=off", "--seccomp=log"] {
        run_spec("seccomp-off", &spec, &[mode])
            .assert_code(0)
            .assert_stdout("hvmtest: probe survived")
            .assert_stderr("getppid ran on a vCPU thread");
    }
}

/// Landlock really limits hvm's file access once the VM runs: with the
/// system call filters off (so seccomp does not refuse the open first),
/// the debug build's probe port makes a vCPU thread open `/`, which no
/// rule allows; with --landlock=off it opens.
#[test]
fn landlock_refuses_files_outside_its_rules_on_a_vcpu_thread() {
    if !require_kvm() {
        return;
    }
    // SAFETY: asks for the Landlock ABI version; no memory is passed.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32,
        )
    };
    if abi < 1 {
        eprintln!("skipped: this kernel has no Landlock (or it is not enabled)");
        return;
    }
    let spec = tiny_spec(&tiny_elf(), 1, 64, "mode=probe");
    run_spec("landlock-on", &spec, &["--seccomp=off"])
        .assert_code(0)
        .assert_stdout("hvmtest: probe survived")
        .assert_stderr("landlock probe: a vCPU thread could not open /: Permission denied")
        .assert_no_panic();
    run_spec("landlock-off", &spec, &["--seccomp=off", "--landlock=off"])
        .assert_code(0)
        .assert_stderr("landlock probe: a vCPU thread opened /: no rule refused it")
        .assert_no_panic();
}

/// A root hvm told --user becomes that user once the VM is built: every
/// thread runs as it with no capabilities, and the files hvm made as root
/// (the vsock socket) are still removed at the end. Without --user (and
/// no sudo), root keeps uid 0 but no capabilities.
#[test]
fn root_hvm_drops_to_the_user_and_keeps_no_capabilities() {
    if !require_kvm() {
        return;
    }
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root (CI runs as root)");
        return;
    }
    let dir = scratch("drop-user");
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let socket = dir.join("vm.vsock");
    let spec = format!(
        "{}[vsock]\ncid = 3\nsocket = \"{}\"\n",
        tiny_spec(&tiny_elf(), 1, 64, "mode=count"),
        path_str(&socket)
    );
    let path = write_spec("drop-user", &spec);
    for (user, uid) in [(Some("65534:65534"), "65534"), (None, "0")] {
        let mut args = vec!["run", "--timeout", "3s"];
        if let Some(u) = user {
            args.extend(["--user", u]);
        }
        let p = path_str(&path);
        args.push(&p);
        let child = spawn(&args, None);
        let pid = child.id();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !socket.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
        for task in tasks {
            let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
            let field = |name: &str| {
                status
                    .lines()
                    .find(|l| l.starts_with(name))
                    .unwrap_or_default()
                    .to_string()
            };
            assert!(
                field("Uid:").split_whitespace().skip(1).all(|u| u == uid),
                "{status}"
            );
            assert!(field("CapEff:").ends_with("0000000000000000"), "{status}");
        }
        finish(child, Duration::from_secs(30))
            .assert_code(124)
            .assert_no_panic();
        assert!(!socket.exists(), "the vsock socket is removed");
    }
    run_spec(
        "drop-user-unknown",
        &spec,
        &["--user", "no-such-user-anywhere"],
    )
    .assert_code(2)
    .assert_stderr("no such user");
}

/// `--stats` counts the guest's exits by device: 1,000 writes to the unused
/// port 0x80 show up as such, the console's as COM1's, with the phases.
#[test]
fn stats_count_exits_by_device_and_phase() {
    if !require_kvm() {
        return;
    }
    let spec = tiny_spec(&tiny_elf(), 1, 64, "mode=ioloop n=1000");
    let out = run_spec("stats", &spec, &["--stats"]);
    out.assert_code(0)
        .assert_stdout("ioloop done")
        .assert_no_panic();
    let line = |what: &str| {
        out.stderr
            .lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no {what:?} line in:\n{}", out.stderr))
            .to_string()
    };
    assert!(line("unused port 0x80").contains(" 1000 exits"));
    assert!(line("serial COM1").contains("exits"));
    assert!(line("phases").contains("first KVM_RUN"));
    assert!(line("phases").contains("VM stopped"));
    // Without the flag, nothing is counted or printed.
    let plain = run_spec("stats-off", &spec, &[]);
    plain.assert_code(0);
    assert!(!plain.stderr.contains("hvm: stats"), "{}", plain.stderr);
}

/// A triple fault gets a crash report: the failed vCPU's RIP with the
/// function it is in (the guest's ELF has symbols), its control
/// registers, the console's last line; --crash-report writes the same
/// values as JSON.
#[test]
fn triple_fault_report_names_rip_its_function_and_the_control_registers() {
    if !require_kvm() {
        return;
    }
    let json = scratch("crash-report").join("report.json");
    let out = run_spec(
        "triple-report",
        &tiny_spec(&tiny_elf(), 1, 64, "mode=triple"),
        &["--crash-report", &path_str(&json)],
    );
    out.assert_code(125)
        .assert_stderr("guest crashed: triple fault on vCPU 0")
        .assert_stderr("vCPU 0 (failed): 64-bit long mode, CPL 0")
        .assert_stderr("<triple_fault+0x")
        .assert_stderr("| hvmtest: triple fault")
        .assert_no_panic();
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let vcpu = &report["vcpus"][0];
    assert_eq!(report["failed_vcpu"], 0);
    assert_eq!(report["exit_code"], 125);
    assert!(vcpu["rip_symbol"]
        .as_str()
        .unwrap()
        .starts_with("triple_fault+0x"));
    // The text shows the same registers as the JSON.
    for reg in ["rip", "cr0", "cr3", "cr4"] {
        let value = vcpu[reg].as_str().unwrap();
        let shown = if reg == "rip" {
            format!(
                "RIP {:#018x}",
                u64::from_str_radix(&value[2..], 16).unwrap()
            )
        } else {
            format!("{} {value}", reg.to_uppercase())
        };
        out.assert_stderr(&shown);
    }
    assert_ne!(vcpu["cr3"], "0x0");
    // An existing report is rewritten in place (Landlock then allows that
    // file alone).
    std::fs::write(&json, "stale").unwrap();
    run_spec(
        "triple-report-again",
        &tiny_spec(&tiny_elf(), 1, 64, "mode=triple"),
        &["--crash-report", &path_str(&json)],
    )
    .assert_code(125)
    .assert_no_panic();
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(again["exit_code"], 125);
}

/// A guest still running when --timeout expires: the report says where
/// each vCPU was (mode=spin idles in spin_here), and it costs nothing when
/// the guest ends well (no report).
#[test]
fn timeout_report_names_where_the_vcpus_were() {
    if !require_kvm() {
        return;
    }
    let out = run_spec(
        "timeout-report",
        &tiny_spec(&tiny_elf(), 2, 64, "mode=spin"),
        &["--timeout", "300ms"],
    );
    out.assert_code(124)
        .assert_stderr("hvm: crash report")
        .assert_stderr("<spin_here+0x")
        .assert_stderr("| hvmtest: spinning")
        .assert_no_panic();
    // Both vCPUs are there, the boot vCPU first (none failed).
    let v0 = out.stderr.find("  vCPU 0:").expect("vCPU 0 in the report");
    let v1 = out.stderr.find("  vCPU 1:").expect("vCPU 1 in the report");
    assert!(v0 < v1, "{}", out.stderr);
    let well = run_spec(
        "no-report",
        &tiny_spec(&tiny_elf(), 1, 64, "mode=hello"),
        &[],
    );
    well.assert_code(0);
    assert!(!well.stderr.contains("crash report"), "{}", well.stderr);
}

/// The CMOS clock reads the host's UTC time (within 2 s) and advances,
/// with its index writes batched.
#[test]
fn cmos_clock_reads_the_hosts_utc_time_and_advances() {
    if !require_kvm() {
        return;
    }
    let out = run_spec(
        "rtc",
        &tiny_spec(&tiny_elf(), 1, 64, "mode=rtc"),
        &["--stats"],
    );
    out.assert_code(0).assert_no_panic();
    // Each reading selects its registers through the index port: those
    // writes are batched by KVM where it can, and replayed in order (the
    // readings below are only right if they were).
    let batched: u64 = out
        .stderr
        .lines()
        .find_map(|l| {
            l.split_once(" exits (")?
                .1
                .split_once(" port writes batched")
        })
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("no batched-writes count in:\n{}", out.stderr));
    let kvm_batches = kvm_ioctls::Kvm::new()
        .map(|k| k.check_extension(kvm_ioctls::Cap::CoalescedPio))
        .unwrap_or(false);
    assert_eq!(batched > 0, kvm_batches, "{batched} writes batched");
    let host = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let times: Vec<i64> = out
        .stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix("hvmtest: rtc "))
        .map(|t| epoch_of(t.trim()))
        .collect();
    assert_eq!(times.len(), 2, "{}", out.stdout);
    assert!(
        times[1] > times[0],
        "the clock did not advance: {}",
        out.stdout
    );
    // The second reading was taken just before hvm exited.
    assert!(
        (host - times[1]).abs() <= 2,
        "guest {} host {host}",
        times[1]
    );
}

/// Seconds since the epoch of "YYYY-MM-DD HH:MM:SS" (UTC).
fn epoch_of(t: &str) -> i64 {
    let n: Vec<i64> = t
        .split(|c: char| !c.is_ascii_digit())
        .map(|x| x.parse().unwrap())
        .collect();
    let (y, m, d) = (n[0], n[1], n[2]);
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let days = 365 * y + y / 4 - y / 100 + y / 400 + (153 * m + 2) / 5 + d - 1 - 719_468;
    days * 86_400 + n[3] * 3600 + n[4] * 60 + n[5]
}
