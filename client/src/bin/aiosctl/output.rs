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
}
