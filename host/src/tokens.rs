//! Token estimates for requests that have not been answered yet.
//!
//! Limits and budgets reserve before sending and settle on the provider's
//! reported usage, so an estimate only has to be close and cheap. This is the
//! common 4-bytes-per-token approximation of BPE tokenizers on English text,
//! plus OpenAI's documented per-message overhead (3 tokens, and 3 to prime the
//! reply). The mock provider reports these numbers as its real usage.

use crate::chat::ChatRequest;

/// Tokens a text is estimated to be.
pub fn estimate_text(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
}

/// Prompt tokens a request is estimated to be.
pub fn estimate_request(req: &ChatRequest) -> u64 {
    (req.prompt_text_len() as u64).div_ceil(4) + 3 * req.messages().len() as u64 + 3
}

/// The longest prefix of `text` (a byte index on a char boundary) that is
/// within `max_tokens` by [`estimate_text`].
pub fn prefix_within(text: &str, max_tokens: u64) -> usize {
    let limit = usize::try_from(max_tokens.saturating_mul(4)).unwrap_or(usize::MAX);
    if limit >= text.len() {
        return text.len();
    }
    let mut cut = limit;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates() {
        assert_eq!(estimate_text(""), 0);
        assert_eq!(estimate_text("abcd"), 1);
        assert_eq!(estimate_text("abcde"), 2);
        assert_eq!(prefix_within("abcdefgh", 1), 4);
        assert_eq!(prefix_within("abc", 10), 3);
        assert_eq!(prefix_within("aéé", 1), 3);
    }
}
