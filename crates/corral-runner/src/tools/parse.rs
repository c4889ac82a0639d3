//! Tool calls out of generated text, one pure parser per model family's format.
//!
//! Text that is not a well-formed call stays content: a model that writes half a call
//! answers with what it wrote rather than an error.

use serde_json::{Map, Value};

use super::{ToolCall, ToolFormat};

/// Generated text split into what the user reads and the calls.
#[derive(Debug, Default, PartialEq)]
pub struct Parsed {
    pub content: String,
    pub calls: Vec<ToolCall>,
}

pub fn parse(format: ToolFormat, text: &str) -> Parsed {
    let parsed = match format {
        ToolFormat::Hermes => hermes(text),
        ToolFormat::Llama3 => llama3(text),
        ToolFormat::Mistral => mistral(text),
        ToolFormat::Harmony => harmony(text),
    };
    parsed.unwrap_or_else(|| Parsed {
        content: text.to_owned(),
        calls: Vec::new(),
    })
}

/// A call object: `{"name": ..., "arguments"|"parameters": {...}}`. Arguments given as a
/// JSON string (some models double-encode them) are decoded.
fn call_from_value(value: Value) -> Option<ToolCall> {
    let Value::Object(mut obj) = value else {
        return None;
    };
    // `{"type": "function", "function": {...}}`, as some fine-tunes echo OpenAI's shape.
    if let Some(Value::Object(inner)) = obj.remove("function") {
        obj = inner;
    }
    let Some(Value::String(name)) = obj.remove("name") else {
        return None;
    };
    let arguments = match obj.remove("arguments").or_else(|| obj.remove("parameters")) {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(Value::String(s)) => serde_json::from_str(&s).ok()?,
        Some(v @ Value::Object(_)) => v,
        Some(_) => return None,
    };
    arguments
        .is_object()
        .then_some(ToolCall { name, arguments })
}

/// The first JSON value at the start of `text` (after whitespace) and the rest.
fn leading_json(text: &str) -> Option<(Value, &str)> {
    let trimmed = text.trim_start();
    let mut values = serde_json::Deserializer::from_str(trimmed).into_iter::<Value>();
    let value = values.next()?.ok()?;
    Some((value, &trimmed[values.byte_offset()..]))
}

/// Hermes / Qwen 2.5 / Qwen 3: `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`,
/// any number of them, possibly after some text. The closing tag may be missing at the end
/// (a stop sequence or the length limit).
fn hermes(text: &str) -> Option<Parsed> {
    const OPEN: &str = "<tool_call>";
    const CLOSE: &str = "</tool_call>";
    let start = text.find(OPEN)?;
    let mut calls = Vec::new();
    let mut rest = &text[start..];
    while let Some(after) = rest.trim_start().strip_prefix(OPEN) {
        let (value, tail) = leading_json(after)?;
        calls.push(call_from_value(value)?);
        let tail = tail.trim_start();
        rest = tail.strip_prefix(CLOSE).unwrap_or(tail);
    }
    if !rest.trim().is_empty() {
        return None;
    }
    Some(Parsed {
        content: text[..start].trim_end().to_owned(),
        calls,
    })
}

/// Llama 3.1–3.3: `<|python_tag|>` followed by one or more JSON calls separated by `;`, or
/// the whole answer a bare JSON call `{"name": ..., "parameters": {...}}` (Llama 3.2's
/// format for custom tools).
fn llama3(text: &str) -> Option<Parsed> {
    const TAG: &str = "<|python_tag|>";
    let (content, body) = match text.find(TAG) {
        Some(i) => (text[..i].trim_end(), &text[i + TAG.len()..]),
        None => ("", text),
    };
    let mut calls = Vec::new();
    let mut rest = body;
    loop {
        let (value, tail) = leading_json(rest)?;
        calls.push(call_from_value(value)?);
        let tail = tail.trim_start();
        match tail.strip_prefix(';') {
            Some(next) if !next.trim().is_empty() => rest = next,
            _ if tail.trim_start_matches(';').trim().is_empty() => break,
            _ => return None,
        }
    }
    Some(Parsed {
        content: content.to_owned(),
        calls,
    })
}

/// Mistral: `[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]` (v3 tokenizer, Mistral
/// 7B v0.3, Nemo), or `[TOOL_CALLS]name[ARGS]{...}` repeated (v11+, Mistral Small 3.2).
fn mistral(text: &str) -> Option<Parsed> {
    const TAG: &str = "[TOOL_CALLS]";
    const ARGS: &str = "[ARGS]";
    let start = text.find(TAG)?;
    let content = text[..start].trim_end().to_owned();
    let body = text[start + TAG.len()..].trim_start();
    let mut calls = Vec::new();
    if body.starts_with('[') || body.starts_with('{') {
        let (value, tail) = leading_json(body)?;
        if !tail.trim().is_empty() {
            return None;
        }
        let list = match value {
            Value::Array(list) => list,
            single => vec![single],
        };
        for v in list {
            calls.push(call_from_value(v)?);
        }
    } else {
        let mut rest = body;
        while !rest.trim().is_empty() {
            let rest_trimmed = rest.trim_start().trim_start_matches(TAG);
            let (name, after) = rest_trimmed.split_once(ARGS)?;
            let (arguments, tail) = leading_json(after)?;
            if !arguments.is_object() || name.trim().is_empty() {
                return None;
            }
            calls.push(ToolCall {
                name: name.trim().to_owned(),
                arguments,
            });
            rest = tail;
        }
    }
    Some(Parsed { content, calls })
}

/// gpt-oss (OpenAI harmony): messages on channels; a call is a `commentary` message
/// addressed `to=functions.NAME`, whose body is the JSON arguments, ending in `<|call|>`.
/// The `final` channel is the answer; the `analysis` channel (reasoning) is left out.
fn harmony(text: &str) -> Option<Parsed> {
    const MESSAGE: &str = "<|message|>";
    let mut calls = Vec::new();
    let mut content = String::new();
    // Each message starts with `<|channel|>`; the generation prompt already wrote the first
    // `<|start|>assistant`.
    for message in text.split("<|channel|>").skip(1) {
        let (header, body) = message.split_once(MESSAGE)?;
        let body = ["<|end|>", "<|call|>", "<|return|>", "<|start|>"]
            .iter()
            .filter_map(|end| body.find(end))
            .min()
            .map_or(body, |i| &body[..i]);
        if let Some(to) = header
            .split_whitespace()
            .find_map(|w| w.strip_prefix("to="))
        {
            let name = to.strip_prefix("functions.").unwrap_or(to);
            let (arguments, tail) = leading_json(body)?;
            if !arguments.is_object() || !tail.trim().is_empty() {
                return None;
            }
            calls.push(ToolCall {
                name: name.to_owned(),
                arguments,
            });
        } else if header.trim_start().starts_with("final") {
            content.push_str(body);
        }
    }
    if calls.is_empty() && content.is_empty() {
        return None;
    }
    Some(Parsed { content, calls })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn call(name: &str, arguments: Value) -> ToolCall {
        ToolCall {
            name: name.into(),
            arguments,
        }
    }

    #[test]
    fn hermes_qwen25_parallel_calls() {
        // Qwen2.5's function-calling guide, two calls in one answer.
        let text = "<tool_call>\n{\"name\": \"get_current_temperature\", \"arguments\": {\"location\": \"San Francisco, CA, USA\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_temperature_date\", \"arguments\": {\"location\": \"San Francisco, CA, USA\", \"date\": \"2024-10-01\"}}\n</tool_call>";
        let p = parse(ToolFormat::Hermes, text);
        assert_eq!(p.content, "");
        assert_eq!(
            p.calls,
            vec![
                call(
                    "get_current_temperature",
                    json!({"location": "San Francisco, CA, USA"})
                ),
                call(
                    "get_temperature_date",
                    json!({"location": "San Francisco, CA, USA", "date": "2024-10-01"})
                ),
            ]
        );
    }

    #[test]
    fn hermes_text_before_the_call_and_a_missing_closing_tag() {
        let text = "Let me check.\n<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1}}";
        let p = parse(ToolFormat::Hermes, text);
        assert_eq!(p.content, "Let me check.");
        assert_eq!(p.calls, vec![call("f", json!({"x": 1}))]);
    }

    #[test]
    fn hermes_broken_call_stays_content() {
        for text in [
            "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": ",
            "<tool_call>{\"arguments\": {}}</tool_call>",
            "<tool_call>{\"name\": \"f\"}</tool_call> and more text",
            "no call at all",
        ] {
            let p = parse(ToolFormat::Hermes, text);
            assert_eq!(p.content, text);
            assert!(p.calls.is_empty(), "{text}");
        }
    }

    #[test]
    fn hermes_arguments_as_a_json_string() {
        let text = "<tool_call>{\"name\": \"f\", \"arguments\": \"{\\\"a\\\": true}\"}</tool_call>";
        assert_eq!(
            parse(ToolFormat::Hermes, text).calls,
            vec![call("f", json!({"a": true}))]
        );
    }

    #[test]
    fn llama3_bare_json() {
        // Llama 3.2's model card, JSON-based tool calling.
        let text = "{\"name\": \"get_current_conditions\", \"parameters\": {\"location\": \"San Francisco, CA\", \"unit\": \"Fahrenheit\"}}";
        let p = parse(ToolFormat::Llama3, text);
        assert_eq!(p.content, "");
        assert_eq!(
            p.calls,
            vec![call(
                "get_current_conditions",
                json!({"location": "San Francisco, CA", "unit": "Fahrenheit"})
            )]
        );
    }

    #[test]
    fn llama3_python_tag_and_several_calls() {
        let text = "<|python_tag|>{\"type\": \"function\", \"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}; {\"name\": \"get_time\", \"parameters\": {}}";
        let p = parse(ToolFormat::Llama3, text);
        assert_eq!(
            p.calls,
            vec![
                call("get_weather", json!({"city": "Paris"})),
                call("get_time", json!({}))
            ]
        );
    }

    #[test]
    fn llama3_plain_answers_and_builtin_tools_stay_content() {
        for text in [
            "The capital of France is Paris.",
            "<|python_tag|>brave_search.call(query=\"weather in SF\")",
            "{\"answer\": 42}",
        ] {
            let p = parse(ToolFormat::Llama3, text);
            assert_eq!(p.content, text);
            assert!(p.calls.is_empty());
        }
    }

    #[test]
    fn mistral_v3_list() {
        // Mistral 7B Instruct v0.3's model card.
        let text = "[TOOL_CALLS] [{\"name\": \"get_current_weather\", \"arguments\": {\"location\": \"Paris, France\", \"format\": \"celsius\"}}]";
        let p = parse(ToolFormat::Mistral, text);
        assert_eq!(
            p.calls,
            vec![call(
                "get_current_weather",
                json!({"location": "Paris, France", "format": "celsius"})
            )]
        );
    }

    #[test]
    fn mistral_v11_name_and_args() {
        let text = "[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Paris\"}[TOOL_CALLS]get_time[ARGS]{}";
        let p = parse(ToolFormat::Mistral, text);
        assert_eq!(
            p.calls,
            vec![
                call("get_weather", json!({"city": "Paris"})),
                call("get_time", json!({}))
            ]
        );
    }

    #[test]
    fn harmony_call_after_analysis() {
        // The harmony format guide: reasoning, then a call on the commentary channel.
        let text = "<|channel|>analysis<|message|>Need to use function get_current_weather.<|end|><|start|>assistant<|channel|>commentary to=functions.get_current_weather <|constrain|>json<|message|>{\"location\":\"San Francisco\"}<|call|>";
        let p = parse(ToolFormat::Harmony, text);
        assert_eq!(p.content, "");
        assert_eq!(
            p.calls,
            vec![call(
                "get_current_weather",
                json!({"location": "San Francisco"})
            )]
        );
    }

    #[test]
    fn harmony_final_answer() {
        let text = "<|channel|>analysis<|message|>User asks a simple question.<|end|><|start|>assistant<|channel|>final<|message|>Hello there!<|return|>";
        let p = parse(ToolFormat::Harmony, text);
        assert_eq!(p.content, "Hello there!");
        assert!(p.calls.is_empty());
    }
}
