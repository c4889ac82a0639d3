//! OpenAI's API (`/v1/...`), answering in OpenAI's shapes, errors included.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Response;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};

use super::answer::{Answer, Think};
use super::ollama::shorten;
use super::stream::{data, event_body, sse, whole_answer};
use super::tools::{constraint, openai_calls};
use super::{SharedState, new_id};
use crate::chat_template::Extras;
use crate::embed::normalize;
use crate::engine::{Event, Summary};
use crate::error::{ApiError, OpenAiError, parse_json};
use crate::options::{OneOrMany, max_tokens};
use crate::prompt::{self, Message};
use crate::reasoning::starts_inside;
use crate::sampling::{Format, GenerationSettings, SamplingParams, seed_from_i64};
use crate::tools::ToolChoice;

type Result<T> = std::result::Result<T, OpenAiError>;

const FINGERPRINT: &str = "fp_corral_runner";

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn model_object(state: &SharedState) -> Value {
    json!({
        "id": state.model.name,
        "object": "model",
        "created": state.model.modified_at.timestamp(),
        "owned_by": "library",
    })
}

pub async fn models(State(state): State<SharedState>) -> Json<Value> {
    Json(json!({ "object": "list", "data": [model_object(&state)] }))
}

pub async fn model(
    State(state): State<SharedState>,
    Path(model): Path<String>,
) -> Result<Json<Value>> {
    state.check_model(&model)?;
    Ok(Json(model_object(&state)))
}

/// Sampling fields common to chat and text completions.
#[derive(Deserialize, Default)]
#[serde(default)]
struct SamplingFields {
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<i64>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    stop: Option<OneOrMany>,
    frequency_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    n: Option<u32>,
}

impl SamplingFields {
    /// OpenAI's defaults (temperature 1, top_p 1) over Ollama's, as Ollama's own
    /// OpenAI layer does.
    fn into_settings(
        self,
        format: Option<Format>,
        slot_ctx: u32,
    ) -> std::result::Result<GenerationSettings, ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid("only n = 1 is supported"));
        }
        let penalty_ok = |p: Option<f32>| p.is_none_or(|p| (-2.0..=2.0).contains(&p));
        if !penalty_ok(self.frequency_penalty) || !penalty_ok(self.presence_penalty) {
            return Err(ApiError::invalid(
                "frequency_penalty and presence_penalty must be in [-2, 2]",
            ));
        }
        if self.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
            return Err(ApiError::invalid("temperature must be in [0, 2]"));
        }
        let sampling = SamplingParams {
            temperature: self.temperature.unwrap_or(1.0),
            top_p: self.top_p.unwrap_or(1.0),
            seed: seed_from_i64(self.seed),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            format,
            ..SamplingParams::default()
        };
        sampling.validate()?;
        Ok(GenerationSettings {
            sampling,
            max_tokens: max_tokens(self.max_completion_tokens.or(self.max_tokens)),
            stop: self.stop.map(OneOrMany::into_vec).unwrap_or_default(),
            num_ctx: slot_ctx,
        })
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchema },
}

#[derive(Deserialize)]
struct JsonSchema {
    #[serde(default)]
    schema: Option<Value>,
}

impl ResponseFormat {
    fn into_format(self) -> Option<Format> {
        match self {
            Self::Text => None,
            Self::JsonObject => Some(Format::Json),
            Self::JsonSchema { json_schema } => {
                Some(json_schema.schema.map_or(Format::Json, Format::Schema))
            }
        }
    }
}

/// Message content: a string, or a list of parts of which only text is supported.
#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: String,
}

impl Content {
    fn into_text(self) -> std::result::Result<String, ApiError> {
        match self {
            Self::Text(t) => Ok(t),
            Self::Parts(parts) => parts
                .into_iter()
                .map(|p| {
                    if p.kind == "text" {
                        Ok(p.text)
                    } else {
                        Err(ApiError::invalid(format!(
                            "content part type '{}' is not supported by this model",
                            p.kind
                        )))
                    }
                })
                .collect(),
        }
    }
}

#[derive(Deserialize)]
struct ChatMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
    #[serde(default)]
    tool_calls: Option<Vec<prompt::CallIn>>,
    tool_call_id: Option<String>,
    name: Option<String>,
}

impl ChatMessage {
    fn into_message(self) -> std::result::Result<Message, ApiError> {
        let tool_calls = prompt::history_calls(self.tool_calls)?;
        Ok(Message {
            role: prompt::normalize_role(&self.role)?.to_owned(),
            content: self
                .content
                .map(Content::into_text)
                .transpose()?
                .unwrap_or_default(),
            tool_calls,
            tool_call_id: self.tool_call_id,
            name: self.name,
        })
    }
}

#[derive(Deserialize)]
struct ChatCompletionRequest {
    #[serde(default)]
    model: String,
    #[serde(default)]
    messages: Vec<ChatMessage>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: StreamOptions,
    response_format: Option<ResponseFormat>,
    #[serde(default)]
    tools: Vec<Value>,
    tool_choice: Option<Value>,
    /// OpenAI's default is true; llama-server's false. One call unless asked, so a forced
    /// call from a small model cannot run on into a list of them.
    #[serde(default)]
    parallel_tool_calls: bool,
    reasoning_effort: Option<String>,
    #[serde(flatten)]
    sampling: SamplingFields,
}

fn usage(s: &Summary) -> Value {
    json!({
        "prompt_tokens": s.prompt_tokens,
        "completion_tokens": s.generated_tokens,
        "total_tokens": s.prompt_tokens + s.generated_tokens,
        "prompt_tokens_details": { "cached_tokens": s.cached_tokens },
    })
}

pub async fn chat_completions(State(state): State<SharedState>, body: Bytes) -> Result<Response> {
    let req: ChatCompletionRequest = parse_json(&body)?;
    state.check_model(&req.model)?;
    let choice = ToolChoice::from_openai(req.tool_choice.as_ref())?;
    let tools = state.tool_use(req.tools, &choice, req.parallel_tool_calls)?;
    if req.messages.is_empty() {
        return Err(ApiError::invalid("messages must not be empty").into());
    }
    let messages = req
        .messages
        .into_iter()
        .map(ChatMessage::into_message)
        .collect::<std::result::Result<Vec<_>, ApiError>>()?;
    let format = req.response_format.and_then(ResponseFormat::into_format);
    let format = constraint(tools.as_ref(), format)?;
    let settings = req
        .sampling
        .into_settings(format, state.model.context_length)?;
    let llama = &state.model.llama;
    let chat = &state.model.chat;
    let think = Think::from_openai(
        req.reasoning_effort.as_deref(),
        chat.thinks,
        &state.model.name,
    )?;
    let extras = Extras {
        tools: tools.as_ref().map(|t| t.tools.as_slice()),
        enable_thinking: think.enable,
        reasoning_effort: think.effort.as_deref(),
    };
    let rendered = chat.render(llama, &messages, &extras)?;
    let rx = state.generate(
        prompt::tokenize(llama, &rendered.text, rendered.add_special),
        settings,
        req.stream,
        tools.is_some(),
    )?;
    let answer = Answer::new(
        think.split.then(|| starts_inside(&rendered.text)),
        tools.map(|t| t.format),
    );

    let id = new_id("chatcmpl");
    let created = unix_now();
    let model = req.model;
    if !req.stream {
        let render = move |text: String, summary: Summary| {
            let answer = answer.split(&text);
            let mut message = json!({ "role": "assistant", "content": answer.content });
            if !answer.thinking.is_empty() {
                message["reasoning_content"] = answer.thinking.into();
            }
            let mut finish = summary.reason.as_str();
            if !answer.calls.is_empty() {
                if answer.content.is_empty() {
                    message["content"] = Value::Null;
                }
                message["tool_calls"] = openai_calls(&answer.calls, false);
                finish = "tool_calls";
            }
            json!({
                "id": id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "system_fingerprint": FINGERPRINT,
                "choices": [{ "index": 0, "message": message, "finish_reason": finish }],
                "usage": usage(&summary),
            })
        };
        return Ok(whole_answer(rx, ApiError::openai_body, render).await?);
    }
    let include_usage = req.stream_options.include_usage;
    let object = move |delta: Value, finish: Option<&str>| {
        json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": FINGERPRINT,
            "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }],
        })
    };
    let chunk = {
        let object = object.clone();
        move |delta: Value, finish: Option<&str>| data(&object(delta, finish))
    };
    // A chunk of reasoning and/or content; nothing if both are empty.
    let text = |thinking: &str, content: &str| {
        let mut delta = json!({ "role": "assistant" });
        if !thinking.is_empty() {
            delta["reasoning_content"] = thinking.into();
        }
        if !content.is_empty() {
            delta["content"] = content.into();
        }
        delta
    };
    let mut answer = Some(answer);
    Ok(sse(event_body(rx, move |event| match event {
        Event::Text(t) => {
            let Some(split) = answer.as_mut().map(|a| a.push(&t)) else {
                return String::new();
            };
            if split.thinking.is_empty() && split.content.is_empty() {
                return String::new();
            }
            chunk(text(&split.thinking, &split.content), None)
        }
        Event::Done(summary) => {
            let mut out = String::new();
            let mut finish = summary.reason.as_str();
            let rest = answer.take().map(Answer::finish).unwrap_or_default();
            if !rest.thinking.is_empty() || !rest.content.is_empty() {
                out.push_str(&chunk(text(&rest.thinking, &rest.content), None));
            }
            if !rest.calls.is_empty() {
                let calls = openai_calls(&rest.calls, true);
                out.push_str(&chunk(
                    json!({ "role": "assistant", "tool_calls": calls }),
                    None,
                ));
                finish = "tool_calls";
            }
            out.push_str(&chunk(json!({}), Some(finish)));
            if include_usage {
                let mut last = object(json!({}), None);
                last["choices"] = json!([]);
                last["usage"] = usage(&summary);
                out.push_str(&data(&last));
            }
            out.push_str("data: [DONE]\n\n");
            out
        }
        Event::Failed(message) => stream_error(message),
        Event::Started => String::new(),
    })))
}

/// An error after the stream started: the status line is gone, so it goes in the stream.
fn stream_error(message: String) -> String {
    let mut out = data(&json!({
        "error": { "message": message, "type": "server_error", "param": null, "code": null }
    }));
    out.push_str("data: [DONE]\n\n");
    out
}

/// A completion prompt: text, or token ids.
#[derive(Deserialize)]
#[serde(untagged)]
enum PromptInput {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<i64>),
}

#[derive(Deserialize)]
struct CompletionRequest {
    #[serde(default)]
    model: String,
    prompt: Option<PromptInput>,
    #[serde(default)]
    suffix: String,
    #[serde(default)]
    echo: bool,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: StreamOptions,
    #[serde(flatten)]
    sampling: SamplingFields,
}

pub async fn completions(State(state): State<SharedState>, body: Bytes) -> Result<Response> {
    let req: CompletionRequest = parse_json(&body)?;
    state.check_model(&req.model)?;
    if !req.suffix.is_empty() {
        return Err(
            ApiError::invalid(format!("{} does not support suffix", state.model.name)).into(),
        );
    }
    let llama = &state.model.llama;
    let (prompt_text, tokens) = match req.prompt {
        None => return Err(ApiError::invalid("prompt is required").into()),
        Some(PromptInput::Text(t)) => {
            let tokens = prompt::tokenize(llama, &t, true);
            (t, tokens)
        }
        Some(PromptInput::Texts(mut v)) if v.len() == 1 => {
            let t = v.remove(0);
            let tokens = prompt::tokenize(llama, &t, true);
            (t, tokens)
        }
        Some(PromptInput::Texts(_)) => {
            return Err(ApiError::invalid("only one prompt per request is supported").into());
        }
        Some(PromptInput::Tokens(ids)) => {
            let tokens = prompt::tokens_from_ids(llama, &ids)?;
            let text = tokens
                .iter()
                .map(|t| {
                    String::from_utf8_lossy(&llama.vocab().token_to_piece(*t, false, None))
                        .into_owned()
                })
                .collect();
            (text, tokens)
        }
    };
    let settings = req
        .sampling
        .into_settings(None, state.model.context_length)?;
    let rx = state.generate(tokens, settings, req.stream, false)?;

    let id = new_id("cmpl");
    let created = unix_now();
    let model = req.model;
    let echo = req.echo.then_some(prompt_text);
    if !req.stream {
        let render = move |text: String, summary: Summary| {
            json!({
                "id": id,
                "object": "text_completion",
                "created": created,
                "model": model,
                "system_fingerprint": FINGERPRINT,
                "choices": [{
                    "text": echo.unwrap_or_default() + &text, "index": 0, "logprobs": null,
                    "finish_reason": summary.reason.as_str(),
                }],
                "usage": usage(&summary),
            })
        };
        return Ok(whole_answer(rx, ApiError::openai_body, render).await?);
    }
    let include_usage = req.stream_options.include_usage;
    let chunk = move |text: String, finish: Option<&str>| {
        json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "system_fingerprint": FINGERPRINT,
            "choices": [{ "text": text, "index": 0, "logprobs": null, "finish_reason": finish }],
        })
    };
    let mut echo = echo;
    Ok(sse(event_body(rx, move |event| match event {
        Event::Text(t) => data(&chunk(echo.take().unwrap_or_default() + &t, None)),
        Event::Done(summary) => {
            let mut out = data(&chunk(
                echo.take().unwrap_or_default(),
                Some(summary.reason.as_str()),
            ));
            if include_usage {
                let mut last = chunk(String::new(), None);
                last["choices"] = json!([]);
                last["usage"] = usage(&summary);
                out.push_str(&data(&last));
            }
            out.push_str("data: [DONE]\n\n");
            out
        }
        Event::Failed(message) => stream_error(message),
        Event::Started => String::new(),
    })))
}

/// Embedding inputs: text(s) or token ids.
#[derive(Deserialize)]
#[serde(untagged)]
enum EmbeddingInput {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<i64>),
    TokenLists(Vec<Vec<i64>>),
}

#[derive(Deserialize)]
struct EmbeddingsRequest {
    #[serde(default)]
    model: String,
    input: EmbeddingInput,
    #[serde(default)]
    encoding_format: Option<String>,
    dimensions: Option<usize>,
}

pub async fn embeddings(State(state): State<SharedState>, body: Bytes) -> Result<Json<Value>> {
    let req: EmbeddingsRequest = parse_json(&body)?;
    state.check_model(&req.model)?;
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "encoding_format must be 'float' or 'base64', got '{other}'"
            ))
            .into());
        }
    };
    let llama = &state.model.llama;
    let inputs = match req.input {
        EmbeddingInput::Text(t) => vec![prompt::tokenize(llama, &t, true)],
        EmbeddingInput::Texts(v) => v.iter().map(|t| prompt::tokenize(llama, t, true)).collect(),
        EmbeddingInput::Tokens(ids) => vec![prompt::tokens_from_ids(llama, &ids)?],
        EmbeddingInput::TokenLists(lists) => lists
            .iter()
            .map(|ids| prompt::tokens_from_ids(llama, ids))
            .collect::<std::result::Result<_, _>>()?,
    };
    if inputs.is_empty() || inputs.iter().any(Vec::is_empty) {
        return Err(ApiError::invalid("input must not be empty").into());
    }
    let max = state.embedder.max_tokens as usize;
    if let Some(long) = inputs.iter().find(|t| t.len() > max) {
        return Err(ApiError::invalid(format!(
            "input is {} tokens long, more than the maximum of {max} tokens",
            long.len()
        ))
        .into());
    }
    let e = state.embedder.embed(inputs).await?;
    let data = e
        .vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| {
            let v = shorten(normalize(v), req.dimensions)?;
            let embedding = if base64 {
                // Little-endian f32s, as OpenAI encodes them.
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::from(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                Value::from(v)
            };
            Ok(json!({ "object": "embedding", "embedding": embedding, "index": index }))
        })
        .collect::<std::result::Result<Vec<_>, ApiError>>()?;
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": req.model,
        "usage": { "prompt_tokens": e.prompt_tokens, "total_tokens": e.prompt_tokens },
    })))
}
