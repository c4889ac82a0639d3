//! Reasoning (`<think>…</think>`, as DeepSeek-R1 and Qwen 3 write it) split out of the
//! answer, also while streaming: text that may be the start of a tag is held back until
//! it is clear.

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

/// Whether a chat template produces reasoning the runner can split out.
pub fn template_thinks(source: &str) -> bool {
    source.contains(OPEN) || source.contains("enable_thinking")
}

/// Where a generation starts: templates that open the block in the generation prompt
/// (DeepSeek-R1, QwQ) leave the model inside it.
pub fn starts_inside(prompt: &str) -> bool {
    prompt.trim_end().ends_with(OPEN)
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Split {
    pub thinking: String,
    pub content: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing but whitespace so far: a `<think>` may still come.
    Start,
    Thinking,
    Answer,
}

pub struct ThinkSplitter {
    state: State,
    held: String,
}

impl ThinkSplitter {
    pub fn new(inside: bool) -> Self {
        Self {
            state: if inside {
                State::Thinking
            } else {
                State::Start
            },
            held: String::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> Split {
        self.held.push_str(text);
        let mut out = Split::default();
        loop {
            match self.state {
                State::Answer => {
                    out.content.push_str(&std::mem::take(&mut self.held));
                    return out;
                }
                State::Start => {
                    let trimmed = self.held.trim_start();
                    if let Some(rest) = trimmed.strip_prefix(OPEN) {
                        self.held = rest.trim_start().to_owned();
                        self.state = State::Thinking;
                    } else if OPEN.starts_with(trimmed) {
                        // Empty or a beginning of `<think>`: wait for more.
                        return out;
                    } else {
                        self.state = State::Answer;
                    }
                }
                State::Thinking => match self.held.find(CLOSE) {
                    Some(at) => {
                        out.thinking.push_str(self.held[..at].trim_end());
                        self.held = self.held[at + CLOSE.len()..].trim_start().to_owned();
                        self.state = State::Answer;
                    }
                    None => {
                        let keep = (1..CLOSE.len())
                            .rev()
                            .find(|&n| self.held.ends_with(&CLOSE[..n]))
                            .unwrap_or(0);
                        // Trailing whitespace is held too: before `</think>` it is dropped.
                        let cut = self.held[..self.held.len() - keep].trim_end().len();
                        out.thinking.extend(self.held.drain(..cut));
                        return out;
                    }
                },
            }
        }
    }

    /// The end: what was held back. An unclosed block is all reasoning.
    pub fn finish(self) -> Split {
        match self.state {
            State::Thinking => Split {
                thinking: self.held,
                content: String::new(),
            },
            State::Start | State::Answer => Split {
                thinking: String::new(),
                content: self.held,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(inside: bool, pieces: &[&str]) -> Split {
        let mut s = ThinkSplitter::new(inside);
        let mut all = Split::default();
        for p in pieces {
            let part = s.push(p);
            all.thinking.push_str(&part.thinking);
            all.content.push_str(&part.content);
        }
        let last = s.finish();
        all.thinking.push_str(&last.thinking);
        all.content.push_str(&last.content);
        all
    }

    #[test]
    fn qwen3_answer_split_over_tokens() {
        // Qwen 3's model card: the reasoning block, then the answer.
        let pieces = [
            "<th",
            "ink>\n",
            "Okay, the user asks",
            " 2+2.\n",
            "</thi",
            "nk>\n\n",
            "2 + 2 = 4.",
        ];
        let s = run(false, &pieces);
        assert_eq!(s.thinking, "Okay, the user asks 2+2.");
        assert_eq!(s.content, "2 + 2 = 4.");
    }

    #[test]
    fn deepseek_r1_starts_inside_the_block() {
        assert!(starts_inside("<｜Assistant｜><think>\n"));
        let s = run(true, &["The user wants a greeting.\n</think>\n\nHello!"]);
        assert_eq!(s.thinking, "The user wants a greeting.");
        assert_eq!(s.content, "Hello!");
    }

    #[test]
    fn empty_block_when_thinking_is_off() {
        let s = run(false, &["<think>\n\n</think>\n\n", "Paris."]);
        assert_eq!(
            s,
            Split {
                thinking: String::new(),
                content: "Paris.".into()
            }
        );
    }

    #[test]
    fn text_without_a_block_is_content_and_a_tag_later_stays() {
        let s = run(false, &["Hi <think> there"]);
        assert_eq!(s.content, "Hi <think> there");
        assert!(s.thinking.is_empty());
        assert_eq!(run(false, &["<"]).content, "<");
    }

    #[test]
    fn unclosed_block_is_reasoning() {
        let s = run(false, &["<think>still going </thi"]);
        assert_eq!(s.thinking, "still going </thi");
        assert!(s.content.is_empty());
    }

    #[test]
    fn templates() {
        assert!(template_thinks(
            "{% if enable_thinking is false %}<think>\n\n</think>{% endif %}"
        ));
        assert!(!template_thinks("<|im_start|>assistant\n"));
    }
}
