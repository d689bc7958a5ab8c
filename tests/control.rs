//! Tier 1: the running VM's owner. Lifecycle commands (ps, pause, resume,
//! stop, info) against the tiny test guest, the control socket's promises,
//! the hostile guests that used to take stopping away from the user, and
//! the GDB stub driven by Debian's gdb in batch mode.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where root's VMs keep their sockets (tests run as root in CI); a test
/// may set HVM_RUNTIME_DIR for both sides instead.
fn runtime_dir() -> PathBuf {
    std::env::var_os("HVM_RUNTIME_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_RUNTIME_DIR")
                .filter(|d| !d.is_empty())
                .map(|d| PathBuf::from(d).join("hvm"))
        })
        .unwrap_or_else(|| {
            // SAFETY: getuid cannot fail.
            match unsafe { libc::getuid() } {
                0 => PathBuf::from("/run/hvm"),
                uid => PathBuf::from(format!("/tmp/hvm-{uid}")),
            }
        })
}

/// A name no other test uses.
fn unique(name: &str) -> String {
    format!("t{}-{name}", std::process::id())
}

/// A running VM whose stdout is collected as it comes.
struct Running {
    child: Child,
    stdout: Arc<Mutex<String>>,
    name: String,
}

impl Running {
    fn start(name: &str, cmdline: &str, extra_spec: &str, args: &[&str]) -> Running {
        let spec = format!("{}{extra_spec}", tiny_spec(&tiny_elf(), 2, 256, cmdline));
        let path = write_spec(name, &spec);
        let name = unique(name);
        let mut cmd = Command::new(HVM);
        cmd.arg("run")
            .arg("--name")
            .arg(&name)
            .args(args)
            .arg(&path);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start hvm");
        let stdout = Arc::new(Mutex::new(String::new()));
        let sink = stdout.clone();
        let pipe = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Running {
            child,
            stdout,
            name,
        }
    }

    fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// Waits until stdout contains `needle`.
    fn wait_for(&mut self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.stdout().contains(needle) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "hvm exited ({status}) before printing {needle:?}:\n{}",
                    self.stdout()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in:\n{}",
                self.stdout()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        self.wait_socket();
    }

    /// hvm claims its name once the guest runs, so the guest may print
    /// before the socket exists: wait for it (a script does the same).
    fn wait_socket(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.socket().exists() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("hvm exited ({status}) before its socket appeared");
            }
            assert!(Instant::now() < deadline, "no control socket after 5 s");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The socket exists once the VM runs.
    fn socket(&self) -> PathBuf {
        runtime_dir().join(format!("{}.sock", self.name))
    }

    fn finish(mut self, limit: Duration) -> Outcome {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("hvm did not exit within {limit:?}:\n{}", self.stdout());
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let mut stderr = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut stderr);
        }
        // Let the reader thread take the last lines.
        std::thread::sleep(Duration::from_millis(50));
        Outcome {
            code: status.code().unwrap_or(-1),
            stdout: self.stdout(),
            stderr,
        }
    }
}

/// The highest tick the count guest has printed.
fn last_tick(stdout: &str) -> u64 {
    stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix("hvmtest: tick "))
        .filter_map(|n| n.parse().ok())
        .max()
        .unwrap_or(0)
}

fn hvm_ok(args: &[&str]) -> Outcome {
    let out = hvm(args);
    out.assert_code(0).assert_no_panic();
    out
}

#[test]
fn paused_guest_stops_counting_and_goes_on_after_resume() {
    if !require_kvm() {
        return;
    }
    let mut vm = Running::start("count", "mode=count", "", &[]);
    vm.wait_for("hvmtest: tick 3");
    hvm_ok(&["pause", &vm.name]).assert_stdout("paused");
    // A line in flight may still arrive; then nothing.
    std::thread::sleep(Duration::from_millis(200));
    let paused_at = last_tick(&vm.stdout());
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(last_tick(&vm.stdout()), paused_at, "counted while paused");
    let info = hvm_ok(&["info", "--json", &vm.name]);
    assert!(
        info.stdout.contains("\"state\": \"paused\""),
        "{}",
        info.stdout
    );
    hvm_ok(&["resume", &vm.name]);
    vm.wait_for(&format!("hvmtest: tick {}", paused_at + 3));
    hvm_ok(&["stop", "--force", &vm.name]).assert_stdout("stopped");
    vm.finish(Duration::from_secs(10))
        .assert_code(137)
        .assert_stderr("stopped by `hvm stop`");
}

#[test]
fn ps_lists_a_running_vm_and_forgets_it_after_exit() {
    if !require_kvm() {
        return;
    }
    let mut vm = Running::start("ps", "mode=spin", "", &[]);
    vm.wait_for("hvmtest: spinning");
    let ps = hvm_ok(&["ps"]);
    let line = ps
        .stdout
        .lines()
        .find(|l| l.starts_with(&vm.name))
        .unwrap_or_else(|| panic!("{} not in:\n{}", vm.name, ps.stdout));
    assert!(line.contains("running") && line.contains("256M"), "{line}");
    let json = hvm_ok(&["ps", "--json"]);
    assert!(json.stdout.contains(&format!("\"name\": \"{}\"", vm.name)));
    let socket = vm.socket();
    let name = vm.name.clone();
    hvm_ok(&["stop", "--force", &name]);
    vm.finish(Duration::from_secs(10)).assert_code(137);
    assert!(!socket.exists(), "{} left behind", socket.display());
    assert!(!hvm_ok(&["ps"]).stdout.contains(&name));
    hvm(&["pause", &name])
        .assert_code(6)
        .assert_stderr("no running VM named");
}

#[test]
fn second_vm_with_the_same_name_is_refused() {
    if !require_kvm() {
        return;
    }
    let mut vm = Running::start("twice", "mode=spin", "", &[]);
    vm.wait_for("hvmtest: spinning");
    let spec = write_spec("twice2", &tiny_spec(&tiny_elf(), 1, 64, "mode=hello"));
    hvm(&["run", "--name", &vm.name, &path_str(&spec)])
        .assert_code(4)
        .assert_stderr("is already running")
        .assert_stderr(&format!("pid {}", vm.child.id()));
    hvm(&["run", "--name", "../etc", &path_str(&spec)])
        .assert_code(2)
        .assert_stderr("invalid VM name");
    hvm_ok(&["stop", "--force", &vm.name]);
    vm.finish(Duration::from_secs(10)).assert_code(137);
}

#[test]
fn control_socket_is_private_and_gone_after_every_way_out() {
    if !require_kvm() {
        return;
    }
    // (mode, extra args, expected code, how it ends)
    let cases: [(&str, &[&str], i32, Option<i32>); 4] = [
        ("mode=exit code=3", &[], 3, None),
        ("mode=triple", &[], 125, None),
        ("mode=spin", &["--timeout", "1s"], 124, None),
        ("mode=spin", &[], 143, Some(libc::SIGTERM)),
    ];
    for (i, (cmdline, args, code, signal)) in cases.into_iter().enumerate() {
        let mut vm = Running::start(&format!("sock{i}"), cmdline, "", args);
        let socket = vm.socket();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = false;
        while Instant::now() < deadline && vm.child.try_wait().unwrap().is_none() {
            if let Ok(meta) = std::fs::metadata(&socket) {
                assert_eq!(
                    meta.permissions().mode() & 0o777,
                    0o600,
                    "{}",
                    socket.display()
                );
                seen = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if let Some(sig) = signal {
            assert!(seen, "no socket while the VM ran");
            vm.wait_for("hvmtest: spinning");
            // SAFETY: signalling our own child.
            unsafe { libc::kill(vm.child.id() as i32, sig) };
        }
        let out = vm.finish(Duration::from_secs(10));
        out.assert_code(code).assert_no_panic();
        assert!(
            !socket.exists(),
            "{cmdline}: {} left behind",
            socket.display()
        );
        assert!(
            !socket.with_extension("lock").exists(),
            "{cmdline}: lock left behind"
        );
    }
}

#[test]
fn control_socket_answers_garbage_with_an_error_and_keeps_the_vm() {
    if !require_kvm() {
        return;
    }
    let mut vm = Running::start("garbage", "mode=spin", "", &[]);
    vm.wait_for("hvmtest: spinning");
    let mut s = UnixStream::connect(vm.socket()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"not json\n{\"cmd\":\"reboot\"}\n{\"cmd\":\"info\"}\n")
        .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut replies = Vec::new();
    for _ in 0..3 {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        replies.push(line);
    }
    assert!(replies[0].contains("\"ok\":false") && replies[0].contains("commands: info"));
    assert!(replies[1].contains("\"ok\":false"), "{}", replies[1]);
    assert!(replies[2].contains("\"ok\":true") && replies[2].contains("\"state\":\"running\""));
    // A line longer than any request: refused, connection closed.
    s.write_all(&vec![b'x'; 200_000]).ok();
    drop(s);
    let info = hvm_ok(&["info", &vm.name]);
    info.assert_stdout("state:   running")
        .assert_stdout("acpi ged (power button)")
        .assert_stdout("serial COM1");
    hvm_ok(&["stop", "--force", &vm.name]);
    vm.finish(Duration::from_secs(10)).assert_code(137);
}

/// A 64 MiB sparse image for the block-flooding guests.
fn disk(name: &str, size: u64) -> String {
    let path = scratch(name).join("disk.img");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(size).unwrap();
    path_str(&path)
}

#[test]
fn sigterm_ends_a_guest_flooding_the_block_queue_within_a_second() {
    if !require_kvm() {
        return;
    }
    let drive = format!("[[drive]]\npath = \"{}\"\n", disk("flood", 64 << 20));
    let mut vm = Running::start("flood", "mode=blkflood", &drive, &[]);
    vm.wait_for("hvmtest: blkflood running");
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(vm.child.id() as i32, libc::SIGTERM) };
    let out = vm.finish(Duration::from_secs(5));
    out.assert_code(143).assert_no_panic();
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn oversized_block_request_is_refused_at_once_with_ioerr() {
    if !require_kvm() {
        return;
    }
    let drive = format!("[[drive]]\npath = \"{}\"\n", disk("huge", 8 << 30));
    let start = Instant::now();
    let spec = format!("{}{drive}", tiny_spec(&tiny_elf(), 1, 256, "mode=hugereq"));
    run_spec("huge", &spec, &["--timeout", "20s"])
        .assert_code(0)
        .assert_stdout("hvmtest: hugereq status 1 ");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn ordinary_block_read_still_works_under_the_limits() {
    if !require_kvm() {
        return;
    }
    let drive = format!("[[drive]]\npath = \"{}\"\n", disk("read", 1 << 20));
    let spec = format!("{}{drive}", tiny_spec(&tiny_elf(), 1, 256, "mode=blkread"));
    // 4 KiB of zeros: FNV-1a 32 of them.
    let fnv = fnv1a(&[0u8; 4096]);
    run_spec("blkread", &spec, &["--timeout", "20s"])
        .assert_code(0)
        .assert_stdout(&format!("hvmtest: blkread status 0 fnv={fnv:#x}"));
}

#[test]
fn timeout_fires_while_nobody_reads_stdout() {
    if !require_kvm() {
        return;
    }
    let path = write_spec("chatter", &tiny_spec(&tiny_elf(), 1, 64, "mode=chatter"));
    let start = Instant::now();
    // stdout is a pipe nobody reads: it fills, and hvm must not care.
    let mut child = Command::new(HVM)
        .args(["run", "--timeout", "4s", &path_str(&path)])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(15) {
            let _ = child.kill();
            panic!("hvm hung with an unread stdout");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(124), "{stderr}");
    assert!(stderr.contains("timeout"), "{stderr}");
    assert!(
        stderr.contains("bytes of guest output were dropped"),
        "{stderr}"
    );
}

/// Debian's gdb, or a clear failure: CI installs it.
fn gdb() -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let p = PathBuf::from(dir).join("gdb");
        if p.exists() {
            return p;
        }
    }
    panic!("this test drives the GDB stub with gdb, which is not installed (apt-get install gdb)");
}

#[test]
fn gdb_attaches_before_the_first_instruction_and_debugs_the_guest() {
    if !require_kvm() {
        return;
    }
    let gdb = gdb();
    let sock = scratch("gdb").join("gdb.sock");
    let vm = Running::start(
        "gdb",
        "mode=hello",
        "",
        &["-v", "--timeout", "60s", "--gdb", &path_str(&sock)],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "no gdb socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    // A hardware breakpoint (software ones need a KVM that intercepts
    // int3 for the debugger; tier 2 tests those on a real KVM).
    let out = Command::new(gdb)
        .args(["-q", "-batch", "-nx", &tiny_elf()])
        .args(["-ex", &format!("target remote {}", path_str(&sock))])
        .args(["-ex", "info threads"])
        .args(["-ex", "hbreak hvmtest_main"])
        .args(["-ex", "continue"])
        .args(["-ex", "bt"])
        .args(["-ex", "p/x $rdi"])
        .args(["-ex", "p/x *(unsigned int*)0x7202"])
        .args(["-ex", "set var *(char*)0x7fff0 = 0x5a"])
        .args(["-ex", "x/1xb 0x7fff0"])
        .args(["-ex", "stepi"])
        .args(["-ex", "info symbol $pc"])
        .args(["-ex", "monitor regs"])
        .args(["-ex", "delete"])
        .args(["-ex", "continue"])
        .stdin(Stdio::null())
        .output()
        .expect("run gdb");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let o = vm.finish(Duration::from_secs(30));
    let text = format!("{text}\n--- hvm stderr\n{}", o.stderr);
    o.assert_code(0)
        .assert_stdout("Hello from the hvm tiny guest");
    for needle in [
        "Thread 1.2",         // every vCPU a thread
        "#0  0x",             // bt names the function...
        "in hvmtest_main ()", // ...the breakpoint stopped in
        "$1 = 0x7000",        // rdi: boot_params
        "$2 = 0x53726448",    // memory: the setup header's "HdrS"
        "0x7fff0:\t0x5a",     // memory written and read back
        "hvmtest_main + ",    // stepi moved past the breakpoint
        "cr0=0x",             // monitor regs: control registers
        "exited normally",    // the guest's verdict reaches gdb
    ] {
        assert!(
            text.contains(needle),
            "gdb output lacks {needle:?}:\n{text}"
        );
    }
}

#[test]
fn gdb_ctrl_c_stops_the_guest_and_a_detached_vm_runs_on() {
    if !require_kvm() {
        return;
    }
    let gdb = gdb();
    let sock = scratch("gdbint").join("gdb.sock");
    let mut vm = Running::start("gdbint", "mode=count", "", &["--gdb", &path_str(&sock)]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "no gdb socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    // gdb as a user runs it: commands on stdin, Ctrl-C as SIGINT.
    let mut g = Command::new(gdb)
        .args(["-q", "-nx", &tiny_elf()])
        .args(["-ex", &format!("target remote {}", path_str(&sock))])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run gdb");
    let mut input = g.stdin.take().unwrap();
    input.write_all(b"continue\n").unwrap();
    vm.wait_for("hvmtest: tick 2");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(g.id() as i32, libc::SIGINT) };
    std::thread::sleep(Duration::from_millis(500));
    let stopped_at = last_tick(&vm.stdout());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        last_tick(&vm.stdout()),
        stopped_at,
        "counted while stopped in gdb"
    );
    input.write_all(b"info symbol $pc\ndetach\nquit\n").unwrap();
    drop(input);
    let out = g.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("SIGINT"), "{text}");
    assert!(text.contains("in section .text"), "{text}");
    assert!(text.contains("Detaching"), "{text}");
    // Detached: the guest counts on, and the VM answers as usual.
    vm.wait_for(&format!("hvmtest: tick {}", stopped_at + 3));
    hvm_ok(&["pause", &vm.name]);
    hvm_ok(&["resume", &vm.name]);
    hvm_ok(&["stop", "--force", &vm.name]);
    vm.finish(Duration::from_secs(10)).assert_code(137);
}
