//! CPU time and memory of the server (and of the simulator and the whole
//! machine) over a phase, read from /proc.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// /proc reports CPU times in USER_HZ ticks, 100 per second on every Linux
/// architecture (the kernel converts from its own HZ for this ABI).
const TICKS_PER_SECOND: f64 = 100.0;
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// User plus system CPU seconds of a process, all threads.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after
    // the last ')'. utime and stime are fields 14 and 15 of the line.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SECOND)
}

/// A `Vm*` line of /proc/PID/status, in bytes.
fn status_bytes(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    let kib: u64 = line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// (busy, total) CPU ticks of the whole machine since boot.
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .filter_map(|t| t.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is inside user).
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3)? + ticks.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// The server's figures over one phase.
#[derive(Clone, Copy, Debug)]
pub struct UsageDelta {
    pub cpu_seconds: f64,
    pub rss_start_bytes: u64,
    pub rss_bytes: u64,
    pub rss_max_sampled_bytes: u64,
    pub peak_rss_bytes: u64,
}

/// What [`Watch::finish`] measured.
pub struct Usage {
    pub server: Option<UsageDelta>,
    pub loadgen_cpu_seconds: Option<f64>,
    pub machine_cpu_busy_fraction: Option<f64>,
}

/// Started at the beginning of a phase; samples the server's RSS in the
/// background until finished.
pub struct Watch {
    /// The server's pid, CPU seconds and RSS at the start.
    server: Option<(String, f64, u64)>,
    loadgen_cpu: Option<f64>,
    machine: Option<(u64, u64)>,
    max_rss: Arc<AtomicU64>,
    sampler: Option<tokio::task::JoinHandle<()>>,
}

impl Watch {
    pub fn start(server_pid: Option<u32>) -> Watch {
        let max_rss = Arc::new(AtomicU64::new(0));
        let server = server_pid.and_then(|pid| {
            let pid = pid.to_string();
            let cpu = cpu_seconds(&pid)?;
            let rss = status_bytes(&pid, "VmRSS:")?;
            Some((pid, cpu, rss))
        });
        let sampler = server.as_ref().map(|(pid, _, _)| {
            let pid = pid.clone();
            let max_rss = max_rss.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(SAMPLE_EVERY);
                loop {
                    tick.tick().await;
                    if let Some(rss) = status_bytes(&pid, "VmRSS:") {
                        max_rss.fetch_max(rss, Ordering::Relaxed);
                    }
                }
            })
        });
        Watch {
            server,
            loadgen_cpu: cpu_seconds("self"),
            machine: machine_ticks(),
            max_rss,
            sampler,
        }
    }

    pub fn finish(self) -> Usage {
        if let Some(sampler) = &self.sampler {
            sampler.abort();
        }
        let server = self.server.as_ref().and_then(|(pid, start, rss_start)| {
            let rss = status_bytes(pid, "VmRSS:")?;
            Some(UsageDelta {
                cpu_seconds: cpu_seconds(pid)? - start,
                rss_start_bytes: *rss_start,
                rss_bytes: rss,
                rss_max_sampled_bytes: self.max_rss.load(Ordering::Relaxed).max(rss),
                peak_rss_bytes: status_bytes(pid, "VmHWM:")?,
            })
        });
        let machine_cpu_busy_fraction =
            self.machine
                .zip(machine_ticks())
                .and_then(|((busy0, total0), (busy1, total1))| {
                    let total = total1.checked_sub(total0)?;
                    (total > 0).then(|| busy1.saturating_sub(busy0) as f64 / total as f64)
                });
        Usage {
            server,
            loadgen_cpu_seconds: self
                .loadgen_cpu
                .zip(cpu_seconds("self"))
                .map(|(start, end)| end - start),
            machine_cpu_busy_fraction,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_can_be_measured() {
        let pid = std::process::id().to_string();
        assert!(cpu_seconds(&pid).is_some());
        assert!(status_bytes(&pid, "VmRSS:").unwrap() > 0);
        assert!(status_bytes(&pid, "VmHWM:").unwrap() >= status_bytes(&pid, "VmRSS:").unwrap() / 2);
        let (busy, total) = machine_ticks().unwrap();
        assert!(busy <= total);
        assert!(cpu_seconds("0").is_none());
    }
}
