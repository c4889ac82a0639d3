//! The prefix key of a request, for cache-aware routing (`corral_control::routing::pick`):
//! a hash of what every later turn of the same conversation starts with, so that all its
//! turns go to the replica that holds its KV cache.
//!
//! * Chat (`api/chat`, `v1/chat/completions`): the leading messages up to and including
//!   the first user message (system prompt and opening question). Later turns append to
//!   `messages`, so they keep the key; two conversations with a shared system prompt but
//!   different openings get different keys and spread over replicas.
//! * Completion (`api/generate`, `v1/completions`): `system` and the first
//!   `PROMPT_PREFIX` bytes of the prompt (a client that continues a conversation in the
//!   prompt resends it from the start).
//! * Anything else (embeddings, `api/show`, bodies that are not JSON): no key; such
//!   requests go to the least busy replica.

use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Bytes of a completion prompt that make its key: long enough to tell conversations
/// apart past a shared instruction preamble, short enough that a first turn shorter than
/// this rarely occurs in multi-turn use.
const PROMPT_PREFIX: usize = 512;

#[derive(Deserialize)]
struct Lead {
    #[serde(default)]
    messages: Option<Vec<Value>>,
    #[serde(default)]
    prompt: Option<Value>,
    #[serde(default)]
    system: Option<String>,
}

/// The prefix key of a request body sent to `path` (the replica's path, without the
/// leading `/`), or None when the request has no prompt prefix worth routing by.
pub fn prefix_key(path: &str, body: &[u8]) -> Option<u64> {
    let chat = matches!(path, "api/chat" | "v1/chat/completions");
    let completion = matches!(path, "api/generate" | "v1/completions");
    if !chat && !completion {
        return None;
    }
    let lead: Lead = serde_json::from_slice(body).ok()?;
    let mut hash = Sha256::new();
    if chat {
        let messages = lead.messages?;
        let end = messages
            .iter()
            .position(|m| m.get("role").and_then(Value::as_str) == Some("user"))
            .map_or(messages.len(), |i| i + 1);
        if end == 0 {
            return None;
        }
        hash.update(serde_json::to_vec(&messages[..end]).ok()?);
    } else {
        let prompt = match lead.prompt? {
            Value::String(p) => p,
            // OpenAI's prompt may be a list of strings; its first is the conversation.
            Value::Array(list) => list.first()?.as_str()?.to_string(),
            _ => return None,
        };
        if prompt.is_empty() {
            return None;
        }
        hash.update(lead.system.unwrap_or_default().as_bytes());
        hash.update([0]);
        hash.update(head(&prompt, PROMPT_PREFIX).as_bytes());
    }
    let digest = hash.finalize();
    Some(u64::from_le_bytes(digest[..8].try_into().ok()?))
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn head(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(path: &str, body: Value) -> Option<u64> {
        prefix_key(path, &serde_json::to_vec(&body).unwrap())
    }

    #[test]
    fn later_turns_keep_the_first_turns_key() {
        let sys = json!({"role": "system", "content": "be brief"});
        let q1 = json!({"role": "user", "content": "what is a llama?"});
        let a1 = json!({"role": "assistant", "content": "a camelid"});
        let q2 = json!({"role": "user", "content": "and an alpaca?"});
        for path in ["api/chat", "v1/chat/completions"] {
            let turn1 = key(path, json!({"model": "m", "messages": [sys, q1]})).unwrap();
            let turn2 = key(
                path,
                json!({"model": "m", "stream": true, "messages": [sys, q1, a1, q2]}),
            );
            assert_eq!(Some(turn1), turn2, "{path}");
            let other = key(
                path,
                json!({"model": "m", "messages": [sys, {"role": "user", "content": "hi"}]}),
            );
            assert_ne!(Some(turn1), other, "{path}: another conversation");
        }
    }

    #[test]
    fn completions_key_on_system_and_the_prompts_head() {
        let long = "x".repeat(PROMPT_PREFIX);
        let a = key("api/generate", json!({"prompt": format!("{long}turn one")}));
        let b = key(
            "api/generate",
            json!({"prompt": format!("{long}turn one, two")}),
        );
        assert_eq!(a, b);
        assert!(a.is_some());
        let c = key(
            "api/generate",
            json!({"system": "s", "prompt": format!("{long}turn one")}),
        );
        assert_ne!(a, c, "the system prompt is part of the prefix");
        let listed = key("v1/completions", json!({"prompt": [format!("{long}z")]}));
        assert_eq!(
            listed,
            key("v1/completions", json!({"prompt": format!("{long}y")}))
        );
        // A multi-byte character across the cut.
        let s = format!("{}é", "a".repeat(PROMPT_PREFIX - 1));
        assert!(key("api/generate", json!({ "prompt": s })).is_some());
    }

    #[test]
    fn no_key_without_a_prompt_prefix() {
        assert_eq!(key("api/embed", json!({"input": "x"})), None);
        assert_eq!(key("v1/embeddings", json!({"input": "x"})), None);
        assert_eq!(key("api/chat", json!({"messages": []})), None);
        assert_eq!(key("api/chat", json!({"model": "m"})), None);
        assert_eq!(key("api/generate", json!({"prompt": ""})), None);
        assert_eq!(key("api/generate", json!({"prompt": 3})), None);
        assert_eq!(prefix_key("api/chat", b"not json"), None);
    }
}
