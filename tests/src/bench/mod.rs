//! What the `bench-*` programs share: the machine facts every result is
//! recorded with, nearest-rank percentiles, unit conversions, and reading
//! their options (a bad one exits with a usage error).

pub mod plane;

use std::time::Duration;

use aios_runtime::cli::exit_config;

/// Where the numbers were taken.
#[derive(Clone, Debug)]
pub struct Machine {
    /// CPUs this process may use.
    pub nproc: usize,
    /// The CPU's model name (`/proc/cpuinfo`), or "unknown".
    pub cpu: String,
}

impl Machine {
    /// The machine this process runs on.
    pub fn read() -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|line| line.starts_with("model name"))
                    .and_then(|line| line.split_once(':'))
                    .map(|(_, model)| model.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        Self {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu,
        }
    }
}

/// Nearest-rank percentile of sorted samples (`p` = 1.0: the max); zero
/// when there are none.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

/// In microseconds.
pub fn us(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

/// In milliseconds.
pub fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// The program's options, `--name value` or `--flag`, in order.
#[derive(Debug)]
pub struct Args(std::iter::Skip<std::env::Args>);

impl Args {
    /// The options this process was started with.
    pub fn from_env() -> Self {
        Self(std::env::args().skip(1))
    }

    /// The value after `option`; without one, a usage exit.
    pub fn value(&mut self, option: &str) -> String {
        self.0
            .next()
            .unwrap_or_else(|| exit_config(&format!("{option} needs a value")))
    }
}

impl Iterator for Args {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        self.0.next()
    }
}

/// `--option N` with N > 0; anything else is a usage exit.
pub fn positive(option: &str, text: &str) -> usize {
    text.parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .unwrap_or_else(|| exit_config(&format!("{option} {text}: expected N > 0")))
}

/// `--option 1,2,4`: positive numbers separated by commas; anything else
/// is a usage exit that shows `example`.
pub fn positive_list(option: &str, list: &str, example: &str) -> Vec<usize> {
    list.split(',')
        .map(|n| n.trim().parse::<usize>().ok().filter(|n| *n > 0))
        .collect::<Option<Vec<_>>>()
        .unwrap_or_else(|| exit_config(&format!("{option} {list}: expected {example}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&samples, 0.50), Duration::from_millis(50));
        assert_eq!(percentile(&samples, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&samples, 1.0), Duration::from_millis(100));
        assert_eq!(percentile(&samples, 0.0), Duration::from_millis(1));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }
}
