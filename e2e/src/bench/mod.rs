//! Benchmarks behind `mesh-bench`: each area (`ca`, `chaos`, `control`,
//! `proxy`, `security`) measures, then writes a markdown table and a PNG
//! plot under `docs/benchmarks/`. Numbers are printed
//! and written, never asserted: tests must not depend on wall-clock speed.
//!
//! This module holds what every area's report shares: the machine it ran
//! on, latency percentiles, and the font the plots are labelled with.

use std::path::Path;
use std::time::Duration;

pub mod ca;
pub mod chaos;
pub mod control;
pub mod proxy;
pub mod security;

/// The machine a run happened on, as the reports print it.
#[derive(Debug, Clone)]
pub struct Machine {
    /// Logical CPUs available to the process (`nproc`).
    pub cpus: usize,
    /// `model name` from `/proc/cpuinfo`, or `unknown`.
    pub model: String,
    /// UTC date of the run (`YYYY-MM-DD`).
    pub date: String,
    /// `release` or `debug` (debug numbers are not comparable).
    pub profile: &'static str,
}

impl Machine {
    /// The machine this process runs on.
    pub fn current() -> Self {
        let model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".to_string());
        Self {
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            model,
            date: time::OffsetDateTime::now_utc().date().to_string(),
            profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
        }
    }

    /// Markdown rows `| key | value |` describing the machine.
    pub fn markdown_rows(&self) -> String {
        format!(
            "| CPU model (/proc/cpuinfo) | {} |\n| CPUs (nproc) | {} |\n| date (UTC) | {} |\n| build | {} |\n",
            self.model, self.cpus, self.date, self.profile
        )
    }
}

/// Percentiles of a set of latencies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Percentiles {
    /// Median.
    pub p50: Duration,
    /// 99th percentile (nearest rank).
    pub p99: Duration,
    /// Slowest sample.
    pub max: Duration,
}

impl Percentiles {
    /// Percentiles of `samples` (sorted in place); `None` when empty.
    pub fn of(samples: &mut [Duration]) -> Option<Self> {
        samples.sort_unstable();
        let max = *samples.last()?;
        let rank = |p: f64| {
            let i = (samples.len() as f64 * p).ceil() as usize;
            samples[i.clamp(1, samples.len()) - 1]
        };
        Some(Self {
            p50: rank(0.50),
            p99: rank(0.99),
            max,
        })
    }
}

/// Milliseconds with two decimals, as the tables print latencies.
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// Font files tried, in order, for plot labels (`MESH_BENCH_FONT` first).
const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
];

/// Registers a system TrueType font as plotters' `sans-serif` so plots get
/// labels. No font is shipped in the repository; without one the plots are
/// drawn unlabelled and this returns `false`.
pub fn register_plot_font() -> bool {
    let from_env = std::env::var("MESH_BENCH_FONT").ok();
    let candidates = from_env
        .iter()
        .map(String::as_str)
        .chain(FONT_CANDIDATES.iter().copied());
    for path in candidates {
        let Ok(bytes) = std::fs::read(Path::new(path)) else {
            continue;
        };
        // plotters keeps fonts for the life of the process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        if plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, bytes)
            .is_ok()
        {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut samples: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let p = Percentiles::of(&mut samples);
        assert_eq!(
            p,
            Some(Percentiles {
                p50: Duration::from_millis(50),
                p99: Duration::from_millis(99),
                max: Duration::from_millis(100),
            })
        );
        assert_eq!(Percentiles::of(&mut []), None);
        let mut one = [Duration::from_millis(7)];
        assert_eq!(
            Percentiles::of(&mut one).map(|p| p.p99),
            Some(Duration::from_millis(7))
        );
    }
}
