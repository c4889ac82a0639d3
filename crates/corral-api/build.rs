//! Rebuilds corral-api when the web UI is rebuilt. Release builds embed `ui/dist`
//! (`src/ui.rs`), and Cargo does not notice files appearing in a folder by itself. Debug
//! builds read `ui/dist` at run time, so they need no rebuild.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_CFG_DEBUG_ASSERTIONS").is_some() {
        return;
    }
    let Some(manifest) = std::env::var_os("CARGO_MANIFEST_DIR") else {
        return;
    };
    let ui = PathBuf::from(manifest).join("../../ui");
    let dist = ui.join("dist");
    if dist.is_dir() {
        println!("cargo:rerun-if-changed={}", dist.display());
    } else if ui.is_dir() {
        // Watching ui/ notices when dist/ appears there.
        println!("cargo:rerun-if-changed={}", ui.display());
    }
}
