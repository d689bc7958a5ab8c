//! Lays out hvm's release binary for a small footprint: the functions a VM's
//! start, run and stop enter (listed in `link-order/hot-functions.txt`,
//! measured by `link-order/profile.py`) go first and together. The kernel
//! maps a program's code 64 KiB around each page it touches ("fault-around"),
//! so code scattered over the whole binary made all of it resident; packed,
//! the resident code is about what runs (see `link-order/README.md`).
//!
//! Only with LLD, the linker rustc uses on x86_64 Linux from Rust 1.90 on
//! (`--symbol-ordering-file` is LLD's); names the file lists that a build
//! lacks (another toolchain's hashes) are ignored, which costs memory, not
//! correctness. `HVM_LINK_ORDER=0` turns it off. With glibc 2.36 or newer
//! the relative relocations are packed as well (see `glibc_at_least`).

use std::path::Path;
use std::process::Command;

fn main() {
    let list = Path::new(env!("CARGO_MANIFEST_DIR")).join("link-order/hot-functions.txt");
    println!("cargo:rerun-if-changed={}", list.display());
    println!("cargo:rerun-if-env-changed=HVM_LINK_ORDER");
    let wanted = std::env::var("HVM_LINK_ORDER").map_or(true, |v| v != "0");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let target = std::env::var("TARGET").unwrap_or_default();
    if wanted
        && release
        && target == "x86_64-unknown-linux-gnu"
        && links_with_lld()
        && list.exists()
    {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            list.display()
        );
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
        if glibc_at_least(2, 36) {
            println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
        }
    }
}

/// Whether the C library the static binary links is glibc `major.minor` or
/// newer: glibc relocates a static PIE itself at start, and reads packed
/// relative relocations (DT_RELR, 24 -> ~1 bytes each) from 2.36 on. Packed,
/// the 75 KiB table the start-up read in full shrinks to 1 KiB (idle tiny
/// guest: 1,928 -> 1,800 KiB resident).
fn glibc_at_least(major: u32, minor: u32) -> bool {
    let Ok(out) = Command::new("getconf").arg("GNU_LIBC_VERSION").output() else {
        return false;
    };
    // "glibc 2.36"
    let text = String::from_utf8_lossy(&out.stdout);
    major_minor(text.trim().trim_start_matches("glibc ")) >= (major, minor)
}

/// Whether rustc links with its own LLD by default (x86_64 Linux, 1.90+).
fn links_with_lld() -> bool {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = Command::new(rustc).arg("-vV").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(release) = text.lines().find_map(|l| l.strip_prefix("release: ")) else {
        return false;
    };
    major_minor(release) >= (1, 90)
}

/// The first two numbers of a version ("1.91.0-nightly", "2.36"); 0 where
/// one is missing or not a number.
fn major_minor(version: &str) -> (u32, u32) {
    let mut parts = version
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}
