//! Where a guest's time goes: each vCPU thread counts its exits by kind
//! and address, with the time it spent serving them, when asked
//! (`hvm run --stats`). The counts are summed when the threads end and
//! printed at exit, grouped by device, beside the time in each phase.
//! Nothing is counted (one branch per exit) when nobody asked. The
//! report ends with the CPU time each part used: the vCPU threads (the
//! guest's own time included), the device loop, hvm in all, and the
//! helpers (virtiofsd, passt), so a slow transfer shows who was busy.

use crate::api::DeviceInfo;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What one KVM_RUN returned for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExitKind {
    /// IN or OUT on this port (a string instruction counts once).
    Port(u16),
    /// A load or store at this guest-physical address.
    Mmio(u64),
    /// Anything else, by name: HLT, a kick (signal), the guest's end.
    Other(&'static str),
}

/// How often, and the VMM's time serving it (from KVM_RUN's return to
/// the next KVM_RUN).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    pub exits: u64,
    pub serving: Duration,
}

impl Count {
    fn add(&mut self, other: Count) {
        self.exits += other.exits;
        self.serving += other.serving;
    }
}

/// The most distinct exit kinds one vCPU counts apart.
const MAX_KINDS: usize = 4096;

/// One vCPU's (or, summed, the VM's) exits.
#[derive(Debug, Default)]
pub struct ExitStats {
    by_kind: HashMap<ExitKind, Count>,
    /// Time inside KVM_RUN: the guest's own, plus what KVM served in the kernel.
    pub in_kvm_run: Duration,
    /// Port writes KVM batched instead of exiting (see write_batches).
    pub batched_writes: u64,
    /// CPU time of the vCPU threads (guest time included).
    pub vcpu_cpu: Duration,
    /// CPU time of the device loop's thread.
    pub device_loop_cpu: Duration,
}

impl ExitStats {
    /// Counts one exit: `in_run` inside KVM_RUN, `serving` after it.
    pub fn record(&mut self, kind: ExitKind, in_run: Duration, serving: Duration) {
        self.in_kvm_run += in_run;
        // Addresses are the guest's to choose: past MAX_KINDS distinct ones
        // the rest share a bucket, so a guest cannot grow this without end.
        let kind = if self.by_kind.len() >= MAX_KINDS && !self.by_kind.contains_key(&kind) {
            ExitKind::Other("other addresses (too many to count apart)")
        } else {
            kind
        };
        self.by_kind
            .entry(kind)
            .or_default()
            .add(Count { exits: 1, serving });
    }

    /// Adds another vCPU's counts.
    pub fn merge(&mut self, other: &ExitStats) {
        self.in_kvm_run += other.in_kvm_run;
        self.batched_writes += other.batched_writes;
        self.vcpu_cpu += other.vcpu_cpu;
        self.device_loop_cpu += other.device_loop_cpu;
        for (kind, count) in &other.by_kind {
            self.by_kind.entry(*kind).or_default().add(*count);
        }
    }

    pub fn total(&self) -> Count {
        let mut t = Count::default();
        for c in self.by_kind.values() {
            t.add(*c);
        }
        t
    }

    /// The exits grouped as a reader wants them: port and MMIO accesses by
    /// the device whose range holds the address (or "unused port 0x80"),
    /// the rest by name; most frequent first.
    pub fn grouped(&self, devices: &[DeviceInfo]) -> Vec<(String, Count)> {
        let mut groups: BTreeMap<String, Count> = BTreeMap::new();
        for (kind, count) in &self.by_kind {
            let name = match *kind {
                ExitKind::Port(port) => device_at(devices, "pio", u64::from(port))
                    .map(|d| format!("port I/O: {} ({:#x})", d.label, d.base))
                    .unwrap_or_else(|| format!("port I/O: unused port {port:#x}")),
                ExitKind::Mmio(addr) => device_at(devices, "mmio", addr)
                    .map(|d| format!("MMIO: {} ({:#x})", d.label, d.base))
                    .unwrap_or_else(|| format!("MMIO: unused {:#x}", addr & !0xfff)),
                ExitKind::Other(name) => name.to_string(),
            };
            groups.entry(name).or_default().add(*count);
        }
        let mut out: Vec<(String, Count)> = groups.into_iter().collect();
        out.sort_by(|a, b| b.1.exits.cmp(&a.1.exits).then(a.0.cmp(&b.0)));
        out
    }
}

fn device_at<'a>(devices: &'a [DeviceInfo], bus: &str, addr: u64) -> Option<&'a DeviceInfo> {
    devices
        .iter()
        .find(|d| d.bus == bus && addr >= d.base && addr - d.base < d.len)
}

/// Where the vCPU threads leave their counts as they end.
#[derive(Clone, Default)]
pub struct StatsSink(Arc<Mutex<ExitStats>>);

impl StatsSink {
    pub fn add(&self, stats: &ExitStats) {
        crate::devices::bus::lock(&self.0).merge(stats);
    }

    /// The device loop's CPU time, when it ends.
    pub fn add_device_loop_cpu(&self, cpu: Duration) {
        crate::devices::bus::lock(&self.0).device_loop_cpu += cpu;
    }

    /// The report `--stats` prints: phases, exits by group, CPU time.
    pub fn report(&self, devices: &[DeviceInfo], phases: &[(&'static str, Duration)]) -> String {
        let stats = crate::devices::bus::lock(&self.0);
        let mut out = render(&stats, devices, phases);
        out.push_str(&render_cpu(&stats, process_cpu()));
        out
    }
}

/// The calling thread's CPU time so far.
pub fn thread_cpu() -> Duration {
    cpu_clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

fn cpu_clock(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: fills a live timespec.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CPU time (user + system) of hvm's process and of its children that
/// have been waited for (the helpers, stopped before the report).
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessCpu {
    pub hvm: Duration,
    pub helpers: Duration,
}

fn process_cpu() -> ProcessCpu {
    let used = |who| {
        // SAFETY: getrusage fills a zeroed rusage.
        let mut r: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: as above, for a live struct.
        if unsafe { libc::getrusage(who, &mut r) } != 0 {
            return Duration::ZERO;
        }
        let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
        tv(r.ru_utime) + tv(r.ru_stime)
    };
    ProcessCpu {
        hvm: used(libc::RUSAGE_SELF),
        helpers: used(libc::RUSAGE_CHILDREN),
    }
}

fn render_cpu(stats: &ExitStats, process: ProcessCpu) -> String {
    format!(
        "hvm: stats: CPU time: vCPU threads {} (the guest's own time included), device loop {}, hvm in all {}; helpers (virtiofsd, passt) {}\n",
        ms(stats.vcpu_cpu),
        ms(stats.device_loop_cpu),
        ms(process.hvm),
        ms(process.helpers)
    )
}

/// At most this many exit groups are listed; the rest are summed.
const MAX_GROUPS: usize = 16;

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn render(
    stats: &ExitStats,
    devices: &[DeviceInfo],
    phases: &[(&'static str, Duration)],
) -> String {
    let mut out = String::from("hvm: stats: phases (since hvm started):");
    for (name, at) in phases {
        let _ = write!(out, " {name} {}", ms(*at));
        out.push(';');
    }
    out.pop();
    out.push('\n');
    let total = stats.total();
    let _ = writeln!(
        out,
        "hvm: stats: {} exits ({} port writes batched without one); vCPUs spent {} in KVM_RUN and {} in hvm serving exits",
        total.exits,
        stats.batched_writes,
        ms(stats.in_kvm_run),
        ms(total.serving)
    );
    let groups = stats.grouped(devices);
    let width = groups
        .iter()
        .take(MAX_GROUPS)
        .map(|(n, _)| n.len())
        .max()
        .unwrap_or(0);
    for (name, count) in groups.iter().take(MAX_GROUPS) {
        let _ = writeln!(
            out,
            "hvm: stats:   {name:<width$} {:>10} exits {:>10}",
            count.exits,
            ms(count.serving)
        );
    }
    if groups.len() > MAX_GROUPS {
        let mut rest = Count::default();
        for (_, c) in &groups[MAX_GROUPS..] {
            rest.add(*c);
        }
        let _ = writeln!(
            out,
            "hvm: stats:   {:<width$} {:>10} exits {:>10}",
            format!("({} more kinds)", groups.len() - MAX_GROUPS),
            rest.exits,
            ms(rest.serving)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(label: &str, bus: &str, base: u64, len: u64) -> DeviceInfo {
        DeviceInfo {
            id: 0,
            label: label.into(),
            bus: bus.into(),
            base,
            len,
            irq: None,
        }
    }

    #[test]
    fn exits_are_grouped_by_the_device_that_holds_the_address() {
        let devices = [
            dev("serial COM1", "pio", 0x3f8, 8),
            dev("virtio-blk vda", "mmio", 0xd000_0000, 0x1000),
        ];
        let us = Duration::from_micros(1);
        let mut a = ExitStats::default();
        a.record(ExitKind::Port(0x3f8), us, us);
        a.record(ExitKind::Port(0x3fd), us, us);
        a.record(ExitKind::Port(0x80), us, us);
        let mut b = ExitStats::default();
        b.record(ExitKind::Mmio(0xd000_0050), us, us);
        b.record(ExitKind::Mmio(0xfee0_0300), us, us);
        b.record(ExitKind::Other("HLT"), us, us);
        b.record(ExitKind::Port(0x3f9), us, us);
        a.merge(&b);
        assert_eq!(a.total().exits, 7);
        assert_eq!(a.in_kvm_run, 7 * us);
        let g = a.grouped(&devices);
        assert_eq!(g[0].0, "port I/O: serial COM1 (0x3f8)");
        assert_eq!(g[0].1.exits, 3);
        let names: Vec<&str> = g.iter().map(|(n, _)| n.as_str()).collect();
        assert!(names.contains(&"MMIO: virtio-blk vda (0xd0000000)"));
        assert!(names.contains(&"MMIO: unused 0xfee00000"));
        assert!(names.contains(&"port I/O: unused port 0x80"));
        assert!(names.contains(&"HLT"));
    }

    #[test]
    fn a_guest_touching_endless_addresses_fills_one_bucket_not_memory() {
        let mut s = ExitStats::default();
        for page in 0..(MAX_KINDS as u64 + 1000) {
            s.record(ExitKind::Mmio(page << 12), Duration::ZERO, Duration::ZERO);
        }
        assert_eq!(s.by_kind.len(), MAX_KINDS + 1);
        assert_eq!(s.total().exits, MAX_KINDS as u64 + 1000);
        let other = s.by_kind[&ExitKind::Other("other addresses (too many to count apart)")];
        assert_eq!(other.exits, 1000);
    }

    #[test]
    fn the_report_names_phases_and_caps_its_length() {
        let mut s = ExitStats::default();
        for port in 0..40u16 {
            s.record(ExitKind::Port(port), Duration::ZERO, Duration::ZERO);
        }
        let text = render(&s, &[], &[("first KVM_RUN", Duration::from_millis(2))]);
        assert!(text.contains("first KVM_RUN 2.0 ms"), "{text}");
        assert!(text.contains("40 exits"), "{text}");
        assert!(text.contains("(24 more kinds)"), "{text}");
        assert!(text.lines().count() <= MAX_GROUPS + 3, "{text}");
    }

    #[test]
    fn cpu_time_is_summed_over_threads_and_reported_by_part() {
        let ms = Duration::from_millis;
        let mut a = ExitStats {
            vcpu_cpu: ms(30),
            ..Default::default()
        };
        let b = ExitStats {
            vcpu_cpu: ms(12),
            device_loop_cpu: ms(5),
            ..Default::default()
        };
        a.merge(&b);
        let line = render_cpu(
            &a,
            ProcessCpu {
                hvm: ms(50),
                helpers: ms(7),
            },
        );
        assert!(line.contains("vCPU threads 42.0 ms"), "{line}");
        assert!(line.contains("device loop 5.0 ms"), "{line}");
        assert!(line.contains("hvm in all 50.0 ms"), "{line}");
        assert!(line.contains("(virtiofsd, passt) 7.0 ms"), "{line}");
        assert!(thread_cpu() > Duration::ZERO);
        assert!(process_cpu().hvm > Duration::ZERO);
    }
}
