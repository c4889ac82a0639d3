//! Tool calls in a streamed answer: text goes out as it comes until a call may be
//! starting; from there on it is held back and parsed at the end, so a client never sees
//! half a call as content.

use super::ToolFormat;
use super::parse::{Parsed, parse};

pub struct CallSplitter {
    format: ToolFormat,
    /// Text not sent yet: a possible start of a marker, or everything from a marker on.
    held: String,
    capturing: bool,
    /// Whether content other than whitespace went out (a bare JSON call must come first).
    sent_text: bool,
}

impl CallSplitter {
    pub fn new(format: ToolFormat) -> Self {
        Self {
            format,
            held: String::new(),
            capturing: false,
            sent_text: false,
        }
    }

    /// Takes the next piece of the answer; returns the content that can be sent now.
    pub fn push(&mut self, text: &str) -> String {
        self.held.push_str(text);
        if self.capturing {
            return String::new();
        }
        if self.format.bare_json() && !self.sent_text {
            let start = self.held.trim_start();
            if start.starts_with('{') {
                self.capturing = true;
                return String::new();
            }
            if start.is_empty() {
                return String::new();
            }
        }
        let markers = self.format.markers();
        let cut = match markers.iter().filter_map(|m| self.held.find(m)).min() {
            Some(at) => {
                self.capturing = true;
                at
            }
            None => self.held.len() - partial_marker_len(&self.held, markers),
        };
        let out: String = self.held.drain(..cut).collect();
        self.sent_text |= !out.trim().is_empty();
        out
    }

    /// The end of the answer: the calls, and the content still to send (held text that
    /// turned out not to be a call).
    pub fn finish(self) -> Parsed {
        if self.capturing {
            parse(self.format, &self.held)
        } else {
            Parsed {
                content: self.held,
                calls: Vec::new(),
            }
        }
    }
}

/// Length of the longest end of `text` that is the beginning of a marker.
fn partial_marker_len(text: &str, markers: &[&str]) -> usize {
    markers
        .iter()
        .flat_map(|m| (1..m.len()).rev().map(move |n| &m[..n]))
        .filter(|prefix| text.ends_with(prefix))
        .map(str::len)
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::ToolCall;
    use serde_json::json;

    fn run(format: ToolFormat, pieces: &[&str]) -> (String, Parsed) {
        let mut s = CallSplitter::new(format);
        let streamed: String = pieces.iter().map(|p| s.push(p)).collect();
        (streamed, s.finish())
    }

    #[test]
    fn plain_text_streams_through() {
        let (sent, rest) = run(ToolFormat::Hermes, &["Hello", " <b>wor", "ld</b>"]);
        assert_eq!(sent, "Hello <b>world</b>");
        assert_eq!(rest, Parsed::default());
    }

    #[test]
    fn a_marker_split_over_tokens_is_held_back() {
        let pieces = [
            "Sure.",
            "\n<tool",
            "_call>",
            "\n{\"name\": \"f\", ",
            "\"arguments\": {}}",
            "\n</tool_call>",
        ];
        let (sent, rest) = run(ToolFormat::Hermes, &pieces);
        assert_eq!(sent, "Sure.\n");
        assert_eq!(rest.content, "");
        assert_eq!(
            rest.calls,
            vec![ToolCall {
                name: "f".into(),
                arguments: json!({})
            }]
        );
    }

    #[test]
    fn a_partial_marker_that_is_not_one_is_sent_at_the_end() {
        let (sent, rest) = run(ToolFormat::Hermes, &["a <tool"]);
        assert_eq!(sent, "a ");
        assert_eq!(rest.content, "<tool");
        let (sent, _) = run(ToolFormat::Hermes, &["a <tool", "box>"]);
        assert_eq!(sent, "a <toolbox>");
    }

    #[test]
    fn a_broken_call_comes_back_as_content() {
        let (sent, rest) = run(ToolFormat::Hermes, &["<tool_call>{\"name\": "]);
        assert_eq!(sent, "");
        assert_eq!(rest.content, "<tool_call>{\"name\": ");
        assert!(rest.calls.is_empty());
    }

    #[test]
    fn llama_bare_json_only_at_the_start() {
        let (sent, rest) = run(
            ToolFormat::Llama3,
            &["  ", "{\"name\": \"f\",", " \"parameters\": {\"a\": 1}}"],
        );
        assert_eq!(sent, "");
        assert_eq!(rest.calls.len(), 1);
        let (sent, rest) = run(ToolFormat::Llama3, &["Use ", "{braces}"]);
        assert_eq!(sent, "Use {braces}");
        assert!(rest.calls.is_empty());
    }
}
