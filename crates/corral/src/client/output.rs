//! Terminal output: aligned tables, human sizes and durations, and a one-line spinner
//! that only animates on a terminal (piped output gets plain lines).

use std::io::{IsTerminal, Write};

/// Prints rows under a header with every column padded to its widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    print!("{}", render_table(header, rows));
}

pub fn render_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, cell) in cells.into_iter().enumerate() {
            out.push_str(cell);
            if i < last {
                let pad = widths[i] - cell.chars().count() + 2;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// `512 MiB`, `4 GiB`, `1.5 GiB`.
pub fn mib(mib: u64) -> String {
    if mib >= 1024 && mib.is_multiple_of(1024) {
        format!("{} GiB", mib / 1024)
    } else if mib >= 1024 {
        format!("{:.1} GiB", mib as f64 / 1024.0)
    } else {
        format!("{mib} MiB")
    }
}

pub fn bytes(b: u64) -> String {
    mib(b.div_ceil(1 << 20))
}

/// `45s`, `3m`, `2h05m`, `3d04h`.
pub fn duration(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// A status line that redraws in place on a terminal.
pub struct Spinner {
    tty: bool,
    frame: usize,
    drawn: bool,
}

const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

impl Spinner {
    pub fn new() -> Spinner {
        Spinner {
            tty: std::io::stderr().is_terminal(),
            frame: 0,
            drawn: false,
        }
    }

    /// Redraws the status line (terminal only).
    pub fn tick(&mut self, status: &str) {
        if !self.tty {
            return;
        }
        self.frame = (self.frame + 1) % FRAMES.len();
        eprint!("\r\x1b[2K{} {status}", FRAMES[self.frame]);
        let _ = std::io::stderr().flush();
        self.drawn = true;
    }

    /// Prints a permanent line above the status line.
    pub fn println(&mut self, line: &str) {
        self.clear();
        eprintln!("{line}");
    }

    pub fn clear(&mut self) {
        if self.drawn {
            eprint!("\r\x1b[2K");
            let _ = std::io::stderr().flush();
            self.drawn = false;
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align() {
        let out = render_table(
            &["ID", "STATUS"],
            &[
                vec!["a".into(), "ready".into()],
                vec!["longer-id".into(), "pending".into()],
            ],
        );
        assert_eq!(
            out,
            "ID         STATUS\na          ready\nlonger-id  pending\n"
        );
    }

    #[test]
    fn human_units() {
        assert_eq!(mib(512), "512 MiB");
        assert_eq!(mib(4096), "4 GiB");
        assert_eq!(mib(1536), "1.5 GiB");
        assert_eq!(duration(42), "42s");
        assert_eq!(duration(125), "2m05s");
        assert_eq!(duration(7500), "2h05m");
        assert_eq!(duration(90000), "1d01h");
    }
}
