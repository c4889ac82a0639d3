//! A chat answer split into reasoning, content and tool calls, piece by piece as it
//! streams or all at once: reasoning first (`<think>`), then calls out of the rest.

use crate::reasoning::{Split, ThinkSplitter};
use crate::tools::stream::CallSplitter;
use crate::tools::{ToolCall, ToolFormat};

pub struct Answer {
    think: Option<ThinkSplitter>,
    calls: Option<CallSplitter>,
}

#[derive(Debug, Default, PartialEq)]
pub struct Final {
    pub thinking: String,
    pub content: String,
    pub calls: Vec<ToolCall>,
}

impl Answer {
    /// `think`: split reasoning out, starting inside the block or not. `tools`: parse
    /// calls written in that format.
    pub fn new(think: Option<bool>, tools: Option<ToolFormat>) -> Self {
        Self {
            think: think.map(ThinkSplitter::new),
            calls: tools.map(CallSplitter::new),
        }
    }

    /// What of the next piece can be sent now.
    pub fn push(&mut self, text: &str) -> Split {
        let mut split = match self.think.as_mut() {
            Some(t) => t.push(text),
            None => Split {
                thinking: String::new(),
                content: text.to_owned(),
            },
        };
        if let Some(c) = self.calls.as_mut() {
            split.content = c.push(&split.content);
        }
        split
    }

    /// The rest, once the answer is complete.
    pub fn finish(mut self) -> Final {
        let last = self
            .think
            .take()
            .map(ThinkSplitter::finish)
            .unwrap_or_default();
        let mut content = last.content;
        let mut calls = Vec::new();
        if let Some(mut c) = self.calls.take() {
            let mut held = c.push(&content);
            let parsed = c.finish();
            held.push_str(&parsed.content);
            content = held;
            calls = parsed.calls;
        }
        Final {
            thinking: last.thinking,
            content,
            calls,
        }
    }

    /// A whole answer at once (non-streaming requests).
    pub fn split(mut self, text: &str) -> Final {
        let first = self.push(text);
        let mut rest = self.finish();
        rest.thinking.insert_str(0, &first.thinking);
        rest.content.insert_str(0, &first.content);
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reasoning_then_a_call() {
        let text = "<think>\nI should look it up.\n</think>\n\n<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}}\n</tool_call>";
        let whole = Answer::new(Some(false), Some(ToolFormat::Hermes)).split(text);
        assert_eq!(whole.thinking, "I should look it up.");
        assert_eq!(whole.content, "");
        assert_eq!(
            whole.calls,
            vec![ToolCall {
                name: "f".into(),
                arguments: json!({"a": 1})
            }]
        );
        // Streamed in small pieces: the same result.
        let mut a = Answer::new(Some(false), Some(ToolFormat::Hermes));
        let mut streamed = Final::default();
        for piece in text.as_bytes().chunks(3) {
            let s = a.push(std::str::from_utf8(piece).unwrap());
            streamed.thinking.push_str(&s.thinking);
            streamed.content.push_str(&s.content);
        }
        let rest = a.finish();
        streamed.thinking.push_str(&rest.thinking);
        streamed.content.push_str(&rest.content);
        streamed.calls = rest.calls;
        assert_eq!(streamed, whole);
    }

    #[test]
    fn plain_answers_pass_through() {
        let f = Answer::new(None, None).split("Paris <think>");
        assert_eq!(f.content, "Paris <think>");
        assert!(f.thinking.is_empty() && f.calls.is_empty());
    }
}

/// What a request asks of reasoning, resolved against the model's template.
#[derive(Debug, Default, PartialEq)]
pub struct Think {
    /// For the template's `enable_thinking`.
    pub enable: Option<bool>,
    /// For the template's `reasoning_effort`.
    pub effort: Option<String>,
    /// Split the reasoning out of the answer.
    pub split: bool,
}

impl Think {
    /// Ollama's `think`: true, false, or "low"/"medium"/"high". `thinks`: whether the
    /// template reasons; asking a model that does not for reasoning is Ollama's 400.
    pub fn from_ollama(
        think: Option<&serde_json::Value>,
        thinks: bool,
        model: &str,
    ) -> Result<Self, crate::error::ApiError> {
        use serde_json::Value;
        let (enable, effort) = match think {
            None | Some(Value::Null) => (None, None),
            Some(Value::Bool(on)) => (Some(*on), None),
            Some(Value::String(level)) if ["low", "medium", "high"].contains(&level.as_str()) => {
                (Some(true), Some(level.clone()))
            }
            Some(other) => {
                return Err(crate::error::ApiError::invalid(format!(
                    "invalid think value {other}: expected true, false, \"low\", \"medium\" or \"high\""
                )));
            }
        };
        if enable == Some(true) && !thinks {
            return Err(crate::error::ApiError::invalid(format!(
                "{model} does not support thinking"
            )));
        }
        Ok(Self {
            enable,
            effort,
            split: thinks && enable != Some(false),
        })
    }

    /// OpenAI's `reasoning_effort`; "none" turns reasoning off, as in Ollama's OpenAI layer.
    pub fn from_openai(
        effort: Option<&str>,
        thinks: bool,
        model: &str,
    ) -> Result<Self, crate::error::ApiError> {
        let think = match effort {
            None => None,
            Some("none") => Some(serde_json::Value::Bool(false)),
            Some(level) => Some(serde_json::Value::from(level)),
        };
        Self::from_ollama(think.as_ref(), thinks, model)
    }
}

#[cfg(test)]
mod think_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn think_values() {
        let t = Think::from_ollama(Some(&json!(false)), true, "m").unwrap();
        assert_eq!((t.enable, t.split), (Some(false), false));
        // false also reaches a template that does not reason: harmless, and what Ollama does.
        assert_eq!(
            Think::from_ollama(Some(&json!(false)), false, "m")
                .unwrap()
                .enable,
            Some(false)
        );
        let t = Think::from_ollama(Some(&json!("high")), true, "m").unwrap();
        assert_eq!(
            (t.enable, t.effort.as_deref(), t.split),
            (Some(true), Some("high"), true)
        );
        assert!(Think::from_ollama(None, true, "m").unwrap().split);
        assert!(!Think::from_ollama(None, false, "m").unwrap().split);
        let err = Think::from_ollama(Some(&json!(true)), false, "m").unwrap_err();
        assert!(
            err.to_string().contains("does not support thinking"),
            "{err}"
        );
        assert!(Think::from_ollama(Some(&json!("max")), true, "m").is_err());
        assert!(Think::from_ollama(Some(&json!(3)), true, "m").is_err());
        assert_eq!(
            Think::from_openai(Some("none"), true, "m").unwrap().enable,
            Some(false)
        );
        assert_eq!(
            Think::from_openai(Some("low"), true, "m")
                .unwrap()
                .effort
                .as_deref(),
            Some("low")
        );
    }
}
