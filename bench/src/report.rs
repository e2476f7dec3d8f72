//! Formatting: figures with units, pass/fail against a target, and tables in
//! Markdown so that the output pastes straight into BENCHMARKS.md.

use std::time::Duration;

use comfy_table::Table;

pub fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_style(comfy_table::presets::ASCII_MARKDOWN);
    table.set_header(header.to_vec());
    table
}

/// `12.3 µs`, `4.56 ms` or `1.23 s`, whichever reads best.
pub fn duration(d: Duration) -> String {
    let micros = d.as_secs_f64() * 1e6;
    if micros < 1.0 {
        format!("{:.0} ns", micros * 1e3)
    } else if micros < 1_000.0 {
        format!("{micros:.1} µs")
    } else if micros < 1_000_000.0 {
        format!("{:.2} ms", micros / 1e3)
    } else {
        format!("{:.2} s", micros / 1e6)
    }
}

/// A signed difference in microseconds: `+3.2 µs`.
pub fn micros_delta(micros: f64) -> String {
    format!("{micros:+.1} µs")
}

/// Decimal megabytes, as the targets are stated.
pub fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

pub fn rate(per_sec: f64) -> String {
    format!("{per_sec:.0}")
}

pub fn ratio(value: f64) -> String {
    format!("{value:.2}×")
}

pub fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "FAIL" }
}

/// The median of a non-empty list; `Duration::ZERO` for an empty one.
pub fn median(values: &[Duration]) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    match sorted.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2,
    }
}

/// The median of a list of figures; `NaN` for an empty one.
pub fn median_f64(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut sorted: Vec<f64> = values.into_iter().collect();
    sorted.sort_unstable_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// `YYYY-MM-DD HH:MM UTC`, for a run's header.
pub fn today() -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    time::OffsetDateTime::now_utc()
        .format(&format)
        .unwrap_or_else(|_| "unknown".to_string())
}

/// How this run was invoked, for a run's header.
pub fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!("sidekey-bench {}", args.join(" "))
}

pub fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// A figure in µs, shown with a readable unit.
pub fn micros_figure(us: f64) -> String {
    Duration::try_from_secs_f64(us / 1e6).map_or_else(|_| "n/a".to_string(), duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_lists() {
        let ms = Duration::from_millis;
        assert_eq!(median(&[ms(3), ms(1), ms(2)]), ms(2));
        assert_eq!(
            median(&[ms(4), ms(1), ms(2), ms(3)]),
            Duration::from_micros(2500)
        );
        assert_eq!(median(&[]), Duration::ZERO);
        assert_eq!(median_f64([3.0, 1.0, 2.0, 10.0]), 2.5);
        assert!(median_f64([]).is_nan());
    }

    #[test]
    fn durations_pick_a_readable_unit() {
        assert_eq!(duration(Duration::from_nanos(250)), "250 ns");
        assert_eq!(duration(Duration::from_nanos(12_340)), "12.3 µs");
        assert_eq!(duration(Duration::from_micros(4_560)), "4.56 ms");
        assert_eq!(duration(Duration::from_millis(1_230)), "1.23 s");
    }
}
