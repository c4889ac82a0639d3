//! Prompt caching: which free slot a new request goes to.
//!
//! A slot keeps the KV cache of its last request when it is freed. A new request goes to
//! the free slot whose cached tokens share the longest prefix with its prompt, and only
//! the rest of the prompt is read (llama-server's `cache_prompt`, Ollama's prompt cache).

/// The free slot a prompt goes to and how many of its leading tokens are reused from that
/// slot's cache. `free` yields each free slot's index and the tokens its KV cache holds.
///
/// At least the last prompt token is always read again: its logits give the first answer
/// token, and the cache keeps no logits. Among slots that reuse equally much, the one
/// with the shortest cache is taken, so the caches worth most survive.
pub(super) fn pick_slot<'a, T: PartialEq + 'a>(
    free: impl IntoIterator<Item = (usize, &'a [T])>,
    prompt: &[T],
) -> Option<(usize, usize)> {
    free.into_iter()
        .map(|(index, cached)| {
            let reuse = common_prefix(cached, prompt).min(prompt.len().saturating_sub(1));
            (index, reuse, cached.len())
        })
        .max_by(|a, b| a.1.cmp(&b.1).then(b.2.cmp(&a.2)).then(b.0.cmp(&a.0)))
        .map(|(index, reuse, _)| (index, reuse))
}

fn common_prefix<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(free: &[(usize, &[u32])], prompt: &[u32]) -> Option<(usize, usize)> {
        pick_slot(free.iter().map(|&(i, c)| (i, c)), prompt)
    }

    #[test]
    fn longest_common_prefix_wins() {
        let free: [(usize, &[u32]); 3] = [(0, &[1, 2, 9]), (1, &[1, 2, 3, 4, 7]), (2, &[])];
        assert_eq!(pick(&free, &[1, 2, 3, 4, 5, 6]), Some((1, 4)));
    }

    #[test]
    fn a_prefix_that_diverges_midway_reuses_up_to_the_divergence() {
        let free: [(usize, &[u32]); 1] = [(3, &[1, 2, 3, 8, 8, 8, 8])];
        assert_eq!(pick(&free, &[1, 2, 3, 4]), Some((3, 3)));
    }

    #[test]
    fn the_last_prompt_token_is_always_read_again() {
        let free: [(usize, &[u32]); 1] = [(0, &[1, 2, 3, 4, 5])];
        assert_eq!(pick(&free, &[1, 2, 3]), Some((0, 2)));
        assert_eq!(pick(&free, &[1]), Some((0, 0)));
    }

    #[test]
    fn without_a_match_the_shortest_cache_is_given_up() {
        let free: [(usize, &[u32]); 3] = [(0, &[5, 5, 5]), (1, &[6]), (2, &[7, 7])];
        assert_eq!(pick(&free, &[1, 2]), Some((1, 0)));
        // Equal caches: the lowest index, so an idle runner fills slots in order.
        let free: [(usize, &[u32]); 2] = [(2, &[]), (1, &[])];
        assert_eq!(pick(&free, &[1, 2]), Some((1, 0)));
    }

    #[test]
    fn no_free_slot() {
        assert_eq!(pick(&[], &[1, 2]), None);
    }
}
