//! Helpers shared by the integration tests: run the real `hvm` binary on a
//! spec and capture what the guest printed and how hvm exited.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const HVM: &str = env!("CARGO_BIN_EXE_hvm");

/// The repository root (specs refer to guest images by absolute path).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn tiny_elf() -> String {
    root()
        .join("guest-images/tiny/hvmtest.elf")
        .display()
        .to_string()
}

pub fn tiny_bzimage() -> String {
    root()
        .join("guest-images/tiny/hvmtest.bzImage")
        .display()
        .to_string()
}

/// A fresh scratch folder for one test.
pub fn scratch(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "hvm-test-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        name
    ));
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// True when KVM tests may run. Without /dev/kvm they fail loudly, unless
/// HVM_SKIP_KVM_TESTS=1 asks explicitly to skip them (CI never sets it).
pub fn require_kvm() -> bool {
    if std::env::var_os("HVM_SKIP_KVM_TESTS").is_some_and(|v| v == "1") {
        eprintln!("skipped: HVM_SKIP_KVM_TESTS=1");
        return false;
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!(
            "this test boots a guest and needs /dev/kvm, which cannot be opened ({e}). \
             Load kvm_intel/kvm_amd and get access to /dev/kvm, or set HVM_SKIP_KVM_TESTS=1 to skip KVM tests"
        );
    }
    true
}

/// What one hvm run did.
#[derive(Debug)]
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "hvm exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }

    pub fn assert_stdout(&self, needle: &str) -> &Self {
        assert!(
            self.stdout.contains(needle),
            "stdout lacks {needle:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    pub fn assert_stderr(&self, needle: &str) -> &Self {
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}\n--- stderr\n{}",
            self.stderr
        );
        self
    }

    /// No Rust panic text, ever.
    pub fn assert_no_panic(&self) -> &Self {
        assert!(
            !self.stderr.contains("panicked at"),
            "hvm panicked:\n{}",
            self.stderr
        );
        self
    }
}

/// Writes `spec` to a scratch file and returns its path.
pub fn write_spec(name: &str, spec: &str) -> PathBuf {
    let path = scratch(name).join("vm.toml");
    std::fs::write(&path, spec).expect("write spec");
    path
}

/// Starts `hvm ARGS` with piped stdio.
pub fn spawn(args: &[&str], stdin: Option<&[u8]>) -> Child {
    let mut child = Command::new(HVM)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start hvm");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        pipe.write_all(input).expect("write stdin");
    }
    child
}

/// Waits for `child` (killing it after `limit`: a hang is a failure).
pub fn finish(mut child: Child, limit: Duration) -> Outcome {
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect");
            panic!(
                "hvm did not exit within {limit:?}\n--- stdout\n{}\n--- stderr\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = child.wait_with_output().expect("collect");
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `hvm ARGS` to completion (60 s at most).
pub fn hvm(args: &[&str]) -> Outcome {
    finish(spawn(args, None), Duration::from_secs(60))
}

/// Runs `hvm run [EXTRA] SPEC` on spec text.
pub fn run_spec(name: &str, spec: &str, extra: &[&str]) -> Outcome {
    let path = write_spec(name, spec);
    let p = path.display().to_string();
    let mut args = vec!["run"];
    args.extend_from_slice(extra);
    args.push(&p);
    hvm(&args)
}

/// A spec for the tier-1 test guest.
pub fn tiny_spec(kernel: &str, vcpus: u32, memory_mib: u64, cmdline: &str) -> String {
    format!(
        "[machine]\nvcpus = {vcpus}\nmemory = \"{memory_mib}M\"\n[kernel]\npath = \"{kernel}\"\ncmdline = \"{cmdline}\"\n"
    )
}

/// 32-bit FNV-1a, as the test guest computes it.
pub fn fnv1a(data: &[u8]) -> u32 {
    data.iter().fold(2_166_136_261u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(16_777_619)
    })
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}
