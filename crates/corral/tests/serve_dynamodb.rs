//! `corral` on the DynamoDB store: the real binary against a real moto server (the AWS
//! emulator). An admin is created with `corral admin create-user` (which creates the
//! table), then `corral serve --database-url dynamodb://TABLE` answers `/api/health` and
//! logs that admin in.
//!
//! Run with `scripts/with-moto.sh cargo test -p corral --test serve_dynamodb`, which
//! starts moto and sets `AWS_ENDPOINT_URL`, test credentials and `AWS_REGION`. Without
//! it this test fails, unless `CORRAL_SKIP_MOTO=1` says to skip it knowingly.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const PASSWORD: &str = "Dyn4mo!Passw0rd";

/// Kills the server when the test ends, however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn corral(data_dir: &std::path::Path, url: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_corral"));
    cmd.env("CORRAL_DATA_DIR", data_dir)
        .env("CORRAL_DATABASE_URL", url)
        .env_remove("CORRAL_CONFIG");
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_dynamodb() {
    match std::env::var("AWS_ENDPOINT_URL") {
        Ok(url) if !url.is_empty() => {}
        _ if std::env::var("CORRAL_SKIP_MOTO").as_deref() == Ok("1") => {
            eprintln!("\n\n*** SKIPPED: corral serve on DynamoDB (CORRAL_SKIP_MOTO=1). ***\n");
            return;
        }
        _ => panic!(
            "this test needs a moto server: run it as `scripts/with-moto.sh cargo test -p \
             corral --test serve_dynamodb` (moto comes from `scripts/venv.sh`), or set \
             CORRAL_SKIP_MOTO=1"
        ),
    }
    let dir = tempfile::tempdir().unwrap();
    let table = format!("corral-serve-{}", uuid::Uuid::now_v7().simple());
    let url = format!("dynamodb://{table}");

    let mut create = corral(dir.path(), &url)
        .args(["admin", "create-user", "--email", "admin@example.test"])
        .args(["--role", "admin", "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(create.stdin.take().unwrap(), "{PASSWORD}").unwrap();
    let created = create.wait_with_output().unwrap();
    assert!(
        created.status.success(),
        "create-user: {}",
        String::from_utf8_lossy(&created.stderr)
    );

    let mut child = corral(dir.path(), &url)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let server = Server(child);
    // The address comes from the `listening on` line; the rest of the server's output
    // is passed on to the test's log (and the pipe kept open, so the server can write).
    let (found, address) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some((_, url)) = line.split_once("listening on ") {
                let _ = found.send(url.trim().to_string());
            }
            eprintln!("corral serve: {line}");
        }
    });
    let base = tokio::task::spawn_blocking(move || address.recv_timeout(Duration::from_secs(60)))
        .await
        .unwrap()
        .expect("corral serve printed no `listening on` line (see its log above)");

    let http = reqwest::Client::new();
    let health: serde_json::Value = http
        .get(format!("{base}/api/health"))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["store"]["backend"], "dynamodb", "{health}");
    assert_eq!(health["store"]["reachable"], true, "{health}");

    // The account written by the CLI logs in through the server: both read one table.
    let login = http
        .post(format!("{base}/api/auth/login"))
        .json(&serde_json::json!({"email": "admin@example.test", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    let tokens: serde_json::Value = login.json().await.unwrap();
    let profile: serde_json::Value = http
        .get(format!("{base}/api/user/profile"))
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(profile["email"], "admin@example.test", "{profile}");

    drop(server);
    let store = corral_store_dynamodb::DynamoStore::open(&url)
        .await
        .unwrap();
    store.delete_table().await.unwrap();
}
