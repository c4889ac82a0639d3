//! Turns the bytes of sampled tokens into text that is safe to send to the client.
//!
//! Two things make this more than concatenation: a token can end in the middle of a UTF-8
//! character (emoji, CJK), and a stop sequence can span several tokens, so text that might
//! be the start of a stop sequence is held back until it is clear that it is not.

#[derive(Debug, PartialEq, Eq)]
pub enum Push {
    /// Text that can be sent now (possibly empty).
    Text(String),
    /// A stop sequence matched: the text before it, after which generation ends.
    Stopped(String),
}

#[derive(Debug, Default)]
pub struct TextStream {
    stops: Vec<String>,
    /// Bytes of an incomplete UTF-8 character.
    partial: Vec<u8>,
    /// Decoded text that could still turn into a stop sequence.
    held: String,
}

impl TextStream {
    pub fn new(stops: Vec<String>) -> Self {
        let stops = stops.into_iter().filter(|s| !s.is_empty()).collect();
        Self {
            stops,
            ..Self::default()
        }
    }

    pub fn push(&mut self, bytes: &[u8]) -> Push {
        self.partial.extend_from_slice(bytes);
        let decoded_len = self.decode_partial();
        if decoded_len == 0 && self.held.is_empty() {
            return Push::Text(String::new());
        }
        if let Some(at) = self.earliest_stop() {
            self.held.truncate(at);
            return Push::Stopped(std::mem::take(&mut self.held));
        }
        let keep = self.stop_prefix_len();
        let rest = self.held.split_off(self.held.len() - keep);
        Push::Text(std::mem::replace(&mut self.held, rest))
    }

    /// Whatever is left when generation ends for another reason than a stop sequence.
    pub fn finish(&mut self) -> String {
        let mut out = std::mem::take(&mut self.held);
        out.push_str(&String::from_utf8_lossy(&std::mem::take(&mut self.partial)));
        out
    }

    /// Moves the complete characters of `partial` into `held`; returns how many bytes moved.
    fn decode_partial(&mut self) -> usize {
        let mut moved = 0;
        loop {
            match std::str::from_utf8(&self.partial) {
                Ok(s) => {
                    self.held.push_str(s);
                    moved += self.partial.len();
                    self.partial.clear();
                    return moved;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // Safe: the prefix was just validated.
                    self.held
                        .push_str(std::str::from_utf8(&self.partial[..valid]).unwrap_or_default());
                    moved += valid;
                    match e.error_len() {
                        // Incomplete character at the end: wait for the next token.
                        None => {
                            self.partial.drain(..valid);
                            return moved;
                        }
                        // Invalid bytes can never become valid: replace them like `from_utf8_lossy`.
                        Some(bad) => {
                            self.held.push(char::REPLACEMENT_CHARACTER);
                            moved += bad;
                            self.partial.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    fn earliest_stop(&self) -> Option<usize> {
        self.stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
    }

    /// Length of the longest tail of `held` that is a proper prefix of some stop sequence.
    fn stop_prefix_len(&self) -> usize {
        let held = self.held.as_str();
        self.stops
            .iter()
            .flat_map(|stop| {
                stop.char_indices()
                    .skip(1)
                    .map(|(i, _)| &stop[..i])
                    .filter(|prefix| held.ends_with(prefix))
                    .map(str::len)
            })
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Push {
        Push::Text(s.to_owned())
    }

    #[test]
    fn passes_text_through_without_stops() {
        let mut t = TextStream::new(vec![]);
        assert_eq!(t.push(b"Hello"), text("Hello"));
        assert_eq!(t.push(b" world"), text(" world"));
        assert_eq!(t.finish(), "");
    }

    #[test]
    fn joins_utf8_split_across_tokens() {
        let mut t = TextStream::new(vec![]);
        let smile = "😀".as_bytes();
        assert_eq!(t.push(&smile[..2]), text(""));
        assert_eq!(t.push(&smile[2..]), text("😀"));
    }

    #[test]
    fn replaces_invalid_bytes() {
        let mut t = TextStream::new(vec![]);
        assert_eq!(t.push(b"a\xffb"), text("a\u{fffd}b"));
    }

    #[test]
    fn stop_inside_one_token() {
        let mut t = TextStream::new(vec!["END".into()]);
        assert_eq!(t.push(b"abcENDdef"), Push::Stopped("abc".into()));
    }

    #[test]
    fn stop_across_tokens_is_held_back() {
        let mut t = TextStream::new(vec!["\n\n".into(), "User:".into()]);
        assert_eq!(t.push(b"Hi Us"), text("Hi "));
        assert_eq!(t.push(b"e"), text(""));
        assert_eq!(t.push(b"r:"), Push::Stopped("".into()));
    }

    #[test]
    fn held_text_released_when_not_a_stop() {
        let mut t = TextStream::new(vec!["User:".into()]);
        assert_eq!(t.push(b"Use"), text(""));
        assert_eq!(t.push(b"ful"), text("Useful"));
        assert_eq!(t.push(b" Us"), text(" "));
        assert_eq!(t.finish(), "Us");
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        let mut t = TextStream::new(vec!["b".into(), "a".into(), String::new()]);
        assert_eq!(t.push(b"xxab"), Push::Stopped("xx".into()));
    }
}
