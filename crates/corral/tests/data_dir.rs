//! Issue 13 item 11: file permissions, with the real binary. `corral serve` creates its
//! data dir 0700 and the database (with its WAL and shared-memory files) and the token
//! signing key 0600, and warns at start-up, naming the path and the mode, about anything
//! there that other local users can read.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Kills the server when the test ends, however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `corral serve` on `data_dir` and returns it once it listens, with what it
/// printed until then (its log goes to stdout).
fn serve(data_dir: &Path) -> (Server, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_corral"))
        .env("CORRAL_DATA_DIR", data_dir)
        .env_remove("CORRAL_DATABASE_URL")
        .env_remove("CORRAL_CONFIG")
        .env("CORRAL_LOG", "warn")
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let server = Server(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("no 'listening on' line ({e}): {lines:#?}"));
        let line = plain(&line);
        let listening = line.contains(" listening on ");
        lines.push(line);
        if listening {
            return (server, lines);
        }
    }
}

/// `line` without its terminal colour codes (`ESC [ ... m`).
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn data_dir_files_are_private() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (server, lines) = serve(&data);
    drop(server);
    assert!(
        !lines.iter().any(|l| l.contains("readable by other")),
        "{lines:#?}"
    );
    assert_eq!(mode(&data), 0o700);
    for name in ["corral.db", "corral.db-wal", "corral.db-shm", "jwt-secret"] {
        assert_eq!(mode(&data.join(name)), 0o600, "{name}");
    }
    assert_eq!(
        corral_guard::files::loose_modes(&data).unwrap(),
        (vec![], 0),
        "nothing under the data dir is readable by others"
    );

    // Modes loosened behind its back: it says which, at start-up.
    let set =
        |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    set(&data, 0o755);
    set(&data.join("corral.db"), 0o644);
    let (_server, lines) = serve(&data);
    for (path, mode) in [(data.clone(), "0755"), (data.join("corral.db"), "0644")] {
        assert!(
            lines.iter().any(|l| l.contains("WARN")
                && l.contains(&format!("path={}", path.display()))
                && l.contains(&format!("mode={mode}"))),
            "no warning for {} ({mode}): {lines:#?}",
            path.display()
        );
    }
}
