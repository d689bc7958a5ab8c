//! vCPUs: creation and per-vCPU CPU state, then one thread each running
//! KVM_RUN and turning exits into bus accesses or a reason to stop.

use crate::arch::x86_64::{cpuid, regs};
use crate::devices::bus::Bus;
use crate::timeline;
use crate::vmm::exit::{ExitReason, ExitSender};
use kvm_bindings::CpuId;
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Errors while creating or configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("KVM could not create vCPU {id}: {source}")]
    Create { id: u32, source: kvm_ioctls::Error },
    #[error("KVM refused the CPUID of vCPU {id}: {source}")]
    Cpuid { id: u32, source: kvm_ioctls::Error },
    #[error("vCPU {id}: {source}")]
    Regs { id: u32, source: regs::RegsError },
    #[error("cannot start the thread of vCPU {id}: {source}")]
    Spawn { id: u32, source: std::io::Error },
}

/// What every vCPU thread shares.
#[derive(Clone)]
pub struct VcpuContext {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub exit: ExitSender,
}

/// One configured vCPU, ready to run.
pub struct Vcpu {
    id: u32,
    fd: VcpuFd,
}

impl Vcpu {
    /// Creates vCPU `id` of `count` and sets its CPUID, MSRs, FPU and LAPIC;
    /// the boot vCPU (id 0) also gets the 64-bit entry state at `entry`.
    pub fn new(
        vm: &VmFd,
        supported: &CpuId,
        id: u32,
        count: u32,
        entry: u64,
    ) -> Result<Vcpu, VcpuError> {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(|source| VcpuError::Create { id, source })?;
        fd.set_cpuid2(&cpuid::for_vcpu(supported, id, count))
            .map_err(|source| VcpuError::Cpuid { id, source })?;
        let regs_err = |source| VcpuError::Regs { id, source };
        // Every CPU's MSRs alike (Linux checks that MTRRs agree).
        regs::setup_msrs(&fd).map_err(regs_err)?;
        if id == 0 {
            regs::setup_fpu(&fd).map_err(regs_err)?;
            regs::setup_lapic(&fd).map_err(regs_err)?;
            regs::setup_boot_cpu(&fd, entry).map_err(regs_err)?;
        }
        // Application processors keep KVM's power-on state (x87/SSE
        // defaults, LAPIC LVTs masked, as on a PC) and wait for INIT/SIPI
        // from the boot CPU: nothing more to set, ~3 ioctls fewer each.
        Ok(Vcpu { id, fd })
    }

    /// Starts the vCPU's thread.
    pub fn spawn(self, ctx: VcpuContext) -> Result<JoinHandle<()>, VcpuError> {
        let id = self.id;
        std::thread::Builder::new()
            .name(format!("hvm-vcpu{id}"))
            .spawn(move || self.run(ctx))
            .map_err(|source| VcpuError::Spawn { id, source })
    }

    fn run(mut self, ctx: VcpuContext) {
        if self.id == 0 {
            timeline::mark("first KVM_RUN");
        }
        loop {
            if let Some(reason) = self.step(&ctx) {
                log::debug!("vCPU {} stops: {reason:?}", self.id);
                ctx.exit.send(reason);
                return;
            }
            if ctx.exit.stopping() {
                // A device or another vCPU ended the VM: run no more guest code.
                return;
            }
        }
    }

    /// Runs the guest until one exit; returns a reason when the VM must stop.
    fn step(&mut self, ctx: &VcpuContext) -> Option<ExitReason> {
        let vcpu = self.id;
        match self.fd.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                if !ctx.pio.write(u64::from(port), data) {
                    log::trace!("vCPU {vcpu}: write to unused port {port:#x}");
                }
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                if !ctx.pio.read(u64::from(port), data) {
                    // Nothing there: the bus floats high.
                    data.fill(0xff);
                }
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if !ctx.mmio.write(addr, data) {
                    log::trace!("vCPU {vcpu}: write to unused MMIO {addr:#x}");
                }
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !ctx.mmio.read(addr, data) {
                    data.fill(0xff);
                }
            }
            Ok(VcpuExit::Shutdown) => return Some(ExitReason::TripleFault { vcpu }),
            Ok(VcpuExit::Hlt) => {
                // The in-kernel LAPIC handles HLT; an exit here is spurious. Yield, go on.
                std::thread::yield_now();
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => {
                return Some(match kind {
                    kvm_bindings::KVM_SYSTEM_EVENT_RESET => ExitReason::Reset,
                    kvm_bindings::KVM_SYSTEM_EVENT_CRASH => ExitReason::GuestPanic,
                    _ => ExitReason::PowerOff,
                })
            }
            Ok(VcpuExit::FailEntry(reason, _cpu)) => {
                return Some(ExitReason::FailEntry { vcpu, reason })
            }
            Ok(VcpuExit::InternalError) => {
                let suberror = self.fd.get_kvm_run().exit_reason;
                // SAFETY: KVM filled the internal-error member of the exit union for this exit.
                let sub = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
                log::debug!("vCPU {vcpu}: internal error, exit reason {suberror}, suberror {sub}");
                return Some(ExitReason::InternalError {
                    vcpu,
                    suberror: sub,
                });
            }
            Ok(VcpuExit::Intr) => {}
            Ok(other) => {
                return Some(ExitReason::VcpuFailed {
                    vcpu,
                    message: format!("unexpected KVM exit {other:?}"),
                })
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => {
                return Some(ExitReason::VcpuFailed {
                    vcpu,
                    message: format!("KVM_RUN failed: {e}"),
                })
            }
        }
        None
    }
}
