//! The model catalog: what can be deployed, how big it is, and where its weights come
//! from. The built-in entries are the brief's table plus the demo model.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Where a model's GGUF weights come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ModelSource {
    /// An Ollama registry name (`library/llama2:7b`): OCI manifest, then the GGUF blob.
    Ollama { name: String },
    /// A GGUF file over HTTP(S), verified against its SHA-256.
    Url { url: String, sha256: String },
    /// A GGUF already on this machine (imported by an admin).
    File { path: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CatalogModel {
    /// The name users deploy and the gateway routes by, e.g. `llama2:7b`.
    pub id: String,
    /// Human name, e.g. `Llama2`.
    pub family: String,
    /// Parameter count as displayed, e.g. `7B`, `7B Instruct`.
    pub size: String,
    pub cpu_supported: bool,
    pub gpu_supported: bool,
    /// Memory the model needs to run, in MiB.
    pub memory_required: u32,
    /// Typical time from deploy to ready, in seconds (e.g. 180, about three minutes).
    pub expected_deploy_seconds: u32,
    pub source: ModelSource,
    /// Size of the weights in bytes, when known.
    pub weights_bytes: Option<u64>,
    /// True for the entries Corral ships; admins may add and remove others.
    pub builtin: bool,
}

/// Accepts the brief's `llama2-7b` spelling for `llama2:7b`, and rejects anything that
/// could be a path or a URL (a model id ends up in file names and routes).
pub fn normalize_model_id(raw: &str) -> Result<String, String> {
    let id = raw.trim().to_ascii_lowercase();
    if id.is_empty() || id.len() > 64 {
        return Err("model id must be 1..=64 characters".into());
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '.' | '-' | '_'))
        || id.starts_with(['.', '-', ':'])
        || id.contains("..")
    {
        return Err(format!(
            "invalid model id {raw:?}: use letters, digits, '.', '-', '_' and one ':' (e.g. llama2:7b)"
        ));
    }
    if id.matches(':').count() > 1 {
        return Err(format!("invalid model id {raw:?}: at most one ':'"));
    }
    Ok(id)
}

/// The built-in catalog: the brief's table (sizes, memory, deploy times) and the demo model.
pub fn builtin_models() -> Vec<CatalogModel> {
    let ollama = |id: &str, family: &str, size: &str, mem_gib: u32, minutes: u32| CatalogModel {
        id: id.into(),
        family: family.into(),
        size: size.into(),
        cpu_supported: true,
        gpu_supported: true,
        memory_required: mem_gib * 1024,
        expected_deploy_seconds: minutes * 60,
        source: ModelSource::Ollama {
            name: format!("library/{id}"),
        },
        weights_bytes: None,
        builtin: true,
    };
    vec![
        ollama("llama2:7b", "Llama2", "7B", 4, 3),
        ollama("llama2:13b", "Llama2", "13B", 8, 5),
        ollama("codellama:7b", "CodeLlama", "7B", 4, 3),
        ollama("codellama:13b", "CodeLlama", "13B", 8, 5),
        ollama("mistral:7b", "Mistral", "7B", 4, 3),
        ollama("mistral:7b-instruct", "Mistral", "7B Instruct", 4, 3),
        CatalogModel {
            id: "smollm2:135m".into(),
            family: "SmolLM2".into(),
            size: "135M Instruct".into(),
            cpu_supported: true,
            gpu_supported: true,
            memory_required: 512,
            expected_deploy_seconds: 5,
            source: ModelSource::File {
                path: "models/smollm2-135m.gguf".into(),
            },
            weights_bytes: None,
            builtin: true,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brief_table_present() {
        let ids: Vec<String> = builtin_models().into_iter().map(|m| m.id).collect();
        for id in [
            "llama2:7b",
            "llama2:13b",
            "codellama:7b",
            "codellama:13b",
            "mistral:7b",
            "mistral:7b-instruct",
            "smollm2:135m",
        ] {
            assert!(ids.contains(&id.to_string()), "{id}");
        }
    }

    #[test]
    fn ids() {
        assert_eq!(normalize_model_id(" Llama2:7B ").unwrap(), "llama2:7b");
        for bad in [
            "",
            "../etc/passwd",
            "a/b",
            "http://x",
            "a:b:c",
            ".hidden",
            "a b",
            "a..b",
        ] {
            assert!(normalize_model_id(bad).is_err(), "{bad}");
        }
    }
}
