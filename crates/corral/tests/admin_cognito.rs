//! `corral admin create-user` in auth mode cognito: accounts live in the user pool there,
//! so the command refuses to make a local one (it could not sign in) and says how to add
//! the user to the pool, with the group for the role. The real binary, on a real SQLite
//! store; nothing is sent to AWS.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const PASSWORD: &str = "Cogn1to!Passw0rd";
const POOL: &str = "us-east-1_TestPool1";

fn create_user(data_dir: &Path, configure: impl FnOnce(&mut Command), role: &str) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_corral"));
    cmd.env("CORRAL_DATA_DIR", data_dir)
        .env_remove("CORRAL_CONFIG")
        .env_remove("CORRAL_DATABASE_URL")
        .env_remove("CORRAL_AUTH_MODE")
        .args(["admin", "create-user", "--email", "dana@example.test"])
        .args(["--role", role, "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    configure(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    // The refusal comes before the password is read, so the pipe may already be closed.
    let _ = writeln!(child.stdin.take().unwrap(), "{PASSWORD}");
    child.wait_with_output().unwrap()
}

#[test]
fn create_user_in_cognito_mode_points_at_the_pool() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("corral.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\nmode = \"cognito\"\n\n[auth.cognito]\nregion = \"us-east-1\"\n\
             user_pool_id = \"{POOL}\"\nclient_id = \"abc123client\"\nadmin_group = \"ops\"\n"
        ),
    )
    .unwrap();
    let data = dir.path().join("data");

    // From corral.toml, with the pool's own name for the admin group.
    let out = create_user(
        &data,
        |c| {
            c.arg("--config").arg(&config);
        },
        "admin",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "refused: {stderr}");
    for needed in [
        "auth mode is cognito",
        &format!("--user-pool-id {POOL} --username dana@example.test"),
        "admin-create-user",
        "admin-set-user-password",
        "--group-name ops",
    ] {
        assert!(stderr.contains(needed), "{needed:?} in {stderr}");
    }

    // From the environment, as `corral serve` reads it; the role picks the group.
    let out = create_user(
        &data,
        |c| {
            c.env("CORRAL_AUTH_MODE", "cognito")
                .env("CORRAL_COGNITO_REGION", "us-east-1")
                .env("CORRAL_COGNITO_USER_POOL_ID", POOL)
                .env("CORRAL_COGNITO_CLIENT_ID", "abc123client");
        },
        "viewer",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "refused: {stderr}");
    assert!(stderr.contains("--group-name viewer"), "{stderr}");

    // A broken cognito configuration is reported as such, not ignored.
    let out = create_user(
        &data,
        |c| {
            c.env("CORRAL_AUTH_MODE", "cognito");
        },
        "user",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("user_pool_id"), "{stderr}");

    // Nothing was stored: in built-in mode the same address is still free.
    let out = create_user(&data, |_| {}, "admin");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("created dana@example.test (admin)"),
        "{stdout}"
    );
}
