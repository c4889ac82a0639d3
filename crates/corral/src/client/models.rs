//! `corral models`, `corral models pull`, `corral models import`.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;

use super::output::{self, Spinner};
use super::session::Api;
use crate::config::{FileConfig, StoreArgs, StoreConfig};
use crate::error::CliError;

fn source(model: &Value) -> String {
    let s = &model["source"];
    match s["kind"].as_str() {
        Some("ollama") => format!("ollama {}", s["name"].as_str().unwrap_or("?")),
        Some("url") => format!("url {}", s["url"].as_str().unwrap_or("?")),
        Some("file") => format!("file {}", s["path"].as_str().unwrap_or("?")),
        _ => "?".into(),
    }
}

fn yes(v: &Value) -> &'static str {
    if v.as_bool() == Some(true) {
        "yes"
    } else {
        "no"
    }
}

/// "yes", "no", or where a pull stands.
fn present(model: &Value) -> String {
    if model["present"].as_bool() == Some(true) {
        return "yes".into();
    }
    let pull = &model["pull"];
    match pull["phase"].as_str() {
        Some("failed") => "pull failed".into(),
        Some(phase @ ("manifest" | "downloading" | "verifying")) => {
            match pull["percent"].as_u64() {
                Some(p) => format!("{phase} {p}%"),
                None => phase.to_string(),
            }
        }
        _ => "no".into(),
    }
}

pub async fn list() -> Result<(), CliError> {
    let mut api = Api::from_env()?;
    let models = api.get("/api/models").await?;
    let rows: Vec<Vec<String>> = models
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            vec![
                m["id"].as_str().unwrap_or("?").to_string(),
                m["family"].as_str().unwrap_or("").to_string(),
                m["size"].as_str().unwrap_or("").to_string(),
                yes(&m["cpu_supported"]).into(),
                yes(&m["gpu_supported"]).into(),
                output::mib(m["memory_required"].as_u64().unwrap_or(0)),
                format!(
                    "~{}",
                    output::duration(m["expected_deploy_seconds"].as_i64().unwrap_or(0))
                ),
                present(m),
                source(m),
            ]
        })
        .collect();
    output::table(
        &[
            "MODEL", "FAMILY", "SIZE", "CPU", "GPU", "MEMORY", "DEPLOY", "PRESENT", "SOURCE",
        ],
        &rows,
    );
    if rows.is_empty() {
        println!("(the catalog is empty; an admin can add models)");
    } else {
        println!("\nDeploy one with: corral deploy MODEL");
    }
    Ok(())
}

pub async fn pull(model: &str) -> Result<(), CliError> {
    let mut api = Api::from_env()?;
    let path = format!("/api/models/{model}");
    let mut state = api
        .json(Method::POST, &format!("{path}/pull"), None)
        .await?;
    let mut spinner = Spinner::new();
    let started = Instant::now();
    loop {
        if state["present"].as_bool() == Some(true) {
            spinner.clear();
            println!(
                "{model} is present ({:.0} s).",
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        let pull = &state["pull"];
        if pull["phase"] == "failed" {
            return Err(CliError::Invalid(format!(
                "pulling {model} failed: {}",
                pull["error"].as_str().unwrap_or("see the server log")
            )));
        }
        let done = pull["done_bytes"].as_u64().unwrap_or(0);
        let status = match pull["total_bytes"].as_u64() {
            Some(total) => format!(
                "{} {} of {} ({}%)",
                pull["phase"].as_str().unwrap_or("starting"),
                output::bytes(done),
                output::bytes(total),
                pull["percent"].as_u64().unwrap_or(0)
            ),
            None => format!(
                "{} {}",
                pull["phase"].as_str().unwrap_or("starting"),
                output::bytes(done)
            ),
        };
        spinner.tick(&format!("pulling {model}: {status}"));
        tokio::time::sleep(Duration::from_millis(500)).await;
        state = api.get(&path).await?;
    }
}

pub async fn import(
    store_args: &StoreArgs,
    file: &Path,
    name: &str,
    memory: Option<u32>,
) -> Result<(), CliError> {
    let config = FileConfig::load(store_args.config.as_deref())?;
    let cfg = StoreConfig::resolve(store_args, &config);
    let store = crate::store::open(&cfg.database_url).await?;
    let id = corral_core::catalog::normalize_model_id(name).map_err(CliError::Invalid)?;
    if let Some(existing) = store.model(&id).await?
        && existing.builtin
    {
        return Err(CliError::Invalid(format!(
            "{id} is a built-in model; import under another name (e.g. --name {id}-local), \
             or for a file source put the GGUF where `corral models` shows"
        )));
    }
    let weights = corral_models::Weights::new(&cfg.data_dir);
    println!("Importing {} as {id} ...", file.display());
    let mut entry = weights
        .import(file, &id)
        .await
        .map_err(|e| CliError::Invalid(e.to_string()))?;
    if let Some(memory) = memory {
        entry.memory_required = memory;
    }
    store.upsert_model(&entry).await?;
    println!(
        "Imported {id}: {} in {}, needs {} (estimated; --memory overrides).\n\
         Deploy it with: corral deploy {id}",
        output::bytes(entry.weights_bytes.unwrap_or(0)),
        weights.models_dir().display(),
        output::mib(u64::from(entry.memory_required))
    );
    Ok(())
}

/// `corral models gc`: what the catalog and the instances in the store need decides
/// (corral_models::gc); the files are the data dir's.
pub async fn gc(store_args: &StoreArgs, dry_run: bool) -> Result<(), CliError> {
    let config = FileConfig::load(store_args.config.as_deref())?;
    let cfg = StoreConfig::resolve(store_args, &config);
    let store = crate::store::open(&cfg.database_url).await?;
    let (catalog, in_use) = crate::store::weights_needs(store.as_ref()).await?;
    let weights = corral_models::Weights::new(&cfg.data_dir);
    let freed = weights
        .collect_garbage(&catalog, &in_use, dry_run)
        .await
        .map_err(|e| CliError::Invalid(e.to_string()))?;
    let verb = if dry_run { "would free" } else { "freed" };
    for f in &freed {
        println!("{verb} {} ({})", f.path.display(), output::bytes(f.bytes));
    }
    let total = freed.iter().map(|f| f.bytes).sum();
    println!(
        "{verb} {} in {} file(s){}",
        output::bytes(total),
        freed.len(),
        if dry_run && !freed.is_empty() {
            "; run with --apply to delete them"
        } else {
            ""
        }
    );
    Ok(())
}
