//! Run: cd runtime/core && cargo +nightly fuzz run line_editor -- -max_total_time=60
//!
//! Arbitrary bytes typed into the line editor (and every line through the command parser): it
//! never panics, every line is valid UTF-8 of at most N bytes, and the echo of an accepted line
//! ends with CR LF.
#![no_main]

use core::fmt::Write;

use ember_core::line::{LineEditor, LineEvent, parse_line};
use libfuzzer_sys::fuzz_target;

const N: usize = 32;

/// Formats into nowhere, to run every `Display`.
struct Sink;

impl Write for Sink {
    fn write_str(&mut self, _: &str) -> core::fmt::Result {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let mut editor = LineEditor::<N>::new();
    let mut last_echo = [0u8; 2];
    for &byte in data {
        let mut echo = |bytes: &[u8]| {
            for &b in bytes {
                last_echo = [last_echo[1], b];
            }
        };
        match editor.push(byte, &mut echo) {
            Some(LineEvent::Line(line)) => {
                assert!(line.len() <= N);
                assert_eq!(&last_echo, b"\r\n");
                match parse_line(line) {
                    Ok(command) => write!(Sink, "{command:?}").unwrap(),
                    Err(error) => write!(Sink, "{error}").unwrap(),
                }
            }
            Some(LineEvent::Error(error)) => write!(Sink, "{error}").unwrap(),
            Some(LineEvent::Interrupt) | None => {}
        }
        assert!(editor.pending().len() <= N);
    }
});
