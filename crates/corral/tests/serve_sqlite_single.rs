//! SQLite serves one process: with a real `corral serve` running on a SQLite file, a
//! second `corral serve` on the same file exits with an error naming PostgreSQL and
//! DynamoDB, while the first keeps serving. Once the first is killed with SIGKILL (no
//! chance to clean up), a new server starts on the file: the lock dies with its holder.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Kills the server when the test ends, however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(data_dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_corral"));
    cmd.env("CORRAL_DATA_DIR", data_dir)
        .env_remove("CORRAL_DATABASE_URL")
        .env_remove("CORRAL_CONFIG")
        .args(["serve", "--listen", "127.0.0.1:0"]);
    cmd
}

/// Starts a server and waits for its `listening on` line; returns it with its URL.
fn start(data_dir: &std::path::Path) -> (Server, String) {
    let mut child = serve(data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let server = Server(child);
    let (found, address) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some((_, url)) = line.split_once("listening on ") {
                let _ = found.send(url.trim().to_string());
            }
        }
    });
    let url = address
        .recv_timeout(Duration::from_secs(60))
        .expect("corral serve printed no `listening on` line");
    (server, url)
}

async fn healthy(base: &str) -> bool {
    reqwest::get(format!("{base}/api/health"))
        .await
        .is_ok_and(|r| r.status().is_success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_one_sqlite_file_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let (mut first, base) = start(dir.path());
    assert!(healthy(&base).await);

    let mut second = serve(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A second server that started anyway would serve forever: bound the wait.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while second.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = second.kill();
            panic!("the second server on one SQLite file did not exit");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = second.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "the second server ran: {stderr}");
    assert!(
        stderr.contains("SQLite") && stderr.contains("PostgreSQL") && stderr.contains("DynamoDB"),
        "{stderr}"
    );
    assert!(healthy(&base).await, "the first server keeps serving");

    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let (_third, base) = start(dir.path());
    assert!(
        healthy(&base).await,
        "a SIGKILLed server leaves no lock behind"
    );
}
