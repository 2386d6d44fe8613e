//! What the real-peer benchmarks share: a rate-capped origin HTTP server, percentiles, CPU and
//! memory readings from `/proc`, and table output (the Kumar–Ross bound is `swarm::sim`'s).
//!
//! Each bench target compiles this module on its own and uses part of it.
#![allow(dead_code)]

pub(crate) mod cluster;
pub(crate) mod origin;

use std::{fmt::Write as _, time::Instant};

/// The `p`-th percentile (0–100) of `values` by the nearest-rank method: the smallest value
/// with at least `p`% of the values at or below it. NaN for an empty slice.
pub(crate) fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

/// CPU time used by this process and by the whole machine, read from `/proc`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuSample {
    at: Instant,
    /// utime + stime of this process, in clock ticks.
    process: u64,
    /// Busy and total jiffies of all CPUs.
    machine_busy: u64,
    machine_total: u64,
}

/// CPU use between two samples, in percent of all cores.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuUse {
    /// This process (and its threads).
    pub(crate) process: f64,
    /// Everything on the machine, other agents included.
    pub(crate) machine: f64,
}

/// Linux reports process CPU times to user space in units of 1/100 s (`USER_HZ`).
const USER_HZ: f64 = 100.0;

impl CpuSample {
    pub(crate) fn now() -> Self {
        let process = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| {
                // Fields after the parenthesised command name; utime and stime are the
                // 14th and 15th fields of the line.
                let rest = s.rsplit_once(')')?.1;
                let f: Vec<&str> = rest.split_whitespace().collect();
                Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
            })
            .unwrap_or(0);
        let (machine_busy, machine_total) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                let line = s.lines().next()?;
                let v: Vec<u64> = line
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|x| x.parse().ok())
                    .collect();
                let total: u64 = v.iter().sum();
                // idle + iowait
                let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
                Some((total - idle, total))
            })
            .unwrap_or((0, 0));
        Self {
            at: Instant::now(),
            process,
            machine_busy,
            machine_total,
        }
    }

    /// Use from `self` to `later`.
    pub(crate) fn until(&self, later: &Self) -> CpuUse {
        let wall = later.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let cores = cores() as f64;
        let process = (later.process - self.process) as f64 / USER_HZ / wall / cores * 100.0;
        let total = (later.machine_total - self.machine_total).max(1) as f64;
        let machine = (later.machine_busy - self.machine_busy) as f64 / total * 100.0;
        CpuUse { process, machine }
    }
}

/// Logical CPUs available to this process.
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// This process's peak resident set size (`VmHWM`), in bytes.
pub(crate) fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The 1-minute load average now, as `/proc/loadavg` gives it.
pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_owned()
}

/// One line about the machine the figures come from: cores, architecture, load.
pub(crate) fn machine() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let kib: u64 = m.lines().next()?.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib / (1024 * 1024))
        })
        .unwrap_or(0);
    format!(
        "{} cores {}, {} GiB RAM, load average {} at start",
        cores(),
        std::env::consts::ARCH,
        mem,
        load.join(" ")
    )
}

/// `bytes` in MiB with one decimal.
pub(crate) fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / f64::from(1u32 << 20))
}

/// A plain-text table with right-aligned columns after the first.
#[derive(Debug)]
pub(crate) struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new<S: Into<String>>(header: impl IntoIterator<Item = S>) -> Self {
        Self {
            rows: vec![header.into_iter().map(Into::into).collect()],
        }
    }

    pub(crate) fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    pub(crate) fn render(&self) -> String {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let width: Vec<usize> = (0..cols)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for (i, row) in self.rows.iter().enumerate() {
            let mut line = String::from("|");
            for (c, w) in width.iter().enumerate() {
                let cell = row.get(c).map_or("", String::as_str);
                if c == 0 {
                    let _ = write!(line, " {cell:<w$} |");
                } else {
                    let _ = write!(line, " {cell:>w$} |");
                }
            }
            out.push_str(&line);
            out.push('\n');
            if i == 0 {
                out.push('|');
                for (c, w) in width.iter().enumerate() {
                    let dashes = "-".repeat(*w);
                    if c == 0 {
                        let _ = write!(out, "{dashes}--|");
                    } else {
                        let _ = write!(out, "-{dashes}:|");
                    }
                }
                out.push('\n');
            }
        }
        out
    }
}
