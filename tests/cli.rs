//! The command line and error paths that need no guest: bad specs, missing
//! and garbage kernels, help and version. Each error is one clear line with
//! a documented exit code and never a panic.

mod common;

use common::*;

const BAD_SPEC: i32 = 3;
const BAD_INPUT: i32 = 4;

#[test]
fn validate_accepts_the_shipped_examples() {
    for name in [
        "hello.toml",
        "shell.toml",
        "smp.toml",
        "tiny.toml",
        "disk.toml",
        "net.toml",
    ] {
        let path = root().join("examples").join(name);
        hvm(&["validate", &path_str(&path)])
            .assert_code(0)
            .assert_stdout(": ok (");
    }
}

#[test]
fn validate_names_key_line_and_range_for_zero_vcpus() {
    let spec = write_spec(
        "zero",
        "[machine]\nmemory = \"128M\"\nvcpus = 0\n[kernel]\npath = \"k\"\n",
    );
    let out = hvm(&["validate", &path_str(&spec)]);
    out.assert_code(BAD_SPEC)
        .assert_stderr("machine.vcpus = 0 at line 3: must be 1..=254")
        .assert_no_panic();
    assert_eq!(out.stderr.lines().count(), 1, "one line: {}", out.stderr);
}

#[test]
fn run_rejects_an_unknown_key_before_touching_kvm() {
    let spec = write_spec("unknown", "[machine]\nvcpu = 2\n[kernel]\npath = \"k\"\n");
    hvm(&["run", &path_str(&spec)])
        .assert_code(BAD_SPEC)
        .assert_stderr("line 2")
        .assert_stderr("unknown field `vcpu`")
        .assert_no_panic();
}

#[test]
fn run_rejects_bad_memory_with_the_allowed_forms() {
    let spec = write_spec(
        "mem",
        "[machine]\nmemory = \"lots\"\n[kernel]\npath = \"k\"\n",
    );
    hvm(&["run", &path_str(&spec)])
        .assert_code(BAD_SPEC)
        .assert_stderr("machine.memory = \"lots\" at line 2: must be a size");
}

#[test]
fn missing_spec_file_is_a_clear_error() {
    hvm(&["run", "/nonexistent/vm.toml"])
        .assert_code(BAD_SPEC)
        .assert_stderr("cannot read VM spec /nonexistent/vm.toml")
        .assert_no_panic();
}

#[test]
fn missing_kernel_is_a_clear_error() {
    let spec = write_spec("nokernel", "[kernel]\npath = \"no-such-bzImage\"\n");
    hvm(&["run", &path_str(&spec)])
        .assert_code(BAD_INPUT)
        .assert_stderr("cannot open kernel")
        .assert_stderr("no-such-bzImage")
        .assert_no_panic();
}

#[test]
fn garbage_kernel_is_recognised_as_neither_format() {
    let spec = write_spec("garbage", "[kernel]\npath = \"garbage.bin\"\n");
    std::fs::write(
        spec.parent().unwrap().join("garbage.bin"),
        b"MZ this is not a kernel at all",
    )
    .unwrap();
    hvm(&["run", &path_str(&spec)])
        .assert_code(BAD_INPUT)
        .assert_stderr("is neither a bzImage nor an ELF vmlinux (it starts with 4d 5a")
        .assert_no_panic();
}

#[test]
fn empty_kernel_file_is_reported_as_empty() {
    let spec = write_spec("empty", "[kernel]\npath = \"empty\"\n");
    std::fs::write(spec.parent().unwrap().join("empty"), b"").unwrap();
    hvm(&["run", &path_str(&spec)])
        .assert_code(BAD_INPUT)
        .assert_stderr("the file is empty");
}

#[test]
fn truncated_elf_kernel_is_a_load_error_not_a_panic() {
    let spec = write_spec("truncated", "[kernel]\npath = \"half.elf\"\n");
    let elf = std::fs::read(tiny_elf()).unwrap();
    std::fs::write(spec.parent().unwrap().join("half.elf"), &elf[..100]).unwrap();
    // Loading happens after KVM is opened; without KVM the error names KVM instead.
    let out = hvm(&["run", &path_str(&spec)]);
    out.assert_no_panic();
    assert!(
        out.code == BAD_INPUT || out.code == 5,
        "code {}: {}",
        out.code,
        out.stderr
    );
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
}

#[test]
fn missing_initrd_is_a_clear_error() {
    let spec = write_spec(
        "noinitrd",
        &format!(
            "[kernel]\npath = \"{}\"\ninitrd = \"nope.cpio\"\n",
            tiny_elf()
        ),
    );
    hvm(&["run", &path_str(&spec)])
        .assert_code(BAD_INPUT)
        .assert_stderr("cannot open initrd");
}

#[test]
fn help_lists_the_commands_and_version_prints() {
    hvm(&["--help"])
        .assert_code(0)
        .assert_stdout("run")
        .assert_stdout("validate")
        .assert_stdout("Ctrl-A x");
    hvm(&["run", "--help"])
        .assert_code(0)
        .assert_stdout("--timeout")
        .assert_stdout("--serial-log");
    hvm(&["--version"]).assert_code(0).assert_stdout("hvm ");
}

#[test]
fn bad_usage_exits_2() {
    hvm(&["frobnicate"]).assert_code(2);
    hvm(&["run", "x.toml", "--timeout", "soon"])
        .assert_code(2)
        .assert_stderr("not a duration");
}

#[test]
fn every_verb_is_discoverable_through_completions_and_the_man_page() {
    for verb in ["run", "validate", "ps", "pause", "resume", "stop", "info"] {
        hvm(&["--help"]).assert_stdout(verb);
    }
    hvm(&["completions", "bash"])
        .assert_code(0)
        .assert_stdout("_hvm()")
        .assert_stdout("pause");
    hvm(&["completions", "zsh"])
        .assert_code(0)
        .assert_stdout("#compdef hvm");
    hvm(&["completions", "fish"])
        .assert_code(0)
        .assert_stdout("complete -c hvm");
    hvm(&["completions", "tcsh"]).assert_code(2);
    hvm(&["man"])
        .assert_code(0)
        .assert_stdout(".TH hvm")
        .assert_stdout("stop");
}

#[test]
fn control_verbs_for_a_vm_that_does_not_run_say_so() {
    for verb in ["pause", "resume", "stop", "info"] {
        hvm(&[verb, "no-such-vm-here"])
            .assert_code(6)
            .assert_stderr("no running VM named \"no-such-vm-here\"");
    }
    hvm(&["stop", "../x"])
        .assert_code(2)
        .assert_stderr("invalid VM name");
    hvm(&["ps"]).assert_code(0).assert_stdout("NAME");
}

const USAGE: i32 = 2;

#[test]
fn run_flags_name_themselves_when_wrong() {
    let cases: [(&[&str], &str); 6] = [
        (
            &["run"],
            "--kernel (missing): give a spec file or --kernel PATH",
        ),
        (
            &["run", "--kernel", "k", "--cpus", "0"],
            "--cpus 0: must be 1..=254",
        ),
        (
            &["run", "--kernel", "k", "--memory", "lots"],
            "--memory lots: must be a size",
        ),
        (
            &["run", "--kernel", "k", "--", "true"],
            "needs --rootfs DIR",
        ),
        (
            &["run", "--kernel", "k", "--rootfs", "/nonexistent/root"],
            "--rootfs /nonexistent/root: No such file",
        ),
        (
            &["run", "--kernel", "k", "--share", "/tmp:bad tag"],
            "--share /tmp:bad tag: the tag must be",
        ),
    ];
    for (args, message) in cases {
        hvm(args)
            .assert_code(USAGE)
            .assert_stderr(message)
            .assert_no_panic();
    }
}

#[test]
fn run_with_flags_alone_boots_the_tiny_guest() {
    if !require_kvm() {
        return;
    }
    let elf = tiny_elf();
    hvm(&[
        "run",
        "--kernel",
        &elf,
        "--memory",
        "64M",
        "--append",
        "mode=hello",
    ])
    .assert_code(0)
    .assert_stdout("Hello from the hvm tiny guest")
    .assert_no_panic();
    // Flags over a spec: --append adds to the spec's command line.
    let spec = write_spec("over", &tiny_spec(&elf, 1, 64, "quiet"));
    hvm(&["run", "--append", "mode=exit code=9", &path_str(&spec)])
        .assert_code(9)
        .assert_no_panic();
}

#[test]
fn an_endless_or_binary_spec_is_refused_without_reading_it_all() {
    let started = std::time::Instant::now();
    hvm(&["validate", "/dev/zero"])
        .assert_code(3)
        .assert_stderr("/dev/zero: longer than 1024 KiB: not a VM spec")
        .assert_no_panic();
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    let bin = write_spec("binary", "");
    std::fs::write(&bin, [0xffu8, 0xfe, 0x00, 0x01]).unwrap();
    hvm(&["validate", &path_str(&bin)])
        .assert_code(3)
        .assert_stderr("not UTF-8 text")
        .assert_no_panic();
}
