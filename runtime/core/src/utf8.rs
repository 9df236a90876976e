//! Turning a stream of token bytes into whole UTF-8 characters.
//!
//! A byte-level BPE token can end in the middle of a character (an emoji is often split over
//! several tokens). [`Utf8Stream`] holds back an incomplete tail until the rest arrives, so every
//! piece it emits is valid UTF-8 made of whole characters. Invalid bytes become U+FFFD exactly as
//! [`String::from_utf8_lossy`] would replace them, wherever the stream happens to be split.

use core::str;

/// The replacement character emitted for invalid bytes.
pub const REPLACEMENT: &str = "\u{FFFD}";

/// Assembles bytes pushed in arbitrary pieces into whole UTF-8 characters.
#[derive(Debug, Clone, Default)]
pub struct Utf8Stream {
    pending: heapless::Vec<u8, 4>,
}

impl Utf8Stream {
    /// An empty stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// True when bytes of an unfinished character are held back.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Feeds `bytes`; calls `emit` with each run of whole characters now complete.
    pub fn push(&mut self, mut bytes: &[u8], emit: &mut impl FnMut(&str)) {
        while !self.pending.is_empty() && !bytes.is_empty() {
            // `pending` holds at most 3 bytes of an unfinished character, so there is room.
            let _ = self.pending.push(bytes[0]);
            bytes = &bytes[1..];
            match str::from_utf8(&self.pending) {
                Ok(text) => {
                    emit(text);
                    self.pending.clear();
                }
                Err(error) => {
                    if let Some(invalid) = error.error_len() {
                        let held = core::mem::take(&mut self.pending);
                        emit(REPLACEMENT);
                        self.decode(&held[invalid..], emit);
                    }
                }
            }
        }
        self.decode(bytes, emit);
    }

    /// Ends the stream: an unfinished character left over becomes U+FFFD.
    pub fn finish(&mut self, emit: &mut impl FnMut(&str)) {
        if !self.pending.is_empty() {
            self.pending.clear();
            emit(REPLACEMENT);
        }
    }

    /// Decodes `bytes` with nothing pending, keeping an incomplete tail in `pending`.
    fn decode(&mut self, mut bytes: &[u8], emit: &mut impl FnMut(&str)) {
        while !bytes.is_empty() {
            match str::from_utf8(bytes) {
                Ok(text) => {
                    emit(text);
                    return;
                }
                Err(error) => {
                    let (valid, rest) = bytes.split_at(error.valid_up_to());
                    if let Ok(text) = str::from_utf8(valid)
                        && !text.is_empty()
                    {
                        emit(text);
                    }
                    match error.error_len() {
                        Some(invalid) => {
                            emit(REPLACEMENT);
                            bytes = &rest[invalid..];
                        }
                        None => {
                            // An incomplete character at the end: at most 3 bytes.
                            let _ = self.pending.extend_from_slice(rest);
                            return;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::quickcheck;

    /// Pushes `bytes` cut at `cuts`, checks every emitted piece, returns the whole text.
    fn stream(bytes: &[u8], cuts: &[usize]) -> String {
        let mut out = String::new();
        let mut stream = Utf8Stream::new();
        let mut emit = |piece: &str| {
            assert!(!piece.is_empty());
            out.push_str(piece);
        };
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        points.sort_unstable();
        let mut start = 0;
        for point in points {
            stream.push(&bytes[start..point], &mut emit);
            start = point;
        }
        stream.push(&bytes[start..], &mut emit);
        stream.finish(&mut emit);
        out
    }

    #[test]
    fn an_emoji_split_over_tokens_comes_out_whole() {
        let mut stream = Utf8Stream::new();
        let mut pieces = Vec::new();
        for chunk in [&[0xF0u8, 0x9F][..], &[0x94], &[0xA5, b'!']] {
            stream.push(chunk, &mut |piece: &str| pieces.push(piece.to_string()));
        }
        assert_eq!(pieces, ["🔥", "!"]);
        assert!(!stream.has_pending());
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        assert_eq!(stream(b"a\xFFb", &[]), "a\u{FFFD}b");
        assert_eq!(stream(b"\xE2\x82A", &[1]), "\u{FFFD}A");
        assert_eq!(stream(b"x\xF0\x9F", &[]), "x\u{FFFD}");
    }

    quickcheck! {
        fn valid_text_survives_any_split(text: String, cuts: Vec<usize>) -> bool {
            stream(text.as_bytes(), &cuts) == text
        }

        fn any_bytes_decode_like_from_utf8_lossy(bytes: Vec<u8>, cuts: Vec<usize>) -> bool {
            stream(&bytes, &cuts) == String::from_utf8_lossy(&bytes)
        }
    }
}
