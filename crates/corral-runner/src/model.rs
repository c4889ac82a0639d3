//! The served model: the loaded llama.cpp model plus what the listing endpoints report.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use llama_cpp_2::model::LlamaModel;
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::chat_template::ChatTemplate;

pub struct ServedModel {
    pub llama: Arc<LlamaModel>,
    /// Name clients use, `name:tag`.
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    pub modified_at: DateTime<Utc>,
    pub details: ModelDetails,
    pub chat: ChatTemplate,
    /// Context length of one slot.
    pub context_length: u32,
    /// SHA-256 of the file, computed on first use: hashing 100 MB at startup would delay
    /// the `listening on` line for an answer only the listing endpoints need.
    digest: OnceLock<String>,
}

/// Ollama's `details` object.
#[derive(Debug, Clone, Serialize)]
pub struct ModelDetails {
    pub parent_model: String,
    pub format: String,
    pub family: String,
    pub families: Vec<String>,
    pub parameter_size: String,
    pub quantization_level: String,
}

impl ServedModel {
    pub fn new(
        llama: Arc<LlamaModel>,
        name: String,
        path: &Path,
        context_length: u32,
        template: Option<String>,
    ) -> std::io::Result<Self> {
        let meta = std::fs::metadata(path)?;
        let modified_at = meta
            .modified()
            .map(DateTime::<Utc>::from)
            .unwrap_or_else(|_| Utc::now());
        let family = llama
            .meta_val_str("general.architecture")
            .unwrap_or_else(|_| "unknown".to_owned());
        let quantization_level = llama
            .meta_val_str("general.file_type")
            .ok()
            .and_then(|t| t.parse::<u32>().ok())
            .map_or("unknown", file_type_name)
            .to_owned();
        let details = ModelDetails {
            parent_model: String::new(),
            format: "gguf".to_owned(),
            families: vec![family.clone()],
            family,
            parameter_size: human_number(llama.n_params()),
            quantization_level,
        };
        Ok(Self {
            chat: ChatTemplate::from_model(&llama, template),
            llama,
            name,
            path: path.to_owned(),
            size: meta.len(),
            modified_at,
            details,
            context_length,
            digest: OnceLock::new(),
        })
    }

    /// Whether a requested model name designates this model. Like Ollama, a name without a
    /// tag means `:latest`.
    pub fn answers_to(&self, requested: &str) -> bool {
        names_match(requested, &self.name)
    }

    /// Hex SHA-256 of the model file. Blocks the first time; call from a blocking context.
    pub fn digest(&self) -> &str {
        self.digest.get_or_init(|| match sha256_file(&self.path) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("cannot hash {}: {e}", self.path.display());
                String::new()
            }
        })
    }

    /// The GGUF metadata as Ollama's `model_info`. Values come back from llama.cpp as text;
    /// numbers are turned back into numbers. Arrays (the vocabulary, merges) are left out
    /// as Ollama does unless `verbose` is set, and llama.cpp abbreviates them anyway.
    pub fn model_info(&self) -> Map<String, Value> {
        let llama = &self.llama;
        (0..llama.meta_count())
            .filter_map(|i| {
                let key = llama.meta_key_by_index(i).ok()?;
                let val = llama.meta_val_str_by_index(i).ok()?;
                if val.starts_with('[') {
                    return None;
                }
                let val = if let Ok(n) = val.parse::<i64>() {
                    Value::from(n)
                } else if let Some(f) = val.parse::<f64>().ok().filter(|f| f.is_finite()) {
                    Value::from(f)
                } else {
                    Value::from(val)
                };
                Some((key, val))
            })
            .collect()
    }

    /// The chat template in use (Jinja text), for `/api/show`.
    pub fn template_text(&self) -> String {
        self.chat.source.clone()
    }

    pub fn license(&self) -> String {
        self.llama
            .meta_val_str("general.license")
            .unwrap_or_default()
    }
}

fn names_match(requested: &str, served: &str) -> bool {
    fn with_tag(n: &str) -> std::borrow::Cow<'_, str> {
        if n.contains(':') {
            n.into()
        } else {
            format!("{n}:latest").into()
        }
    }
    !requested.is_empty() && with_tag(requested) == with_tag(served)
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(format!("{:x}", hasher.finalize()))
}

/// Ollama-style parameter count, e.g. `134.52M`.
fn human_number(n: u64) -> String {
    let (value, unit) = match n {
        1_000_000_000.. => (n as f64 / 1e9, "B"),
        1_000_000.. => (n as f64 / 1e6, "M"),
        1_000.. => (n as f64 / 1e3, "K"),
        _ => return n.to_string(),
    };
    let text = format!("{value:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}{unit}")
}

/// Names of llama.cpp's `llama_ftype` values (`general.file_type` in GGUF).
fn file_type_name(file_type: u32) -> &'static str {
    match file_type {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_sizes_read_like_ollama() {
        assert_eq!(human_number(134_515_008), "134.52M");
        assert_eq!(human_number(7_000_000_000), "7B");
        assert_eq!(human_number(1_500), "1.5K");
        assert_eq!(human_number(12), "12");
    }

    #[test]
    fn model_names_default_to_latest_tag() {
        assert!(names_match("smollm2:135m", "smollm2:135m"));
        assert!(!names_match("smollm2", "smollm2:135m"));
        assert!(names_match("smollm2", "smollm2:latest"));
        assert!(names_match("smollm2:latest", "smollm2"));
        assert!(!names_match("", "smollm2"));
        assert!(!names_match("llama2", "smollm2:135m"));
    }

    #[test]
    fn file_types() {
        assert_eq!(file_type_name(3), "Q4_1");
        assert_eq!(file_type_name(15), "Q4_K_M");
        assert_eq!(file_type_name(999), "unknown");
    }
}
