//! From request text to prompt tokens: messages, tokenization and the context length
//! check.

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

use crate::error::ApiError;

#[derive(serde::Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// Roles the chat templates know. OpenAI's newer `developer` role is a system message.
pub fn normalize_role(role: &str) -> Result<&'static str, ApiError> {
    match role {
        "system" | "developer" => Ok("system"),
        "user" => Ok("user"),
        "assistant" => Ok("assistant"),
        "tool" => Ok("tool"),
        other => Err(ApiError::invalid(format!(
            "invalid message role '{other}': expected system, user, assistant or tool"
        ))),
    }
}

/// Tokenizes prompt text. Special tokens written in the text (`<|im_start|>`) are parsed,
/// as llama.cpp's server and Ollama do, since templates produce them.
pub fn tokenize(model: &LlamaModel, text: &str, add_special: bool) -> Vec<LlamaToken> {
    model.vocab().tokenize(text.as_bytes(), add_special, true)
}

/// Token ids from a client (Ollama's `context`, OpenAI token inputs) must exist in the
/// vocabulary: llama.cpp aborts on an unknown id.
pub fn tokens_from_ids(model: &LlamaModel, ids: &[i64]) -> Result<Vec<LlamaToken>, ApiError> {
    let n_vocab = i64::from(model.n_vocab());
    ids.iter()
        .map(|&id| {
            if (0..n_vocab).contains(&id) {
                Ok(LlamaToken::new(id as i32))
            } else {
                Err(ApiError::invalid(format!(
                    "token id {id} is not in the model's vocabulary (0..{n_vocab})"
                )))
            }
        })
        .collect()
}

/// A prompt must leave room for at least one generated token. Longer prompts are refused
/// rather than silently cut, so an answer never ignores part of what was asked.
pub fn check_fits(prompt_tokens: usize, num_ctx: u32) -> Result<(), ApiError> {
    if prompt_tokens == 0 {
        return Err(ApiError::invalid("the prompt is empty"));
    }
    if prompt_tokens >= num_ctx as usize {
        return Err(ApiError::invalid(format!(
            "the prompt is {prompt_tokens} tokens long, which does not fit the context length \
             of {num_ctx} tokens (prompt and answer together); shorten it or raise num_ctx"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles() {
        assert_eq!(normalize_role("developer").unwrap(), "system");
        assert_eq!(normalize_role("user").unwrap(), "user");
        assert!(normalize_role("wizard").is_err());
    }

    #[test]
    fn prompt_must_leave_room_for_an_answer() {
        assert!(check_fits(10, 11).is_ok());
        assert!(check_fits(11, 11).is_err());
        assert!(check_fits(0, 11).is_err());
    }
}
