//! Line mode: what a person types in a serial console (picocom, minicom, screen), edited as they
//! type it, and the slash commands.
//!
//! [`LineEditor`] takes one byte at a time and says what to echo. CR, LF and CRLF each end a
//! line once; backspace and DEL erase a whole character; Ctrl-U erases the line; Ctrl-C
//! interrupts; Tab is a space; ANSI escape sequences (arrow keys) and other control bytes are
//! ignored. [`parse_line`] turns a finished line into a [`Command`].

use core::fmt;
use heapless::Vec;

/// Erases one character on a terminal.
const ERASE: &[u8] = b"\x08 \x08";

/// Why a typed line was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineError {
    /// The line is longer than the editor holds.
    TooLong {
        /// The limit in bytes.
        limit: usize,
    },
    /// The line is not valid UTF-8.
    InvalidUtf8,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LineError::TooLong { limit } => write!(f, "line longer than {limit} bytes"),
            LineError::InvalidUtf8 => f.write_str("line is not valid UTF-8"),
        }
    }
}

impl core::error::Error for LineError {}

/// What a byte completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineEvent<'a> {
    /// A finished line (without its line end).
    Line(&'a str),
    /// Ctrl-C: the line was dropped.
    Interrupt,
    /// The line was refused.
    Error(LineError),
}

/// Where the editor is inside an escape sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Escape {
    #[default]
    None,
    /// After ESC.
    Start,
    /// After `ESC [`: parameters until a final byte.
    Csi,
    /// After `ESC O`: one more byte.
    Ss3,
}

/// Edits one line of at most `N` bytes.
#[derive(Debug, Clone, Default)]
pub struct LineEditor<const N: usize> {
    line: Vec<u8, N>,
    overflowed: bool,
    after_cr: bool,
    escape: Escape,
    /// A finished line is held here until the next byte.
    done: bool,
}

impl<const N: usize> LineEditor<N> {
    /// An empty editor.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one typed byte; `echo` gets the bytes to send back to the terminal.
    pub fn push(&mut self, byte: u8, echo: &mut impl FnMut(&[u8])) -> Option<LineEvent<'_>> {
        if core::mem::take(&mut self.done) {
            self.line.clear();
        }
        let after_cr = core::mem::take(&mut self.after_cr);
        match self.escape {
            Escape::None => {}
            Escape::Start => {
                self.escape = match byte {
                    b'[' => Escape::Csi,
                    b'O' => Escape::Ss3,
                    _ => Escape::None,
                };
                return None;
            }
            Escape::Csi => {
                if (0x40..=0x7E).contains(&byte) {
                    self.escape = Escape::None;
                }
                return None;
            }
            Escape::Ss3 => {
                self.escape = Escape::None;
                return None;
            }
        }
        match byte {
            b'\n' if after_cr => None,
            b'\r' | b'\n' => {
                self.after_cr = byte == b'\r';
                echo(b"\r\n");
                self.done = true;
                if core::mem::take(&mut self.overflowed) {
                    return Some(LineEvent::Error(LineError::TooLong { limit: N }));
                }
                Some(match core::str::from_utf8(&self.line) {
                    Ok(text) => LineEvent::Line(text),
                    Err(_) => LineEvent::Error(LineError::InvalidUtf8),
                })
            }
            0x03 => {
                echo(b"^C\r\n");
                self.line.clear();
                self.overflowed = false;
                Some(LineEvent::Interrupt)
            }
            0x08 | 0x7F => {
                if !self.overflowed && self.erase_char() {
                    echo(ERASE);
                }
                None
            }
            0x15 => {
                if !self.overflowed {
                    while self.erase_char() {
                        echo(ERASE);
                    }
                }
                None
            }
            0x1B => {
                self.escape = Escape::Start;
                None
            }
            b'\t' => self.insert(b' ', echo),
            byte if byte < 0x20 => None,
            byte => self.insert(byte, echo),
        }
    }

    fn insert(&mut self, byte: u8, echo: &mut impl FnMut(&[u8])) -> Option<LineEvent<'_>> {
        if self.overflowed || self.line.push(byte).is_err() {
            self.overflowed = true;
        } else {
            echo(&[byte]);
        }
        None
    }

    /// Removes the last character (all bytes of a UTF-8 sequence); false when the line is empty.
    fn erase_char(&mut self) -> bool {
        let Some(mut last) = self.line.pop() else {
            return false;
        };
        // Continuation bytes belong to the character whose lead byte comes before them.
        while last & 0xC0 == 0x80 {
            match self.line.pop() {
                Some(byte) => last = byte,
                None => break,
            }
        }
        true
    }
}

/// A setting that `/set` changes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Setting {
    /// Sampling temperature.
    Temperature(f32),
    /// Top-k.
    TopK(u32),
    /// Top-p.
    TopP(f32),
    /// Repetition penalty.
    RepeatPenalty(f32),
    /// Sampler seed.
    Seed(u64),
    /// Most tokens per reply.
    MaxTokens(u32),
}

/// What a typed line asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Command<'a> {
    /// A message to the model.
    Say(&'a str),
    /// `/help`.
    Help,
    /// `/reset`: forget the conversation.
    Reset,
    /// `/stats`: the last reply's counts and timings.
    Stats,
    /// `/set` alone: show the settings.
    ShowSettings,
    /// `/set NAME VALUE`.
    Set(Setting),
    /// `/system` alone: show the system prompt.
    ShowSystem,
    /// `/system TEXT`: set it.
    System(&'a str),
    /// A blank line.
    Empty,
}

/// Why a line is not a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandError<'a> {
    /// `/something` that is not a command.
    UnknownCommand(&'a str),
    /// `/set something` that is not a setting.
    UnknownSetting(&'a str),
    /// `/set NAME` without a value.
    MissingValue(&'a str),
    /// `/set NAME VALUE` with a value that is not a number of the right kind.
    BadValue {
        /// The setting.
        name: &'a str,
        /// The value typed.
        value: &'a str,
    },
}

impl fmt::Display for CommandError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandError::UnknownCommand(c) => write!(f, "unknown command {c} (type /help)"),
            CommandError::UnknownSetting(s) => write!(
                f,
                "unknown setting {s}: temperature, top_k, top_p, repeat_penalty, seed, max_tokens"
            ),
            CommandError::MissingValue(s) => write!(f, "/set {s} needs a value"),
            CommandError::BadValue { name, value } => {
                write!(f, "{value:?} is not a valid value for {name}")
            }
        }
    }
}

impl core::error::Error for CommandError<'_> {}

/// The help text (CRLF line ends: it goes to a raw serial terminal).
pub const HELP: &str = "Type a message and press Enter; the reply streams back. Ctrl-C stops it.\r\n\
/reset               forget the conversation\r\n\
/system TEXT         set the system prompt (and forget the conversation); /system shows it\r\n\
/set NAME VALUE      change a setting; /set shows them all:\r\n\
                     temperature (0 = greedy), top_k, top_p, repeat_penalty, seed, max_tokens\r\n\
/stats               counts and timings of the last reply\r\n\
/help                this text\r\n";

/// Reads a finished line.
pub fn parse_line(line: &str) -> Result<Command<'_>, CommandError<'_>> {
    let line = line.trim();
    let Some(command) = line.strip_prefix('/') else {
        return Ok(if line.is_empty() {
            Command::Empty
        } else {
            Command::Say(line)
        });
    };
    let (name, rest) = command
        .split_once(char::is_whitespace)
        .map_or((command, ""), |(n, r)| (n, r.trim()));
    match name {
        "help" | "?" => Ok(Command::Help),
        "reset" => Ok(Command::Reset),
        "stats" => Ok(Command::Stats),
        "system" if rest.is_empty() => Ok(Command::ShowSystem),
        "system" => Ok(Command::System(rest)),
        "set" if rest.is_empty() => Ok(Command::ShowSettings),
        "set" => parse_setting(rest).map(Command::Set),
        _ => Err(CommandError::UnknownCommand(
            line.split_whitespace().next().unwrap_or(line),
        )),
    }
}

fn parse_setting(text: &str) -> Result<Setting, CommandError<'_>> {
    let (name, value) = text
        .split_once(char::is_whitespace)
        .map_or((text, ""), |(n, v)| (n, v.trim()));
    if value.is_empty() {
        return Err(CommandError::MissingValue(name));
    }
    let bad = || CommandError::BadValue { name, value };
    let float = || value.parse::<f32>().map_err(|_| bad());
    match name {
        "temperature" => float().map(Setting::Temperature),
        "top_k" | "top-k" => value.parse().map(Setting::TopK).map_err(|_| bad()),
        "top_p" | "top-p" => float().map(Setting::TopP),
        "repeat_penalty" | "repeat-penalty" => float().map(Setting::RepeatPenalty),
        "seed" => value.parse().map(Setting::Seed).map_err(|_| bad()),
        "max_tokens" | "max-tokens" => value.parse().map(Setting::MaxTokens).map_err(|_| bad()),
        _ => Err(CommandError::UnknownSetting(name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::quickcheck;
    use std::string::{String, ToString};
    use std::vec::Vec as StdVec;

    /// Types `bytes`; returns the echo and the events (lines as owned strings).
    fn type_bytes<const N: usize>(
        bytes: &[u8],
    ) -> (StdVec<u8>, StdVec<Result<String, LineEvent<'static>>>) {
        let mut editor = LineEditor::<N>::new();
        let mut echo = StdVec::new();
        let mut events = StdVec::new();
        for &b in bytes {
            match editor.push(b, &mut |e| echo.extend_from_slice(e)) {
                Some(LineEvent::Line(text)) => events.push(Ok(text.to_string())),
                Some(LineEvent::Interrupt) => events.push(Err(LineEvent::Interrupt)),
                Some(LineEvent::Error(e)) => events.push(Err(LineEvent::Error(e))),
                None => {}
            }
        }
        (echo, events)
    }

    #[test]
    fn a_person_types_with_corrections() {
        // "héllo" with the é typed wrong, erased with backspace, arrow keys pressed, CRLF.
        let (echo, events) = type_bytes::<64>("hè\x7fé\x1b[D\x1bOAllo\r\n".as_bytes());
        assert_eq!(events, [Ok("héllo".to_string())]);
        assert_eq!(echo, "hè\x08 \x08éllo\r\n".as_bytes());
        // CR alone, LF alone, CR then LF then LF: three lines, the middle one empty.
        let (_, events) = type_bytes::<64>(b"a\rb\n\r\n\nc\r");
        let lines: StdVec<_> = events.into_iter().map(Result::unwrap).collect();
        assert_eq!(lines, ["a", "b", "", "", "c"]);
    }

    #[test]
    fn ctrl_c_ctrl_u_and_tabs() {
        let (echo, events) = type_bytes::<64>(b"oops\x03fix\x15ok\tgo\r");
        assert_eq!(events, [Err(LineEvent::Interrupt), Ok("ok go".to_string())]);
        assert_eq!(echo, b"oops^C\r\nfix\x08 \x08\x08 \x08\x08 \x08ok go\r\n");
        // Backspace on an empty line echoes nothing.
        let (echo, _) = type_bytes::<64>(b"\x7f\x08");
        assert!(echo.is_empty());
    }

    #[test]
    fn long_and_invalid_lines_are_refused_once() {
        let (echo, events) = type_bytes::<8>(b"0123456789abc\rok\r");
        assert_eq!(
            events,
            [
                Err(LineEvent::Error(LineError::TooLong { limit: 8 })),
                Ok("ok".to_string())
            ]
        );
        assert_eq!(echo, b"01234567\r\nok\r\n");
        let (_, events) = type_bytes::<8>(b"caf\xc3(\r");
        assert_eq!(events, [Err(LineEvent::Error(LineError::InvalidUtf8))]);
    }

    #[test]
    fn commands() {
        assert_eq!(
            parse_line("  hello there "),
            Ok(Command::Say("hello there"))
        );
        assert_eq!(parse_line("   "), Ok(Command::Empty));
        assert_eq!(parse_line("/help"), Ok(Command::Help));
        assert_eq!(parse_line("/reset"), Ok(Command::Reset));
        assert_eq!(parse_line("/stats"), Ok(Command::Stats));
        assert_eq!(parse_line("/set"), Ok(Command::ShowSettings));
        assert_eq!(parse_line("/system"), Ok(Command::ShowSystem));
        assert_eq!(
            parse_line("/system Be  brief."),
            Ok(Command::System("Be  brief."))
        );
        assert_eq!(
            parse_line("/set temperature 0.7"),
            Ok(Command::Set(Setting::Temperature(0.7)))
        );
        assert_eq!(
            parse_line("/set top-k 5"),
            Ok(Command::Set(Setting::TopK(5)))
        );
        assert_eq!(
            parse_line("/set max_tokens 64"),
            Ok(Command::Set(Setting::MaxTokens(64)))
        );
        assert_eq!(
            parse_line("/set seed 18446744073709551615"),
            Ok(Command::Set(Setting::Seed(u64::MAX)))
        );
        assert_eq!(
            parse_line("/frob x"),
            Err(CommandError::UnknownCommand("/frob"))
        );
        assert_eq!(
            parse_line("/set warmth 3"),
            Err(CommandError::UnknownSetting("warmth"))
        );
        assert_eq!(
            parse_line("/set top_p"),
            Err(CommandError::MissingValue("top_p"))
        );
        assert_eq!(
            parse_line("/set top_k -1"),
            Err(CommandError::BadValue {
                name: "top_k",
                value: "-1"
            })
        );
        assert!(HELP.split_terminator('\n').all(|l| l.ends_with('\r')));
    }

    quickcheck! {
        fn arbitrary_bytes_never_panic_and_lines_are_bounded_utf8(bytes: StdVec<u8>) -> bool {
            let (_, events) = type_bytes::<16>(&bytes);
            events.iter().all(|e| match e {
                Ok(line) => line.len() <= 16,
                Err(_) => true,
            })
        }

        fn typed_text_comes_back_once(text: String, end: u8) -> bool {
            let printable: String = text.chars().filter(|c| !c.is_control()).take(40).collect();
            let ending: &[u8] = match end % 3 { 0 => b"\r", 1 => b"\n", _ => b"\r\n" };
            let mut bytes = printable.as_bytes().to_vec();
            bytes.extend_from_slice(ending);
            let (echo, events) = type_bytes::<256>(&bytes);
            events == [Ok(printable.clone())] && echo.starts_with(printable.as_bytes())
        }

        fn commands_never_panic(text: String) -> bool {
            let _ = parse_line(&text);
            true
        }
    }
}
