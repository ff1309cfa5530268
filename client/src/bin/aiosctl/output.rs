//! Rendering command results as a table for people, or JSON/YAML for scripts.

use std::io::Write;

use serde::Serialize;

/// `-o` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// JSON (a listing is one array).
    Json,
    /// YAML (a listing is documents separated by `---`).
    Yaml,
}

/// Writes `value` as JSON or YAML, or `rows` under `headers` as a table.
pub fn emit<T: Serialize>(
    format: Format,
    value: &T,
    headers: &[&str],
    rows: &[Vec<String>],
) -> Result<(), String> {
    let text = match format {
        Format::Json => serde_json::to_string_pretty(value).map_err(|e| e.to_string())? + "\n",
        Format::Yaml => serde_yaml::to_string(value).map_err(|e| e.to_string())?,
        Format::Table => table(headers, rows),
    };
    write_stdout(&text)
}

/// Writes text to stdout; a closed pipe (`| head`) is not an error.
pub fn write_stdout(text: &str) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(format!("cannot write output: {e}"))
        }
        _ => Ok(()),
    }
}

/// Left-aligned columns separated by two spaces.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    let headers: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&headers).chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    text
}

/// `Key:  value` lines, values aligned, each line indented by `indent`
/// spaces (a described object's fields, as in `fleet describe`).
pub fn fields(pairs: &[(&str, String)], indent: usize) -> String {
    let width = pairs
        .iter()
        .map(|(key, _)| key.len() + 1)
        .max()
        .unwrap_or(0);
    pairs
        .iter()
        .map(|(key, value)| {
            let key = format!("{key}:");
            format!("{:indent$}{key:<width$}  {value}\n", "")
        })
        .collect()
}

// === Cells ===

/// A duration for reading: `850µs`, `312.4ms`, `1.25s`, `2m05s`.
pub fn duration(d: std::time::Duration) -> String {
    let micros = d.as_micros();
    match micros {
        0..1_000 => format!("{micros}µs"),
        1_000..1_000_000 => format!("{:.1}ms", d.as_secs_f64() * 1e3),
        1_000_000..60_000_000 => format!("{:.2}s", d.as_secs_f64()),
        _ => format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60),
    }
}

/// US dollars with three significant digits below a dollar, cents above:
/// `$0`, `$0.0000045`, `$0.0123`, `$12.50`.
pub fn usd(amount: f64) -> String {
    if amount == 0.0 || !amount.is_finite() {
        return "$0".into();
    }
    let sign = if amount < 0.0 { "-" } else { "" };
    let amount = amount.abs();
    if amount >= 1.0 {
        return format!("{sign}${amount:.2}");
    }
    // Digits after the point that keep three significant ones.
    let decimals = (2 - amount.log10().floor() as i32).clamp(2, 12) as usize;
    let text = format!("{amount:.decimals$}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{sign}${text}")
}

/// A count or rate, short: `7`, `2.5`, `950`, `1.2k`, `3.4M`, `1.0G`.
pub fn count(value: f64) -> String {
    let value = if value.is_finite() {
        value.max(0.0)
    } else {
        0.0
    };
    match value {
        v if v >= 1e9 => format!("{:.1}G", v / 1e9),
        v if v >= 1e6 => format!("{:.1}M", v / 1e6),
        v if v >= 1e3 => format!("{:.1}k", v / 1e3),
        v if v.fract() == 0.0 => format!("{v:.0}"),
        v => format!("{v:.1}"),
    }
}

/// A 0-1 ratio as a percentage with one decimal: `8.3%`.
pub fn percent(ratio: f64) -> String {
    format!("{:.1}%", ratio * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let text = table(
            &["A", "BB"],
            &[vec!["xxx".into(), "y".into()], vec!["z".into(), "".into()]],
        );
        assert_eq!(text, "A    BB\nxxx  y\nz\n");
    }

    #[test]
    fn fields_align_values_after_the_longest_key() {
        let text = fields(&[("Node", "a".into()), ("Last seen", "b".into())], 2);
        assert_eq!(text, "  Node:       a\n  Last seen:  b\n");
    }

    #[test]
    fn durations_read_in_the_unit_that_fits() {
        use std::time::Duration;
        assert_eq!(duration(Duration::from_micros(850)), "850µs");
        assert_eq!(duration(Duration::from_micros(312_400)), "312.4ms");
        assert_eq!(duration(Duration::from_millis(1_250)), "1.25s");
        assert_eq!(duration(Duration::from_secs(125)), "2m05s");
    }

    #[test]
    fn dollars_keep_three_significant_digits_below_a_dollar() {
        assert_eq!(usd(0.0), "$0");
        assert_eq!(usd(0.000_004_5), "$0.0000045");
        assert_eq!(usd(0.012_345), "$0.0123");
        assert_eq!(usd(0.5), "$0.5");
        assert_eq!(usd(12.5), "$12.50");
        assert_eq!(usd(-0.25), "-$0.25");
        assert_eq!(usd(f64::NAN), "$0");
    }

    #[test]
    fn counts_and_percentages_are_short() {
        assert_eq!(count(7.0), "7");
        assert_eq!(count(2.5), "2.5");
        assert_eq!(count(950.0), "950");
        assert_eq!(count(1_234.0), "1.2k");
        assert_eq!(count(3_400_000.0), "3.4M");
        assert_eq!(percent(1.0 / 12.0), "8.3%");
        assert_eq!(percent(0.0), "0.0%");
    }
}
