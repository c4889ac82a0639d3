//! Tool calling: which call format a model writes, the grammar that forces a call, and
//! the parsing of calls out of the answer (see [`parse`] and [`stream`]).

pub mod parse;
pub mod stream;

use serde_json::{Value, json};

use crate::error::ApiError;

/// One call the model made.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub name: String,
    /// Always a JSON object.
    pub arguments: Value,
}

/// How a model family writes its calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    /// `<tool_call>{"name", "arguments"}</tool_call>`: Hermes, Qwen 2.5/3, and ChatML
    /// models given a Qwen-style template.
    Hermes,
    /// `<|python_tag|>` or bare `{"name", "parameters"}`: Llama 3.x.
    Llama3,
    /// `[TOOL_CALLS]`: Mistral.
    Mistral,
    /// Channels and `to=functions.NAME`: gpt-oss.
    Harmony,
}

impl ToolFormat {
    /// The format a chat template asks for, or None if the template cannot render tools
    /// (it never mentions them). Recognised from the markers the template writes, as
    /// llama.cpp's chat parser does.
    pub fn of_template(source: &str) -> Option<Self> {
        if !source.contains("tools") {
            return None;
        }
        Some(if source.contains("<|channel|>") {
            Self::Harmony
        } else if source.contains("[TOOL_CALLS]") {
            Self::Mistral
        } else if source.contains("<|python_tag|>") || source.contains("ipython") {
            Self::Llama3
        } else {
            Self::Hermes
        })
    }

    /// Text that starts a call: from there on the answer is held back while streaming.
    pub fn markers(self) -> &'static [&'static str] {
        match self {
            Self::Hermes => &["<tool_call>"],
            Self::Llama3 => &["<|python_tag|>"],
            Self::Mistral => &["[TOOL_CALLS]"],
            Self::Harmony => &["<|channel|>"],
        }
    }

    /// Whether an answer that starts with a JSON object may be a call (Llama's bare JSON).
    pub fn bare_json(self) -> bool {
        self == Self::Llama3
    }

    /// GBNF that admits exactly the calls `tools` allow, written as this format writes
    /// them (root rule [`GRAMMAR_ROOT`]). `parallel` allows more than one call.
    pub fn grammar(self, tools: &[Value], parallel: bool) -> Result<String, ApiError> {
        let (args_key, open, close, sep) = match self {
            Self::Hermes => ("arguments", "<tool_call>\n", "\n</tool_call>", "\n"),
            Self::Llama3 => ("parameters", "", "", "; "),
            Self::Mistral => ("arguments", "[TOOL_CALLS][", "]", ", "),
            Self::Harmony => {
                return Err(ApiError::invalid(
                    "tool_choice 'required' or a named function is not supported for this \
                     model's call format (harmony); use 'auto'",
                ));
            }
        };
        let variants = tools
            .iter()
            .map(|tool| {
                let f = function(tool)?;
                let params = f
                    .get("parameters")
                    .cloned()
                    .unwrap_or(json!({"type": "object"}));
                Ok(json!({
                    "type": "object",
                    "properties": { "name": { "const": f["name"] }, args_key: params },
                    "required": ["name", args_key],
                    "additionalProperties": false,
                }))
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        let schema = json!({ "anyOf": variants });
        let calls = llama_cpp_2::json_schema_to_grammar(&schema.to_string()).map_err(|e| {
            ApiError::invalid(format!(
                "cannot build a grammar from the tools' parameters: {e}"
            ))
        })?;
        let literal = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!(" {}", gbnf_literal(s))
            }
        };
        let repeat = if parallel {
            format!(" ({} root)*", literal(sep).trim_start())
        } else {
            String::new()
        };
        // The converter names its top rule `root`; the call wraps it.
        Ok(format!(
            "{calls}\n{GRAMMAR_ROOT} ::={} root{repeat}{}\n",
            literal(open),
            literal(close)
        ))
    }
}

/// Root rule of [`ToolFormat::grammar`].
pub const GRAMMAR_ROOT: &str = "tool-calls";

fn gbnf_literal(s: &str) -> String {
    let escaped = s
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    format!("\"{escaped}\"")
}

/// The `function` object of an OpenAI/Ollama tool: `{"type": "function", "function":
/// {"name", "description", "parameters"}}`.
pub fn function(tool: &Value) -> Result<&Value, ApiError> {
    let f = tool
        .get("function")
        .filter(|f| f.get("name").is_some_and(Value::is_string))
        .ok_or_else(|| {
            ApiError::invalid(
                "each tool must be {\"type\": \"function\", \"function\": {\"name\": ...}}",
            )
        })?;
    if tool.get("type").is_some_and(|t| t != "function") {
        return Err(ApiError::invalid(
            "only tools of type 'function' are supported",
        ));
    }
    Ok(f)
}

/// OpenAI's `tool_choice`.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    Auto,
    None,
    Required,
    Named(String),
}

impl ToolChoice {
    pub fn from_openai(choice: Option<&Value>) -> Result<Self, ApiError> {
        match choice {
            None | Some(Value::Null) => Ok(Self::Auto),
            Some(Value::String(s)) => match s.as_str() {
                "auto" => Ok(Self::Auto),
                "none" => Ok(Self::None),
                "required" => Ok(Self::Required),
                other => Err(ApiError::invalid(format!(
                    "invalid tool_choice '{other}': expected none, auto, required or a function"
                ))),
            },
            Some(v) => v
                .pointer("/function/name")
                .and_then(Value::as_str)
                .map(|n| Self::Named(n.to_owned()))
                .ok_or_else(|| {
                    ApiError::invalid(
                        "tool_choice must be {\"type\": \"function\", \"function\": {\"name\": ...}}",
                    )
                }),
        }
    }

    /// The tools the grammar must admit: none for auto/none (no grammar), all of them for
    /// required, the named one (which must exist).
    pub fn forced(&self, tools: &[Value]) -> Result<Option<Vec<Value>>, ApiError> {
        match self {
            Self::Auto | Self::None => Ok(None),
            Self::Required => Ok(Some(tools.to_vec())),
            Self::Named(name) => {
                let tool = tools
                    .iter()
                    .find(|t| function(t).is_ok_and(|f| f["name"] == name.as_str()))
                    .ok_or_else(|| {
                        ApiError::invalid(format!(
                            "tool_choice names '{name}', which is not in tools"
                        ))
                    })?;
                Ok(Some(vec![tool.clone()]))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather_tool() -> Value {
        json!({"type": "function", "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
        }})
    }

    #[test]
    fn formats_from_templates() {
        assert_eq!(ToolFormat::of_template("{{ messages }}"), None);
        assert_eq!(
            ToolFormat::of_template("{% if tools %}<tool_call>{% endif %}"),
            Some(ToolFormat::Hermes)
        );
        assert_eq!(
            ToolFormat::of_template("{% if tools %}<|start_header_id|>ipython{% endif %}"),
            Some(ToolFormat::Llama3)
        );
        assert_eq!(
            ToolFormat::of_template("{% if tools %}[AVAILABLE_TOOLS][TOOL_CALLS]{% endif %}"),
            Some(ToolFormat::Mistral)
        );
        assert_eq!(
            ToolFormat::of_template("{% if tools %}<|channel|>commentary{% endif %}"),
            Some(ToolFormat::Harmony)
        );
    }

    #[test]
    fn tool_choice() {
        assert_eq!(ToolChoice::from_openai(None).unwrap(), ToolChoice::Auto);
        assert_eq!(
            ToolChoice::from_openai(Some(&json!("required"))).unwrap(),
            ToolChoice::Required
        );
        let named = json!({"type": "function", "function": {"name": "get_weather"}});
        let choice = ToolChoice::from_openai(Some(&named)).unwrap();
        assert_eq!(choice, ToolChoice::Named("get_weather".into()));
        let tools = [
            json!({"type": "function", "function": {"name": "other"}}),
            weather_tool(),
        ];
        assert_eq!(choice.forced(&tools).unwrap(), Some(vec![weather_tool()]));
        assert!(ToolChoice::Named("nope".into()).forced(&tools).is_err());
        assert_eq!(ToolChoice::None.forced(&tools).unwrap(), None);
        assert!(ToolChoice::from_openai(Some(&json!("always"))).is_err());
        assert!(ToolChoice::from_openai(Some(&json!({"type": "function"}))).is_err());
    }

    #[test]
    fn grammar_wraps_the_schema_converter_root() {
        let g = ToolFormat::Hermes
            .grammar(&[weather_tool()], false)
            .unwrap();
        assert!(g.contains("root ::="), "{g}");
        assert!(
            g.contains("tool-calls ::= \"<tool_call>\\n\" root \"\\n</tool_call>\""),
            "{g}"
        );
        assert!(g.contains("get_weather"), "{g}");
        let g = ToolFormat::Llama3.grammar(&[weather_tool()], true).unwrap();
        assert!(g.contains("tool-calls ::= root (\"; \" root)*\n"), "{g}");
        assert!(g.contains("parameters"), "{g}");
        assert!(
            ToolFormat::Harmony
                .grammar(&[weather_tool()], false)
                .is_err()
        );
    }

    #[test]
    fn malformed_tools_are_refused() {
        assert!(function(&json!({"type": "function"})).is_err());
        assert!(function(&json!({"type": "retrieval", "function": {"name": "x"}})).is_err());
        assert!(ToolFormat::Hermes.grammar(&[json!({})], false).is_err());
    }
}
