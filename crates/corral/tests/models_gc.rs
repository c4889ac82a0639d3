//! Issue 13 item 5: `corral models gc` with the real binary on a real data dir and SQLite
//! store. An imported model (the only copy) stays, as does a download in progress; a
//! registry model's weights that nothing uses go, with their record. A dry run (the
//! default) deletes nothing.

use std::path::Path;
use std::process::Command;

fn corral(data_dir: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_corral"))
        .env("CORRAL_DATA_DIR", data_dir)
        .env_remove("CORRAL_DATABASE_URL")
        .env_remove("CORRAL_CONFIG")
        .env("CORRAL_LOG", "warn")
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "corral {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A file llama.cpp's magic check accepts, of `len` bytes.
fn gguf(path: &Path, len: usize) {
    let mut bytes = b"GGUF".to_vec();
    bytes.resize(len, 0);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn models_gc_frees_unneeded_weights_and_keeps_imports() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let source = dir.path().join("mine.gguf");
    gguf(&source, 4096);
    corral(
        &data,
        &[
            "models",
            "import",
            source.to_str().unwrap(),
            "--name",
            "mine:1b",
        ],
    );
    let models = data.join("models");
    // What a pull of llama2:7b leaves (no instance uses it, so a deploy would fetch it
    // again), and a download still in progress.
    gguf(&models.join("llama2_7b.gguf"), 8192);
    std::fs::write(models.join("llama2_7b.json"), "{}").unwrap();
    gguf(&models.join("phi3_mini.partial"), 100);

    let dry = corral(&data, &["models", "gc"]);
    assert!(
        dry.contains("would free") && dry.contains("llama2_7b.gguf"),
        "{dry}"
    );
    assert!(!dry.contains("mine_1b"), "{dry}");
    assert!(
        models.join("llama2_7b.gguf").exists(),
        "a dry run deletes nothing"
    );
    let explicit = corral(&data, &["models", "gc", "--dry-run"]);
    assert!(explicit.contains("would free"), "{explicit}");
    assert!(models.join("llama2_7b.gguf").exists());

    let applied = corral(&data, &["models", "gc", "--apply"]);
    assert!(applied.contains("freed 1 MiB in 1 file(s)"), "{applied}");
    assert!(!models.join("llama2_7b.gguf").exists());
    assert!(!models.join("llama2_7b.json").exists());
    assert!(
        models.join("mine_1b.gguf").exists(),
        "an import is the only copy"
    );
    assert!(models.join("mine_1b.json").exists());
    assert!(
        models.join("phi3_mini.partial").exists(),
        "a download to resume"
    );

    let again = corral(&data, &["models", "gc", "--apply"]);
    assert!(again.contains("freed 0 MiB in 0 file(s)"), "{again}");
}
