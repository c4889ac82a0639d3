//! Prepares `ui/dist` for `src/ui.rs`'s `#[derive(Embed)]`.
//!
//! * rust-embed resolves the folder's canonical path at compile time; if `ui/dist` is
//!   missing then, a debug build (which reads the files at run time) never serves the UI
//!   even after it is built. An empty `ui/dist` keeps the path resolvable, and the UI
//!   still answers "UI not built" until `scripts/build-ui.sh` fills it.
//! * Release builds embed the files, and Cargo does not notice files appearing in a
//!   folder by itself: watch it so a rebuilt UI is re-embedded.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let Some(manifest) = std::env::var_os("CARGO_MANIFEST_DIR") else {
        return;
    };
    let ui = PathBuf::from(manifest).join("../../ui");
    if !ui.is_dir() {
        return;
    }
    let dist = ui.join("dist");
    if let Err(e) = std::fs::create_dir_all(&dist) {
        println!("cargo:warning=could not create {}: {e}", dist.display());
        return;
    }
    if std::env::var_os("CARGO_CFG_DEBUG_ASSERTIONS").is_none() {
        println!("cargo:rerun-if-changed={}", dist.display());
    }
}
