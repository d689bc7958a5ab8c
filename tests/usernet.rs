//! Tier 1: user-mode networking (passt) and vsock as far as the tiny test
//! guest can take them: passt starts, listens on the forwarded port and is
//! gone after the VM, whichever way it ends; the vsock socket exists while
//! the VM runs and not after; the errors a user meets first are clear. The
//! guest side (DHCP, TCP both ways, forwards, vsock streams) is tier 2:
//! tests/tier2.rs, lab cases net-user and vsock.

mod common;

use common::*;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

const BAD_USAGE: i32 = 2;
const BAD_SPEC: i32 = 3;
const BAD_INPUT: i32 = 4;

/// passt processes now running (whoever started them).
fn passts() -> usize {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| std::fs::read(e.path().join("comm")).is_ok_and(|c| c.starts_with(b"passt")))
        .count()
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[test]
fn a_user_network_runs_passt_which_forwards_and_goes_with_the_vm() {
    if !require_kvm() {
        return;
    }
    if !std::path::Path::new("/usr/bin/passt").exists() {
        panic!("this test needs passt (apt-get install passt; .ci/run installs it)");
    }
    let before = passts();
    let port = free_port();
    let spec = write_spec(
        "usernet",
        &format!(
            "{}[[net]]\nforward = [\"tcp:127.0.0.1:{port}:80\"]\n",
            tiny_spec(&tiny_elf(), 1, 64, "mode=spin")
        ),
    );
    let child = spawn(&["-v", "run", "--timeout", "4s", &path_str(&spec)], None);
    // While the VM runs, passt listens on the forwarded port.
    let started = Instant::now();
    let mut reached = false;
    while started.elapsed() < Duration::from_secs(3) {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            reached = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = finish(child, Duration::from_secs(30));
    out.assert_code(124)
        .assert_stderr("net 0: /usr/bin/passt")
        .assert_stderr(&format!("forwards tcp:127.0.0.1:{port}:80"))
        .assert_no_panic();
    assert!(
        reached,
        "nothing listened on the forwarded port\n{}",
        out.stderr
    );
    // And on the other ways out.
    for mode in ["mode=hello", "mode=triple"] {
        let spec = write_spec(
            "usernet-exit",
            &format!("{}[[net]]\n", tiny_spec(&tiny_elf(), 1, 64, mode)),
        );
        hvm(&["run", &path_str(&spec)]).assert_no_panic();
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(passts(), before, "passt outlived hvm");
}

/// The passt that process `parent` started.
fn passt_of(parent: u32) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        // pid (comm) state ppid ...
        let (comm, rest) = stat.split_once(") ")?;
        let ppid: u32 = rest.split(' ').nth(1)?.parse().ok()?;
        (comm.contains("(passt") && ppid == parent)
            .then(|| e.file_name().to_string_lossy().parse().ok())
            .flatten()
    })
}

#[test]
fn passt_dying_is_reported_and_the_vm_goes_on() {
    if !require_kvm() {
        return;
    }
    let spec = write_spec(
        "passt-dies",
        &format!("{}[[net]]\n", tiny_spec(&tiny_elf(), 1, 64, "mode=spin")),
    );
    let child = spawn(&["run", "--timeout", "3s", &path_str(&spec)], None);
    let started = Instant::now();
    let pid = loop {
        if let Some(p) = passt_of(child.id()) {
            break p;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "no passt started"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // SAFETY: signals a process this test found, by pid.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    finish(child, Duration::from_secs(30))
        .assert_code(124)
        .assert_stderr("passt (net 0) has ended on its own")
        .assert_no_panic();
}

#[test]
fn a_missing_passt_says_which_package_brings_it() {
    let spec = write_spec(
        "nopasst",
        &format!(
            "{}[[net]]\npasst = \"/nonexistent/passt\"\n",
            tiny_spec(&tiny_elf(), 1, 64, "mode=hello")
        ),
    );
    hvm(&["run", &path_str(&spec)])
        .assert_code(BAD_INPUT)
        .assert_stderr("net 0: passt /nonexistent/passt is not an executable file")
        .assert_stderr("apt-get install passt")
        .assert_no_panic();
}

#[test]
fn bad_forward_rules_are_named_with_what_is_allowed() {
    let spec = write_spec(
        "badforward",
        &format!(
            "{}[[net]]\nforward = [\"tcp:8080:80\",\n  \"tcp:80800:80\"]\n",
            tiny_spec(&tiny_elf(), 1, 64, "mode=hello")
        ),
    );
    hvm(&["validate", &path_str(&spec)])
        .assert_code(BAD_SPEC)
        .assert_stderr("net.forward = \"tcp:80800:80\"")
        .assert_stderr("\"PROTO:[HOST_ADDRESS:]HOST_PORT:GUEST_PORT\"")
        .assert_no_panic();
    hvm(&["run", "--kernel", &tiny_elf(), "--forward", "http:80:80"])
        .assert_code(BAD_USAGE)
        .assert_stderr("--forward http:80:80: must be \"PROTO:")
        .assert_no_panic();
}

#[test]
fn the_vsock_socket_lives_as_long_as_the_vm_and_an_existing_one_is_refused() {
    if !require_kvm() {
        return;
    }
    let dir = scratch("vsock");
    let socket = dir.join("vm.vsock");
    let spec = write_spec(
        "vsock",
        &format!(
            "{}[vsock]\ncid = 3\nsocket = \"{}\"\n",
            tiny_spec(&tiny_elf(), 1, 64, "mode=spin"),
            socket.display()
        ),
    );
    let child = spawn(&["run", "--timeout", "3s", &path_str(&spec)], None);
    let started = Instant::now();
    while !socket.exists() && started.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(20));
    }
    // A host program may connect; this guest has no vsock driver, so it
    // never answers, and hvm must not mind.
    let mut s = std::os::unix::net::UnixStream::connect(&socket).expect("hvm listens");
    s.write_all(b"CONNECT 1234\n").unwrap();
    let out = finish(child, Duration::from_secs(30));
    out.assert_code(124).assert_no_panic();
    assert!(!socket.exists(), "the socket outlived the VM");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "no OK without a guest listener");
    // A path that exists already is not taken over.
    std::fs::write(&socket, b"someone's file").unwrap();
    hvm(&["run", &path_str(&spec)])
        .assert_code(BAD_INPUT)
        .assert_stderr("exists already")
        .assert_no_panic();
    assert_eq!(std::fs::read(&socket).unwrap(), b"someone's file");
}
