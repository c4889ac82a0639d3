//! Tool calling on the HTTP side: checking a request's tools against the model, and the
//! calls in OpenAI's and Ollama's shapes.

use serde_json::{Value, json};

use super::{AppState, new_id};
use crate::error::ApiError;
use crate::sampling::Format;
use crate::tools::{GRAMMAR_ROOT, ToolCall, ToolChoice, ToolFormat, function};

/// The tools of a request the model will see.
pub struct ToolUse {
    pub format: ToolFormat,
    pub tools: Vec<Value>,
    /// The grammar that forces a call (`tool_choice` required or a named function).
    pub grammar: Option<Format>,
}

impl AppState {
    /// None when the request has no tools or `tool_choice` is none (the tools are then
    /// not shown to the model). A model whose template cannot render tools gets Ollama's
    /// 400.
    pub(super) fn tool_use(
        &self,
        tools: Vec<Value>,
        choice: &ToolChoice,
        parallel: bool,
    ) -> Result<Option<ToolUse>, ApiError> {
        if tools.is_empty() || *choice == ToolChoice::None {
            if matches!(choice, ToolChoice::Required | ToolChoice::Named(_)) {
                return Err(ApiError::invalid("tool_choice requires tools"));
            }
            return Ok(None);
        }
        let Some(format) = self.model.chat.tool_format else {
            return Err(ApiError::invalid(format!(
                "{} does not support tools",
                self.model.name
            )));
        };
        for tool in &tools {
            function(tool)?;
        }
        let grammar = match choice.forced(&tools)? {
            Some(forced) => Some(Format::Grammar(
                format.grammar(&forced, parallel)?,
                GRAMMAR_ROOT,
            )),
            None => None,
        };
        Ok(Some(ToolUse {
            format,
            tools,
            grammar,
        }))
    }
}

/// The sampling constraint: a forced call's grammar, or the requested output format.
/// Both at once cannot be honoured.
pub fn constraint(
    tools: Option<&ToolUse>,
    format: Option<Format>,
) -> Result<Option<Format>, ApiError> {
    match (tools.and_then(|t| t.grammar.clone()), format) {
        (Some(_), Some(_)) => Err(ApiError::invalid(
            "a forced tool call cannot be combined with a response format",
        )),
        (grammar, format) => Ok(grammar.or(format)),
    }
}

/// OpenAI's `tool_calls`; `indexed` adds the `index` streamed deltas carry.
pub fn openai_calls(calls: &[ToolCall], indexed: bool) -> Value {
    calls
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut v = json!({
                "id": new_id("call"),
                "type": "function",
                "function": { "name": c.name, "arguments": c.arguments.to_string() },
            });
            if indexed {
                v["index"] = i.into();
            }
            v
        })
        .collect()
}

/// Ollama's `message.tool_calls`: arguments as an object.
pub fn ollama_calls(calls: &[ToolCall]) -> Value {
    calls
        .iter()
        .enumerate()
        .map(|(i, c)| {
            json!({ "function": { "index": i, "name": c.name, "arguments": c.arguments } })
        })
        .collect()
}
