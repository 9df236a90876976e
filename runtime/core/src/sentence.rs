//! Sentences out of streamed text, for text-to-speech that starts speaking before the reply ends
//! (like Home Assistant's streaming TTS over Wyoming: `synthesize-chunk` per sentence).
//!
//! A sentence ends at `.`, `!`, `?` or `…` (or a run of them, with closing quotes and brackets
//! right after) followed by whitespace and a character that starts a sentence: an upper-case
//! letter, a digit, an opening quote or bracket, or a `*`/`-` list marker. Since that character
//! decides, text is held back until it arrives. A newline after terminal punctuation, a blank
//! line, or a newline followed by a list marker (`- `, `* `, `1. `) ends a sentence at once.
//!
//! No split after common abbreviations (`Dr.`, `e.g.`, `etc.` …), single initials (`J. R. R.
//! Tolkien`), a list number at the start of a line (`1. `), or inside numbers (`3.14`, `v1.2`).
//! Chunks are trimmed and never empty; a sentence longer than the buffer is cut at its last
//! whitespace (or, in one enormous word, anywhere between characters), so nothing is lost.
//! Decisions depend only on the text, never on how it was split into pieces.

use heapless::String;

/// Words that end in a period without ending the sentence (compared ignoring ASCII case).
const ABBREVIATIONS: [&str; 16] = [
    "mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs", "etc", "e.g", "i.e", "fig", "figs",
    "approx", "no",
];

fn is_terminal(c: char) -> bool {
    matches!(c, '.' | '!' | '?' | '…')
}

/// Closing quotes and brackets (and Markdown emphasis) that may follow terminal punctuation.
fn is_closer(c: char) -> bool {
    matches!(
        c,
        '"' | '\'' | '”' | '’' | '»' | ')' | ']' | '}' | '*' | '_'
    )
}

/// Opening quotes and brackets.
fn is_opener(c: char) -> bool {
    matches!(
        c,
        '"' | '\'' | '“' | '‘' | '„' | '«' | '(' | '[' | '{' | '¿' | '¡'
    )
}

/// A character that may begin a sentence.
fn starts_sentence(c: char) -> bool {
    c.is_uppercase() || c.is_ascii_digit() || is_opener(c) || matches!(c, '*' | '-')
}

/// True when `body` (no trailing whitespace) ends with terminal punctuation and closers.
fn ends_with_terminal(body: &str) -> bool {
    body.trim_end_matches(is_closer).ends_with(is_terminal)
}

/// True when the period after `stem` is an abbreviation's, an initial's or a list number's,
/// given the character `next` that follows the whitespace after it.
fn period_is_not_an_end(stem: &str, next: char) -> bool {
    let raw = stem.rsplit(char::is_whitespace).next().unwrap_or(stem);
    let word = raw.trim_start_matches(is_opener);
    if word.is_empty() {
        return false;
    }
    let mut chars = word.chars();
    if let (Some(first), None) = (chars.next(), chars.next()) {
        // "J. R. R. Tolkien".
        if first.is_uppercase() {
            return true;
        }
    }
    // "e.g", "U.S", "a.m": single letters between periods.
    if word.contains('.')
        && word.split('.').all(|part| {
            let mut chars = part.chars();
            matches!((chars.next(), chars.next()), (Some(c), None) if c.is_alphabetic())
        })
    {
        return true;
    }
    if let Some(abbreviation) = ABBREVIATIONS.iter().find(|a| a.eq_ignore_ascii_case(word)) {
        // "No. 5", but "The answer is no. It …" ends a sentence.
        return *abbreviation != "no" || next.is_ascii_digit();
    }
    // "1. First step" at the start of a line.
    let before = stem[..stem.len() - raw.len()].trim_end_matches([' ', '\t']);
    word.bytes().all(|b| b.is_ascii_digit()) && (before.is_empty() || before.ends_with('\n'))
}

/// Splits streamed text into sentences for speech, holding at most `N` bytes (`N >= 4`).
#[derive(Debug, Clone)]
pub struct SentenceSplitter<const N: usize> {
    /// The unfinished sentence; never starts with whitespace.
    buf: String<N>,
}

impl<const N: usize> Default for SentenceSplitter<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> SentenceSplitter<N> {
    /// An empty splitter.
    pub const fn new() -> Self {
        const { assert!(N >= 4, "a sentence buffer must hold any character") };
        SentenceSplitter { buf: String::new() }
    }

    /// The text held back so far (the start of the next sentence).
    pub fn pending(&self) -> &str {
        &self.buf
    }

    /// Feeds the next piece of text and calls `emit` with each sentence it completes.
    pub fn push(&mut self, text: &str, emit: &mut impl FnMut(&str)) {
        for c in text.chars() {
            self.step(c, emit);
        }
    }

    /// Ends the text: emits what is left as the last sentence.
    pub fn finish(&mut self, emit: &mut impl FnMut(&str)) {
        let len = self.buf.len();
        self.split_at(len, emit);
    }

    fn step(&mut self, c: char, emit: &mut impl FnMut(&str)) {
        let space = c.is_whitespace();
        if !space && let Some(at) = self.sentence_end_before(c) {
            self.split_at(at, emit);
        }
        if self.buf.len() + c.len_utf8() > N {
            self.make_room(c.len_utf8(), emit);
        }
        if self.buf.is_empty() && space {
            return;
        }
        // `make_room` left room for `c`.
        let _ = self.buf.push(c);
        if c == '\n' {
            let body = self.buf.trim_end();
            let blank_line = self.buf[body.len()..].matches('\n').count() >= 2;
            if blank_line || ends_with_terminal(body) {
                let len = self.buf.len();
                self.split_at(len, emit);
            }
        } else if matches!(c, ' ' | '\t')
            && let Some(at) = self.list_item_start()
        {
            self.split_at(at, emit);
        }
    }

    /// Where the sentence ends if the character `next` (not whitespace) starts a new one.
    fn sentence_end_before(&self, next: char) -> Option<usize> {
        let body = self.buf.trim_end();
        if body.len() == self.buf.len() || !starts_sentence(next) {
            return None;
        }
        let unclosed = body.trim_end_matches(is_closer);
        let stem = unclosed.trim_end_matches(is_terminal);
        match &unclosed[stem.len()..] {
            "" => None,
            "." if period_is_not_an_end(stem, next) => None,
            _ => Some(body.len()),
        }
    }

    /// With a space just added: where a list item starts on a new line (`\n- `, `\n* `, `\n1. `),
    /// if the buffer holds text before it.
    fn list_item_start(&self) -> Option<usize> {
        let before = &self.buf[..self.buf.len() - 1];
        let marker_at = if let Some(number) = before.strip_suffix(['.', ')']) {
            let rest = number.trim_end_matches(|c: char| c.is_ascii_digit());
            if !(1..=3).contains(&(number.len() - rest.len())) {
                return None;
            }
            rest.len()
        } else {
            before.strip_suffix(['-', '*', '+'])?.len()
        };
        let indent = before[..marker_at].trim_end_matches([' ', '\t']);
        let text = indent.strip_suffix('\n')?.trim_end();
        (!text.is_empty()).then_some(text.len())
    }

    /// Emits the buffer up to `at` (trimmed, if anything is left) and keeps the rest.
    fn split_at(&mut self, at: usize, emit: &mut impl FnMut(&str)) {
        let (sentence, rest) = self.buf.split_at(at);
        let sentence = sentence.trim();
        if !sentence.is_empty() {
            emit(sentence);
        }
        let mut kept = String::new();
        // A part of the buffer fits in it.
        let _ = kept.push_str(rest.trim_start());
        self.buf = kept;
    }

    /// The buffer is too full for `need` more bytes: emit up to its last whitespace, or all.
    fn make_room(&mut self, need: usize, emit: &mut impl FnMut(&str)) {
        match self.buf.rfind(char::is_whitespace) {
            Some(at) if at > 0 => self.split_at(at, emit),
            _ => self.finish(emit),
        }
        if self.buf.len() + need > N {
            self.finish(emit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::split;
    use quickcheck::quickcheck;
    use std::string::{String, ToString};
    use std::vec::Vec;

    /// The sentences of `pieces` pushed one after another; checks every chunk.
    fn sentences<const N: usize>(pieces: &[&str]) -> Vec<String> {
        let mut splitter = SentenceSplitter::<N>::new();
        let mut out = Vec::new();
        let mut emit = |s: &str| {
            assert!(!s.is_empty() && s.trim() == s && s.len() <= N, "{s:?}");
            out.push(s.to_string());
        };
        for piece in pieces {
            splitter.push(piece, &mut emit);
        }
        splitter.finish(&mut emit);
        out
    }

    fn normalized(text: &str) -> String {
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn a_typical_reply() {
        let text = "Paris is the capital of France. It is known for the Eiffel Tower! Dr. Smith \
                    lives there. The value is 3.14 exactly.\n\n- First item\n- Second item";
        let want = [
            "Paris is the capital of France.",
            "It is known for the Eiffel Tower!",
            "Dr. Smith lives there.",
            "The value is 3.14 exactly.",
            "- First item",
            "- Second item",
        ];
        assert_eq!(sentences::<256>(&[text]), want);
        // Token by token, as a model streams it.
        let tokens: Vec<&str> = text.split_inclusive([' ', '.', '\n']).collect();
        assert_eq!(sentences::<256>(&tokens), want);
    }

    #[test]
    fn a_sentence_waits_for_the_next_one_to_start() {
        let mut splitter = SentenceSplitter::<64>::new();
        let mut out = Vec::new();
        splitter.push("Hello there. ", &mut |s: &str| out.push(s.to_string()));
        assert!(out.is_empty());
        splitter.push("how", &mut |s: &str| out.push(s.to_string()));
        assert!(out.is_empty(), "lower case does not start a sentence");
        splitter.push(" odd. Yes", &mut |s: &str| out.push(s.to_string()));
        assert_eq!(out, ["Hello there. how odd."]);
        assert_eq!(splitter.pending(), "Yes");
        // A newline after the punctuation decides at once.
        splitter.push("!\n", &mut |s: &str| out.push(s.to_string()));
        assert_eq!(out, ["Hello there. how odd.", "Yes!"]);
    }

    #[test]
    fn abbreviations_initials_and_numbers_do_not_end_sentences() {
        let text = "J. R. R. Tolkien wrote it, e.g. In 1937. Mrs. Jones vs. Mr. Brown met \
                    at St. Paul approx. At 5 p.m. She left. See Fig. 3 and No. 5 of v1.2 \
                    today. The answer is no. It is 2.5 times larger. Etc. Done.";
        assert_eq!(
            sentences::<256>(&[text]),
            [
                "J. R. R. Tolkien wrote it, e.g. In 1937.",
                "Mrs. Jones vs. Mr. Brown met at St. Paul approx. At 5 p.m. She left.",
                "See Fig. 3 and No. 5 of v1.2 today.",
                "The answer is no.",
                "It is 2.5 times larger.",
                "Etc. Done."
            ]
        );
    }

    #[test]
    fn quotes_brackets_and_runs_of_punctuation() {
        let text = "He said \"Stop!\" Then he left. (It was late.) Really?! \"Yes.\" Well… \
                    Maybe... **Note.** - a dash";
        assert_eq!(
            sentences::<256>(&[text]),
            [
                "He said \"Stop!\"",
                "Then he left.",
                "(It was late.)",
                "Really?!",
                "\"Yes.\"",
                "Well…",
                "Maybe...",
                "**Note.**",
                "- a dash"
            ]
        );
    }

    #[test]
    fn lines_and_lists() {
        let text = "Steps:\n1. Open the box.\n2. Take it out\n3) Enjoy\n\nRoses are red\n\
                    violets are blue\n  * nested\n+ plus\nend -\nnot a list";
        assert_eq!(
            sentences::<256>(&[text]),
            [
                "Steps:",
                "1. Open the box.",
                "2. Take it out",
                "3) Enjoy",
                "Roses are red\nviolets are blue",
                "* nested",
                "+ plus\nend -\nnot a list"
            ]
        );
        // CRLF line ends and a blank line with spaces in it.
        assert_eq!(
            sentences::<64>(&["One\r\n \r\nTwo\r\n- three"]),
            ["One", "Two", "- three"]
        );
    }

    #[test]
    fn long_sentences_are_cut_at_whitespace() {
        let text = "this sentence is much longer than sixteen bytes and goes on";
        let out = sentences::<16>(&[text]);
        assert_eq!(
            out,
            [
                "this sentence",
                "is much longer",
                "than sixteen",
                "bytes and goes",
                "on"
            ]
        );
        // One word longer than the buffer is cut between characters.
        assert_eq!(sentences::<8>(&["ééééééé x"]), ["éééé", "ééé x"]);
        assert_eq!(sentences::<4>(&["🔥🔥 a"]), ["🔥", "🔥", "a"]);
    }

    #[test]
    fn whitespace_alone_gives_nothing() {
        assert!(sentences::<16>(&[" \n\n \t", "", "\r\n"]).is_empty());
    }

    /// Text from pieces that trigger the rules.
    fn texty(picks: &[u8]) -> String {
        const PIECES: [&str; 24] = [
            "Mr", ".", " ", "\n", "Hello", "a", "3", "!", "?", "…", "\"", ")", "- ", "* ", "1. ",
            "e.g", "J", "é", "\n\n", "  ", "word", "No", "\r\n", "🔥",
        ];
        picks
            .iter()
            .map(|&p| PIECES[p as usize % PIECES.len()])
            .collect()
    }

    fn longest_word(text: &str) -> usize {
        text.split_whitespace().map(str::len).max().unwrap_or(0)
    }

    quickcheck! {
        fn chunks_are_the_text_with_whitespace_normalized(picks: Vec<u8>, cuts: Vec<usize>) -> bool {
            let text = texty(&picks);
            let out = sentences::<32>(&split(&text, &cuts));
            longest_word(&text) > 28 || normalized(&out.join(" ")) == normalized(&text)
        }

        fn split_points_do_not_change_the_chunks(picks: Vec<u8>, cuts: Vec<usize>) -> bool {
            let text = texty(&picks);
            sentences::<32>(&split(&text, &cuts)) == sentences::<32>(&[&text])
        }

        fn any_text_keeps_every_character(text: String, cuts: Vec<usize>) -> bool {
            let out = sentences::<16>(&split(&text, &cuts));
            let strip = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
            strip(&out.concat()) == strip(&text)
                && out == sentences::<16>(&[&text])
                && (longest_word(&text) > 12 || normalized(&out.join(" ")) == normalized(&text))
        }
    }
}
