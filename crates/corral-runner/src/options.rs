//! Request fields shared by the Ollama and OpenAI endpoints, and Ollama's `options`.

use serde::Deserialize;

use crate::error::ApiError;
use crate::sampling::{Format, GenerationSettings, SamplingParams, seed_from_i64};

/// A field that takes one string or a list of them (`stop`, embedding `input`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

/// Ollama's `options` object. Unknown options are ignored, as Ollama does.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct OllamaOptions {
    pub temperature: Option<f32>,
    pub top_k: Option<i32>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub seed: Option<i64>,
    pub num_predict: Option<i64>,
    pub stop: Option<OneOrMany>,
    pub repeat_penalty: Option<f32>,
    pub repeat_last_n: Option<i32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub num_ctx: Option<i64>,
}

impl OllamaOptions {
    pub fn into_settings(
        self,
        format: Option<Format>,
        slot_ctx: u32,
    ) -> Result<GenerationSettings, ApiError> {
        let d = SamplingParams::default();
        let sampling = SamplingParams {
            temperature: self.temperature.unwrap_or(d.temperature),
            top_k: self.top_k.unwrap_or(d.top_k),
            top_p: self.top_p.unwrap_or(d.top_p),
            min_p: self.min_p.unwrap_or(d.min_p),
            seed: seed_from_i64(self.seed),
            repeat_penalty: self.repeat_penalty.unwrap_or(d.repeat_penalty),
            repeat_last_n: self.repeat_last_n.unwrap_or(d.repeat_last_n),
            presence_penalty: self.presence_penalty.unwrap_or(d.presence_penalty),
            frequency_penalty: self.frequency_penalty.unwrap_or(d.frequency_penalty),
            format,
        };
        sampling.validate()?;
        Ok(GenerationSettings {
            sampling,
            max_tokens: max_tokens(self.num_predict),
            stop: self.stop.map(OneOrMany::into_vec).unwrap_or_default(),
            num_ctx: resolve_num_ctx(self.num_ctx, slot_ctx)?,
        })
    }
}

/// Ollama's `num_predict` / OpenAI's `max_tokens`: a negative value (Ollama's -1 and -2)
/// or none means no limit besides the context.
pub fn max_tokens(n: Option<i64>) -> Option<u32> {
    n.filter(|n| *n >= 0)
        .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
}

/// The context length a request asks for. Ollama would reload the model with a larger
/// context; a runner serves one fixed context per slot, so larger is refused.
pub fn resolve_num_ctx(requested: Option<i64>, slot_ctx: u32) -> Result<u32, ApiError> {
    match requested {
        None => Ok(slot_ctx),
        Some(n) if n <= 0 => Err(ApiError::invalid(format!(
            "num_ctx must be positive, got {n}"
        ))),
        Some(n) if n > i64::from(slot_ctx) => Err(ApiError::invalid(format!(
            "num_ctx {n} is larger than this runner's context length {slot_ctx} \
             (start corral-runner with --ctx {n} to allow it)"
        ))),
        Some(n) => Ok(u32::try_from(n).unwrap_or(slot_ctx)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ollama_options_map_onto_settings() {
        let opts: OllamaOptions = serde_json::from_value(json!({
            "temperature": 0, "seed": 42, "num_predict": 5, "stop": ["\n"], "num_ctx": 1024,
            "top_k": 10, "mirostat": 1
        }))
        .unwrap();
        let s = opts.into_settings(None, 4096).unwrap();
        assert_eq!(s.sampling.temperature, 0.0);
        assert_eq!(s.sampling.seed, Some(42));
        assert_eq!(s.sampling.top_k, 10);
        assert_eq!(s.sampling.top_p, 0.9);
        assert_eq!(s.max_tokens, Some(5));
        assert_eq!(s.stop, vec!["\n".to_owned()]);
        assert_eq!(s.num_ctx, 1024);
    }

    #[test]
    fn defaults() {
        let s = OllamaOptions::default().into_settings(None, 2048).unwrap();
        assert_eq!(s.sampling, SamplingParams::default());
        assert_eq!(s.max_tokens, None);
        assert_eq!(s.num_ctx, 2048);
    }

    #[test]
    fn num_ctx_limits() {
        assert!(resolve_num_ctx(Some(8192), 4096).is_err());
        assert!(resolve_num_ctx(Some(0), 4096).is_err());
        assert!(resolve_num_ctx(Some(-1), 4096).is_err());
        assert_eq!(resolve_num_ctx(Some(4096), 4096).unwrap(), 4096);
    }

    #[test]
    fn num_predict() {
        assert_eq!(max_tokens(Some(-1)), None);
        assert_eq!(max_tokens(Some(-2)), None);
        assert_eq!(max_tokens(Some(0)), Some(0));
        assert_eq!(max_tokens(Some(12)), Some(12));
    }

    #[test]
    fn bad_option_is_rejected() {
        let opts = OllamaOptions {
            temperature: Some(-2.0),
            ..Default::default()
        };
        assert!(opts.into_settings(None, 4096).is_err());
    }

    #[test]
    fn stop_takes_a_string_or_a_list() {
        let one: OneOrMany = serde_json::from_value(json!("x")).unwrap();
        let many: OneOrMany = serde_json::from_value(json!(["x", "y"])).unwrap();
        assert_eq!(one.into_vec(), vec!["x"]);
        assert_eq!(many.into_vec(), vec!["x", "y"]);
    }
}
