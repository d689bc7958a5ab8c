//! Tier 1: `[[share]]` (virtio-fs through virtiofsd) as far as the tiny test
//! guest can take it: the file server starts, hands its features over,
//! and is gone after the VM, whichever way it ends; the errors a user meets
//! first are clear. The guest side (mounting, reading, writing, a server
//! that dies) is tier 2: tests/tier2.rs, lab cases share-*.

mod common;

use common::*;
use std::path::Path;

const BAD_SPEC: i32 = 3;
const BAD_INPUT: i32 = 4;

/// A spec for the tiny guest with a share of `dir`.
fn share_spec(name: &str, dir: &Path, mode: &str, extra: &str) -> std::path::PathBuf {
    let spec = format!(
        "{}[[share]]\npath = \"{}\"\ntag = \"data\"\n{extra}",
        tiny_spec(&tiny_elf(), 1, 128, mode),
        dir.display()
    );
    write_spec(name, &spec)
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) && !cmd.contains("cargo") {
                found.push(format!("{}: {cmd}", entry.file_name().to_string_lossy()));
            }
        }
    }
    found
}

#[test]
fn a_share_starts_virtiofsd_and_leaves_nothing_behind_on_any_exit() {
    if !require_kvm() {
        return;
    }
    let dir = scratch("share-dir");
    // (guest mode, hvm arguments, expected exit code)
    let cases: [(&str, &[&str], i32); 3] = [
        ("mode=hello", &[], 0),
        ("mode=triple", &[], 125),
        ("mode=spin", &["--timeout", "1s"], 124),
    ];
    for (mode, args, code) in cases {
        let spec = share_spec("share", &dir, mode, "");
        let mut argv = vec!["-v", "run"];
        argv.extend_from_slice(args);
        let spec = path_str(&spec);
        argv.push(&spec);
        let out = hvm(&argv);
        out.assert_code(code)
            .assert_stderr("share data:")
            .assert_stderr("virtiofsd")
            .assert_no_panic();
        let left = processes_mentioning(&path_str(&dir));
        assert!(left.is_empty(), "{mode}: left running: {left:?}");
    }
    let temp = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("hvm-virtiofsd-")
        })
        .count();
    assert_eq!(temp, 0, "socket directories left in the temp dir");
}

#[test]
fn a_share_of_a_missing_directory_names_it() {
    let spec = share_spec(
        "nodir",
        Path::new("/nonexistent/hvm-share"),
        "mode=hello",
        "",
    );
    hvm(&["run", &path_str(&spec)])
        .assert_code(BAD_INPUT)
        .assert_stderr("share data: /nonexistent/hvm-share: No such file or directory")
        .assert_no_panic();
    let file = scratch("notdir").join("file");
    std::fs::write(&file, b"x").unwrap();
    let spec = share_spec("notdir", &file, "mode=hello", "");
    hvm(&["run", &path_str(&spec)])
        .assert_code(BAD_INPUT)
        .assert_stderr("not a directory")
        .assert_no_panic();
}

#[test]
fn a_virtiofsd_that_does_not_exist_or_does_not_serve_is_a_clear_error() {
    let dir = scratch("share-bad-server");
    let spec = share_spec("noserver", &dir, "mode=hello", "");
    hvm(&[
        "run",
        "--virtiofsd",
        "/nonexistent/virtiofsd",
        &path_str(&spec),
    ])
    .assert_code(BAD_INPUT)
    .assert_stderr("share data: cannot start /nonexistent/virtiofsd")
    .assert_no_panic();
    // A program that is not a file server: it exits at once; hvm quotes it.
    let fake = dir.join("fake-virtiofsd");
    std::fs::write(&fake, "#!/bin/sh\necho 'not a file server' >&2\nexit 3\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let spec = share_spec(
        "fake",
        &dir,
        "mode=hello",
        &format!("virtiofsd = \"{}\"\n", fake.display()),
    );
    hvm(&["run", &path_str(&spec)])
        .assert_code(BAD_INPUT)
        .assert_stderr("virtio-fs data: vhost-user")
        .assert_stderr("not a file server")
        .assert_no_panic();
}

#[test]
fn share_keys_are_checked_with_key_and_line() {
    let dir = scratch("share-keys");
    let base = tiny_spec(&tiny_elf(), 1, 64, "mode=hello");
    let d = path_str(&dir);
    let cases = [
        (
            format!("[[share]]\npath = \"{d}\"\ntag = \"has space\"\n"),
            "share.tag = \"has space\" at line 9: must be 1 to 36 bytes",
        ),
        (
            format!("[[share]]\npath = \"{d}\"\ntag = \"{}\"\n", "x".repeat(37)),
            "must be 1 to 36 bytes",
        ),
        (
            format!(
                "[[share]]\npath = \"{d}\"\ntag = \"a\"\n[[share]]\npath = \"{d}\"\ntag = \"a\"\n"
            ),
            "share.tag = \"a\" at line 12: is already the tag of another share",
        ),
        (
            "[[share]]\npath = \"\"\n".to_string(),
            "share.path = \"\" at line 8: must name a host directory",
        ),
        (
            format!("[[share]]\npath = \"{d}\"\nreadonly = true\n"),
            "unknown field `readonly`",
        ),
    ];
    for (extra, message) in cases {
        let spec = write_spec("share-keys", &format!("{base}{extra}"));
        hvm(&["validate", &path_str(&spec)])
            .assert_code(BAD_SPEC)
            .assert_stderr(message)
            .assert_no_panic();
    }
}

#[test]
fn an_ordinary_user_with_qemus_virtiofsd_is_told_it_needs_root() {
    // Only meaningful where QEMU's C virtiofsd is installed and the test
    // can drop to an unprivileged user (CI: root, Debian 12).
    let qemu_vfsd = "/usr/lib/qemu/virtiofsd";
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || !Path::new(qemu_vfsd).exists() || !Path::new("/usr/bin/setpriv").exists() {
        eprintln!("skipped: needs root, {qemu_vfsd} and setpriv");
        return;
    }
    let dir = scratch("share-nonroot");
    // The scratch files must be readable by the unprivileged user.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let spec = share_spec("nonroot", &dir, "mode=hello", "");
    let spec_dir = spec.parent().unwrap().to_path_buf();
    std::fs::set_permissions(&spec_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&spec, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = std::process::Command::new("/usr/bin/setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            HVM,
            "run",
        ])
        .args(["--virtiofsd", qemu_vfsd, "--no-control-socket"])
        .arg(&spec)
        .output()
        .expect("run setpriv");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(BAD_INPUT), "{stderr}");
    assert!(
        stderr.contains("is QEMU's virtiofsd, which needs root"),
        "{stderr}"
    );
    assert!(stderr.contains("cargo install virtiofsd"), "{stderr}");
}
