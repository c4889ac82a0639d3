//! Chat messages to prompt text with the model's own chat template.
//!
//! GGUF files carry the Jinja template of the original model (`tokenizer.chat_template`);
//! it is rendered with MiniJinja plus Python string methods, as Hugging Face
//! `transformers` and `llama-server --jinja` do. If a model has no template, or one this
//! cannot render, llama.cpp's built-in formats take over (they recognise the template
//! family, ChatML for instance).

use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use minijinja::{Environment, Error, ErrorKind, context};

use crate::error::ApiError;
use crate::prompt::Message;
use crate::tools::ToolFormat;

pub struct ChatTemplate {
    jinja: Option<Environment<'static>>,
    /// The Jinja source: the model's, or the one given with `--chat-template`.
    pub source: String,
    /// How the model writes tool calls; None if the template cannot render tools.
    pub tool_format: Option<ToolFormat>,
    /// Whether the template reasons (`<think>`, `enable_thinking`).
    pub thinks: bool,
    bos: String,
    eos: String,
}

/// What a request adds to the template's context besides the messages.
#[derive(Default)]
pub struct Extras<'a> {
    /// `tools` as `transformers` passes them (the OpenAI tool objects).
    pub tools: Option<&'a [serde_json::Value]>,
    /// `enable_thinking` (Qwen 3 and others): Some(false) turns reasoning off.
    pub enable_thinking: Option<bool>,
    /// `reasoning_effort` (gpt-oss): "low", "medium" or "high".
    pub reasoning_effort: Option<&'a str>,
}

/// A rendered prompt and how to tokenize it.
pub struct Rendered {
    pub text: String,
    /// Whether the tokenizer should add the start-of-text token: not when the template
    /// already wrote it.
    pub add_special: bool,
}

impl ChatTemplate {
    /// The model's template, or `custom` (the text of `--chat-template`) instead.
    pub fn from_model(model: &LlamaModel, custom: Option<String>) -> Self {
        let vocab = model.vocab();
        let special =
            |t| String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned();
        let source = custom.or_else(|| model.meta_val_str("tokenizer.chat_template").ok());
        let jinja = source.clone().and_then(|source| match jinja_env(source) {
            Ok(env) => Some(env),
            Err(e) => {
                tracing::warn!("the chat template does not compile ({e}); using llama.cpp's");
                None
            }
        });
        let source = source.unwrap_or_default();
        Self {
            tool_format: jinja
                .as_ref()
                .and_then(|_| ToolFormat::of_template(&source)),
            thinks: jinja.is_some() && crate::reasoning::template_thinks(&source),
            source,
            jinja,
            bos: special(vocab.bos()),
            eos: special(vocab.eos()),
        }
    }

    pub fn render(
        &self,
        model: &LlamaModel,
        messages: &[Message],
        extras: &Extras<'_>,
    ) -> Result<Rendered, ApiError> {
        let text = match self.render_jinja(messages, extras) {
            Some(Ok(text)) => text,
            // The template rejected the conversation (`raise_exception`, e.g. roles that
            // do not alternate): the client's to fix.
            Some(Err(e)) if e.kind() == ErrorKind::InvalidOperation => {
                return Err(ApiError::invalid(format!(
                    "the model's chat template rejects these messages: {}",
                    e.detail().unwrap_or("invalid conversation")
                )));
            }
            // llama.cpp's formats know no tools: an answer without them would be wrong.
            Some(Err(e)) if extras.tools.is_some() => {
                return Err(ApiError::Engine(format!("the chat template failed: {e}")));
            }
            Some(Err(e)) => {
                tracing::warn!("chat template failed ({e}); using llama.cpp's");
                render_builtin(model, messages)?
            }
            None => render_builtin(model, messages)?,
        };
        let add_special = self.bos.is_empty() || !text.starts_with(&self.bos);
        Ok(Rendered { text, add_special })
    }

    fn render_jinja(
        &self,
        messages: &[Message],
        extras: &Extras<'_>,
    ) -> Option<Result<String, Error>> {
        let env = self.jinja.as_ref()?;
        Some(
            env.get_template("chat")
                .and_then(|t| t.render(context(messages, extras, &self.bos, &self.eos))),
        )
    }
}

/// The template's variables. Those a request does not set stay undefined, so templates'
/// `is defined` checks and defaults work as with `transformers`.
fn context(messages: &[Message], extras: &Extras<'_>, bos: &str, eos: &str) -> minijinja::Value {
    let base = context! {
        messages => messages,
        add_generation_prompt => true,
        bos_token => bos,
        eos_token => eos,
    };
    let mut more = std::collections::BTreeMap::new();
    if let Some(tools) = extras.tools {
        more.insert("tools", minijinja::Value::from_serialize(tools));
    }
    if let Some(on) = extras.enable_thinking {
        more.insert("enable_thinking", on.into());
    }
    if let Some(effort) = extras.reasoning_effort {
        more.insert("reasoning_effort", effort.into());
    }
    context! { ..base, ..minijinja::Value::from(more) }
}

fn jinja_env(source: String) -> Result<Environment<'static>, Error> {
    let mut env = Environment::new();
    minijinja_contrib::add_to_environment(&mut env);
    // Templates are written for Python's Jinja: `.strip()`, `.startswith()`, ...
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |message: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, message))
        },
    );
    env.add_filter("tojson", tojson);
    env.add_template_owned("chat", source)?;
    Ok(env)
}

/// Python's `tojson` as `transformers` defines it for templates: `json.dumps` with its
/// separators (`", "`, `": "`), or `indent`; not HTML-escaped. (Keys come sorted, as
/// MiniJinja keeps its maps.) Tool definitions and call
/// arguments reach the model in the very text the model was trained on.
fn tojson(
    value: minijinja::Value,
    kwargs: minijinja::value::Kwargs,
) -> Result<minijinja::Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let mut out = Vec::new();
    let written = match indent {
        Some(n) => {
            let pad = vec![b' '; n];
            let formatter = serde_json::ser::PrettyFormatter::with_indent(&pad);
            serde::Serialize::serialize(
                &value,
                &mut serde_json::Serializer::with_formatter(&mut out, formatter),
            )
        }
        None => serde::Serialize::serialize(
            &value,
            &mut serde_json::Serializer::with_formatter(&mut out, PythonJson),
        ),
    };
    written.map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    Ok(minijinja::Value::from_safe_string(
        String::from_utf8_lossy(&out).into_owned(),
    ))
}

/// `json.dumps`' default layout: a space after `,` and `:`.
struct PythonJson;

impl serde_json::ser::Formatter for PythonJson {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

/// llama.cpp's own rendering of the common template families.
fn render_builtin(model: &LlamaModel, messages: &[Message]) -> Result<String, ApiError> {
    let template = match model.chat_template(None) {
        Ok(t) => t,
        // What llama.cpp's server does for a model without a template.
        Err(_) => LlamaChatTemplate::new("chatml")
            .map_err(|e| ApiError::Engine(format!("chat template: {e}")))?,
    };
    let chat = messages
        .iter()
        .map(|m| {
            LlamaChatMessage::new(m.role.clone(), m.content.clone())
                .map_err(|_| ApiError::invalid("message content must not contain NUL characters"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    model
        .apply_chat_template(&template, &chat, true)
        .map_err(|e| ApiError::Engine(format!("cannot apply the chat template: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render_with(
        source: &str,
        messages: &[Message],
        extras: &Extras<'_>,
    ) -> Result<String, Error> {
        let env = jinja_env(source.to_owned())?;
        env.get_template("chat")?
            .render(context(messages, extras, "<s>", "</s>"))
    }

    fn render(source: &str, messages: &[Message]) -> Result<String, Error> {
        render_with(source, messages, &Extras::default())
    }

    fn msg(role: &str, content: &str) -> Message {
        Message::new(role, content)
    }

    /// The Qwen-2.5-style tools template the compat tests give SmolLM2.
    const TOOLS_TEMPLATE: &str = include_str!("../../../tests/compat/chatml-tools.jinja");

    #[test]
    fn tools_and_tool_results_reach_the_template() {
        let tools = [
            serde_json::json!({"type": "function", "function": {"name": "get_weather", "parameters": {}}}),
        ];
        let calls = serde_json::from_value(serde_json::json!([{"id": "call_1", "function": {
            "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"
        }}]))
        .unwrap();
        let calls = crate::prompt::history_calls(Some(calls)).unwrap();
        let messages = [
            msg("user", "Weather in Paris?"),
            Message {
                tool_calls: calls,
                ..msg("assistant", "")
            },
            Message {
                tool_call_id: Some("call_1".into()),
                ..msg("tool", "18 C")
            },
        ];
        let extras = Extras {
            tools: Some(&tools),
            ..Extras::default()
        };
        let text = render_with(TOOLS_TEMPLATE, &messages, &extras).unwrap();
        // Python's json.dumps layout (MiniJinja keeps maps sorted by key).
        assert!(
            text.contains("<tools>\n{\"function\": {\"name\": \"get_weather\", \"parameters\": {}}, \"type\": \"function\"}\n</tools>"),
            "{text}"
        );
        assert!(
            text.contains("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"),
            "{text}"
        );
        assert!(
            text.contains("<tool_response>\n18 C\n</tool_response>"),
            "{text}"
        );
        assert!(text.ends_with("<|im_start|>assistant\n"), "{text}");
        assert_eq!(
            ToolFormat::of_template(TOOLS_TEMPLATE),
            Some(ToolFormat::Hermes)
        );
        // Without tools the same template renders a plain chat.
        let plain = render(TOOLS_TEMPLATE, &[msg("user", "hi")]).unwrap();
        assert!(!plain.contains("<tools>"), "{plain}");
    }

    #[test]
    fn think_false_reaches_the_template() {
        // Qwen 3's way of turning thinking off.
        let source = "{{ messages[0].content }}{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>{% endif %}\
                      {% if reasoning_effort is defined %}[{{ reasoning_effort }}]{% endif %}";
        let m = [msg("user", "q")];
        assert_eq!(render(source, &m).unwrap(), "q");
        let off = Extras {
            enable_thinking: Some(false),
            ..Extras::default()
        };
        assert_eq!(
            render_with(source, &m, &off).unwrap(),
            "q<think>\n\n</think>"
        );
        let high = Extras {
            enable_thinking: Some(true),
            reasoning_effort: Some("high"),
            ..Extras::default()
        };
        assert_eq!(render_with(source, &m, &high).unwrap(), "q[high]");
    }

    #[test]
    fn renders_a_chatml_template_with_python_methods() {
        let source = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content.strip() }}<|im_end|>\n{% endfor %}\
                      {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
        let text = render(source, &[msg("user", "  hi  ")]).unwrap();
        assert_eq!(
            text,
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn tojson_writes_like_python() {
        let source = "{{ x | tojson }}|{{ x | tojson(indent=2) }}";
        let env = jinja_env(source.to_owned()).unwrap();
        let x = serde_json::json!({"b": [1, "<a>"], "a": null});
        let text = env
            .get_template("chat")
            .unwrap()
            .render(context! { x })
            .unwrap();
        assert_eq!(
            text,
            "{\"a\": null, \"b\": [1, \"<a>\"]}|{\n  \"a\": null,\n  \"b\": [\n    1,\n    \"<a>\"\n  ]\n}"
        );
    }

    #[test]
    fn raise_exception_is_an_invalid_operation() {
        let source = "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}";
        let err = render(source, &[msg("assistant", "x")]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidOperation);
        assert_eq!(err.detail(), Some("first must be user"));
    }
}
