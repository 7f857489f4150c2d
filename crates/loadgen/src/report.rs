//! What a run measured: per phase, requests answered and failed (by
//! kind), throughput, latency percentiles from an HDR histogram,
//! connections held, and the server's CPU time and memory.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::usage::UsageDelta;

/// Latencies are kept in microseconds, from 1 µs to 1 hour, with three
/// significant digits: p99 at 25 ms is exact to 25 µs.
const HIGHEST_MICROS: u64 = 3_600_000_000;

/// Collects one phase's outcomes from every agent task.
pub struct Recorder {
    tally: Mutex<Tally>,
}

struct Tally {
    latency: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<String, u64>,
}

impl Recorder {
    pub fn new() -> anyhow::Result<Recorder> {
        let latency = Histogram::new_with_bounds(1, HIGHEST_MICROS, 3)
            .map_err(|err| anyhow::anyhow!("cannot make a latency histogram: {err}"))?;
        Ok(Recorder {
            tally: Mutex::new(Tally {
                latency,
                ok: 0,
                errors: BTreeMap::new(),
            }),
        })
    }

    pub fn ok(&self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, HIGHEST_MICROS);
        if let Ok(mut tally) = self.tally.lock() {
            tally.ok += 1;
            // In bounds by the clamp above.
            let _ = tally.latency.record(micros);
        }
    }

    pub fn error(&self, kind: impl Into<String>) {
        if let Ok(mut tally) = self.tally.lock() {
            *tally.errors.entry(kind.into()).or_default() += 1;
        }
    }

    /// The phase's report, with throughput over `elapsed`.
    pub fn finish(&self, phase: Phase) -> PhaseReport {
        let Phase {
            name,
            agents,
            elapsed,
            offered_per_s,
            connections_held,
            server,
            loadgen_cpu_seconds,
            machine_cpu_busy_fraction,
        } = phase;
        let (ok, errors_by_kind, latency) = match self.tally.lock() {
            Ok(tally) => (tally.ok, tally.errors.clone(), Latency::of(&tally.latency)),
            Err(_) => (0, BTreeMap::new(), Latency::default()),
        };
        let errors: u64 = errors_by_kind.values().sum();
        let secs = elapsed.as_secs_f64();
        PhaseReport {
            phase: name,
            agents,
            duration_secs: round(secs, 3),
            offered_per_s: offered_per_s.map(|r| round(r, 1)),
            requests: ok + errors,
            ok,
            errors,
            errors_by_kind,
            throughput_per_s: if secs > 0.0 {
                round(ok as f64 / secs, 1)
            } else {
                0.0
            },
            latency_ms: latency,
            last_served_secs: None,
            connections_held,
            server,
            loadgen_cpu_seconds: loadgen_cpu_seconds.map(|s| round(s, 2)),
            machine_cpu_busy_fraction: machine_cpu_busy_fraction.map(|f| round(f, 3)),
        }
    }
}

/// The facts about a phase that the recorder does not see.
pub struct Phase {
    pub name: &'static str,
    pub agents: usize,
    pub elapsed: Duration,
    pub offered_per_s: Option<f64>,
    pub connections_held: usize,
    pub server: Option<ServerUsage>,
    pub loadgen_cpu_seconds: Option<f64>,
    pub machine_cpu_busy_fraction: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    fn of(histogram: &Histogram<u64>) -> Latency {
        if histogram.is_empty() {
            return Latency::default();
        }
        let ms = |micros: u64| round(micros as f64 / 1000.0, 3);
        Latency {
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            max: ms(histogram.max()),
            mean: round(histogram.mean() / 1000.0, 3),
        }
    }
}

/// The server process over a phase.
#[derive(Clone, Debug, Serialize)]
pub struct ServerUsage {
    /// User plus system CPU time spent during the phase.
    pub cpu_seconds: f64,
    /// RSS when the phase started.
    pub rss_start_bytes: u64,
    /// RSS when the phase ended.
    pub rss_bytes: u64,
    /// Highest RSS sampled (every 100 ms) during the phase.
    pub rss_max_sampled_bytes: u64,
    /// VmHWM: the highest RSS since the server started.
    pub peak_rss_bytes: u64,
}

impl From<UsageDelta> for ServerUsage {
    fn from(delta: UsageDelta) -> Self {
        ServerUsage {
            cpu_seconds: round(delta.cpu_seconds, 2),
            rss_start_bytes: delta.rss_start_bytes,
            rss_bytes: delta.rss_bytes,
            rss_max_sampled_bytes: delta.rss_max_sampled_bytes,
            peak_rss_bytes: delta.peak_rss_bytes,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct PhaseReport {
    /// enroll, connect, reconnect, heartbeat, baseline or idle.
    pub phase: &'static str,
    pub agents: usize,
    pub duration_secs: f64,
    /// The rate the clock asked for (open-loop phases only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offered_per_s: Option<f64>,
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Answered requests per second of the phase.
    pub throughput_per_s: f64,
    pub latency_ms: Latency,
    /// Reconnect only: seconds from the moment every agent reconnected
    /// until the last one was answered (of those answered at all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_served_secs: Option<f64>,
    /// Connections open when the phase ended.
    pub connections_held: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerUsage>,
    /// The simulator's own CPU time in the phase: it shares the machine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loadgen_cpu_seconds: Option<f64>,
    /// Share of all cores busy during the phase (server, Postgres,
    /// simulator and anything else).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine_cpu_busy_fraction: Option<f64>,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub server: String,
    pub phases: Vec<PhaseReport>,
}

impl Report {
    pub fn failed_requests(&self) -> u64 {
        self.phases.iter().map(|p| p.errors).sum()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    pub fn to_table(&self) -> String {
        let mut table = Table::new();
        table.load_style(UTF8_FULL_CONDENSED).set_header(vec![
            "phase",
            "agents",
            "secs",
            "ok",
            "errors",
            "per s",
            "offered/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
            "conns",
            "srv cpu s",
            "srv rss MiB",
            "sim cpu s",
        ]);
        let mib = |b: u64| format!("{:.0}", b as f64 / (1024.0 * 1024.0));
        for p in &self.phases {
            table.add_row(vec![
                p.phase.to_owned(),
                p.agents.to_string(),
                format!("{:.1}", p.duration_secs),
                p.ok.to_string(),
                p.errors.to_string(),
                format!("{:.1}", p.throughput_per_s),
                p.offered_per_s.map_or("-".into(), |r| format!("{r:.1}")),
                format!("{:.2}", p.latency_ms.p50),
                format!("{:.2}", p.latency_ms.p90),
                format!("{:.2}", p.latency_ms.p99),
                format!("{:.2}", p.latency_ms.max),
                p.connections_held.to_string(),
                p.server
                    .as_ref()
                    .map_or("-".into(), |s| format!("{:.2}", s.cpu_seconds)),
                p.server.as_ref().map_or("-".into(), |s| mib(s.rss_bytes)),
                p.loadgen_cpu_seconds
                    .map_or("-".into(), |s| format!("{s:.2}")),
            ]);
        }
        let mut out = format!("server {}\n{table}\n", self.server);
        for p in &self.phases {
            if let Some(secs) = p.last_served_secs {
                out.push_str(&format!(
                    "{}: {} of {} agents served, the last {secs:.3} s after the start\n",
                    p.phase, p.ok, p.agents
                ));
            }
            for (kind, count) in &p.errors_by_kind {
                out.push_str(&format!("{} error: {kind}: {count}\n", p.phase));
            }
        }
        out
    }
}

/// `value` to `digits` decimals, as every figure in a report is given.
pub fn round(value: f64, digits: i32) -> f64 {
    let factor = 10f64.powi(digits);
    (value * factor).round() / factor
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_errors_are_reported() {
        let recorder = Recorder::new().unwrap();
        for ms in 1..=100 {
            recorder.ok(Duration::from_millis(ms));
        }
        recorder.error("timeout");
        recorder.error("timeout");
        recorder.error("http 500");
        let report = recorder.finish(Phase {
            name: "heartbeat",
            agents: 10,
            elapsed: Duration::from_secs(2),
            offered_per_s: Some(60.0),
            connections_held: 10,
            server: None,
            loadgen_cpu_seconds: None,
            machine_cpu_busy_fraction: None,
        });
        assert_eq!(report.ok, 100);
        assert_eq!(report.errors, 3);
        assert_eq!(report.requests, 103);
        assert_eq!(report.errors_by_kind["timeout"], 2);
        assert_eq!(report.throughput_per_s, 50.0);
        assert!(
            (report.latency_ms.p50 - 50.0).abs() < 0.1,
            "{:?}",
            report.latency_ms
        );
        assert!(
            (report.latency_ms.p99 - 99.0).abs() < 0.1,
            "{:?}",
            report.latency_ms
        );
        assert!((report.latency_ms.max - 100.0).abs() < 0.1);
        let mut reconnect = Recorder::new().unwrap().finish(Phase {
            name: "reconnect",
            agents: 20,
            elapsed: Duration::from_secs(2),
            offered_per_s: None,
            connections_held: 19,
            server: None,
            loadgen_cpu_seconds: None,
            machine_cpu_busy_fraction: None,
        });
        reconnect.ok = 19;
        reconnect.last_served_secs = Some(1.25);
        let full = Report {
            server: "https://x".into(),
            phases: vec![report, reconnect],
        };
        assert_eq!(full.failed_requests(), 3);
        let table = full.to_table();
        assert!(table.contains("heartbeat error: timeout: 2"), "{table}");
        assert!(
            table.contains("reconnect: 19 of 20 agents served, the last 1.250 s after the start"),
            "{table}"
        );
        let json: serde_json::Value = serde_json::from_str(&full.to_json()).unwrap();
        assert_eq!(json["phases"][0]["errors_by_kind"]["http 500"], 1);
        // Only the reconnect phase says when the last agent was served.
        assert!(
            json["phases"][0].get("last_served_secs").is_none(),
            "{json}"
        );
        assert_eq!(json["phases"][1]["last_served_secs"], 1.25);
    }
}
