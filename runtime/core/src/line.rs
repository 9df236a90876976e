//! Line mode: what a person types through picocom, minicom or screen, and the slash commands.
//!
//! [`LineEditor`] takes the bytes of a raw serial terminal one at a time, echoes them, handles
//! backspace (a whole UTF-8 character at a time), Ctrl-C, Ctrl-U and tab, swallows the escape
//! sequences of arrow and function keys, and hands over each line when Enter is pressed (CR, LF
//! or CRLF, whatever the terminal sends). [`parse_line`] turns a line into a [`Command`].
//!
//! The byte `0x00` (a frame delimiter) never reaches the editor: the caller switches to frame
//! mode on it. If it does arrive it is ignored like other control bytes.

use core::fmt;

const CTRL_C: u8 = 0x03;
const BACKSPACE: u8 = 0x08;
const TAB: u8 = 0x09;
const LF: u8 = 0x0A;
const CR: u8 = 0x0D;
const CTRL_U: u8 = 0x15;
const ESC: u8 = 0x1B;
const DEL: u8 = 0x7F;

/// Echoed to erase one character on the terminal.
const ERASE: &[u8] = b"\x08 \x08";

/// Why a typed line was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineError {
    /// The line is longer than the editor holds; it was dropped.
    TooLong {
        /// The most bytes a line may have.
        limit: usize,
    },
    /// The line is not valid UTF-8 (check the terminal's character set).
    InvalidUtf8,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LineError::TooLong { limit } => write!(f, "line longer than {limit} bytes: dropped"),
            LineError::InvalidUtf8 => f.write_str("line is not valid UTF-8: dropped"),
        }
    }
}

impl core::error::Error for LineError {}

/// What a byte completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineEvent<'a> {
    /// Enter was pressed: the line typed (possibly empty), without its line ending.
    Line(&'a str),
    /// Ctrl-C was pressed: the line was cleared.
    Interrupt,
    /// Enter was pressed on a line that cannot be used.
    Error(LineError),
}

/// Where the editor is in an escape sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Escape {
    #[default]
    None,
    /// After ESC.
    Start,
    /// After ESC `[`: parameters until a final byte `0x40..=0x7E`.
    Csi,
    /// After ESC `O`: one more byte.
    Ss3,
}

/// A line editor for a raw serial terminal holding at most `N` bytes per line.
#[derive(Debug, Clone, Default)]
pub struct LineEditor<const N: usize> {
    line: heapless::Vec<u8, N>,
    /// More was typed than fits: the rest of the line is dropped and reported at Enter.
    overflowed: bool,
    /// The last byte was a CR: a LF right after it belongs to the same Enter.
    after_cr: bool,
    /// The last event returned a line that still borrows `line`.
    returned: bool,
    escape: Escape,
}

impl<const N: usize> LineEditor<N> {
    /// An empty editor.
    pub fn new() -> Self {
        Self::default()
    }

    /// The bytes typed so far on the current line.
    pub fn pending(&self) -> &[u8] {
        if self.returned { &[] } else { &self.line }
    }

    /// Forgets the current line and any half-read escape sequence (no echo).
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// Takes one byte from the terminal, calls `echo` with what to send back, and returns what
    /// the byte completed, if anything.
    pub fn push(&mut self, byte: u8, echo: &mut impl FnMut(&[u8])) -> Option<LineEvent<'_>> {
        if core::mem::take(&mut self.returned) {
            self.line.clear();
        }
        if core::mem::take(&mut self.after_cr) && byte == LF {
            return None;
        }
        match self.escape {
            Escape::None => {}
            Escape::Start => {
                self.escape = match byte {
                    b'[' => Escape::Csi,
                    b'O' => Escape::Ss3,
                    _ => Escape::None,
                };
                if self.escape != Escape::None {
                    return None;
                }
                // ESC then something else (a lone Escape key): take the byte as typed.
            }
            Escape::Csi => match byte {
                0x20..=0x3F => return None,
                0x40..=0x7E => {
                    self.escape = Escape::None;
                    return None;
                }
                // Not a sequence after all: take the byte as typed.
                _ => self.escape = Escape::None,
            },
            Escape::Ss3 => {
                self.escape = Escape::None;
                if (0x20..=0x7E).contains(&byte) {
                    return None;
                }
            }
        }
        match byte {
            CR | LF => {
                self.after_cr = byte == CR;
                echo(b"\r\n");
                Some(self.end_line())
            }
            CTRL_C => {
                self.line.clear();
                self.overflowed = false;
                echo(b"^C\r\n");
                Some(LineEvent::Interrupt)
            }
            BACKSPACE | DEL => {
                if !self.overflowed && self.erase_char() {
                    echo(ERASE);
                }
                None
            }
            CTRL_U => {
                while self.erase_char() {
                    echo(ERASE);
                }
                self.overflowed = false;
                None
            }
            ESC => {
                self.escape = Escape::Start;
                None
            }
            TAB => {
                self.insert(b' ', echo);
                None
            }
            0x20..=0x7E | 0x80..=0xFF => {
                self.insert(byte, echo);
                None
            }
            _ => None,
        }
    }

    /// Stores and echoes a typed byte, unless the line is full. A character's first byte is
    /// refused when the whole character would not fit, so a stored line never ends in half a
    /// character that was typed whole.
    fn insert(&mut self, byte: u8, echo: &mut impl FnMut(&[u8])) {
        if self.overflowed {
            return;
        }
        let needed = match byte {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => 1,
        };
        if self.line.len() + needed > N || self.line.push(byte).is_err() {
            self.overflowed = true;
            return;
        }
        echo(&[byte]);
    }

    /// Removes the last character typed (up to three continuation bytes and their lead byte);
    /// false when the line is empty.
    fn erase_char(&mut self) -> bool {
        let Some(&last) = self.line.last() else {
            return false;
        };
        let mut len = 1;
        if last & 0xC0 == 0x80 {
            let continuation = self
                .line
                .iter()
                .rev()
                .take(3)
                .take_while(|&&b| b & 0xC0 == 0x80)
                .count();
            let lead = self.line.len() - continuation;
            len = match lead.checked_sub(1).map(|i| self.line[i]) {
                Some(b) if b >= 0xC0 => continuation + 1,
                _ => 1,
            };
        }
        self.line.truncate(self.line.len() - len);
        true
    }

    /// Enter: the line, or why it cannot be used.
    fn end_line(&mut self) -> LineEvent<'_> {
        if core::mem::take(&mut self.overflowed) {
            self.line.clear();
            return LineEvent::Error(LineError::TooLong { limit: N });
        }
        if core::str::from_utf8(&self.line).is_err() {
            self.line.clear();
            return LineEvent::Error(LineError::InvalidUtf8);
        }
        self.returned = true;
        // Checked just above; the line is not touched in between.
        core::str::from_utf8(&self.line)
            .map_or(LineEvent::Error(LineError::InvalidUtf8), LineEvent::Line)
    }
}

/// The help text of line mode (for a raw terminal: lines end in CR LF).
pub const HELP: &str = "\
Type a message and press Enter to chat. Commands:\r\n\
  /help                 this text\r\n\
  /reset                forget the conversation\r\n\
  /stats                statistics of the last reply\r\n\
  /set                  show the settings\r\n\
  /set NAME VALUE       change a setting:\r\n\
      temperature       0 = always the most likely token; e.g. 0.7\r\n\
      top_k             keep the K most likely tokens (0 = no limit)\r\n\
      top_p             keep tokens up to this probability mass, in (0, 1]\r\n\
      repeat_penalty    above 1 discourages repeating recent tokens (1 = off)\r\n\
      seed              seed of the random generator\r\n\
      max_tokens        most tokens in one reply\r\n\
  /system               show the system prompt\r\n\
  /system TEXT          set the system prompt\r\n\
Ctrl-C stops a reply or clears the line; Ctrl-U clears the line.\r\n";

/// A change to a sampling or generation setting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Setting {
    /// Softmax temperature (`0` is greedy).
    Temperature(f32),
    /// Keep only the K most likely tokens (`0` is no limit).
    TopK(u32),
    /// Nucleus sampling mass, in `(0, 1]`.
    TopP(f32),
    /// Repetition penalty (`1` is off).
    RepeatPenalty(f32),
    /// Seed of the random generator.
    Seed(u64),
    /// Most tokens in one reply.
    MaxTokens(u32),
}

/// What a line asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Command<'a> {
    /// A message to the model (trimmed).
    Say(&'a str),
    /// `/help`.
    Help,
    /// `/reset`: forget the conversation.
    Reset,
    /// `/stats`: figures of the last reply.
    Stats,
    /// `/set` alone: show the settings.
    ShowSettings,
    /// `/set NAME VALUE`.
    Set(Setting),
    /// `/system` alone: show the system prompt.
    ShowSystem,
    /// `/system TEXT`: a new system prompt.
    System(&'a str),
    /// A blank line.
    Empty,
}

/// Why a line is not a valid command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandError<'a> {
    /// `/NAME` is not a command (the name, without the slash).
    UnknownCommand(&'a str),
    /// `/set NAME …` with a name that is not a setting.
    UnknownSetting(&'a str),
    /// `/set NAME` without a value (the setting's name).
    MissingValue(&'a str),
    /// `/set NAME VALUE` with a value that is not a number in range.
    BadValue {
        /// The setting's name as typed.
        name: &'a str,
        /// The value as typed.
        value: &'a str,
    },
}

impl fmt::Display for CommandError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandError::UnknownCommand(name) => {
                write!(f, "unknown command /{name} — type /help")
            }
            CommandError::UnknownSetting(name) => {
                write!(f, "unknown setting {name} — type /help for the list")
            }
            CommandError::MissingValue(name) => write!(f, "/set {name} needs a value"),
            CommandError::BadValue { name, value } => {
                write!(f, "{value} is not a valid value for {name}")?;
                match setting_kind(name) {
                    Some(Kind::Temperature) => f.write_str(" (a number, 0 or more)"),
                    Some(Kind::TopP) => f.write_str(" (a number above 0, at most 1)"),
                    Some(Kind::RepeatPenalty) => f.write_str(" (a number above 0)"),
                    Some(Kind::MaxTokens) => f.write_str(" (a whole number, 1 or more)"),
                    Some(Kind::TopK | Kind::Seed) | None => f.write_str(" (a whole number)"),
                }
            }
        }
    }
}

impl core::error::Error for CommandError<'_> {}

#[derive(Clone, Copy)]
enum Kind {
    Temperature,
    TopK,
    TopP,
    RepeatPenalty,
    Seed,
    MaxTokens,
}

fn setting_kind(name: &str) -> Option<Kind> {
    const NAMES: [(&str, Kind); 10] = [
        ("temperature", Kind::Temperature),
        ("top_k", Kind::TopK),
        ("top-k", Kind::TopK),
        ("top_p", Kind::TopP),
        ("top-p", Kind::TopP),
        ("repeat_penalty", Kind::RepeatPenalty),
        ("repeat-penalty", Kind::RepeatPenalty),
        ("seed", Kind::Seed),
        ("max_tokens", Kind::MaxTokens),
        ("max-tokens", Kind::MaxTokens),
    ];
    NAMES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|&(_, kind)| kind)
}

/// Splits off the first whitespace-separated word; the rest is trimmed.
fn first_word(text: &str) -> (&str, &str) {
    let text = text.trim();
    match text.find(char::is_whitespace) {
        Some(at) => (&text[..at], text[at..].trim_start()),
        None => (text, ""),
    }
}

fn parse_setting<'a>(name: &'a str, value: &'a str) -> Result<Setting, CommandError<'a>> {
    let kind = setting_kind(name).ok_or(CommandError::UnknownSetting(name))?;
    if value.is_empty() {
        return Err(CommandError::MissingValue(name));
    }
    let bad = CommandError::BadValue { name, value };
    let float = |ok: fn(f32) -> bool| match value.parse::<f32>() {
        Ok(v) if v.is_finite() && ok(v) => Ok(v),
        _ => Err(bad),
    };
    Ok(match kind {
        Kind::Temperature => Setting::Temperature(float(|v| v >= 0.0)?),
        Kind::TopP => Setting::TopP(float(|v| v > 0.0 && v <= 1.0)?),
        Kind::RepeatPenalty => Setting::RepeatPenalty(float(|v| v > 0.0)?),
        Kind::TopK => Setting::TopK(value.parse().map_err(|_| bad)?),
        Kind::Seed => Setting::Seed(value.parse().map_err(|_| bad)?),
        Kind::MaxTokens => match value.parse() {
            Ok(n) if n > 0 => Setting::MaxTokens(n),
            _ => return Err(bad),
        },
    })
}

/// Reads a typed line: a message, or a `/command`. Command and setting names ignore case.
pub fn parse_line(line: &str) -> Result<Command<'_>, CommandError<'_>> {
    let line = line.trim();
    let Some(command) = line.strip_prefix('/') else {
        return Ok(if line.is_empty() {
            Command::Empty
        } else {
            Command::Say(line)
        });
    };
    let (name, rest) = first_word(command);
    let is = |n: &str| name.eq_ignore_ascii_case(n);
    if is("help") || name == "?" {
        Ok(Command::Help)
    } else if is("reset") {
        Ok(Command::Reset)
    } else if is("stats") {
        Ok(Command::Stats)
    } else if is("set") {
        if rest.is_empty() {
            return Ok(Command::ShowSettings);
        }
        let (setting, value) = first_word(rest);
        parse_setting(setting, value).map(Command::Set)
    } else if is("system") {
        Ok(if rest.is_empty() {
            Command::ShowSystem
        } else {
            Command::System(rest)
        })
    } else {
        Err(CommandError::UnknownCommand(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::quickcheck;
    use std::string::{String, ToString};
    use std::vec::Vec;

    /// Everything an editor did for `bytes`: the echo and the events (lines owned).
    #[derive(Debug, PartialEq)]
    enum Ev {
        Line(String),
        Interrupt,
        Error(LineError),
    }

    fn session<const N: usize>(bytes: &[u8]) -> (Vec<u8>, Vec<Ev>) {
        let mut editor = LineEditor::<N>::new();
        let mut echo = Vec::new();
        let mut events = Vec::new();
        for &b in bytes {
            if let Some(event) = editor.push(b, &mut |e: &[u8]| echo.extend_from_slice(e)) {
                events.push(match event {
                    LineEvent::Line(l) => Ev::Line(l.to_string()),
                    LineEvent::Interrupt => Ev::Interrupt,
                    LineEvent::Error(e) => Ev::Error(e),
                });
            }
        }
        (echo, events)
    }

    fn line(s: &str) -> Ev {
        Ev::Line(s.to_string())
    }

    #[test]
    fn cr_lf_and_crlf_each_end_a_line_once() {
        let (echo, events) = session::<64>(b"hi\rthere\nyou\r\n\rok\n\n");
        assert_eq!(
            events,
            [
                line("hi"),
                line("there"),
                line("you"),
                line(""),
                line("ok"),
                line("")
            ]
        );
        assert_eq!(echo, b"hi\r\nthere\r\nyou\r\n\r\nok\r\n\r\n");
        // CR CR is two lines; the LF after the second CR is swallowed.
        let (_, events) = session::<64>(b"\r\r\n");
        assert_eq!(events, [line(""), line("")]);
    }

    #[test]
    fn backspace_erases_whole_characters() {
        // "café" then DEL erases "é" (2 bytes), BS erases "f", then "é" again.
        let mut typed = "café".as_bytes().to_vec();
        typed.extend_from_slice(b"\x7f\x08\xc3\xa9\r");
        let (echo, events) = session::<64>(&typed);
        assert_eq!(events, [line("caé")]);
        let mut want = "café".as_bytes().to_vec();
        want.extend_from_slice(b"\x08 \x08\x08 \x08\xc3\xa9\r\n");
        assert_eq!(echo, want);
        // A four-byte emoji goes in one backspace; backspace on an empty line echoes nothing.
        let mut typed = "a🔥".as_bytes().to_vec();
        typed.extend_from_slice(b"\x7f\x7f\x7f\x7fb\n");
        let (echo, events) = session::<64>(&typed);
        assert_eq!(events, [line("b")]);
        let mut want = "a🔥".as_bytes().to_vec();
        want.extend_from_slice(b"\x08 \x08\x08 \x08b\r\n");
        assert_eq!(echo, want);
    }

    #[test]
    fn ctrl_c_interrupts_and_ctrl_u_clears() {
        let (echo, events) = session::<64>(b"oops\x03yes\x15no\r");
        assert_eq!(events, [Ev::Interrupt, line("no")]);
        assert_eq!(
            echo,
            b"oops^C\r\nyes\x08 \x08\x08 \x08\x08 \x08no\r\n".as_slice()
        );
    }

    #[test]
    fn arrow_keys_and_other_controls_are_swallowed() {
        // Up, Left (CSI), Home as ESC O H, F5 as ESC [ 1 5 ~, a bell, NUL, then tab.
        let (echo, events) = session::<64>(b"a\x1b[A\x1b[Db\x1bOH\x1b[15~\x07\x00\tc\r");
        assert_eq!(events, [line("ab c")]);
        assert_eq!(echo, b"ab c\r\n");
    }

    #[test]
    fn over_long_lines_are_reported_once() {
        let (echo, events) = session::<4>(b"abcdef\rok\r");
        assert_eq!(
            events,
            [Ev::Error(LineError::TooLong { limit: 4 }), line("ok")]
        );
        assert_eq!(echo, b"abcd\r\nok\r\n");
        // A character that would not fit whole is not stored at all.
        let (echo, events) = session::<4>("abcé\r".as_bytes());
        assert_eq!(events, [Ev::Error(LineError::TooLong { limit: 4 })]);
        assert_eq!(echo, b"abc\r\n");
        // Ctrl-U gets out of an over-long line.
        let (_, events) = session::<4>(b"abcdef\x15xy\r");
        assert_eq!(events, [line("xy")]);
    }

    #[test]
    fn invalid_utf8_is_refused() {
        let (echo, events) = session::<16>(b"a\xffb\rc\xc3\r\xc3\xa9\r");
        assert_eq!(
            events,
            [
                Ev::Error(LineError::InvalidUtf8),
                Ev::Error(LineError::InvalidUtf8),
                line("é")
            ]
        );
        assert_eq!(echo, b"a\xffb\r\nc\xc3\r\n\xc3\xa9\r\n");
        assert_eq!(
            LineError::InvalidUtf8.to_string(),
            "line is not valid UTF-8: dropped"
        );
    }

    #[test]
    fn commands_parse() {
        assert_eq!(
            parse_line("  Hello there  "),
            Ok(Command::Say("Hello there"))
        );
        assert_eq!(parse_line(" \t "), Ok(Command::Empty));
        assert_eq!(parse_line("/help"), Ok(Command::Help));
        assert_eq!(parse_line("/HELP"), Ok(Command::Help));
        assert_eq!(parse_line("/reset"), Ok(Command::Reset));
        assert_eq!(parse_line("/stats"), Ok(Command::Stats));
        assert_eq!(parse_line("/set"), Ok(Command::ShowSettings));
        assert_eq!(
            parse_line("/set temperature 0.7"),
            Ok(Command::Set(Setting::Temperature(0.7)))
        );
        assert_eq!(
            parse_line("/set top-k 40"),
            Ok(Command::Set(Setting::TopK(40)))
        );
        assert_eq!(
            parse_line("/set top_p 0.9"),
            Ok(Command::Set(Setting::TopP(0.9)))
        );
        assert_eq!(
            parse_line("/set repeat-penalty 1.1"),
            Ok(Command::Set(Setting::RepeatPenalty(1.1)))
        );
        assert_eq!(
            parse_line("/set seed 18446744073709551615"),
            Ok(Command::Set(Setting::Seed(u64::MAX)))
        );
        assert_eq!(
            parse_line("/set max_tokens 256"),
            Ok(Command::Set(Setting::MaxTokens(256)))
        );
        assert_eq!(parse_line("/system"), Ok(Command::ShowSystem));
        assert_eq!(
            parse_line("/system  You are a pirate. "),
            Ok(Command::System("You are a pirate."))
        );
    }

    #[test]
    fn command_errors_explain_themselves() {
        let err = |line| parse_line(line).unwrap_err();
        assert_eq!(err("/foo bar"), CommandError::UnknownCommand("foo"));
        assert_eq!(err("/foo").to_string(), "unknown command /foo — type /help");
        assert_eq!(err("/set warmth 3"), CommandError::UnknownSetting("warmth"));
        assert_eq!(err("/set seed"), CommandError::MissingValue("seed"));
        assert_eq!(err("/set seed").to_string(), "/set seed needs a value");
        for (line, name, value) in [
            ("/set temperature hot", "temperature", "hot"),
            ("/set temperature -1", "temperature", "-1"),
            ("/set temperature NaN", "temperature", "NaN"),
            ("/set top_p 1.5", "top_p", "1.5"),
            ("/set top_p 0", "top_p", "0"),
            ("/set top_k -3", "top_k", "-3"),
            ("/set repeat_penalty 0", "repeat_penalty", "0"),
            ("/set max_tokens 0", "max_tokens", "0"),
            ("/set seed 1 2", "seed", "1 2"),
        ] {
            assert_eq!(err(line), CommandError::BadValue { name, value }, "{line}");
        }
        assert_eq!(
            err("/set top_p 2").to_string(),
            "2 is not a valid value for top_p (a number above 0, at most 1)"
        );
    }

    #[test]
    fn help_is_for_a_raw_terminal() {
        assert!(HELP.ends_with("\r\n"));
        assert!(HELP.split("\r\n").all(|l| !l.contains('\n')));
        for word in [
            "/help",
            "/reset",
            "/stats",
            "/set",
            "/system",
            "top_k",
            "max_tokens",
        ] {
            assert!(HELP.contains(word), "{word}");
        }
    }

    quickcheck! {
        fn arbitrary_bytes_give_valid_bounded_lines(bytes: Vec<u8>) -> bool {
            let mut editor = LineEditor::<16>::new();
            bytes.iter().all(|&b| match editor.push(b, &mut |_: &[u8]| {}) {
                Some(LineEvent::Line(l)) => l.len() <= 16,
                _ => true,
            })
        }

        fn typed_text_comes_back_once(text: String, ending: u8) -> bool {
            // Printable text: no control characters (the editor would act on them).
            let text: String = text.chars().filter(|c| !c.is_control()).collect();
            let ending: &[u8] = [b"\r".as_slice(), b"\n", b"\r\n"][ending as usize % 3];
            let mut typed = text.as_bytes().to_vec();
            typed.extend_from_slice(ending);
            let (echo, events) = session::<1024>(&typed);
            let mut want_echo = text.as_bytes().to_vec();
            want_echo.extend_from_slice(b"\r\n");
            events == [Ev::Line(text)] && echo == want_echo
        }

        fn every_ending_then_more_text_gives_each_line(lines: Vec<(String, u8)>) -> bool {
            let mut typed = Vec::new();
            let mut want = Vec::new();
            for (text, ending) in &lines {
                let text: String = text.chars().filter(|c| !c.is_control()).collect();
                let ending = [b"\r".as_slice(), b"\n", b"\r\n"][*ending as usize % 3];
                // CR, nothing, LF is one CRLF: no second line.
                let merged = text.is_empty() && ending == b"\n" && typed.last() == Some(&b'\r');
                typed.extend_from_slice(text.as_bytes());
                typed.extend_from_slice(ending);
                if !merged {
                    want.push(Ev::Line(text));
                }
            }
            session::<1024>(&typed).1 == want
        }
    }
}
