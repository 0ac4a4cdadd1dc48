//! Readings from Linux `/proc`: a process's RSS and CPU time, and the machine's busy
//! CPU time, so a report can say what a figure cost and whether the cores were full.
//!
//! Owns parsing only; every reader returns None where `/proc` is missing.

use serde::Serialize;

/// Clock ticks per second of `/proc` CPU counters (USER_HZ, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// `VmRSS` of a process, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss_kib(&status)
}

/// Parses the `VmRSS:` line of `/proc/<pid>/status`.
pub fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// User + system CPU seconds used so far by a process (`self` for this one).
pub fn process_cpu_s(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_process_cpu_ticks(&stat).map(|t| t as f64 / USER_HZ)
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line. The command name
/// (field 2) may contain spaces and parentheses, so fields are counted after the
/// last `)`.
pub fn parse_process_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After `)`: field 3 is the state; utime is field 14, i.e. the 12th from here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The machine's CPU counters: (busy, total) ticks over all cores.
pub fn machine_cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_machine_cpu_ticks(stat.lines().next()?)
}

/// Parses the `cpu ...` line of `/proc/stat`: idle and iowait are not busy.
pub fn parse_machine_cpu_ticks(line: &str) -> Option<(u64, u64)> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let values: Vec<u64> = fields.filter_map(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal [guest guest_nice]: guests are
    // already counted in user/nice.
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3)? + values.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// CPU spent over an interval.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct CpuUsage {
    /// CPU seconds this process (the load generator) used.
    pub generator_s: f64,
    /// Share of the whole machine's CPU time that was busy, percent.
    pub machine_busy_pct: f64,
}

/// A snapshot to measure [`CpuUsage`] from.
#[derive(Debug, Clone, Copy)]
pub struct CpuSnapshot {
    /// This process's CPU seconds.
    own_s: Option<f64>,
    /// Machine busy/total ticks.
    machine: Option<(u64, u64)>,
}

impl CpuSnapshot {
    /// Reads the counters now.
    pub fn now() -> Self {
        Self {
            own_s: process_cpu_s("self"),
            machine: machine_cpu_ticks(),
        }
    }

    /// The usage between `self` and now.
    pub fn usage_since(&self) -> Option<CpuUsage> {
        let later = Self::now();
        let (busy0, total0) = self.machine?;
        let (busy1, total1) = later.machine?;
        let total = total1.checked_sub(total0)?;
        Some(CpuUsage {
            generator_s: later.own_s? - self.own_s?,
            machine_busy_pct: if total == 0 {
                0.0
            } else {
                100.0 * busy1.saturating_sub(busy0) as f64 / total as f64
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_from_proc_status() {
        let status = "Name:\tcrablet\nVmPeak:\t  200000 kB\nVmRSS:\t   34816 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss_kib(status), Some(34_816));
        assert_eq!(parse_vm_rss_kib("Name: x\n"), None);
        assert!(rss_kib(std::process::id()).is_some());
    }

    #[test]
    fn process_cpu_ticks_survive_odd_command_names() {
        let stat = "1234 (we (ird) name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 4 0";
        assert_eq!(parse_process_cpu_ticks(stat), Some(300));
        assert!(process_cpu_s("self").is_some());
    }

    #[test]
    fn machine_ticks_exclude_idle_and_iowait() {
        let line = "cpu  100 5 50 800 40 1 4 0 7 0";
        assert_eq!(parse_machine_cpu_ticks(line), Some((160, 1000)));
        assert_eq!(parse_machine_cpu_ticks("cpu0 1 2 3 4"), None);
    }
}
