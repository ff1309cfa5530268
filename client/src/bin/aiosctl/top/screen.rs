//! The terminal `top` draws on, with plain ANSI escapes rather than a TUI
//! library: the alternate screen (so the shell's screen comes back on
//! exit), the cursor hidden, each frame written over the last from the
//! home position. Dropping the [`Screen`] restores the terminal, on every
//! way out of `top` (Ctrl-C, SIGTERM, an error).

use std::{io::Write, process::Command};

use tokio::signal::unix::{Signal, SignalKind, signal};

/// Enter the alternate screen, hide the cursor.
const ENTER: &str = "\x1b[?1049h\x1b[?25l";
/// Show the cursor, leave the alternate screen.
const LEAVE: &str = "\x1b[?25h\x1b[?1049l";
/// Cursor home.
const HOME: &str = "\x1b[H";
/// Clear to the end of the line.
const CLEAR_LINE: &str = "\x1b[K";
/// Clear from the cursor to the end of the screen.
const CLEAR_BELOW: &str = "\x1b[J";

/// Used when the terminal does not say its size.
const FALLBACK_SIZE: (usize, usize) = (24, 80);

/// A terminal being drawn on.
#[derive(Debug)]
pub struct Screen {
    /// Rows and columns.
    size: (usize, usize),
    /// SIGWINCH: the terminal was resized.
    resizes: Option<Signal>,
}

impl Screen {
    /// Takes over the terminal until dropped.
    pub fn enter() -> Self {
        write(ENTER);
        Self {
            size: size(),
            resizes: signal(SignalKind::window_change()).ok(),
        }
    }

    /// Rows and columns.
    pub fn size(&self) -> (usize, usize) {
        self.size
    }

    /// Resolves when the terminal was resized, with the new size read.
    pub async fn resized(&mut self) {
        match &mut self.resizes {
            Some(resizes) => {
                resizes.recv().await;
                self.size = size();
            }
            None => std::future::pending().await,
        }
    }

    /// Draws `lines` over the previous frame: each line overwritten and
    /// its rest cleared, then everything below (no flash of a blank
    /// screen between frames).
    pub fn draw(&mut self, lines: &[String]) -> Result<(), String> {
        let mut text = String::from(HOME);
        for (i, line) in lines.iter().enumerate() {
            if i > 0 {
                text.push('\n');
            }
            text.push_str(line);
            text.push_str(CLEAR_LINE);
        }
        text.push_str(CLEAR_BELOW);
        crate::output::write_stdout(&text)
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        write(LEAVE);
    }
}

/// Writes escapes; a terminal that went away has nothing left to restore.
fn write(escapes: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(escapes.as_bytes()).and_then(|()| out.flush());
}

/// The terminal's rows and columns: `LINES` and `COLUMNS` if set, else
/// what `stty size` says of the controlling terminal.
fn size() -> (usize, usize) {
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse().ok());
    if let (Some(rows), Some(columns)) = (env("LINES"), env("COLUMNS")) {
        return (rows, columns);
    }
    stty_size().unwrap_or(FALLBACK_SIZE)
}

fn stty_size() -> Option<(usize, usize)> {
    let tty = std::fs::File::open("/dev/tty").ok()?;
    let output = Command::new("stty").arg("size").stdin(tty).output().ok()?;
    parse_stty(&String::from_utf8_lossy(&output.stdout))
}

/// `"50 132\n"` → (50, 132).
fn parse_stty(text: &str) -> Option<(usize, usize)> {
    let mut parts = text.split_whitespace().map(str::parse::<usize>);
    match (parts.next()?, parts.next()?) {
        (Ok(rows), Ok(columns)) if rows > 0 && columns > 0 => Some((rows, columns)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stty_sizes_are_rows_then_columns() {
        assert_eq!(parse_stty("50 132\n"), Some((50, 132)));
        assert_eq!(parse_stty("0 0\n"), None);
        assert_eq!(parse_stty(""), None);
        assert_eq!(parse_stty("stty: not a tty"), None);
    }
}
