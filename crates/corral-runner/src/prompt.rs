//! From request text to prompt tokens: messages, tokenization and the context length
//! check.

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

use crate::error::ApiError;

/// A chat message as chat templates see it (the shape `transformers` passes them).
#[derive(serde::Serialize, Default)]
pub struct Message {
    pub role: String,
    pub content: String,
    /// An assistant's calls: `{"type": "function", "function": {"name", "arguments"}}`
    /// with the arguments as an object, which templates write with `tojson`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<serde_json::Value>>,
    /// A tool result: which call it answers, and the tool's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            ..Self::default()
        }
    }
}

/// A call in an assistant message of a conversation's history, as OpenAI and Ollama
/// send it. Arguments come as JSON text (OpenAI) or as an object (Ollama).
#[derive(serde::Deserialize)]
pub struct CallIn {
    id: Option<String>,
    function: FunctionIn,
}

#[derive(serde::Deserialize)]
struct FunctionIn {
    name: String,
    arguments: Option<serde_json::Value>,
}

/// History calls in the shape templates expect, arguments as objects.
pub fn history_calls(
    calls: Option<Vec<CallIn>>,
) -> Result<Option<Vec<serde_json::Value>>, ApiError> {
    calls
        .map(|calls| calls.into_iter().map(history_call).collect())
        .transpose()
}

fn history_call(call: CallIn) -> Result<serde_json::Value, ApiError> {
    let CallIn { id, function } = call;
    let name = function.name;
    let arguments = match function.arguments {
        None | Some(serde_json::Value::Null) => serde_json::json!({}),
        Some(serde_json::Value::String(text)) => serde_json::from_str(&text).map_err(|e| {
            ApiError::invalid(format!(
                "arguments of the call to '{name}' are not JSON: {e}"
            ))
        })?,
        Some(v) => v,
    };
    let mut call = serde_json::json!({
        "type": "function",
        "function": { "name": name, "arguments": arguments },
    });
    if let Some(id) = id {
        call["id"] = id.into();
    }
    Ok(call)
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
    fn history_call_arguments_become_objects() {
        let calls: Vec<CallIn> = serde_json::from_value(serde_json::json!([
            {"id": "c1", "function": {"name": "f", "arguments": "{\"a\": 1}"}},
            {"function": {"name": "g", "arguments": {"b": 2}}},
            {"function": {"name": "h"}},
        ]))
        .unwrap();
        let v = history_calls(Some(calls)).unwrap().unwrap();
        assert_eq!(v[0]["function"]["arguments"], serde_json::json!({"a": 1}));
        assert_eq!(v[0]["id"], "c1");
        assert_eq!(v[1]["function"]["arguments"], serde_json::json!({"b": 2}));
        assert_eq!(v[2]["function"]["arguments"], serde_json::json!({}));
        let bad: Vec<CallIn> = serde_json::from_value(
            serde_json::json!([{"function": {"name": "f", "arguments": "{oops"}}]),
        )
        .unwrap();
        assert!(history_calls(Some(bad)).is_err());
    }

    #[test]
    fn prompt_must_leave_room_for_an_answer() {
        assert!(check_fits(10, 11).is_ok());
        assert!(check_fits(11, 11).is_err());
        assert!(check_fits(0, 11).is_err());
    }
}
