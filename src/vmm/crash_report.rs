//! Why a guest failed, in a dozen lines per vCPU: when the guest crashes
//! (triple fault, KVM internal error, failed entry, panic) or `--timeout`
//! expires, every vCPU thread records its registers and pending event as
//! it leaves, and hvm prints them after its one-line reason, with symbols
//! and the console's last lines (JSON too, with `--crash-report FILE`).
//! Nothing of this runs while the guest is well.

use crate::vmm::exit::ExitReason;
use crate::vmm::symbols::{Symbols, SymbolsFile};
use kvm_ioctls::VcpuFd;
use serde::Serialize;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Asks every vCPU thread to record its state as it leaves. Set by the
/// vCPU that crashed, or by the control loop before it stops a guest
/// whose time ran out.
#[derive(Clone, Default)]
pub struct CaptureRequest(Arc<AtomicBool>);

impl CaptureRequest {
    pub fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// The reasons that get a report: the guest failed, or never finished.
pub fn wanted(reason: &ExitReason) -> bool {
    matches!(
        reason,
        ExitReason::TripleFault { .. }
            | ExitReason::InternalError { .. }
            | ExitReason::FailEntry { .. }
            | ExitReason::GuestPanic
            | ExitReason::Timeout
            | ExitReason::VcpuFailed { .. }
    )
}

fn hex<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:#x}"))
}

/// An exception or interrupt KVM had in flight (KVM_GET_VCPU_EVENTS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PendingEvent {
    /// "exception", "interrupt" or "NMI".
    pub kind: &'static str,
    pub vector: u8,
    /// "injected" (being delivered) or "pending".
    pub state: &'static str,
    pub error_code: Option<u32>,
}

/// KVM's words about an internal error (KVM_EXIT_INTERNAL_ERROR).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InternalError {
    pub suberror: u32,
    pub meaning: &'static str,
    pub data: Vec<String>,
}

/// One word on the stack that points into kernel code: a likely return address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StackFrame {
    #[serde(serialize_with = "hex")]
    pub at: u64,
    #[serde(serialize_with = "hex")]
    pub value: u64,
    pub symbol: String,
}

/// One vCPU's state as it left KVM_RUN for the last time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VcpuSnapshot {
    pub vcpu: u32,
    /// Set when KVM would not give the state: the rest is zero.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
    #[serde(serialize_with = "hex")]
    pub rip: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rip_symbol: Option<String>,
    #[serde(serialize_with = "hex")]
    pub rsp: u64,
    #[serde(serialize_with = "hex")]
    pub rflags: u64,
    #[serde(serialize_with = "hex")]
    pub cr0: u64,
    #[serde(serialize_with = "hex")]
    pub cr2: u64,
    #[serde(serialize_with = "hex")]
    pub cr3: u64,
    #[serde(serialize_with = "hex")]
    pub cr4: u64,
    #[serde(serialize_with = "hex")]
    pub efer: u64,
    pub cs: u16,
    pub ss: u16,
    pub mode: &'static str,
    pub cpl: u8,
    pub events: Vec<PendingEvent>,
    /// A #DF is being delivered or pending: one more fault and it is a triple fault.
    pub double_fault: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub internal_error: Option<InternalError>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stack: Vec<StackFrame>,
    /// Where RSP points in guest-physical memory (for reading the stack later).
    #[serde(skip)]
    stack_gpa: Option<u64>,
}

const EFER_LMA: u64 = 1 << 10;
/// Where a 64-bit kernel's addresses start (the upper canonical half).
const KERNEL_HALF: u64 = 0xffff_8000_0000_0000;
const DOUBLE_FAULT: u8 = 8;

fn mode(cr0: u64, efer: u64, cs: &kvm_bindings::kvm_segment) -> &'static str {
    if cr0 & 1 == 0 {
        "real mode"
    } else if efer & EFER_LMA != 0 {
        if cs.l != 0 {
            "64-bit long mode"
        } else {
            "compatibility mode"
        }
    } else if cs.db != 0 {
        "32-bit protected mode"
    } else {
        "16-bit protected mode"
    }
}

/// The exceptions by vector, as the manuals name them.
fn exception_name(vector: u8) -> &'static str {
    match vector {
        0 => "#DE divide error",
        1 => "#DB debug",
        2 => "NMI",
        3 => "#BP breakpoint",
        4 => "#OF overflow",
        5 => "#BR bound range",
        6 => "#UD invalid opcode",
        7 => "#NM device not available",
        8 => "#DF double fault",
        10 => "#TS invalid TSS",
        11 => "#NP segment not present",
        12 => "#SS stack fault",
        13 => "#GP general protection",
        14 => "#PF page fault",
        16 => "#MF x87 error",
        17 => "#AC alignment check",
        18 => "#MC machine check",
        19 => "#XM SIMD error",
        20 => "#VE virtualization",
        21 => "#CP control protection",
        _ => "exception",
    }
}

/// KVM_INTERNAL_ERROR_* suberrors (linux/kvm.h).
fn suberror_meaning(suberror: u32) -> &'static str {
    match suberror {
        1 => "emulation failure",
        2 => "simultaneous exceptions",
        3 => "delivery event (an exit while delivering an event)",
        4 => "unexpected exit reason",
        _ => "unknown",
    }
}

impl VcpuSnapshot {
    /// Reads the state of the vCPU that `fd` runs; called on its own
    /// thread, after its last KVM_RUN.
    pub fn capture(vcpu: u32, fd: &mut VcpuFd, internal_error: bool) -> VcpuSnapshot {
        let mut s = VcpuSnapshot {
            vcpu,
            ..Default::default()
        };
        let (regs, sregs) = match (fd.get_regs(), fd.get_sregs()) {
            (Ok(r), Ok(s)) => (r, s),
            (Err(e), _) | (_, Err(e)) => {
                s.unreadable = Some(format!("KVM would not give the registers: {e}"));
                return s;
            }
        };
        s.rip = regs.rip;
        s.rsp = regs.rsp;
        s.rflags = regs.rflags;
        s.cr0 = sregs.cr0;
        s.cr2 = sregs.cr2;
        s.cr3 = sregs.cr3;
        s.cr4 = sregs.cr4;
        s.efer = sregs.efer;
        s.cs = sregs.cs.selector;
        s.ss = sregs.ss.selector;
        s.mode = mode(sregs.cr0, sregs.efer, &sregs.cs);
        s.cpl = if sregs.cr0 & 1 == 0 { 0 } else { sregs.cs.dpl };
        if let Ok(ev) = fd.get_vcpu_events() {
            let x = ev.exception;
            if x.injected != 0 || x.pending != 0 {
                s.events.push(PendingEvent {
                    kind: "exception",
                    vector: x.nr,
                    state: if x.injected != 0 {
                        "injected"
                    } else {
                        "pending"
                    },
                    error_code: (x.has_error_code != 0).then_some(x.error_code),
                });
                s.double_fault = x.nr == DOUBLE_FAULT;
            }
            if ev.interrupt.injected != 0 {
                s.events.push(PendingEvent {
                    kind: "interrupt",
                    vector: ev.interrupt.nr,
                    state: "injected",
                    error_code: None,
                });
            }
            if ev.nmi.injected != 0 || ev.nmi.pending != 0 {
                s.events.push(PendingEvent {
                    kind: "NMI",
                    vector: 2,
                    state: if ev.nmi.injected != 0 {
                        "injected"
                    } else {
                        "pending"
                    },
                    error_code: None,
                });
            }
        }
        if internal_error {
            // SAFETY: the last exit was KVM_EXIT_INTERNAL_ERROR: KVM filled
            // the internal member of the exit union.
            let internal = unsafe { fd.get_kvm_run().__bindgen_anon_1.internal };
            let n = (internal.ndata as usize).min(internal.data.len());
            s.internal_error = Some(InternalError {
                suberror: internal.suberror,
                meaning: suberror_meaning(internal.suberror),
                data: internal.data[..n]
                    .iter()
                    .map(|d| format!("{d:#x}"))
                    .collect(),
            });
        }
        if s.mode == "64-bit long mode" {
            s.stack_gpa = fd
                .translate_gva(s.rsp)
                .ok()
                .filter(|t| t.valid != 0)
                .map(|t| t.physical_address);
        }
        s
    }
}

/// At most this many likely return addresses are shown per vCPU.
const STACK_FRAMES: usize = 8;
/// And this many stack words are looked at (the rest of RSP's page at most).
const STACK_WORDS: u64 = 256;
/// The console lines a report ends with.
pub const CONSOLE_LINES: usize = 25;

/// Everything hvm knows about how the guest ended.
#[derive(Debug, Serialize)]
pub struct CrashReport {
    pub reason: String,
    pub exit_code: i32,
    /// The vCPU that failed (listed first), if one did.
    pub failed_vcpu: Option<u32>,
    pub vcpus: Vec<VcpuSnapshot>,
    /// Where the symbols came from, or why there are none.
    pub symbols: String,
    pub console_tail: Vec<String>,
}

impl CrashReport {
    /// Puts a report together once every vCPU has stopped: the failed
    /// vCPU first, addresses named from `symbols`, stacks read from `memory`.
    pub fn build(
        reason: &ExitReason,
        mut vcpus: Vec<VcpuSnapshot>,
        symbols_file: &SymbolsFile,
        memory: &GuestMemoryMmap,
        console_tail: Vec<String>,
    ) -> CrashReport {
        let failed_vcpu = match reason {
            ExitReason::TripleFault { vcpu }
            | ExitReason::InternalError { vcpu, .. }
            | ExitReason::FailEntry { vcpu, .. }
            | ExitReason::VcpuFailed { vcpu, .. } => Some(*vcpu),
            _ => None,
        };
        vcpus.sort_by_key(|v| (Some(v.vcpu) != failed_vcpu, v.vcpu));
        let (symbols, source) = match symbols_file.load() {
            Ok(s) => (
                Some(s),
                format!("function names from {}", symbols_file.path().display()),
            ),
            Err(e) => (None, format!("no function names: {e}")),
        };
        let mut unmatched = Vec::new();
        for v in &mut vcpus {
            if let Some(syms) = &symbols {
                v.rip_symbol = syms.name(v.rip);
                v.stack = read_stack(v, syms, memory);
                if v.rip_symbol.is_none() && v.rip >= KERNEL_HALF && v.unreadable.is_none() {
                    unmatched.push(v.vcpu.to_string());
                }
            }
        }
        let symbols = if unmatched.is_empty() {
            source
        } else {
            // Kernel addresses the symbols do not know: moved or mismatched.
            format!(
                "{source}; the kernel RIP of vCPU {} is in no function they name: \
                 KASLR moved the kernel (boot with nokaslr), or they are another build's",
                unmatched.join(", ")
            )
        };
        CrashReport {
            reason: reason.message().unwrap_or_default(),
            exit_code: reason.exit_code(),
            failed_vcpu,
            vcpus,
            symbols,
            console_tail,
        }
    }

    /// The report as hvm prints it, after its one-line reason.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let w = &mut out;
        let _ = writeln!(w, "hvm: crash report ({}):", self.symbols);
        for v in &self.vcpus {
            render_vcpu(w, v, Some(v.vcpu) == self.failed_vcpu);
        }
        if self.vcpus.is_empty() {
            let _ = writeln!(w, "  (no vCPU state: the vCPUs had already stopped)");
        }
        if self.console_tail.is_empty() {
            let _ = writeln!(w, "  the guest printed nothing on its console");
        } else {
            let _ = writeln!(w, "  the console's last lines:");
            for line in &self.console_tail {
                let _ = writeln!(w, "  | {line}");
            }
        }
        out
    }

    /// The report as JSON, for `--crash-report FILE`.
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}

fn render_vcpu(w: &mut String, v: &VcpuSnapshot, failed: bool) {
    let tag = if failed { " (failed)" } else { "" };
    if let Some(why) = &v.unreadable {
        let _ = writeln!(w, "  vCPU {}{tag}: {why}", v.vcpu);
        return;
    }
    let _ = writeln!(w, "  vCPU {}{tag}: {}, CPL {}", v.vcpu, v.mode, v.cpl);
    let symbol = v
        .rip_symbol
        .as_deref()
        .map(|s| format!(" <{s}>"))
        .unwrap_or_default();
    let _ = writeln!(
        w,
        "    RIP {:#018x}{symbol}  RSP {:#018x}  RFLAGS {:#x}",
        v.rip, v.rsp, v.rflags
    );
    let _ = writeln!(
        w,
        "    CR0 {:#x}  CR2 {:#x}  CR3 {:#x}  CR4 {:#x}  EFER {:#x}",
        v.cr0, v.cr2, v.cr3, v.cr4, v.efer
    );
    let _ = writeln!(w, "    CS {:#06x}  SS {:#06x}", v.cs, v.ss);
    for e in &v.events {
        let name = match e.kind {
            "exception" => format!("exception {} ({})", e.vector, exception_name(e.vector)),
            kind => format!("{kind} {}", e.vector),
        };
        let code = e
            .error_code
            .map(|c| format!(", error code {c:#x}"))
            .unwrap_or_default();
        let _ = writeln!(w, "    in flight: {name}, {}{code}", e.state);
    }
    if v.double_fault {
        let _ = writeln!(
            w,
            "    a double fault is in flight: one more fault is a triple fault"
        );
    }
    if let Some(ie) = &v.internal_error {
        let _ = writeln!(
            w,
            "    KVM internal error: suberror {} ({}), data [{}]",
            ie.suberror,
            ie.meaning,
            ie.data.join(", ")
        );
    }
    if !v.stack.is_empty() {
        let frames: Vec<String> = v.stack.iter().map(|f| f.symbol.clone()).collect();
        let _ = writeln!(w, "    stack (likely callers): {}", frames.join(" < "));
    }
}

/// Words from RSP to the end of its page that name a function: the
/// likely return addresses, innermost first (best effort: stale words
/// look the same).
fn read_stack(v: &VcpuSnapshot, syms: &Symbols, memory: &GuestMemoryMmap) -> Vec<StackFrame> {
    let Some(gpa) = v.stack_gpa else {
        return Vec::new();
    };
    let words = ((4096 - (gpa & 0xfff)) / 8).min(STACK_WORDS);
    let mut frames = Vec::new();
    for i in 0..words {
        let Ok(value) = memory.read_obj::<u64>(GuestAddress(gpa + i * 8)) else {
            break;
        };
        if let Some(symbol) = syms.name(value) {
            frames.push(StackFrame {
                // RSP is the guest's: near the top of the address space it wraps.
                at: v.rsp.wrapping_add(i * 8),
                value,
                symbol,
            });
            if frames.len() == STACK_FRAMES {
                break;
            }
        }
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> VcpuSnapshot {
        VcpuSnapshot {
            vcpu: 1,
            rip: 0x10_0040,
            rsp: 0x8ff8,
            cr0: 0x8000_0011,
            cr3: 0x1000,
            cr4: 0x20,
            efer: 0x500,
            cs: 0x10,
            ss: 0x18,
            mode: "64-bit long mode",
            events: vec![PendingEvent {
                kind: "exception",
                vector: 14,
                state: "injected",
                error_code: Some(0x10),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn the_text_names_registers_events_and_the_console() {
        let report = CrashReport {
            reason: "guest crashed".into(),
            exit_code: 125,
            failed_vcpu: Some(1),
            vcpus: vec![VcpuSnapshot {
                rip_symbol: Some("triple_fault+0x0/0x10".into()),
                ..snapshot()
            }],
            symbols: "function names from vmlinux".into(),
            console_tail: vec!["Kernel panic - not syncing: sysrq".into()],
        };
        let text = report.render();
        for want in [
            "vCPU 1 (failed): 64-bit long mode, CPL 0",
            "RIP 0x0000000000100040 <triple_fault+0x0/0x10>",
            "CR0 0x80000011  CR2 0x0  CR3 0x1000  CR4 0x20  EFER 0x500",
            "in flight: exception 14 (#PF page fault), injected, error code 0x10",
            "| Kernel panic - not syncing: sysrq",
        ] {
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
        assert!(text.lines().count() <= 12, "{text}");
        let json: serde_json::Value = serde_json::from_str(&report.json()).unwrap();
        assert_eq!(json["vcpus"][0]["rip"], "0x100040");
        assert_eq!(json["vcpus"][0]["rip_symbol"], "triple_fault+0x0/0x10");
        assert_eq!(json["vcpus"][0]["events"][0]["vector"], 14);
        assert_eq!(json["failed_vcpu"], 1);
    }

    #[test]
    fn build_names_functions_finds_callers_and_says_when_symbols_do_not_match() {
        let dir = std::env::temp_dir().join(format!("hvm-crash-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let map = dir.join("System.map");
        std::fs::write(
            &map,
            "ffffffff81000000 T start_kernel\nffffffff81000100 T do_crash\nffffffff81000200 T end\n",
        )
        .unwrap();
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        // The stack at guest-physical 0x8000: junk, then a return address.
        memory.write_obj(0x1234u64, GuestAddress(0x8000)).unwrap();
        memory
            .write_obj(0xffff_ffff_8100_0010u64, GuestAddress(0x8008))
            .unwrap();
        let inside = VcpuSnapshot {
            vcpu: 0,
            rip: 0xffff_ffff_8100_0104,
            stack_gpa: Some(0x8000),
            ..snapshot()
        };
        let moved = VcpuSnapshot {
            vcpu: 1,
            rip: 0xffff_ffff_a300_0104,
            ..snapshot()
        };
        let reason = ExitReason::TripleFault { vcpu: 1 };
        let r = CrashReport::build(
            &reason,
            vec![inside, moved],
            &SymbolsFile::open(map.clone()),
            &memory,
            vec![],
        );
        assert_eq!(r.failed_vcpu, Some(1));
        assert_eq!(r.vcpus[0].vcpu, 1, "the failed vCPU comes first");
        assert_eq!(r.vcpus[1].rip_symbol.as_deref(), Some("do_crash+0x4"));
        assert_eq!(r.vcpus[1].stack.len(), 1);
        assert_eq!(r.vcpus[1].stack[0].symbol, "start_kernel+0x10");
        assert_eq!(r.vcpus[1].stack[0].at, 0x8ff8 + 8);
        assert!(
            r.symbols.contains("vCPU 1 is in no function"),
            "{}",
            r.symbols
        );
        assert!(r.render().contains("the guest printed nothing"));
        let missing = CrashReport::build(
            &reason,
            vec![],
            &SymbolsFile::open(dir.join("nope")),
            &memory,
            vec![],
        );
        assert!(missing
            .symbols
            .starts_with("no function names: cannot read"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_stack_pointer_at_the_top_of_the_address_space_does_not_overflow() {
        let dir = std::env::temp_dir().join(format!("hvm-crash-top-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let map = dir.join("System.map");
        std::fs::write(&map, "ffffffff81000000 T start_kernel\n").unwrap();
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        for i in 0..512u64 {
            memory
                .write_obj(0xffff_ffff_8100_0010u64, GuestAddress(0x8000 + i * 8))
                .unwrap();
        }
        let top = VcpuSnapshot {
            rsp: u64::MAX - 7,
            stack_gpa: Some(0x8000),
            ..snapshot()
        };
        let r = CrashReport::build(
            &ExitReason::Timeout,
            vec![top],
            &SymbolsFile::open(map.clone()),
            &memory,
            vec![],
        );
        assert_eq!(r.vcpus[0].stack.len(), STACK_FRAMES);
        assert_eq!(r.vcpus[0].stack[1].at, 0, "wrapped, not panicked");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn modes_follow_cr0_efer_and_cs() {
        let mut cs = kvm_bindings::kvm_segment::default();
        assert_eq!(mode(0, 0, &cs), "real mode");
        cs.db = 1;
        assert_eq!(mode(1, 0, &cs), "32-bit protected mode");
        cs.l = 1;
        assert_eq!(mode(0x8000_0001, EFER_LMA, &cs), "64-bit long mode");
        cs.l = 0;
        assert_eq!(mode(0x8000_0001, EFER_LMA, &cs), "compatibility mode");
    }

    #[test]
    fn only_failures_and_timeouts_get_a_report() {
        assert!(wanted(&ExitReason::Timeout));
        assert!(wanted(&ExitReason::TripleFault { vcpu: 0 }));
        assert!(wanted(&ExitReason::GuestPanic));
        assert!(!wanted(&ExitReason::PowerOff));
        assert!(!wanted(&ExitReason::Signal(15)));
        assert!(!wanted(&ExitReason::DebugExit(3)));
    }
}
