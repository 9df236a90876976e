//! SentencePiece BPE as llama.cpp runs it from a GGUF file (`tokenizer.ggml.model = llama`,
//! Gemma's vocabulary): no merge list, but a score per token. Spaces become `▁`; the text starts
//! as one symbol per character; the adjacent pair whose joined text is the best-scoring token
//! is joined (the leftmost of equals), until no pair is a token; a symbol that is no token is
//! written as its bytes' `<0xXX>` tokens. Control and user-defined tokens written in the text
//! (`<start_of_turn>`, `\n\n`) are taken whole first, the leftmost and then the longest.
//!
//! The `tokenizers` crate runs BPE from ranked merges, which these files do not have; this is
//! llama.cpp's `llm_tokenizer_spm` algorithm, which the tests check against llama.cpp's ids.

use crate::TokenizerError;
use aho_corasick::{AhoCorasick, MatchKind};
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

/// SentencePiece's stand-in for a space.
const SPACE: char = '▁';

/// A SentencePiece vocabulary ready to encode.
pub(crate) struct SentencePiece {
    ids: HashMap<String, u32>,
    scores: Vec<f32>,
    /// The `<0xXX>` token of each byte.
    byte_tokens: Vec<Option<u32>>,
    /// Control and user-defined tokens, matched whole in the text.
    specials: AhoCorasick,
    special_ids: Vec<u32>,
}

/// A pair of adjacent symbols whose joined text is a token.
#[derive(PartialEq)]
struct Pair {
    score: f32,
    left: usize,
    right: usize,
    /// Bytes of the joined text, to tell a stale pair (a side has changed since) from a live one.
    len: usize,
}

impl Eq for Pair {}

impl Ord for Pair {
    /// The higher score first; of equal scores, the leftmost.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Pair {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A run of the text: `start..end` bytes, linked to its neighbours.
#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    end: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

impl SentencePiece {
    /// Builds the encoder from the tokens, their scores and GGUF token types (`special` says
    /// which are matched whole in text).
    pub(crate) fn new(
        tokens: &[&str],
        scores: &[f32],
        special: impl Fn(usize) -> bool,
    ) -> Result<Self, TokenizerError> {
        if scores.len() != tokens.len() {
            return Err(TokenizerError::Inconsistent(format!(
                "{} tokens but {} scores",
                tokens.len(),
                scores.len()
            )));
        }
        let ids = tokens
            .iter()
            .zip(0..)
            .map(|(t, id)| (t.to_string(), id))
            .collect();
        let byte_tokens = (0..=255u8)
            .map(|b| {
                let text = format!("<0x{b:02X}>");
                tokens.iter().position(|t| *t == text).map(|i| i as u32)
            })
            .collect();
        let special_ids: Vec<u32> = (0..tokens.len())
            .filter(|&i| special(i) && !tokens[i].is_empty())
            .map(|i| i as u32)
            .collect();
        let specials = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(special_ids.iter().map(|&i| tokens[i as usize]))
            .map_err(|e| TokenizerError::Library(e.to_string()))?;
        Ok(SentencePiece {
            ids,
            scores: scores.to_vec(),
            byte_tokens,
            specials,
            special_ids,
        })
    }

    /// Token ids of `text`, special tokens in it taken whole.
    pub(crate) fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let mut ids = Vec::new();
        let mut at = 0;
        for found in self.specials.find_iter(text) {
            self.encode_plain(&text[at..found.start()], &mut ids)?;
            ids.push(self.special_ids[found.pattern().as_usize()]);
            at = found.end();
        }
        self.encode_plain(&text[at..], &mut ids)?;
        Ok(ids)
    }

    /// Appends the ids of `text` (no special tokens in it) to `ids`.
    fn encode_plain(&self, text: &str, ids: &mut Vec<u32>) -> Result<(), TokenizerError> {
        if text.is_empty() {
            return Ok(());
        }
        let text: String = text
            .chars()
            .map(|c| if c == ' ' { SPACE } else { c })
            .collect();
        let mut symbols: Vec<Symbol> = text
            .char_indices()
            .map(|(start, c)| Symbol {
                start,
                end: start + c.len_utf8(),
                prev: None,
                next: None,
            })
            .collect();
        let count = symbols.len();
        for (i, symbol) in symbols.iter_mut().enumerate() {
            symbol.prev = i.checked_sub(1);
            symbol.next = (i + 1 < count).then_some(i + 1);
        }
        let mut pairs = BinaryHeap::new();
        let pair = |symbols: &[Symbol], left: usize, right: usize| {
            let joined = &text[symbols[left].start..symbols[right].end];
            self.ids.get(joined).map(|&id| Pair {
                score: self.scores[id as usize],
                left,
                right,
                len: joined.len(),
            })
        };
        for i in 1..count {
            pairs.extend(pair(&symbols, i - 1, i));
        }
        while let Some(Pair {
            left, right, len, ..
        }) = pairs.pop()
        {
            let (l, r) = (symbols[left], symbols[right]);
            // Either side may have been joined to another since the pair was found.
            if l.end == l.start || r.end == r.start || r.end - l.start != len {
                continue;
            }
            symbols[left].end = r.end;
            symbols[left].next = r.next;
            symbols[right].end = symbols[right].start;
            if let Some(next) = r.next {
                symbols[next].prev = Some(left);
            }
            if let Some(prev) = l.prev {
                pairs.extend(pair(&symbols, prev, left));
            }
            if let Some(next) = r.next {
                pairs.extend(pair(&symbols, left, next));
            }
        }
        let mut at = Some(0);
        while let Some(i) = at {
            let piece = &text[symbols[i].start..symbols[i].end];
            match self.ids.get(piece) {
                Some(&id) => ids.push(id),
                None => {
                    for byte in piece.bytes() {
                        ids.push(self.byte_tokens[byte as usize].ok_or_else(|| {
                            TokenizerError::Inconsistent(format!(
                                "the vocabulary has no token for byte 0x{byte:02X}"
                            ))
                        })?);
                    }
                }
            }
            at = symbols[i].next;
        }
        Ok(())
    }
}

/// The bytes a SentencePiece token stands for: `▁` a space, `<0xXX>` (type `byte`) its byte.
pub(crate) fn token_bytes(token: &str, is_byte: bool) -> Vec<u8> {
    if is_byte
        && let Some(hex) = token.strip_prefix("<0x").and_then(|t| t.strip_suffix('>'))
        && let Ok(byte) = u8::from_str_radix(hex, 16)
    {
        return vec![byte];
    }
    token.replace(SPACE, " ").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocabulary() -> SentencePiece {
        // Scores as Gemma's: the earlier, the better.
        let tokens = [
            "<bos>", "<end>", "▁", "a", "b", "c", "ab", "bc", "▁a", "▁ab", "abc", "<0xC3>",
            "<0xA9>", "\n",
        ];
        let scores: Vec<f32> = (0..tokens.len()).map(|i| -(i as f32)).collect();
        SentencePiece::new(&tokens, &scores, |i| matches!(i, 0 | 1 | 13)).unwrap()
    }

    #[test]
    fn the_best_scoring_pair_joins_first() {
        let spm = vocabulary();
        // "ab" (-6) beats "bc" (-7); then "abc" (-10) joins "ab" and "c".
        assert_eq!(spm.encode("abc").unwrap(), [10]);
        // "ab" (-6) beats "▁a" (-8); then "▁ab" (-9) joins "▁" and "ab".
        assert_eq!(spm.encode(" ab").unwrap(), [9]);
        assert_eq!(spm.encode("bc a").unwrap(), [7, 8]);
    }

    #[test]
    fn unknown_characters_become_bytes_and_specials_are_whole() {
        let spm = vocabulary();
        assert_eq!(spm.encode("é").unwrap(), [11, 12]);
        assert_eq!(spm.encode("<bos>a\nb<end>").unwrap(), [0, 3, 13, 4, 1]);
        assert!(matches!(
            spm.encode("z"),
            Err(TokenizerError::Inconsistent(_))
        ));
        assert_eq!(token_bytes("▁ab", false), b" ab");
        assert_eq!(token_bytes("<0xC3>", true), [0xC3]);
        assert_eq!(token_bytes("<0xC3>", false), b"<0xC3>");
    }
}
