//! Stop sequences on streamed text: the reply ends where a stop sequence completes, and a tail
//! that might be the start of one is held back until it is known not to be — so no part of a
//! stop sequence ever reaches the other side.

use core::fmt;
use heapless::{String, Vec};

/// Most stop sequences.
pub const MAX_STOPS: usize = 4;
/// Most bytes of one stop sequence.
pub const MAX_STOP_BYTES: usize = 32;

/// Bytes of the windows the filter looks through: a stop sequence on either side of a boundary.
const WINDOW: usize = 2 * MAX_STOP_BYTES + 4;

/// Stop sequences that cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopError {
    /// More stop sequences than [`MAX_STOPS`].
    TooMany {
        /// The limit.
        limit: usize,
    },
    /// A stop sequence longer than [`MAX_STOP_BYTES`].
    TooLong {
        /// The limit.
        limit: usize,
    },
    /// An empty stop sequence.
    Empty,
}

impl fmt::Display for StopError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopError::TooMany { limit } => write!(f, "at most {limit} stop sequences"),
            StopError::TooLong { limit } => {
                write!(f, "a stop sequence is longer than {limit} bytes")
            }
            StopError::Empty => f.write_str("a stop sequence is empty"),
        }
    }
}

impl core::error::Error for StopError {}

/// Filters streamed text through stop sequences.
#[derive(Debug, Clone, Default)]
pub struct StopFilter {
    stops: Vec<String<MAX_STOP_BYTES>, MAX_STOPS>,
    /// Text received but not emitted: a proper prefix of some stop sequence.
    pending: String<MAX_STOP_BYTES>,
    stopped: bool,
}

impl StopFilter {
    /// A filter for `stops` (none: text passes straight through).
    pub fn new(stops: &[&str]) -> Result<Self, StopError> {
        let mut filter = StopFilter::default();
        for stop in stops {
            if stop.is_empty() {
                return Err(StopError::Empty);
            }
            let mut owned = String::new();
            owned.push_str(stop).map_err(|_| StopError::TooLong {
                limit: MAX_STOP_BYTES,
            })?;
            filter
                .stops
                .push(owned)
                .map_err(|_| StopError::TooMany { limit: MAX_STOPS })?;
        }
        Ok(filter)
    }

    /// True once a stop sequence has completed.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Feeds the next piece of text; `emit` gets what can no longer be part of a stop sequence
    /// (at most two calls). Returns true when a stop sequence has completed: the text before it
    /// was emitted, the rest is dropped, and later pushes are ignored.
    pub fn push(&mut self, text: &str, emit: &mut impl FnMut(&str)) -> bool {
        if self.stopped {
            return true;
        }
        if self.stops.is_empty() {
            if !text.is_empty() {
                emit(text);
            }
            return false;
        }
        let held = self.pending.len();
        // The first stop sequence to complete (smallest end; at equal ends the longest), in
        // positions of `pending ‖ text`.
        let mut first: Option<(usize, usize)> = None;
        let head = self.head(text);
        for stop in &self.stops {
            let found = head
                .find(stop.as_str())
                .filter(|&at| at < held)
                .or_else(|| text.find(stop.as_str()).map(|at| held + at));
            if let Some(start) = found {
                let end = start + stop.len();
                if first.is_none_or(|(s, e)| end < e || (end == e && start < s)) {
                    first = Some((start, end));
                }
            }
        }
        if let Some((start, _)) = first {
            self.emit_until(text, start, emit);
            self.pending.clear();
            self.stopped = true;
            return true;
        }
        // Hold back the longest tail that could still grow into a stop sequence.
        let tail = self.tail(text);
        let keep = (1..=tail.len())
            .rev()
            .filter(|&k| tail.is_char_boundary(tail.len() - k))
            .find(|&k| {
                let suffix = &tail[tail.len() - k..];
                self.stops
                    .iter()
                    .any(|s| s.len() > suffix.len() && s.starts_with(suffix))
            })
            .unwrap_or(0);
        let total = held + text.len();
        self.emit_until(text, total - keep, emit);
        let kept: String<WINDOW> = {
            let mut s = String::new();
            let _ = s.push_str(&tail[tail.len() - keep..]);
            s
        };
        self.pending.clear();
        // A held tail is a proper prefix of a stop sequence, so it fits.
        let _ = self.pending.push_str(&kept);
        false
    }

    /// Ends the stream without a stop: emits the held-back tail.
    pub fn finish(&mut self, emit: &mut impl FnMut(&str)) {
        if !self.stopped && !self.pending.is_empty() {
            emit(&self.pending);
        }
        self.pending.clear();
    }

    /// Emits `pending ‖ text` up to byte `end`.
    fn emit_until(&self, text: &str, end: usize, emit: &mut impl FnMut(&str)) {
        let held = self.pending.len();
        let from_pending = &self.pending[..end.min(held)];
        if !from_pending.is_empty() {
            emit(from_pending);
        }
        if end > held {
            emit(&text[..end - held]);
        }
    }

    /// `pending` followed by the start of `text`: where a held tail may complete a stop.
    fn head(&self, text: &str) -> String<WINDOW> {
        let mut head = String::new();
        let _ = head.push_str(&self.pending);
        let mut end = text.len().min(WINDOW - head.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let _ = head.push_str(&text[..end]);
        head
    }

    /// The last bytes of `pending ‖ text` (at least a stop sequence's worth, whole characters).
    fn tail(&self, text: &str) -> String<WINDOW> {
        let mut tail = String::new();
        if text.len() < MAX_STOP_BYTES {
            let _ = tail.push_str(&self.pending);
            let _ = tail.push_str(text);
        } else {
            let mut start = text.len() - MAX_STOP_BYTES;
            while !text.is_char_boundary(start) {
                start -= 1;
            }
            let _ = tail.push_str(&text[start..]);
        }
        tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::{Arbitrary, Gen, quickcheck};
    use std::string::String as StdString;
    use std::vec::Vec as StdVec;

    /// Text over a small alphabet, so that stop sequences actually occur.
    #[derive(Debug, Clone)]
    struct Small(StdString);

    impl Arbitrary for Small {
        fn arbitrary(g: &mut Gen) -> Self {
            let alphabet = ['a', 'b', '\n', '<', '|', 'é', 'i', 'm'];
            let len = usize::arbitrary(g) % 40;
            Small((0..len).map(|_| *g.choose(&alphabet).unwrap()).collect())
        }
    }

    const STOP_SETS: [&[&str]; 5] = [
        &["ab"],
        &["\n\n", "<|im"],
        &["é", "ba"],
        &["abab", "b<"],
        &["<|im_end|>", "mi", "aaa"],
    ];

    /// The text before the first stop sequence to complete (non-streaming).
    fn expected(text: &str, stops: &[&str]) -> (StdString, bool) {
        let first = stops
            .iter()
            .filter_map(|s| text.find(s).map(|at| (at + s.len(), at)))
            .min_by_key(|&(end, start)| (end, start));
        match first {
            Some((_, start)) => (text[..start].into(), true),
            None => (text.into(), false),
        }
    }

    /// Streams `text` cut at `cuts`, checking after every push that what was emitted is a
    /// prefix of the final output; returns (output, stopped).
    fn stream(text: &str, stops: &[&str], cuts: &[usize]) -> (StdString, bool) {
        let (want, _) = expected(text, stops);
        let mut filter = StopFilter::new(stops).unwrap();
        let mut out = StdString::new();
        let mut points: StdVec<usize> = cuts
            .iter()
            .map(|c| c % (text.len() + 1))
            .filter(|&c| text.is_char_boundary(c))
            .collect();
        points.push(0);
        points.push(text.len());
        points.sort_unstable();
        points.dedup();
        let mut stopped = false;
        for pair in points.windows(2) {
            stopped = filter.push(&text[pair[0]..pair[1]], &mut |t| out.push_str(t));
            assert!(want.starts_with(&out), "leaked {out:?}, want {want:?}");
            for stop in stops {
                assert!(!out.contains(stop), "emitted a stop: {out:?}");
            }
        }
        filter.finish(&mut |t| out.push_str(t));
        (out, stopped || filter.stopped())
    }

    quickcheck! {
        fn output_is_the_text_before_the_first_stop(text: Small, set: u8, cuts: StdVec<usize>) -> bool {
            let stops = STOP_SETS[set as usize % STOP_SETS.len()];
            stream(&text.0, stops, &cuts) == expected(&text.0, stops)
        }

        fn split_points_do_not_matter(text: Small, set: u8, a: StdVec<usize>, b: StdVec<usize>) -> bool {
            let stops = STOP_SETS[set as usize % STOP_SETS.len()];
            stream(&text.0, stops, &a) == stream(&text.0, stops, &b)
        }

        fn arbitrary_text_passes_without_stops(text: StdString, cuts: StdVec<usize>) -> bool {
            stream(&text, &[], &cuts) == (text.clone(), false)
        }
    }

    #[test]
    fn holds_back_a_partial_stop_then_releases_it() {
        let mut filter = StopFilter::new(&["<|im_end|>"]).unwrap();
        let mut out = StdString::new();
        assert!(!filter.push("Paris.<|im", &mut |t| out.push_str(t)));
        assert_eq!(out, "Paris.");
        assert!(!filter.push("age", &mut |t| out.push_str(t)));
        assert_eq!(out, "Paris.<|image");
        assert!(filter.push(" <|im_end|> more", &mut |t| out.push_str(t)));
        assert_eq!(out, "Paris.<|image ");
        assert!(filter.push("ignored", &mut |t| out.push_str(t)));
        assert_eq!(out, "Paris.<|image ");
    }

    #[test]
    fn bad_stop_sets_are_refused() {
        assert_eq!(StopFilter::new(&[""]).unwrap_err(), StopError::Empty);
        assert_eq!(
            StopFilter::new(&["a"; 5]).unwrap_err(),
            StopError::TooMany { limit: MAX_STOPS }
        );
        let long = "x".repeat(MAX_STOP_BYTES + 1);
        assert_eq!(
            StopFilter::new(&[&long]).unwrap_err(),
            StopError::TooLong {
                limit: MAX_STOP_BYTES
            }
        );
    }
}
