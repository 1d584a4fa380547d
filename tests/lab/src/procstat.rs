//! What the load runs read from `/proc`: the machine's busy CPU time, a
//! process's CPU time and memory, and a sampler that watches both (and the
//! bulk uploads' progress) once a second while a load runs.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::load::round3;
use crate::loadgen::Servers;

/// Machine-wide busy CPU time in seconds (all cores), from /proc/stat.
pub fn busy_cpu_s() -> f64 {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<f64> = s
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // user nice system idle iowait irq softirq steal
    let g = |i: usize| f.get(i).copied().unwrap_or(0.0);
    (g(0) + g(1) + g(2) + g(5) + g(6) + g(7)) / ticks_per_s()
}

fn ticks_per_s() -> f64 {
    crate::sys::clock_ticks()
}

/// A process's CPU time in seconds (utime + stime).
pub fn proc_cpu_s(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = s.rsplit(')').next().unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // After the name: state(0) ... utime(11) stime(12).
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / ticks_per_s()
}

/// A `/proc/PID/status` field in KB (`VmRSS:`, `VmHWM:`).
pub fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Raises this process's open-file limit to its hard limit (thousands of
/// sockets on each side of a load).
pub fn raise_nofile() {
    match crate::sys::raise_nofile() {
        Ok(n) if n >= 8192 => {}
        Ok(n) => eprintln!("warning: open-file limit {n}: the load may run out of descriptors"),
        Err(e) => eprintln!("warning: cannot raise the open-file limit: {e}"),
    }
}

/// Samples once a second while a load runs.
pub struct Sampler {
    pid: Option<u32>,
    t0: Instant,
    cpu0: f64,
    dcpu0: f64,
    rss_start: Option<u64>,
    rss: Vec<(f64, u64)>,
    dcpu: Vec<(f64, f64)>,
    took: Duration,
    cpu: f64,
    dcpu_total: f64,
}

impl Sampler {
    /// Starts counting now; `pid` is the daemon's, if one runs.
    pub fn new(pid: Option<u32>) -> Sampler {
        Sampler {
            pid,
            t0: Instant::now(),
            cpu0: busy_cpu_s(),
            dcpu0: pid.map(proc_cpu_s).unwrap_or(0.0),
            rss_start: pid.and_then(|p| status_kb(p, "VmRSS:")),
            rss: Vec::new(),
            dcpu: Vec::new(),
            took: Duration::ZERO,
            cpu: 0.0,
            dcpu_total: 0.0,
        }
    }

    /// Until `end`: samples the daemon, and from `steady` on tracks, for
    /// each bulk connection, the longest time its server saw no byte.
    pub fn watch(
        &mut self,
        servers: &Servers,
        bulk: &[usize],
        steady: Instant,
        end: Instant,
    ) -> Vec<Duration> {
        let mut last: Vec<(u64, Instant)> = bulk
            .iter()
            .map(|&i| (servers.received(i), steady))
            .collect();
        let mut gaps = vec![Duration::ZERO; bulk.len()];
        let mut prev_cpu = self.dcpu0;
        while Instant::now() < end {
            std::thread::sleep(
                Duration::from_secs(1).min(end.saturating_duration_since(Instant::now())),
            );
            let now = Instant::now();
            let t = now.duration_since(self.t0).as_secs_f64();
            if let Some(p) = self.pid {
                if let Some(kb) = status_kb(p, "VmRSS:") {
                    self.rss.push((round3(t), kb));
                }
                let c = proc_cpu_s(p);
                self.dcpu.push((round3(t), round3(c - prev_cpu)));
                prev_cpu = c;
            }
            if now < steady {
                continue;
            }
            for (k, &i) in bulk.iter().enumerate() {
                let got = servers.received(i);
                if got != last[k].0 {
                    last[k] = (got, now);
                }
                gaps[k] = gaps[k].max(now.duration_since(last[k].1));
            }
        }
        self.took = self.t0.elapsed();
        self.cpu = busy_cpu_s() - self.cpu0;
        self.dcpu_total = self.pid.map(proc_cpu_s).unwrap_or(0.0) - self.dcpu0;
        gaps
    }

    /// The figures of the run.
    pub fn summary(&self) -> Value {
        let secs = self.took.as_secs_f64().max(1e-9);
        let peak = self.pid.and_then(|p| status_kb(p, "VmHWM:"));
        json!({
            "wall_s": round3(secs),
            "busy_cpu_s": round3(self.cpu),
            "busy_cpu_pct_of_machine": round3(self.cpu / secs / cpus() * 100.0),
            "daemon_cpu_s": self.pid.map(|_| round3(self.dcpu_total)),
            "daemon_cpu_pct": self.pid.map(|_| round3(self.dcpu_total / secs * 100.0)),
            "daemon_rss_start_kb": self.rss_start,
            "daemon_rss_max_sampled_kb": self.rss.iter().map(|r| r.1).max(),
            "daemon_rss_peak_kb": peak,
            "daemon_rss_kb": self.rss,
            "daemon_cpu_s_per_s": self.dcpu,
        })
    }
}

fn cpus() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}
