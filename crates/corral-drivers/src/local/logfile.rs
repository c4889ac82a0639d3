//! A replica's log file: the model server writes it directly (so logging survives a
//! restart of `corral serve`), and the driver pages through it by byte offset.
//!
//! Cursors are byte offsets just past the last complete line returned. A half-written
//! last line is never returned; the next call picks it up once its newline is there.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Most bytes one follow page reads, so a client far behind catches up in steps.
const PAGE_BYTES: usize = 1 << 20;
/// Most bytes read to find the last N lines.
const TAIL_BYTES: u64 = 8 << 20;

/// Complete lines and the offset after the last of them.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Chunk {
    pub lines: Vec<String>,
    pub next: u64,
}

/// Lines after byte `offset`. An offset past the end means the file was rotated
/// (truncated) since the cursor was handed out, so reading starts over at 0.
pub(crate) fn read_from(path: &Path, offset: u64) -> io::Result<Chunk> {
    let Some(mut file) = open(path)? else {
        return Ok(Chunk {
            lines: Vec::new(),
            next: 0,
        });
    };
    let len = file.metadata()?.len();
    let offset = if offset > len { 0 } else { offset };
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::with_capacity((len - offset).min(PAGE_BYTES as u64) as usize);
    file.take(PAGE_BYTES as u64).read_to_end(&mut buf)?;
    let complete = match buf.iter().rposition(|b| *b == b'\n') {
        Some(i) => i + 1,
        // One line longer than a page: hand it out in pieces rather than stall on it.
        None if buf.len() == PAGE_BYTES => buf.len(),
        None => 0,
    };
    Ok(Chunk {
        lines: split_lines(&buf[..complete]),
        next: offset + complete as u64,
    })
}

/// The last `n` complete lines.
pub(crate) fn read_tail(path: &Path, n: usize) -> io::Result<Chunk> {
    let Some(mut file) = open(path)? else {
        return Ok(Chunk {
            lines: Vec::new(),
            next: 0,
        });
    };
    let len = file.metadata()?.len();
    // Read a growing window from the end until it holds n complete lines.
    let mut window: u64 = 64 << 10;
    loop {
        let start = len.saturating_sub(window);
        file.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::with_capacity((len - start) as usize);
        (&mut file).take(len - start).read_to_end(&mut buf)?;
        let Some(end) = buf.iter().rposition(|b| *b == b'\n').map(|i| i + 1) else {
            if start == 0 || window >= TAIL_BYTES {
                return Ok(Chunk {
                    lines: Vec::new(),
                    next: start,
                });
            }
            window *= 4;
            continue;
        };
        let body = &buf[..end];
        // Unless the window starts at the file's start, its first line is cut.
        let body = if start == 0 {
            body
        } else {
            match body.iter().position(|b| *b == b'\n') {
                Some(i) => &body[i + 1..],
                None => &body[body.len()..],
            }
        };
        let newlines = body.iter().filter(|b| **b == b'\n').count();
        if newlines >= n || start == 0 || window >= TAIL_BYTES {
            let mut lines = split_lines(body);
            let skip = lines.len().saturating_sub(n);
            lines.drain(..skip);
            return Ok(Chunk {
                lines,
                next: start + end as u64,
            });
        }
        window *= 4;
    }
}

/// The last non-empty line, to explain why a replica exited.
pub(crate) fn last_line(path: &Path) -> Option<String> {
    read_tail(path, 5)
        .ok()?
        .lines
        .into_iter()
        .rev()
        .find(|l| !l.trim().is_empty())
}

/// Keeps a log under `cap` bytes: copies it to `<name>.1` (replacing the previous one)
/// and truncates it. The writer holds the file open with O_APPEND, so it goes on
/// writing at the new end; a rename would leave it writing to the old file. Lines
/// written between the copy and the truncation are lost, which is the price of not
/// routing every log line through this server. Returns whether it rotated.
pub(crate) fn rotate_if_over(path: &Path, cap: u64) -> io::Result<bool> {
    match fs::metadata(path) {
        Ok(m) if m.len() > cap => {}
        Ok(_) => return Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    }
    let mut previous = path.as_os_str().to_owned();
    previous.push(".1");
    fs::copy(path, &previous)?;
    OpenOptions::new().write(true).open(path)?.set_len(0)?;
    Ok(true)
}

/// Deletes the log files (and their rotated `.1`) of all but the latest `keep` launches
/// of `replica_id` in `dir`, where launch `N` writes `<replica_id>.N.log`. Other files
/// (other replicas, the pre-launch-number `<replica_id>.log`) are left alone. Returns
/// how many launches' files were deleted.
pub(crate) fn prune_launches(dir: &Path, replica_id: Uuid, keep: usize) -> io::Result<usize> {
    let prefix = format!("{replica_id}.");
    let mut launches: Vec<u64> = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(launch) = name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            launches.push(launch);
        }
    }
    launches.sort_unstable_by(|a, b| b.cmp(a));
    let old = launches.get(keep..).unwrap_or_default();
    for launch in old {
        for name in [
            format!("{replica_id}.{launch}.log"),
            format!("{replica_id}.{launch}.log.1"),
        ] {
            match fs::remove_file(dir.join(name)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
    }
    Ok(old.len())
}

/// The timestamp a line starts with: RFC 3339 as corral-runner (tracing) writes it,
/// or `time=...` as ollama writes it.
pub(crate) fn line_time(line: &str) -> Option<DateTime<Utc>> {
    let first = line.split_whitespace().next()?;
    let first = first.strip_prefix("time=").unwrap_or(first);
    DateTime::parse_from_rfc3339(first)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn open(path: &Path) -> io::Result<Option<File>> {
    match File::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn split_lines(bytes: &[u8]) -> Vec<String> {
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes
        .split(|b| *b == b'\n')
        .map(|l| String::from_utf8_lossy(l.strip_suffix(b"\r").unwrap_or(l)).into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(path: &Path, s: &str) {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap()
            .write_all(s.as_bytes())
            .unwrap();
    }

    #[test]
    fn prune_keeps_the_latest_launches_of_one_replica() {
        let dir = tempfile::tempdir().unwrap();
        let (r, other) = (Uuid::now_v7(), Uuid::now_v7());
        // Launch numbers of different lengths: sorted as numbers, not as text.
        for launch in [9, 100, 20, 3] {
            write(&dir.path().join(format!("{r}.{launch}.log")), "x\n");
        }
        write(&dir.path().join(format!("{r}.9.log.1")), "rotated\n");
        write(
            &dir.path().join(format!("{r}.log")),
            "before launch numbers\n",
        );
        write(
            &dir.path().join(format!("{other}.1.log")),
            "another replica\n",
        );
        assert_eq!(prune_launches(dir.path(), r, 2).unwrap(), 2);
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let mut expected = vec![
            format!("{r}.100.log"),
            format!("{r}.20.log"),
            format!("{r}.log"),
            format!("{other}.1.log"),
        ];
        expected.sort();
        assert_eq!(left, expected);
        assert_eq!(
            prune_launches(dir.path(), r, 2).unwrap(),
            0,
            "nothing more to do"
        );
        assert_eq!(prune_launches(dir.path(), r, 0).unwrap(), 2);
        assert!(!dir.path().join(format!("{r}.100.log")).exists());
    }

    #[test]
    fn cursor_never_returns_half_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.log");
        assert_eq!(
            read_from(&p, 0).unwrap(),
            Chunk {
                lines: vec![],
                next: 0
            }
        );

        write(&p, "one\ntwo\nthr");
        let c = read_from(&p, 0).unwrap();
        assert_eq!(c.lines, ["one", "two"]);
        assert_eq!(c.next, 8);

        let again = read_from(&p, c.next).unwrap();
        assert_eq!(
            again,
            Chunk {
                lines: vec![],
                next: 8
            }
        );

        write(&p, "ee\r\nfour\n");
        let c = read_from(&p, c.next).unwrap();
        assert_eq!(c.lines, ["three", "four"]);
        assert_eq!(c.next, fs::metadata(&p).unwrap().len());
    }

    #[test]
    fn cursor_past_end_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.log");
        write(&p, "a\nb\n");
        let c = read_from(&p, 1000).unwrap();
        assert_eq!(c.lines, ["a", "b"]);
        assert_eq!(c.next, 4);
    }

    #[test]
    fn overlong_line_is_paged() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.log");
        write(&p, &"x".repeat(PAGE_BYTES + 10));
        let c = read_from(&p, 0).unwrap();
        assert_eq!(c.lines.len(), 1);
        assert_eq!(c.next, PAGE_BYTES as u64);
        assert_eq!(read_from(&p, c.next).unwrap().lines.len(), 0);
    }

    #[test]
    fn tail() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.log");
        assert_eq!(
            read_tail(&p, 3).unwrap(),
            Chunk {
                lines: vec![],
                next: 0
            }
        );
        write(&p, "1\n2\n3\n4\n5\npartial");
        let c = read_tail(&p, 3).unwrap();
        assert_eq!(c.lines, ["3", "4", "5"]);
        assert_eq!(c.next, 10, "points at the partial line");
        assert_eq!(read_tail(&p, 100).unwrap().lines, ["1", "2", "3", "4", "5"]);
        let none = read_tail(&p, 0).unwrap();
        assert!(none.lines.is_empty());
        assert_eq!(none.next, 10, "tail 0 is 'follow from now'");
        assert_eq!(last_line(&p).as_deref(), Some("5"));
    }

    #[test]
    fn tail_spanning_windows() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.log");
        // 200 KiB of 100-byte lines: more than the first 64 KiB window.
        let body: String = (0..2000).map(|i| format!("{i:099}\n")).collect();
        write(&p, &body);
        let c = read_tail(&p, 1500).unwrap();
        assert_eq!(c.lines.len(), 1500);
        assert_eq!(c.lines[0], format!("{:099}", 500));
        assert_eq!(c.lines[1499], format!("{:099}", 1999));
        assert_eq!(c.next, body.len() as u64);
    }

    #[test]
    fn rotation_keeps_one_previous_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.log");
        assert!(!rotate_if_over(&p, 10).unwrap());
        write(&p, "0123456789\n");
        assert!(rotate_if_over(&p, 10).unwrap());
        assert_eq!(fs::metadata(&p).unwrap().len(), 0);
        assert_eq!(
            fs::read_to_string(dir.path().join("r.log.1")).unwrap(),
            "0123456789\n"
        );
        write(&p, "short\n");
        assert!(!rotate_if_over(&p, 10).unwrap());
    }

    #[test]
    fn timestamps() {
        let t = line_time("2026-11-25T12:55:00.412442Z  INFO corral_runner: loaded").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-25T12:55:00.412442+00:00");
        assert!(line_time("time=2024-05-01T10:00:00.000+02:00 level=INFO msg=x").is_some());
        assert_eq!(line_time("listening on http://127.0.0.1:1"), None);
        assert_eq!(line_time(""), None);
    }
}
