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

pub struct ChatTemplate {
    jinja: Option<Environment<'static>>,
    bos: String,
    eos: String,
}

/// A rendered prompt and how to tokenize it.
pub struct Rendered {
    pub text: String,
    /// Whether the tokenizer should add the start-of-text token: not when the template
    /// already wrote it.
    pub add_special: bool,
}

impl ChatTemplate {
    pub fn from_model(model: &LlamaModel) -> Self {
        let vocab = model.vocab();
        let special =
            |t| String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned();
        let jinja = model
            .meta_val_str("tokenizer.chat_template")
            .ok()
            .and_then(|source| match jinja_env(source) {
                Ok(env) => Some(env),
                Err(e) => {
                    tracing::warn!(
                        "the model's chat template does not compile ({e}); using llama.cpp's"
                    );
                    None
                }
            });
        Self {
            jinja,
            bos: special(vocab.bos()),
            eos: special(vocab.eos()),
        }
    }

    pub fn render(&self, model: &LlamaModel, messages: &[Message]) -> Result<Rendered, ApiError> {
        let text = match self.render_jinja(messages) {
            Some(Ok(text)) => text,
            // The template rejected the conversation (`raise_exception`, e.g. roles that
            // do not alternate): the client's to fix.
            Some(Err(e)) if e.kind() == ErrorKind::InvalidOperation => {
                return Err(ApiError::invalid(format!(
                    "the model's chat template rejects these messages: {}",
                    e.detail().unwrap_or("invalid conversation")
                )));
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

    fn render_jinja(&self, messages: &[Message]) -> Option<Result<String, Error>> {
        let env = self.jinja.as_ref()?;
        Some(env.get_template("chat").and_then(|t| {
            t.render(context! {
                messages => messages,
                add_generation_prompt => true,
                bos_token => self.bos,
                eos_token => self.eos,
            })
        }))
    }
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
    env.add_template_owned("chat", source)?;
    Ok(env)
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

    fn render(source: &str, messages: &[Message]) -> Result<String, Error> {
        let env = jinja_env(source.to_owned())?;
        env.get_template("chat")?.render(context! {
            messages => messages, add_generation_prompt => true, bos_token => "<s>", eos_token => "</s>",
        })
    }

    fn msg(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
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
    fn raise_exception_is_an_invalid_operation() {
        let source = "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}";
        let err = render(source, &[msg("assistant", "x")]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidOperation);
        assert_eq!(err.detail(), Some("first must be user"));
    }
}
