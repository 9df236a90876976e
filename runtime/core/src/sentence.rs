//! Sentences out of streamed text, for text-to-speech: a voice kiosk speaks each sentence as
//! soon as it is complete instead of waiting for the whole reply.
//!
//! A sentence ends at `.`, `!`, `?` or `…` (closing quotes and brackets may follow) when the
//! next word starts like a sentence (a capital, a digit, an opening quote or bracket, a list
//! marker), or at a line break after one; a blank line always ends one, and so does a line
//! break before a list item. Common abbreviations (`Dr.`, `e.g.`, …) and initials (`J. R.`)
//! do not end a sentence; decimal numbers (`3.14`) have no space after the point, so they do not
//! either. Sentences are emitted trimmed; a sentence longer than the buffer is cut at its last
//! space, so memory stays bounded and no text is lost.

use heapless::String;

/// Words that end with a period without ending a sentence (compared in lower case, without the
/// final period).
const ABBREVIATIONS: [&str; 15] = [
    "mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs", "etc", "e.g", "i.e", "no", "fig",
    "approx",
];

/// Collects streamed text and emits whole sentences; holds at most `N` bytes.
#[derive(Debug, Clone, Default)]
pub struct SentenceSplitter<const N: usize> {
    buf: String<N>,
}

impl<const N: usize> SentenceSplitter<N> {
    /// An empty splitter.
    pub fn new() -> Self {
        SentenceSplitter { buf: String::new() }
    }

    /// Feeds the next piece of text; `emit` gets each sentence now complete.
    pub fn push(&mut self, text: &str, emit: &mut impl FnMut(&str)) {
        for c in text.chars() {
            self.push_char(c, emit);
        }
    }

    /// Ends the text: emits what is left.
    pub fn finish(&mut self, emit: &mut impl FnMut(&str)) {
        emit_trimmed(&self.buf, emit);
        self.buf.clear();
    }

    fn push_char(&mut self, c: char, emit: &mut impl FnMut(&str)) {
        if c.is_whitespace() {
            if c == '\n' {
                let body = self.buf.trim_end();
                let blank_line = self.buf[body.len()..].contains('\n');
                if blank_line || ends_sentence(body) {
                    emit_trimmed(body, emit);
                    self.buf.clear();
                    return;
                }
            }
        } else if self.buf.ends_with(char::is_whitespace) {
            // The first character of a word: does a sentence end before it?
            let body = self.buf.trim_end();
            let after_break = self.buf[body.len()..].contains('\n');
            let cut =
                (ends_sentence(body) && starts_sentence(c)) || (after_break && starts_list_item(c));
            if cut {
                emit_trimmed(body, emit);
                self.buf.clear();
            }
        }
        if self.buf.push(c).is_err() {
            self.make_room(emit);
            // After making room the buffer holds at most N - 4 bytes.
            let _ = self.buf.push(c);
        }
    }

    /// The buffer is full: emit up to its last space (or all of it) as a sentence.
    fn make_room(&mut self, emit: &mut impl FnMut(&str)) {
        let text = self.buf.as_str();
        let cut = match text.trim_end().rfind(char::is_whitespace) {
            Some(at) if at > 0 => at,
            _ => text.len(),
        };
        emit_trimmed(&text[..cut], emit);
        let mut rest: String<N> = String::new();
        let _ = rest.push_str(&text[cut..]);
        // Keep room for the next character even when the rest is long.
        if rest.len() + 4 > N {
            emit_trimmed(&rest, emit);
            rest.clear();
        }
        self.buf = rest;
    }
}

fn emit_trimmed(text: &str, emit: &mut impl FnMut(&str)) {
    let text = text.trim();
    if !text.is_empty() {
        emit(text);
    }
}

/// Whether `text` (no trailing whitespace) ends with the end of a sentence.
fn ends_sentence(text: &str) -> bool {
    let body = text.trim_end_matches(['"', '\'', '”', '’', ')', ']', '»']);
    let Some(last) = body.chars().next_back() else {
        return false;
    };
    match last {
        '!' | '?' | '…' => true,
        '.' => {
            let word_start = body
                .rfind(|c: char| c.is_whitespace() || c == '(' || c == '"')
                .map_or(0, |at| at + 1);
            let word = body[word_start..].trim_end_matches('.');
            !is_abbreviation(word) && !body.ends_with("..") || body.ends_with("...")
        }
        _ => false,
    }
}

fn is_abbreviation(word: &str) -> bool {
    let mut chars = word.chars();
    if let (Some(first), None) = (chars.next(), chars.next())
        && first.is_uppercase()
    {
        return true; // an initial
    }
    ABBREVIATIONS.iter().any(|a| word.eq_ignore_ascii_case(a))
}

fn starts_sentence(c: char) -> bool {
    c.is_uppercase()
        || c.is_ascii_digit()
        || matches!(
            c,
            '"' | '\'' | '“' | '‘' | '(' | '[' | '«' | '*' | '-' | '•'
        )
}

fn starts_list_item(c: char) -> bool {
    c.is_ascii_digit() || matches!(c, '*' | '-' | '•')
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::{Arbitrary, Gen, quickcheck};
    use std::string::{String as StdString, ToString};
    use std::vec::Vec;

    fn split<const N: usize>(text: &str, cuts: &[usize]) -> Vec<StdString> {
        let mut splitter = SentenceSplitter::<N>::new();
        let mut out = Vec::new();
        let mut points: Vec<usize> = cuts
            .iter()
            .map(|c| c % (text.len() + 1))
            .filter(|&c| text.is_char_boundary(c))
            .collect();
        points.extend([0, text.len()]);
        points.sort_unstable();
        points.dedup();
        for pair in points.windows(2) {
            splitter.push(&text[pair[0]..pair[1]], &mut |s| out.push(s.to_string()));
        }
        splitter.finish(&mut |s| out.push(s.to_string()));
        out
    }

    #[test]
    fn splits_a_reply_into_sentences() {
        let text = "Paris is the capital of France. It is known for the Eiffel Tower! \
                    Dr. Smith lives there. The value is 3.14 exactly.\n\n- First item\n- Second item";
        assert_eq!(
            split::<256>(text, &[]),
            [
                "Paris is the capital of France.",
                "It is known for the Eiffel Tower!",
                "Dr. Smith lives there.",
                "The value is 3.14 exactly.",
                "- First item",
                "- Second item",
            ]
        );
    }

    #[test]
    fn guards_abbreviations_initials_and_lower_case() {
        assert_eq!(
            split::<256>(
                "J. R. R. Tolkien wrote it, e.g. The Hobbit. see? no split. Done",
                &[]
            ),
            [
                "J. R. R. Tolkien wrote it, e.g. The Hobbit. see? no split.",
                "Done"
            ]
        );
        assert_eq!(
            split::<256>("Wait... What? \"Yes.\" (Sure.) Fine", &[]),
            ["Wait...", "What?", "\"Yes.\"", "(Sure.)", "Fine"]
        );
    }

    #[test]
    fn a_sentence_is_emitted_as_soon_as_the_next_one_starts() {
        let mut splitter = SentenceSplitter::<256>::new();
        let mut out = Vec::new();
        splitter.push("Hello there. ", &mut |s| out.push(s.to_string()));
        assert!(out.is_empty(), "the next word decides");
        splitter.push("How", &mut |s| out.push(s.to_string()));
        assert_eq!(out, ["Hello there."]);
        splitter.push(" are you?\n", &mut |s| out.push(s.to_string()));
        assert_eq!(out, ["Hello there.", "How are you?"]);
    }

    #[test]
    fn long_sentences_are_cut_at_spaces() {
        let text = "word ".repeat(40);
        let chunks = split::<32>(&text, &[]);
        assert!(chunks.iter().all(|c| c.len() <= 32));
        assert_eq!(chunks.join(" "), text.trim());
        let chunks = split::<16>(&"x".repeat(50), &[]);
        assert_eq!(chunks.concat(), "x".repeat(50));
    }

    #[derive(Debug, Clone)]
    struct Prose(StdString);

    impl Arbitrary for Prose {
        fn arbitrary(g: &mut Gen) -> Self {
            let words = [
                "Paris", "is", "nice.", "Dr.", "Who?", "3.14", "\n", "\n\n", "- item", "é", "e.g.",
                "ok!", "  ", "…", "\"Hi.\"", "1.", "x",
            ];
            let n = usize::arbitrary(g) % 30;
            let mut text = StdString::new();
            for _ in 0..n {
                text.push_str(g.choose(&words).unwrap());
                if bool::arbitrary(g) {
                    text.push(' ');
                }
            }
            Prose(text)
        }
    }

    fn squash(text: &str) -> StdString {
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    fn without_whitespace(text: &str) -> StdString {
        text.chars().filter(|c| !c.is_whitespace()).collect()
    }

    quickcheck! {
        fn no_text_is_lost(text: Prose, cuts: Vec<usize>) -> bool {
            squash(&split::<64>(&text.0, &cuts).join(" ")) == squash(&text.0)
        }

        fn split_points_do_not_matter(text: Prose, a: Vec<usize>, b: Vec<usize>) -> bool {
            split::<64>(&text.0, &a) == split::<64>(&text.0, &b)
        }

        fn arbitrary_text_is_kept_and_bounded(text: StdString, cuts: Vec<usize>) -> bool {
            let chunks = split::<16>(&text, &cuts);
            // A cut forced inside a word adds a break there: compare without whitespace.
            chunks.iter().all(|c| c.len() <= 16 && !c.is_empty())
                && without_whitespace(&chunks.concat()) == without_whitespace(&text)
        }
    }
}
