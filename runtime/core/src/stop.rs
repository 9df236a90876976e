//! Stop sequences in streamed text: hold back what might be the start of one, cut at the first.
//!
//! A stop sequence (`"<|im_end|>"`, `"\n\nUser:"`) can arrive split over several tokens, so text
//! that could still become one is held back until it either completes (the reply ends there and
//! the stop is never shown) or turns out to be ordinary text (it is passed on). [`StopFilter`]
//! does this on bounded buffers: it holds at most one stop sequence's worth of text.
//!
//! The reply is cut before the occurrence of a stop sequence that *starts* first in the stream,
//! whichever stop it is, however the text was split into pieces.

use core::fmt;

use heapless::{String, Vec};

/// Most stop sequences a filter holds (the same as a chat request carries).
pub const MAX_STOPS: usize = crate::protocol::MAX_STOPS;
/// Most bytes of one stop sequence.
pub const MAX_STOP_BYTES: usize = crate::protocol::MAX_STOP_BYTES;

/// Bytes a step looks at: a held-back tail (shorter than a stop) and one more character.
const WINDOW: usize = MAX_STOP_BYTES + 4;

/// Why stop sequences were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopError {
    /// More stop sequences than the filter holds.
    TooMany {
        /// The most stop sequences allowed.
        limit: usize,
    },
    /// A stop sequence is longer than the filter holds.
    TooLong {
        /// The most bytes allowed in one stop sequence.
        limit: usize,
    },
    /// A stop sequence is empty (it would stop before the first character).
    Empty,
}

impl fmt::Display for StopError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopError::TooMany { limit } => write!(f, "more than {limit} stop sequences"),
            StopError::TooLong { limit } => {
                write!(f, "a stop sequence is longer than {limit} bytes")
            }
            StopError::Empty => f.write_str("a stop sequence is empty"),
        }
    }
}

impl core::error::Error for StopError {}

/// Passes streamed text on, holding back what might become a stop sequence and cutting the text
/// before the first stop sequence.
#[derive(Debug, Clone, Default)]
pub struct StopFilter {
    stops: Vec<String<MAX_STOP_BYTES>, MAX_STOPS>,
    /// Text not yet passed on: the longest tail that may still start a stop sequence (and, while
    /// `cut` is set, a stop that completed inside it).
    pending: String<MAX_STOP_BYTES>,
    /// A stop sequence starts here in `pending`, but one starting earlier may still complete.
    cut: Option<usize>,
    stopped: bool,
}

impl StopFilter {
    /// A filter for `stops` (none at all passes everything through).
    pub fn new(stops: &[&str]) -> Result<Self, StopError> {
        let mut filter = StopFilter::default();
        for stop in stops {
            if stop.is_empty() {
                return Err(StopError::Empty);
            }
            let stop = String::try_from(*stop).map_err(|_| StopError::TooLong {
                limit: MAX_STOP_BYTES,
            })?;
            filter
                .stops
                .push(stop)
                .map_err(|_| StopError::TooMany { limit: MAX_STOPS })?;
        }
        Ok(filter)
    }

    /// True once a stop sequence has ended the text.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Feeds the next piece of text (whole characters) and calls `emit` with the text that can no
    /// longer be part of a stop sequence. Returns true when a stop sequence has ended the text:
    /// what came before it has been emitted, it and everything after it are dropped, and further
    /// pushes do nothing.
    pub fn push(&mut self, text: &str, emit: &mut impl FnMut(&str)) -> bool {
        if self.stopped {
            return true;
        }
        let held = core::mem::take(&mut self.pending);
        // The stream this push sees: `held` then `text`. `start` is where the held-back tail
        // begins in it; everything before `start` is passed on.
        let stream = Joined {
            head: held.as_bytes(),
            tail: text.as_bytes(),
        };
        let mut start = 0;
        let mut cut = self.cut.take();
        for (at, ch) in text.char_indices() {
            let end = held.len() + at + ch.len_utf8();
            let mut buf = [0u8; WINDOW];
            let window = stream.copy(start, end, &mut buf);
            match self.step(window, cut.map(|c| c - start)) {
                Step::Hold { from, cut: next } => {
                    start += from;
                    cut = next.map(|c| c + start - from);
                }
                Step::Stop { at } => {
                    stream.emit(0, start + at, emit);
                    self.stopped = true;
                    return true;
                }
            }
        }
        stream.emit(0, start, emit);
        let mut buf = [0u8; WINDOW];
        let rest = stream.copy(start, stream.len(), &mut buf);
        // The tail is a proper prefix of a stop sequence, so it fits, and starts on a character.
        if let Ok(rest) = core::str::from_utf8(rest) {
            let _ = self.pending.push_str(rest);
        }
        self.cut = cut.map(|c| c - start);
        false
    }

    /// Ends the text (no more pushes): emits what was held back, up to a stop sequence if one
    /// completed while a longer one starting earlier was still possible.
    pub fn finish(&mut self, emit: &mut impl FnMut(&str)) {
        if self.stopped {
            return;
        }
        let end = self.cut.take().unwrap_or(self.pending.len());
        if let Some(text) = self.pending.get(..end)
            && !text.is_empty()
        {
            emit(text);
        }
        self.stopped = end < self.pending.len();
        self.pending.clear();
    }

    /// One character more: `window` is the held-back tail ending with it, `cut` where a stop
    /// sequence completed in the tail earlier.
    fn step(&self, window: &[u8], cut: Option<usize>) -> Step {
        let mut cut = cut;
        for stop in &self.stops {
            if window.ends_with(stop.as_bytes()) {
                let at = window.len() - stop.len();
                cut = Some(cut.map_or(at, |c| c.min(at)));
            }
        }
        // Only a stop starting before a completed one can still take its place.
        let limit = cut.unwrap_or(window.len());
        let live = (0..limit).find(|&from| {
            let tail = &window[from..];
            self.stops
                .iter()
                .any(|s| s.len() > tail.len() && s.as_bytes().starts_with(tail))
        });
        match (live, cut) {
            (None, Some(at)) => Step::Stop { at },
            (Some(from), cut) => Step::Hold { from, cut },
            (None, None) => Step::Hold {
                from: window.len(),
                cut: None,
            },
        }
    }
}

/// What a step decided.
enum Step {
    /// Pass on the window up to `from`; hold back the rest (a stop completed at `cut`, relative
    /// to the window).
    Hold { from: usize, cut: Option<usize> },
    /// The text ends at `at` in the window.
    Stop { at: usize },
}

/// Two byte strings read as one.
struct Joined<'a> {
    head: &'a [u8],
    tail: &'a [u8],
}

impl Joined<'_> {
    fn len(&self) -> usize {
        self.head.len() + self.tail.len()
    }

    /// Copies bytes `from..to` into `buf` (they fit: at most a stop sequence and a character).
    fn copy<'b>(&self, from: usize, to: usize, buf: &'b mut [u8; WINDOW]) -> &'b [u8] {
        let len = (to - from).min(WINDOW);
        for (i, b) in buf[..len].iter_mut().enumerate() {
            let k = from + i;
            *b = if k < self.head.len() {
                self.head[k]
            } else {
                self.tail[k - self.head.len()]
            };
        }
        &buf[..len]
    }

    /// Emits bytes `from..to` (on character boundaries) in at most two pieces.
    fn emit(&self, from: usize, to: usize, emit: &mut impl FnMut(&str)) {
        let split = self.head.len();
        let pieces = [
            self.head.get(from.min(split)..to.min(split)),
            self.tail
                .get(from.max(split) - split..to.max(split) - split),
        ];
        for piece in pieces.into_iter().flatten() {
            if let Ok(text) = core::str::from_utf8(piece)
                && !text.is_empty()
            {
                emit(text);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::split;
    use quickcheck::quickcheck;
    use std::string::String;
    use std::vec::Vec;

    /// Pushes `pieces`, checking after each push that what was emitted is a prefix of `expected`
    /// with no stop in it. Returns the emitted text and whether push reported a stop.
    fn run(stops: &[&str], pieces: &[&str], expected: &str) -> (String, bool) {
        let mut filter = StopFilter::new(stops).unwrap();
        let mut out = String::new();
        let mut stopped = false;
        for piece in pieces {
            stopped = filter.push(piece, &mut |s: &str| {
                assert!(!s.is_empty());
                out.push_str(s);
            });
            assert_eq!(stopped, filter.stopped());
            assert!(
                expected.starts_with(&out),
                "{out:?} leaked past {expected:?}"
            );
            assert!(stops.iter().all(|s| !out.contains(s)));
        }
        filter.finish(&mut |s: &str| out.push_str(s));
        (out, stopped)
    }

    /// The text cut before the first occurrence of any stop.
    fn expected<'a>(text: &'a str, stops: &[&str]) -> &'a str {
        let at = stops
            .iter()
            .filter_map(|s| text.find(s))
            .min()
            .unwrap_or(text.len());
        &text[..at]
    }

    const ALPHABET: [char; 8] = ['a', 'b', '\n', '<', '|', 'é', 'i', 'm'];
    const STOPS: [&str; 9] = ["ab", "\n\n", "<|im", "é", "bb", "abba", "aé\n", "|i", "b<|"];

    fn text_from(bytes: &[u8]) -> String {
        bytes
            .iter()
            .map(|&b| ALPHABET[b as usize % ALPHABET.len()])
            .collect()
    }

    fn stops_from(picks: &[u8]) -> Vec<&'static str> {
        picks
            .iter()
            .take(MAX_STOPS)
            .map(|&p| STOPS[p as usize % STOPS.len()])
            .collect()
    }

    #[test]
    fn a_stop_split_over_tokens_is_held_back_and_dropped() {
        let stops = ["<|im_end|>"];
        let text = "Hello!<|im_end|>\nuser";
        let (out, stopped) = run(
            &stops,
            &["Hello", "!<|", "im", "_end", "|>\n", "user"],
            text,
        );
        assert_eq!((out.as_str(), stopped), ("Hello!", true));
    }

    #[test]
    fn a_partial_match_that_fails_is_passed_on() {
        let mut filter = StopFilter::new(&["<|im_end|>"]).unwrap();
        let mut out = Vec::new();
        let mut emit = |s: &str| out.push(s.to_string());
        assert!(!filter.push("a <|i", &mut emit));
        assert!(!filter.push("s", &mut emit));
        assert!(!filter.push(" <", &mut emit));
        filter.finish(&mut emit);
        assert_eq!(out, ["a ", "<|i", "s", " ", "<"]);
        assert!(!filter.stopped());
    }

    #[test]
    fn pushes_after_a_stop_are_ignored() {
        let mut filter = StopFilter::new(&["\n\n"]).unwrap();
        let mut out = String::new();
        assert!(filter.push("one\n\ntwo", &mut |s: &str| out.push_str(s)));
        assert!(filter.push("three", &mut |s: &str| out.push_str(s)));
        filter.finish(&mut |s: &str| out.push_str(s));
        assert_eq!(out, "one");
    }

    #[test]
    fn the_stop_that_starts_first_wins() {
        // "bc" completes first, but "abcd" started earlier: wait and cut before it.
        let stops = ["abcd", "bc"];
        assert_eq!(
            run(&stops, &["xab", "c", "d", "y"], "x"),
            ("x".into(), true)
        );
        // "abcd" never completes: cut before "bc".
        assert_eq!(run(&stops, &["xab", "c", "e"], "xa"), ("xa".into(), true));
        // The stream ends while "abcd" is still possible.
        assert_eq!(run(&stops, &["xabc"], "xa"), ("xa".into(), false));
    }

    #[test]
    fn multibyte_stops_and_text_stay_on_char_boundaries() {
        let stops = ["é!", "🔥🔥"];
        let text = "café 🔥 déjà🔥🔥 après";
        let (out, stopped) = run(&stops, &split(text, &[3, 6, 9, 12, 20]), "café 🔥 déjà");
        assert_eq!((out.as_str(), stopped), ("café 🔥 déjà", true));
    }

    #[test]
    fn bad_stop_sets_are_refused() {
        assert_eq!(StopFilter::new(&[""]).unwrap_err(), StopError::Empty);
        let long = "x".repeat(MAX_STOP_BYTES + 1);
        assert_eq!(
            StopFilter::new(&[long.as_str()]).unwrap_err(),
            StopError::TooLong {
                limit: MAX_STOP_BYTES
            }
        );
        assert!(StopFilter::new(&[&long[1..]]).is_ok());
        assert_eq!(
            StopFilter::new(&["a"; MAX_STOPS + 1]).unwrap_err(),
            StopError::TooMany { limit: MAX_STOPS }
        );
        assert_eq!(
            StopError::TooLong { limit: 32 }.to_string(),
            "a stop sequence is longer than 32 bytes"
        );
    }

    #[test]
    fn no_stops_pass_everything_through() {
        let (out, stopped) = run(&[], &["a", "bc", ""], "abc");
        assert_eq!((out.as_str(), stopped), ("abc", false));
    }

    #[test]
    fn longest_stops_fit() {
        let stop = "é".repeat(MAX_STOP_BYTES / 2);
        let text = std::format!("x{}y{stop}z", &stop[..MAX_STOP_BYTES - 2]);
        let pieces = split(&text, &[1, 5, 31, 33, 40, 60]);
        let want = expected(&text, &[&stop]);
        assert_eq!(run(&[&stop], &pieces, want), (want.to_string(), true));
    }

    quickcheck! {
        fn output_is_the_text_cut_before_the_first_stop(
            bytes: Vec<u8>, picks: Vec<u8>, cuts: Vec<usize>
        ) -> bool {
            let text = text_from(&bytes);
            let stops = stops_from(&picks);
            let want = expected(&text, &stops);
            // `run` also checks that nothing emitted ever runs past `want` or holds a stop.
            let (out, stopped) = run(&stops, &split(&text, &cuts), want);
            out == want && (!stopped || want.len() < text.len())
        }

        fn split_points_do_not_change_the_output(
            bytes: Vec<u8>, picks: Vec<u8>, cuts: Vec<usize>
        ) -> bool {
            let text = text_from(&bytes);
            let stops = stops_from(&picks);
            let want = expected(&text, &stops);
            run(&stops, &split(&text, &cuts), want) == run(&stops, &[&text], want)
        }

        fn any_text_survives_when_no_stop_occurs(text: String, cuts: Vec<usize>) -> bool {
            let stops = ["<|im_end|>", "\n\nUser:"];
            let want = expected(&text, &stops);
            run(&stops, &split(&text, &cuts), want).0 == want
        }
    }
}
