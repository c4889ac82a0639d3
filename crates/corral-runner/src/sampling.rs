//! Generation settings shared by the Ollama and OpenAI endpoints: validation, and the
//! llama.cpp sampler chain they turn into.

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use serde_json::Value;

use crate::error::ApiError;

/// Constrained output (`format` in Ollama, `response_format` in OpenAI).
#[derive(Debug, Clone, PartialEq)]
pub enum Format {
    /// Any JSON object.
    Json,
    /// A JSON schema the output must match.
    Schema(Value),
    /// A GBNF grammar with its root rule (tool calls, see [`crate::tools`]).
    Grammar(String, &'static str),
}

impl Format {
    /// Ollama's `format`: `"json"`, a schema object, or empty/null for free text.
    pub fn from_ollama(format: Option<&Value>) -> Result<Option<Self>, ApiError> {
        match format {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) if s == "json" => Ok(Some(Self::Json)),
            Some(schema @ Value::Object(_)) => Ok(Some(Self::Schema(schema.clone()))),
            Some(other) => Err(ApiError::invalid(format!(
                "invalid format {other}: expected \"json\" or a JSON schema object"
            ))),
        }
    }

    /// The GBNF grammar and its root rule.
    fn grammar(&self) -> Result<(String, &'static str), ApiError> {
        // Ollama's "json" means a JSON object; llama.cpp's schema converter makes the
        // grammar for that from the smallest schema that says so.
        let schema = match self {
            Self::Json => r#"{"type":"object"}"#.to_owned(),
            Self::Schema(schema) => schema.to_string(),
            Self::Grammar(gbnf, root) => return Ok((gbnf.clone(), root)),
        };
        let gbnf = llama_cpp_2::json_schema_to_grammar(&schema)
            .map_err(|e| ApiError::invalid(format!("unsupported JSON schema in format: {e}")))?;
        Ok((gbnf, "root"))
    }
}

/// How the next token is chosen. Defaults are Ollama's.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    pub top_k: i32,
    pub top_p: f32,
    pub min_p: f32,
    /// None: a fresh random seed per request.
    pub seed: Option<u32>,
    pub repeat_penalty: f32,
    pub repeat_last_n: i32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub format: Option<Format>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.9,
            min_p: 0.0,
            seed: None,
            repeat_penalty: 1.1,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            format: None,
        }
    }
}

/// Everything a generation request asks for besides its prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationSettings {
    pub sampling: SamplingParams,
    /// None: until end of sequence or the context is full.
    pub max_tokens: Option<u32>,
    pub stop: Vec<String>,
    /// Context length for this request (prompt + answer), at most the slot's.
    pub num_ctx: u32,
}

impl SamplingParams {
    /// Rejects values llama.cpp would misbehave on (it asserts on some of them, which
    /// would take the whole server down).
    pub fn validate(&self) -> Result<(), ApiError> {
        fn check(ok: bool, what: &str) -> Result<(), ApiError> {
            if ok {
                Ok(())
            } else {
                Err(ApiError::invalid(what.to_owned()))
            }
        }
        check(
            self.temperature.is_finite() && self.temperature >= 0.0,
            "temperature must be a number >= 0",
        )?;
        check(self.top_k >= 0, "top_k must be >= 0")?;
        check(
            self.top_p.is_finite() && self.top_p > 0.0 && self.top_p <= 1.0,
            "top_p must be in (0, 1]",
        )?;
        check(
            self.min_p.is_finite() && (0.0..=1.0).contains(&self.min_p),
            "min_p must be in [0, 1]",
        )?;
        check(
            self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0,
            "repeat_penalty must be > 0",
        )?;
        check(self.repeat_last_n >= -1, "repeat_last_n must be >= -1")?;
        check(
            self.presence_penalty.is_finite() && self.frequency_penalty.is_finite(),
            "presence_penalty and frequency_penalty must be numbers",
        )
    }

    /// The sampler for one request, in llama.cpp's order: penalties, the truncations,
    /// temperature, the draw. A grammar, if any, is kept apart (see [`TokenSampler`]).
    pub fn build(&self, model: &LlamaModel, num_ctx: u32) -> Result<TokenSampler, ApiError> {
        self.validate()?;
        let grammar = match &self.format {
            Some(format) => {
                let (gbnf, root) = format.grammar()?;
                Some(
                    LlamaSampler::grammar(model, &gbnf, root)
                        .map_err(|e| ApiError::invalid(format!("cannot use format: {e}")))?,
                )
            }
            None => None,
        };
        let mut chain = Vec::new();
        let penalised = self.repeat_penalty != 1.0
            || self.presence_penalty != 0.0
            || self.frequency_penalty != 0.0;
        if penalised && self.repeat_last_n != 0 {
            // Ollama: -1 means the whole context.
            let last_n = if self.repeat_last_n < 0 {
                i32::try_from(num_ctx).unwrap_or(i32::MAX)
            } else {
                self.repeat_last_n
            };
            chain.push(LlamaSampler::penalties(
                model.n_vocab(),
                last_n,
                self.repeat_penalty,
                self.frequency_penalty,
                self.presence_penalty,
            ));
        }
        if self.temperature == 0.0 {
            chain.push(LlamaSampler::greedy());
        } else {
            chain.extend([
                LlamaSampler::top_k(self.top_k),
                LlamaSampler::top_p(self.top_p, 1),
                LlamaSampler::min_p(self.min_p, 1),
                LlamaSampler::temp(self.temperature),
                LlamaSampler::dist(self.seed.unwrap_or_else(random_seed)),
            ]);
        }
        Ok(TokenSampler {
            argmax_only: self.temperature == 0.0 && !penalised && grammar.is_none(),
            chain: LlamaSampler::chain_simple(chain),
            grammar,
        })
    }
}

/// Chooses a request's next token from the logits of one batch position.
pub struct TokenSampler {
    chain: LlamaSampler,
    grammar: Option<LlamaSampler>,
    /// Plain greedy decoding: the chain would only pick the largest logit.
    argmax_only: bool,
}

impl TokenSampler {
    pub fn sample(&mut self, ctx: &LlamaContext<'_>, idx: i32) -> Option<LlamaToken> {
        if self.argmax_only {
            // llama.cpp's greedy sampler first copies the whole vocabulary into a
            // candidate array; scanning the logits directly picks the same token (the
            // first largest) for a fraction of the cost, which shows with many slots.
            let best = argmax(ctx.get_logits_ith(idx))?;
            return Some(LlamaToken::new(i32::try_from(best).ok()?));
        }
        let Some(grammar) = self.grammar.as_mut() else {
            // Applies the chain and records the token in one call.
            return Some(self.chain.sample(ctx, idx));
        };
        // Checking the grammar against the whole vocabulary costs more than decoding a
        // token with a small model. Like llama.cpp's own sampler, draw without it first and
        // check only the drawn token; the full check is needed only when that token breaks
        // the grammar.
        let mut candidates = ctx.token_data_array_ith(idx);
        candidates.apply_sampler(&mut self.chain);
        let drawn = candidates.selected_token()?;
        let mut single =
            LlamaTokenDataArray::new(vec![LlamaTokenData::new(drawn, 0.0, 0.0)], false);
        single.apply_sampler(grammar);
        let token = if single.data.first().is_some_and(|d| d.logit().is_finite()) {
            drawn
        } else {
            let mut candidates = ctx.token_data_array_ith(idx);
            candidates.apply_sampler(grammar);
            candidates.apply_sampler(&mut self.chain);
            candidates.selected_token()?
        };
        grammar.accept(token);
        self.chain.accept(token);
        Some(token)
    }
}

/// Index of the first largest value, ignoring NaN.
///
/// Runs once per slot and step over the whole vocabulary (49k logits for SmolLM2), so it
/// is written to vectorise: the maximum is taken over independent lanes (`f32::max`
/// ignores NaN), which the compiler turns into SIMD, and only then is its first position
/// looked up. A single loop tracking index and value together stays scalar and costs
/// several times more, about 1 % of an 8-slot step.
fn argmax(values: &[f32]) -> Option<usize> {
    const LANES: usize = 16;
    let mut lanes = [f32::NAN; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane = lane.max(v);
        }
    }
    let max = lanes.iter().chain(rest).fold(f32::NAN, |m, &v| m.max(v));
    // All NaN (or empty): `max` is NaN and equals nothing.
    values.iter().position(|&v| v == max)
}

/// Ollama and OpenAI take seeds as signed 64-bit numbers; llama.cpp as u32. A negative
/// seed (Ollama's -1) means random.
pub fn seed_from_i64(seed: Option<i64>) -> Option<u32> {
    seed.filter(|s| *s >= 0)
        .map(|s| (s as u64 & u64::from(u32::MAX)) as u32)
}

fn random_seed() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    // RandomState is seeded from the OS per instance: good enough for sampling noise
    // without another dependency.
    RandomState::new().hash_one(std::time::SystemTime::now()) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ollama_defaults_are_valid() {
        assert!(SamplingParams::default().validate().is_ok());
    }

    #[test]
    fn rejects_values_llama_cpp_cannot_take() {
        let bad = [
            SamplingParams {
                temperature: -1.0,
                ..Default::default()
            },
            SamplingParams {
                temperature: f32::NAN,
                ..Default::default()
            },
            SamplingParams {
                top_k: -5,
                ..Default::default()
            },
            SamplingParams {
                top_p: 0.0,
                ..Default::default()
            },
            SamplingParams {
                top_p: 1.5,
                ..Default::default()
            },
            SamplingParams {
                min_p: 2.0,
                ..Default::default()
            },
            SamplingParams {
                repeat_penalty: 0.0,
                ..Default::default()
            },
            SamplingParams {
                repeat_last_n: -3,
                ..Default::default()
            },
        ];
        for p in bad {
            assert!(p.validate().is_err(), "{p:?} should be rejected");
        }
    }

    #[test]
    fn formats() {
        assert_eq!(Format::from_ollama(None).unwrap(), None);
        assert_eq!(Format::from_ollama(Some(&json!(""))).unwrap(), None);
        assert_eq!(
            Format::from_ollama(Some(&json!("json"))).unwrap(),
            Some(Format::Json)
        );
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        assert_eq!(
            Format::from_ollama(Some(&schema)).unwrap(),
            Some(Format::Schema(schema.clone()))
        );
        assert!(Format::from_ollama(Some(&json!("yaml"))).is_err());
        assert!(Format::from_ollama(Some(&json!(3))).is_err());
    }

    #[test]
    fn argmax_picks_the_first_largest() {
        assert_eq!(argmax(&[0.1, 3.0, -1.0, 3.0]), Some(1));
        assert_eq!(argmax(&[f32::NAN, -2.0, -1.0]), Some(2));
        assert_eq!(argmax(&[f32::NEG_INFINITY]), Some(0));
        assert_eq!(argmax(&[]), None);
        assert_eq!(argmax(&[f32::NAN; 40]), None);
        // Longer than one SIMD block, the largest in the remainder, ties across lanes.
        let mut long: Vec<f32> = (0..100).map(|i| (i % 7) as f32).collect();
        assert_eq!(argmax(&long), Some(6));
        long[97] = 9.0;
        long[99] = 9.0;
        assert_eq!(argmax(&long), Some(97));
        long[5] = f32::NAN;
        long[20] = 9.5;
        assert_eq!(argmax(&long), Some(20));
    }

    #[test]
    fn seeds() {
        assert_eq!(seed_from_i64(None), None);
        assert_eq!(seed_from_i64(Some(-1)), None);
        assert_eq!(seed_from_i64(Some(42)), Some(42));
        assert_eq!(seed_from_i64(Some(1 << 32 | 7)), Some(7));
    }
}
