//! The device's state machine driven by hand: a fake clock (plain durations), a fake model (the
//! test hands it text and ends replies) and a host that encodes requests and decodes events.
//! Covers the scenarios of `tests/serial.rs` (which runs them end to end over PTYs) and the
//! time rules: rate trials, the frame-mode idle timeout, stalled writes.

use ember_core::device::{
    Context, Device, IDLE_TIMEOUT, LineConfig, MAX_PROBE, Mode, Model, Output, PROBE_TIMEOUT,
    ReplyEnd, ReplyRequest, Settings,
};
use ember_core::frame::{DELIMITER, FrameDecoder};
use ember_core::protocol::{
    self, BAUD_TRIAL_MS, ChatOptions, ChatRequest, EndReason, ErrorCode, Event, FrameWriter, Hello,
    MAX_FRAME, MessageRequest, PROTOCOL_VERSION, Request, Role,
};
use ember_core::sampler::SamplingConfig;
use quickcheck::{QuickCheck, TestResult};
use std::time::Duration;

const RATES: [u32; 3] = [115_200, 921_600, 3_000_000];

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn model(slot: bool) -> Model {
    Model {
        hello: Hello {
            protocol_version: PROTOCOL_VERSION,
            model_name: protocol::truncated("fake"),
            model_hash: [7; 32],
            context_length: 512,
            max_frame: MAX_FRAME as u32,
            slot: slot.then_some(ember_core::flash::Slot::A),
            last_flash: None,
            max_baud: 0,
        },
        settings: Settings {
            sampling: SamplingConfig::default(),
            max_tokens: 32,
            stops: Vec::new(),
        },
        system: None,
    }
}

/// A device, the outputs it produced, and a host's ends of the frame codec.
struct Bench {
    device: Device,
    /// Bytes the device wrote and the test has not looked at yet.
    line: Vec<u8>,
    /// Driver work the device asked for, oldest first (bytes excluded).
    work: Vec<Output>,
    host: FrameWriter,
    events: FrameDecoder<MAX_FRAME>,
}

impl Bench {
    fn new(slot: bool) -> Bench {
        let config = LineConfig {
            baud: 115_200,
            max_baud: 921_600,
            rates: &RATES,
            idle_timeout: Some(IDLE_TIMEOUT),
        };
        let mut bench = Bench {
            device: Device::new(config, model(slot), Duration::ZERO),
            line: Vec::new(),
            work: Vec::new(),
            host: FrameWriter::new(),
            events: FrameDecoder::new(),
        };
        bench.collect();
        bench
    }

    fn collect(&mut self) {
        while let Some(output) = self.device.poll() {
            match output {
                Output::Write(bytes) => self.line.extend(bytes),
                other => self.work.push(other),
            }
        }
    }

    /// Feeds `bytes` as a driver does: in pieces, collecting outputs after each.
    fn feed(&mut self, now: Duration, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let taken = self.device.receive(now, bytes);
            assert!(taken > 0 && taken <= bytes.len());
            bytes = &bytes[taken..];
            self.collect();
        }
    }

    fn typed(&mut self, now: Duration, text: &str) {
        self.feed(now, text.as_bytes());
    }

    fn send(&mut self, now: Duration, request: &Request) {
        let frame = self.host.encode(request).unwrap().to_vec();
        self.feed(now, &frame);
    }

    fn greet(&mut self, now: Duration) {
        self.feed(now, &[DELIMITER]);
        self.send(
            now,
            &Request::Hello {
                protocol_version: PROTOCOL_VERSION,
            },
        );
        assert!(matches!(self.events().as_slice(), [Event::Hello(_)]));
        assert_eq!(self.device.mode(), Mode::Frame);
    }

    /// What the terminal shows, taken.
    fn screen(&mut self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut self.line)).into_owned()
    }

    /// The events written, taken.
    fn events(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        for byte in std::mem::take(&mut self.line) {
            if let Some(Ok(frame)) = self.events.push(byte) {
                events.push(protocol::decode::<Event>(frame.payload).unwrap());
            }
        }
        events
    }

    fn work(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.work)
    }

    /// Expects the device to have asked for a reply; returns it.
    fn reply_asked(&mut self) -> ReplyRequest {
        match self.work().as_slice() {
            [Output::Reply(request)] => request.clone(),
            other => panic!("expected a reply request, got {other:?}"),
        }
    }

    /// The fake model: `pieces` one per millisecond from `now`, then the end (`reason` unless
    /// the device halted the reply first). Returns when it ended.
    fn run_model(&mut self, now: Duration, pieces: &[&str], reason: EndReason) -> Duration {
        let mut t = now;
        let mut generated = 0;
        let mut reason = reason;
        for piece in pieces {
            t += ms(1);
            self.device.reply_text(t, piece);
            generated += 1;
            self.collect();
            if let Some(halt) = self.device.halt() {
                reason = halt;
                break;
            }
        }
        t += ms(1);
        self.end(t, reason, generated);
        t
    }

    fn end(&mut self, now: Duration, reason: EndReason, generated: u32) {
        self.device.reply_ended(
            now,
            ReplyEnd::Finished {
                reason,
                prompt_tokens: 10,
                generated_tokens: generated,
                decode_tokens_per_second: 100.0,
                turns_dropped: 0,
                context: Context {
                    turns: 1,
                    used: 10 + generated,
                },
            },
        );
        self.collect();
    }
}

fn chat(text: &str, options: ChatOptions) -> Request {
    Request::Chat(ChatRequest {
        session: 0,
        text: protocol::truncated(text),
        options,
    })
}

fn message(index: u32, role: Role, text: &str) -> Request {
    Request::Message(MessageRequest {
        session: 0,
        index,
        role,
        text: protocol::truncated(text),
    })
}

fn tokens(events: &[Event]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Token { text } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

#[test]
fn line_mode_conversation_as_a_person_types_it() {
    let mut b = Bench::new(false);
    assert_eq!(
        b.screen(),
        "\r\nEmber: fake is listening. Type a message; /help lists the commands.\r\n> "
    );
    // A typo fixed with backspace, an arrow key ignored, CR as Enter.
    b.typed(ms(1), "helo\x08\x08llo\x1b[A there\r");
    assert_eq!(b.screen(), "helo\x08 \x08\x08 \x08llo there\r\n");
    let request = b.reply_asked();
    assert_eq!(request.text, "hello there");
    assert_eq!(request.max_tokens, 32);
    // The reply streams; the model's control characters never reach the terminal.
    b.run_model(ms(2), &["Hi", "\x07 you\n", "!"], EndReason::Eos);
    assert_eq!(b.screen(), "Hi you\r\n!\r\n> ");
    // Commands.
    b.typed(ms(10), "/set temperature 0.5\n");
    assert!(b.screen().contains("(temperature 0.5 top_k 40"));
    b.typed(ms(11), "/set temperature -1\n");
    assert!(b.screen().contains("error: "));
    b.typed(ms(12), "/set max_tokens 0\r\n");
    assert!(b.screen().contains("error: "));
    b.typed(ms(13), "/stats\n");
    let stats = b.screen();
    assert!(
        stats.contains("10 prompt tokens, 3 generated, first token after 2 ms"),
        "{stats}"
    );
    assert!(stats.contains("5 ms in all, context 13 used"), "{stats}");
    b.typed(ms(14), "/system\n");
    assert!(b.screen().contains("(the model's default system prompt)"));
    b.typed(ms(15), "/system Be brief.\n");
    assert!(
        b.screen()
            .contains("(system prompt set; conversation reset)")
    );
    assert_eq!(b.work(), [Output::SetSystem(Some("Be brief.".into()))]);
    b.typed(ms(16), "/system\n");
    assert!(b.screen().contains("system prompt: Be brief."));
    b.typed(ms(17), "/reset\n");
    assert!(b.screen().ends_with("(conversation reset)\r\n> "));
    assert_eq!(b.work(), [Output::Reset]);
    b.typed(ms(18), "/nope\n/help\n");
    let screen = b.screen();
    assert!(
        screen.contains("error: ") && screen.contains("/reset"),
        "{screen}"
    );
    // The next reply uses the new temperature.
    b.typed(ms(20), "again\n");
    assert_eq!(b.reply_asked().sampling.temperature, 0.5);
}

#[test]
fn bad_lines_are_refused_and_the_device_keeps_serving() {
    let mut b = Bench::new(false);
    b.screen();
    b.feed(ms(1), b"\xff\xfe\n");
    assert!(b.screen().contains("error: line is not valid UTF-8"));
    b.feed(ms(2), &[b'x'; 1100]);
    b.typed(ms(3), "\n");
    assert!(b.screen().contains("error: "));
    assert!(b.work().is_empty());
    b.typed(ms(4), "hi\n");
    assert_eq!(b.reply_asked().text, "hi");
}

#[test]
fn ctrl_c_cancels_a_line_mode_reply_and_other_keys_wait() {
    let mut b = Bench::new(false);
    b.typed(ms(1), "tell me\n");
    b.reply_asked();
    b.screen();
    b.device.reply_text(ms(2), "Once");
    b.collect();
    // Typing during a reply is ignored; Ctrl-C halts it.
    b.typed(ms(3), "zzz");
    assert_eq!(b.device.halt(), None);
    b.feed(ms(4), &[0x03]);
    assert_eq!(b.device.halt(), Some(EndReason::Cancelled));
    b.end(ms(5), EndReason::Cancelled, 1);
    assert_eq!(b.screen(), "Once ^C\r\n> ");
}

#[test]
fn a_greeting_enters_frame_mode_and_noise_does_not() {
    let mut b = Bench::new(false);
    b.screen();
    // A zero byte then garbage: back to line mode, nothing sent.
    b.feed(ms(1), &[0, 1, 2, 3, 0]);
    assert_eq!(b.device.mode(), Mode::Line);
    assert!(b.screen().is_empty());
    // A zero byte then a frame that is not a greeting.
    b.feed(ms(2), &[0]);
    b.send(ms(2), &Request::Status);
    assert_eq!(b.device.mode(), Mode::Line);
    assert!(b.screen().is_empty());
    b.greet(ms(3));
    // Greeting again in frame mode is harmless.
    b.feed(ms(4), &[0]);
    b.send(
        ms(4),
        &Request::Hello {
            protocol_version: PROTOCOL_VERSION,
        },
    );
    match b.events().as_slice() {
        [Event::Hello(hello)] => {
            assert_eq!(hello.model_name.as_str(), "fake");
            assert_eq!(hello.max_baud, 921_600);
        }
        other => panic!("{other:?}"),
    }
    b.send(ms(5), &Request::Goodbye);
    assert_eq!(b.events(), [Event::Goodbye]);
    assert_eq!(b.device.mode(), Mode::Line);
}

#[test]
fn frame_mode_conversation() {
    let mut b = Bench::new(false);
    b.greet(ms(0));
    b.send(ms(10), &chat("hi", ChatOptions::default()));
    assert_eq!(b.reply_asked().text, "hi");
    b.run_model(ms(10), &["Hel", "lo!"], EndReason::Eos);
    let events = b.events();
    assert_eq!(tokens(&events), "Hello!");
    match events.last() {
        Some(Event::End { reason, stats, .. }) => {
            assert_eq!(*reason, EndReason::Eos);
            assert_eq!(stats.generated_tokens, 2);
            assert_eq!(stats.time_to_first_token_ms, 1);
            assert_eq!(stats.total_ms, 3);
        }
        other => panic!("{other:?}"),
    }
    b.send(ms(20), &Request::Status);
    match b.events().as_slice() {
        [Event::Status(status)] => {
            assert_eq!(
                (status.turns, status.context_used, status.replies),
                (1, 12, 1)
            );
            assert_eq!(status.context_length, 512);
        }
        other => panic!("{other:?}"),
    }
    // Options override the settings for one reply; a bad one ends the request with an error.
    let options = ChatOptions {
        temperature: Some(0.7),
        max_tokens: Some(5),
        ..ChatOptions::default()
    };
    b.send(ms(21), &chat("more", options));
    let request = b.reply_asked();
    assert_eq!((request.max_tokens, request.sampling.temperature), (5, 0.7));
    b.end(ms(22), EndReason::Length, 0);
    b.events();
    let bad = ChatOptions {
        top_p: Some(2.0),
        ..ChatOptions::default()
    };
    b.send(ms(23), &chat("x", bad));
    match b.events().as_slice() {
        [Event::Error { code, .. }, Event::End { reason, .. }] => {
            assert_eq!((*code, *reason), (ErrorCode::BadSetting, EndReason::Error));
        }
        other => panic!("{other:?}"),
    }
    // A cancel for nothing; reset; system prompt; a new session resets the conversation.
    b.send(ms(24), &Request::Cancel);
    assert_eq!(
        b.events(),
        [Event::CancelAck {
            was_generating: false
        }]
    );
    b.send(ms(25), &Request::Reset);
    assert_eq!(b.events(), [Event::Done]);
    assert_eq!(b.work(), [Output::Reset]);
    b.send(
        ms(26),
        &Request::SetSystem {
            text: protocol::truncated(""),
        },
    );
    assert_eq!(b.events(), [Event::Done]);
    assert_eq!(b.work(), [Output::SetSystem(None)]);
    b.send(
        ms(27),
        &Request::Chat(ChatRequest {
            session: 9,
            text: protocol::truncated("new"),
            options: ChatOptions::default(),
        }),
    );
    assert!(matches!(
        b.work().as_slice(),
        [Output::Reset, Output::Reply(_)]
    ));
}

#[test]
fn a_failed_reply_is_an_error_and_an_end() {
    let mut b = Bench::new(false);
    b.greet(ms(0));
    b.send(ms(1), &chat("long", ChatOptions::default()));
    b.reply_asked();
    b.device.reply_ended(
        ms(2),
        ReplyEnd::Failed {
            code: ErrorCode::TooLong,
            detail: "too long".into(),
        },
    );
    b.collect();
    match b.events().as_slice() {
        [Event::Error { code, .. }, Event::End { reason, .. }] => {
            assert_eq!((*code, *reason), (ErrorCode::TooLong, EndReason::Error));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn stop_sequences_hold_back_and_cut_the_reply() {
    let mut b = Bench::new(false);
    b.greet(ms(0));
    let options = ChatOptions {
        stop: [protocol::truncated("lo w")].into_iter().collect(),
        ..ChatOptions::default()
    };
    b.send(ms(1), &chat("hi", options));
    b.reply_asked();
    // "lo" may start the stop: it is held back until " w" completes it.
    b.device.reply_text(ms(2), "hel");
    b.device.reply_text(ms(3), "lo");
    b.collect();
    assert_eq!(tokens(&b.events()), "hel");
    b.device.reply_text(ms(4), " world");
    b.collect();
    assert_eq!(b.device.halt(), Some(EndReason::Stop));
    b.end(ms(5), EndReason::Stop, 3);
    let events = b.events();
    assert_eq!(tokens(&events), "");
    assert!(matches!(
        events.last(),
        Some(Event::End {
            reason: EndReason::Stop,
            ..
        })
    ));
    // A held-back tail that never completes a stop is sent at the end.
    let options = ChatOptions {
        stop: [protocol::truncated("lo w")].into_iter().collect(),
        ..ChatOptions::default()
    };
    b.send(ms(6), &chat("hi", options));
    b.reply_asked();
    b.run_model(ms(6), &["hel", "lo"], EndReason::Eos);
    assert_eq!(tokens(&b.events()), "hello");
}

#[test]
fn sentences_for_speech_come_between_start_and_stop() {
    let mut b = Bench::new(false);
    b.greet(ms(0));
    let options = ChatOptions {
        sentences: true,
        ..ChatOptions::default()
    };
    b.send(ms(1), &chat("hi", options));
    b.reply_asked();
    b.run_model(ms(1), &["One. Two", " is here. Three"], EndReason::Eos);
    let events = b.events();
    let sentences: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::SynthesizeChunk { text } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(sentences, ["One.", "Two is here.", "Three"]);
    assert_eq!(events.first(), Some(&Event::SynthesizeStart));
    let n = events.len();
    assert_eq!(events[n - 2], Event::SynthesizeStop);
    assert!(matches!(events[n - 1], Event::End { .. }));
}

#[test]
fn during_a_reply_cancel_and_status_are_answered_and_the_rest_is_busy() {
    let mut b = Bench::new(true);
    b.greet(ms(0));
    b.send(ms(1), &chat("hi", ChatOptions::default()));
    b.reply_asked();
    b.device.reply_text(ms(2), "Hel");
    b.collect();
    b.send(ms(3), &chat("again", ChatOptions::default()));
    b.send(ms(3), &Request::Reset);
    b.send(ms(3), &Request::FlashCommit);
    b.send(ms(3), &Request::Status);
    let events = b.events();
    let busy = events
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::Error {
                    code: ErrorCode::Busy,
                    ..
                }
            )
        })
        .count();
    assert_eq!(busy, 3, "{events:?}");
    assert!(matches!(events.last(), Some(Event::Status(_))));
    // Every error names its request (the host's frames: 0 greeting, 1 chat, 2 chat, …), and the
    // refused chat gets its end.
    let named: Vec<Option<u16>> = events
        .iter()
        .filter_map(|e| match e {
            Event::Error { request, .. } => Some(*request),
            _ => None,
        })
        .collect();
    assert_eq!(named, [Some(2), Some(3), Some(4)]);
    assert!(events.iter().any(|e| matches!(
        e,
        Event::End {
            reason: EndReason::Error,
            request: 2,
            ..
        }
    )));
    // A flash transfer goes on during a reply.
    b.send(ms(4), &Request::FlashAbort);
    assert_eq!(b.work(), [Output::Flash(Box::new(Request::FlashAbort))]);
    b.send(ms(5), &Request::Cancel);
    assert_eq!(b.device.halt(), Some(EndReason::Cancelled));
    b.end(ms(6), EndReason::Cancelled, 1);
    let events = b.events();
    assert!(matches!(
        events.as_slice(),
        [
            Event::End {
                reason: EndReason::Cancelled,
                ..
            },
            Event::CancelAck {
                was_generating: true
            }
        ]
    ));
}

#[test]
fn damaged_frames_are_answered_with_their_error() {
    let mut b = Bench::new(false);
    b.greet(ms(0));
    let mut frame = b.host.encode(&Request::Status).unwrap().to_vec();
    frame[1] ^= 0x10;
    b.feed(ms(1), &frame);
    let oversized = vec![1u8; MAX_FRAME + 10];
    b.feed(ms(2), &oversized);
    b.feed(ms(2), &[0]);
    let unknown = b.host.encode(&[0xEEu8, 1, 2]).unwrap().to_vec();
    b.feed(ms(3), &unknown);
    let codes: Vec<ErrorCode> = b
        .events()
        .iter()
        .filter_map(|e| match e {
            Event::Error { code, .. } => Some(*code),
            _ => None,
        })
        .collect();
    assert_eq!(
        codes,
        [
            ErrorCode::BadFrame,
            ErrorCode::Oversized,
            ErrorCode::UnknownMessage
        ]
    );
    b.send(ms(4), &Request::Status);
    assert!(matches!(b.events().as_slice(), [Event::Status(_)]));
}

#[test]
fn a_device_without_slots_refuses_flash_requests() {
    let mut b = Bench::new(false);
    b.greet(ms(0));
    b.send(ms(1), &Request::FlashAbort);
    assert!(matches!(
        b.events().as_slice(),
        [Event::Error {
            code: ErrorCode::FlashUnavailable,
            ..
        }]
    ));
    assert!(b.work().is_empty());
}

#[test]
fn the_device_takes_bytes_until_it_has_work_for_the_driver() {
    let mut b = Bench::new(true);
    b.greet(ms(0));
    let mut bytes = b.host.encode(&Request::FlashAbort).unwrap().to_vec();
    let first = bytes.len();
    bytes.extend(b.host.encode(&Request::Status).unwrap());
    assert_eq!(b.device.receive(ms(1), &bytes), first);
    assert_eq!(
        b.device.poll(),
        Some(Output::Flash(Box::new(Request::FlashAbort)))
    );
    assert_eq!(
        b.device.receive(ms(1), &bytes[first..]),
        bytes.len() - first
    );
}

#[test]
fn a_stalled_line_drops_output_and_cancels_the_reply_until_the_host_is_back() {
    let mut b = Bench::new(false);
    b.greet(ms(0));
    b.send(ms(1), &chat("hi", ChatOptions::default()));
    b.reply_asked();
    b.device.reply_text(ms(2), "Hel");
    // The driver could not write: the host stopped reading.
    b.device.write_stalled();
    assert_eq!(b.device.poll(), None);
    assert_eq!(b.device.halt(), Some(EndReason::Cancelled));
    b.end(ms(3), EndReason::Cancelled, 1);
    assert!(b.line.is_empty(), "output is dropped while stalled");
    // The host speaks again: the next frame starts with a delimiter (the last one was torn).
    b.send(ms(4), &Request::Status);
    assert_eq!(b.line.first(), Some(&DELIMITER));
    // First the end of the reply it did not read, naming its chat (the host's frame 1).
    let events = b.events();
    assert!(
        matches!(
            events.as_slice(),
            [
                Event::Error { code: ErrorCode::Stalled, request: Some(1), .. },
                Event::End { reason: EndReason::Cancelled, request: 1, .. },
                Event::Status(s),
            ] if s.replies == 1
        ),
        "{events:?}"
    );
}

#[test]
fn a_rate_on_trial_is_kept_by_a_frame_and_given_up_without_one() {
    let mut b = Bench::new(false);
    b.greet(ms(0));
    // Not a standard rate, or above the device's fastest: refused.
    for baud in [1_234_567, 3_000_000] {
        b.send(ms(1), &Request::SetBaud { baud });
        assert!(matches!(
            b.events().as_slice(),
            [Event::Error {
                code: ErrorCode::BadSetting,
                ..
            }]
        ));
    }
    // Accepted: the answer at the old rate, then the switch; bytes after it came at the old
    // rate and are dropped.
    let mut bytes = b
        .host
        .encode(&Request::SetBaud { baud: 921_600 })
        .unwrap()
        .to_vec();
    bytes.extend(b.host.encode(&Request::Status).unwrap());
    assert_eq!(b.device.receive(ms(2), &bytes), bytes.len());
    b.collect();
    assert_eq!(b.events(), [Event::BaudSwitch { baud: 921_600 }]);
    assert_eq!(b.work(), [Output::SwitchBaud(921_600)]);
    b.device.baud_switched(ms(100), true);
    assert_eq!(b.device.baud(), 921_600);
    let trial_end = ms(100) + ms(BAUD_TRIAL_MS.into());
    assert_eq!(b.device.deadline(), Some(trial_end));
    // Noise at the new rate does not confirm it; without a frame the device goes back.
    b.feed(ms(200), &[0x55, 0xAA, 0]);
    assert!(b.events().is_empty());
    b.device.handle_timeout(trial_end - ms(1));
    assert!(b.work().is_empty());
    b.device.handle_timeout(trial_end);
    b.collect();
    assert_eq!(b.work(), [Output::SwitchBaud(115_200)]);
    b.device.baud_switched(trial_end, true);
    assert_eq!(b.device.baud(), 115_200);
    // Again, and this time the host greets at the new rate in time: the rate is kept.
    b.send(ms(3000), &Request::SetBaud { baud: 921_600 });
    b.events();
    b.work();
    b.device.baud_switched(ms(3100), true);
    b.send(
        ms(3200),
        &Request::Hello {
            protocol_version: PROTOCOL_VERSION,
        },
    );
    assert!(matches!(b.events().as_slice(), [Event::Hello(_)]));
    b.device.handle_timeout(ms(3100) + ms(BAUD_TRIAL_MS.into()));
    assert!(b.work().is_empty());
    assert_eq!(b.device.baud(), 921_600);
    // Goodbye returns the line to the device's own rate, then prompts.
    b.send(ms(4000), &Request::Goodbye);
    assert_eq!(b.work(), [Output::SwitchBaud(115_200)]);
    let mut line = std::mem::take(&mut b.line);
    let prompt = line.split_off(line.len() - 4);
    assert_eq!(prompt, b"\r\n> ");
    b.line = line;
    assert_eq!(b.events(), [Event::Goodbye]);
    // A port that refuses a rate leaves the line where it was.
    b.device.baud_switched(ms(4001), false);
    assert_eq!(b.device.baud(), 921_600);
}

#[test]
fn frame_mode_ends_after_a_quiet_period_at_the_devices_own_rate() {
    let mut b = Bench::new(false);
    b.greet(ms(0));
    b.send(ms(1000), &Request::SetBaud { baud: 921_600 });
    b.events();
    b.work();
    b.device.baud_switched(ms(1100), true);
    b.send(ms(1200), &Request::Status);
    b.events();
    // Quiet from 1.2 s on: due at 31.2 s.
    assert_eq!(b.device.deadline(), Some(ms(1200) + IDLE_TIMEOUT));
    b.device.handle_timeout(ms(31_000));
    assert_eq!(b.device.mode(), Mode::Frame);
    // A reply running is not quiet.
    b.send(ms(2000), &chat("hi", ChatOptions::default()));
    b.reply_asked();
    assert_eq!(b.device.deadline(), None);
    b.end(ms(40_000), EndReason::Eos, 0);
    b.events();
    assert_eq!(b.device.deadline(), Some(ms(40_000) + IDLE_TIMEOUT));
    b.device.handle_timeout(ms(70_000));
    b.collect();
    assert_eq!(b.device.mode(), Mode::Line);
    assert_eq!(b.work(), [Output::SwitchBaud(115_200)]);
    b.device.baud_switched(ms(70_050), true);
    b.collect();
    assert_eq!(
        b.screen(),
        "\r\n(no program spoke for 30 s: back in line mode)\r\n> "
    );
    assert_eq!(b.device.deadline(), None);
    // A person types; a program greets again as always.
    b.typed(ms(71_000), "hi\n");
    assert_eq!(b.reply_asked().text, "hi");
    b.run_model(ms(71_000), &["yo"], EndReason::Eos);
    b.screen();
    b.greet(ms(72_000));
}

#[test]
fn a_new_model_starts_a_new_conversation_on_the_same_line() {
    let mut b = Bench::new(true);
    b.greet(ms(0));
    b.send(ms(1), &chat("hi", ChatOptions::default()));
    b.reply_asked();
    b.end(ms(2), EndReason::Eos, 0);
    b.events();
    let mut next = model(true);
    next.hello.model_name = protocol::truncated("next");
    b.device.load(next, ms(3));
    b.device.send(&Event::Done);
    b.collect();
    assert_eq!(b.events(), [Event::Done]);
    b.send(ms(4), &Request::Status);
    match b.events().as_slice() {
        [Event::Status(status)] => assert_eq!((status.replies, status.turns), (0, 0)),
        other => panic!("{other:?}"),
    }
    assert_eq!(b.device.hello().model_name.as_str(), "next");
}

/// One step of a driver feeding arbitrary input (see [`any_input_keeps_the_device_bounded`]).
fn drive(b: &mut Bench, step: &[u8], now: &mut Duration) {
    let Some((&op, rest)) = step.split_first() else {
        return;
    };
    match op % 8 {
        0 => *now += ms(u64::from(op) * 300),
        1 if b.device.replying() => {
            b.device.reply_text(*now, &String::from_utf8_lossy(rest));
        }
        2 if b.device.replying() => {
            let reason = [EndReason::Eos, EndReason::Length][usize::from(op & 8 != 0)];
            b.end(*now, b.device.halt().unwrap_or(reason), 1);
        }
        3 => b.device.write_stalled(),
        4 => b.device.handle_timeout(*now),
        5 => {
            let text = String::from_utf8_lossy(rest);
            let request = match rest.first().map_or(0, |r| r % 10) {
                0 => chat(&text, ChatOptions::default()),
                1 => Request::Cancel,
                2 => Request::Status,
                3 => Request::Reset,
                4 => Request::Goodbye,
                5 => Request::SetBaud {
                    baud: RATES[usize::from(op) % RATES.len()],
                },
                6 => Request::FlashAbort,
                7 => Request::FlashCommit,
                8 => message(
                    u32::from(op >> 4),
                    [Role::User, Role::Assistant][usize::from(op & 1)],
                    &text,
                ),
                _ => Request::Hello {
                    protocol_version: PROTOCOL_VERSION,
                },
            };
            b.feed(*now, &[DELIMITER]);
            b.send(*now, &request);
        }
        _ => b.feed(*now, rest),
    }
    b.collect();
    for output in b.work() {
        if let Output::SwitchBaud(_) = output {
            b.device.baud_switched(*now, op & 16 != 0);
        }
    }
}

/// Arbitrary bytes, times and model events never panic the device, and what it writes is
/// bounded by what it was given.
#[test]
fn any_input_keeps_the_device_bounded() {
    fn property(steps: Vec<Vec<u8>>, greet: bool) -> TestResult {
        let mut b = Bench::new(true);
        if greet {
            b.greet(ms(0));
        }
        let mut now = ms(1);
        for step in &steps {
            b.line.clear();
            drive(&mut b, step, &mut now);
            let bound = 8 * MAX_FRAME + 4 * step.len() * MAX_FRAME;
            if b.line.len() > bound {
                return TestResult::error(format!("{} bytes out for {step:?}", b.line.len()));
            }
        }
        TestResult::passed()
    }
    QuickCheck::new()
        .tests(2000)
        .quickcheck(property as fn(Vec<Vec<u8>>, bool) -> TestResult);
}

#[test]
fn a_stray_zero_byte_in_line_mode_ends_by_itself_and_loses_no_typing() {
    let mut b = Bench::new(false);
    b.screen();
    // Ctrl-@, then a person types: nothing shows while the device waits for a greeting…
    b.feed(ms(10), &[0]);
    b.typed(ms(20), "hi\r");
    assert_eq!(b.device.mode(), Mode::Probe);
    assert_eq!(b.device.deadline(), Some(ms(10) + PROBE_TIMEOUT));
    assert!(b.screen().is_empty());
    // …until the wait ends: then what was typed counts.
    b.device.handle_timeout(ms(10) + PROBE_TIMEOUT);
    b.collect();
    assert_eq!(b.device.mode(), Mode::Line);
    assert_eq!(b.reply_asked().text, "hi");
    assert_eq!(b.screen(), "hi\r\n");
    b.run_model(ms(2000), &["Hello"], EndReason::Eos);
    b.screen();
    // More than a greeting's worth of bytes ends the wait at once.
    b.feed(ms(3000), &[0]);
    let long = "x".repeat(MAX_PROBE + 1);
    b.typed(ms(3000), &long);
    assert_eq!(b.device.mode(), Mode::Line);
    assert_eq!(b.screen(), long);
    // Extra zero bytes restart the wait; a greeting still opens frame mode.
    b.feed(ms(4000), &[0, 0]);
    b.greet(ms(4000));
}

#[test]
fn a_new_hosts_greeting_stops_an_orphaned_reply_and_is_answered() {
    let mut b = Bench::new(false);
    b.greet(ms(0));
    b.send(ms(1), &chat("hi", ChatOptions::default()));
    b.reply_asked();
    b.device.reply_text(ms(2), "Hel");
    b.collect();
    b.events();
    // The old host vanished; a new one greets as always.
    let mut new_host = FrameWriter::new();
    let mut bytes = vec![0];
    bytes.extend(
        new_host
            .encode(&Request::Hello {
                protocol_version: PROTOCOL_VERSION,
            })
            .unwrap(),
    );
    b.feed(ms(3), &bytes);
    assert_eq!(b.device.halt(), Some(EndReason::Cancelled));
    b.end(ms(4), EndReason::Cancelled, 1);
    // The old chat's end (naming the old host's frame 1), then the greeting as the device's
    // frame 0.
    let mut frames = Vec::new();
    for byte in std::mem::take(&mut b.line) {
        if let Some(Ok(frame)) = b.events.push(byte) {
            frames.push((frame.seq, protocol::decode::<Event>(frame.payload).unwrap()));
        }
    }
    assert!(
        matches!(
            frames.as_slice(),
            [
                (
                    _,
                    Event::End {
                        reason: EndReason::Cancelled,
                        request: 1,
                        ..
                    }
                ),
                (0, Event::Hello(_)),
            ]
        ),
        "{frames:?}"
    );
}

#[test]
fn a_programs_greeting_stops_a_persons_reply() {
    let mut b = Bench::new(false);
    b.typed(ms(0), "tell me\r");
    b.reply_asked();
    b.device.reply_text(ms(1), "Once");
    b.collect();
    b.screen();
    let mut bytes = vec![0];
    bytes.extend(
        b.host
            .encode(&Request::Hello {
                protocol_version: PROTOCOL_VERSION,
            })
            .unwrap(),
    );
    b.feed(ms(2), &bytes);
    assert_eq!(b.device.halt(), Some(EndReason::Cancelled));
    b.end(ms(3), EndReason::Cancelled, 1);
    assert_eq!(b.device.mode(), Mode::Frame);
    let screen = b.line.clone();
    assert!(screen.starts_with(b" ^C\r\n\0"), "{screen:?}");
    b.line.drain(..4);
    assert!(matches!(b.events().as_slice(), [Event::Hello(_)]));
}

#[test]
fn chats_that_cannot_run_get_an_error_and_an_end() {
    let mut b = Bench::new(false);
    b.greet(ms(0));
    // A negative temperature (line mode's /set refuses it too).
    let options = ChatOptions {
        temperature: Some(-1.0),
        ..ChatOptions::default()
    };
    b.send(ms(1), &chat("hi", options));
    assert!(b.work().is_empty());
    assert!(matches!(
        b.events().as_slice(),
        [
            Event::Error {
                code: ErrorCode::BadSetting,
                request: Some(1),
                ..
            },
            Event::End {
                reason: EndReason::Error,
                request: 1,
                ..
            },
        ]
    ));
    // A chat over its field limits: a text of 1025 bytes (encoded by hand: the host's types
    // cannot hold it).
    let mut payload = vec![1, 0];
    payload.extend([0x81, 0x08]);
    payload.extend(std::iter::repeat_n(b'a', 1025));
    payload.extend([0; 8]);
    let mut frame = vec![0u8; MAX_FRAME];
    let mut scratch = vec![0u8; MAX_FRAME];
    let len = ember_core::frame::encode_frame(2, &payload, &mut scratch, &mut frame).unwrap();
    b.feed(ms(2), &frame[..len]);
    assert!(b.work().is_empty());
    assert!(matches!(
        b.events().as_slice(),
        [
            Event::Error {
                code: ErrorCode::BadField,
                request: Some(2),
                ..
            },
            Event::End {
                reason: EndReason::Error,
                request: 2,
                ..
            },
        ]
    ));
    // Another version's greeting: the device's greeting, then why it will not do.
    b.host = FrameWriter::new();
    b.send(
        ms(3),
        &Request::Hello {
            protocol_version: 2,
        },
    );
    assert!(matches!(
        b.events().as_slice(),
        [
            Event::Hello(_),
            Event::Error {
                code: ErrorCode::UnsupportedVersion,
                request: Some(0),
                ..
            },
        ]
    ));
}

#[test]
fn two_chats_in_one_write_each_get_one_end() {
    let mut b = Bench::new(false);
    b.greet(ms(0));
    let mut bytes = b
        .host
        .encode(&chat("one", ChatOptions::default()))
        .unwrap()
        .to_vec();
    bytes.extend(b.host.encode(&chat("two", ChatOptions::default())).unwrap());
    b.feed(ms(1), &bytes);
    assert_eq!(b.reply_asked().text, "one");
    b.run_model(ms(2), &["A", "B"], EndReason::Eos);
    let ends: Vec<(EndReason, u16)> = b
        .events()
        .iter()
        .filter_map(|e| match e {
            Event::End {
                reason, request, ..
            } => Some((*reason, *request)),
            _ => None,
        })
        .collect();
    assert_eq!(ends, [(EndReason::Error, 2), (EndReason::Eos, 1)]);
}

#[test]
fn typing_before_frame_mode_is_gone_after_it() {
    let mut b = Bench::new(false);
    b.typed(ms(0), "half a line \u{ff}");
    b.greet(ms(1));
    b.send(ms(2), &Request::Goodbye);
    b.line.clear();
    b.typed(ms(3), "\r");
    assert!(b.work().is_empty());
    assert_eq!(b.screen(), "\r\n> ");
}

fn remember(role: Role, text: &str) -> Output {
    Output::Remember {
        role,
        text: text.into(),
    }
}

fn turns(b: &mut Bench, now: Duration) -> u32 {
    b.send(now, &Request::Status);
    match b.events().as_slice() {
        [Event::Status(status)] => status.turns,
        other => panic!("{other:?}"),
    }
}

/// Messages are taken by index: the next one is taken (`Remember`, `Done`), a copy of one taken
/// is answered `Done` and changes nothing, one past the next is `OutOfOrder` and changes
/// nothing. An assistant message must follow a user message (or continue an answer).
#[test]
fn messages_are_taken_in_order_and_copies_change_nothing() {
    let mut b = Bench::new(false);
    b.greet(ms(0));
    // An assistant message with nothing to answer.
    b.send(ms(1), &message(0, Role::Assistant, "no"));
    match b.events().as_slice() {
        [Event::Error { code, request, .. }] => {
            assert_eq!((*code, *request), (ErrorCode::OutOfOrder, Some(1)));
        }
        other => panic!("{other:?}"),
    }
    assert!(b.work().is_empty());
    b.send(ms(2), &message(0, Role::User, "What is "));
    assert_eq!(b.events(), [Event::Done]);
    assert_eq!(b.work(), [remember(Role::User, "What is ")]);
    // Its Done was lost: the copy is answered and changes nothing.
    b.send(ms(3), &message(0, Role::User, "What is "));
    assert_eq!(b.events(), [Event::Done]);
    assert!(b.work().is_empty());
    b.send(ms(4), &message(1, Role::User, "2 + 2?"));
    assert_eq!(b.events(), [Event::Done]);
    assert_eq!(b.work(), [remember(Role::User, "2 + 2?")]);
    assert_eq!(turns(&mut b, ms(4)), 0);
    // Message 2 was lost: 3 is refused, naming how many were taken.
    b.send(ms(5), &message(3, Role::Assistant, "4"));
    match b.events().as_slice() {
        [
            Event::Error {
                code,
                detail,
                request,
            },
        ] => {
            assert_eq!((*code, *request), (ErrorCode::OutOfOrder, Some(6)));
            assert!(detail.contains("has taken 2,"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    assert!(b.work().is_empty());
    b.send(ms(6), &message(2, Role::Assistant, "Fo"));
    b.send(ms(6), &message(3, Role::Assistant, "ur."));
    assert_eq!(b.events(), [Event::Done, Event::Done]);
    assert_eq!(
        b.work(),
        [
            remember(Role::Assistant, "Fo"),
            remember(Role::Assistant, "ur.")
        ]
    );
    assert_eq!(turns(&mut b, ms(7)), 1, "a user message and its answer");
    // A chat's reply does not advance the count, and the next message must be a user's.
    b.send(ms(8), &chat("And 3 + 3?", ChatOptions::default()));
    assert_eq!(b.reply_asked().text, "And 3 + 3?");
    b.run_model(ms(8), &["Six."], EndReason::Eos);
    b.events();
    b.send(ms(20), &message(4, Role::Assistant, "x"));
    assert!(matches!(
        b.events().as_slice(),
        [Event::Error {
            code: ErrorCode::OutOfOrder,
            ..
        }]
    ));
    b.send(ms(21), &message(4, Role::User, "Thanks"));
    assert_eq!(b.events(), [Event::Done]);
    assert_eq!(b.work(), [remember(Role::User, "Thanks")]);
}

/// A chat after a held user message: the engine joins them (the device only passes the chat's
/// text on); a refused chat (a bad setting) leaves the user message held.
#[test]
fn a_chat_after_a_held_user_message_completes_it() {
    let mut b = Bench::new(false);
    b.greet(ms(0));
    b.send(ms(1), &message(0, Role::User, "Hello, "));
    assert_eq!(b.events(), [Event::Done]);
    b.work();
    let bad = ChatOptions {
        top_p: Some(2.0),
        ..ChatOptions::default()
    };
    b.send(ms(2), &chat("x", bad));
    assert!(b.work().is_empty());
    b.events();
    // Still held: an assistant message may answer it.
    b.send(ms(3), &message(1, Role::Assistant, "Hi."));
    assert_eq!(b.events(), [Event::Done]);
    b.send(ms(4), &message(2, Role::User, "How "));
    b.events();
    b.work();
    b.send(ms(5), &chat("are you?", ChatOptions::default()));
    assert_eq!(b.reply_asked().text, "are you?");
    // During the reply a message is refused as busy, and changes nothing.
    b.send(ms(5), &message(3, Role::User, "more"));
    match b.events().as_slice() {
        [Event::Error { code, request, .. }] => {
            assert_eq!((*code, *request), (ErrorCode::Busy, Some(6)));
        }
        other => panic!("{other:?}"),
    }
    b.run_model(ms(6), &["Fine."], EndReason::Eos);
    b.events();
    assert!(b.work().is_empty());
    b.send(ms(10), &message(3, Role::User, "Good."));
    assert_eq!(b.events(), [Event::Done]);
}

/// A new session, `Reset` and `SetSystem` start a new conversation: the count starts at 0 and
/// nothing is held.
#[test]
fn a_new_conversation_forgets_the_messages() {
    let mut b = Bench::new(false);
    b.greet(ms(0));
    b.send(ms(1), &message(0, Role::User, "a"));
    b.send(ms(1), &message(1, Role::Assistant, "b"));
    b.send(ms(1), &message(2, Role::User, "c"));
    assert_eq!(b.events(), [Event::Done, Event::Done, Event::Done]);
    b.work();
    for (i, forget) in [
        Request::Reset,
        Request::SetSystem {
            text: protocol::truncated("Be brief."),
        },
    ]
    .iter()
    .enumerate()
    {
        b.send(ms(2), forget);
        assert_eq!(b.events(), [Event::Done]);
        b.work();
        // Index 1 would be a copy before; now it is past the count of 0.
        b.send(ms(3), &message(1, Role::User, "x"));
        assert!(
            matches!(
                b.events().as_slice(),
                [Event::Error {
                    code: ErrorCode::OutOfOrder,
                    ..
                }]
            ),
            "after request {i}"
        );
        b.send(ms(3), &message(0, Role::Assistant, "x"));
        assert!(matches!(
            b.events().as_slice(),
            [Event::Error {
                code: ErrorCode::OutOfOrder,
                ..
            }]
        ));
        b.send(ms(4), &message(0, Role::User, "a"));
        assert_eq!(b.events(), [Event::Done]);
        assert_eq!(b.work(), [remember(Role::User, "a")]);
    }
    // Another session: a new conversation first (as a chat starts one), then the message.
    b.send(
        ms(5),
        &Request::Message(MessageRequest {
            session: 4,
            index: 0,
            role: Role::User,
            text: protocol::truncated("new"),
        }),
    );
    assert_eq!(b.events(), [Event::Done]);
    assert_eq!(b.work(), [Output::Reset, remember(Role::User, "new")]);
    b.send(ms(6), &Request::Status);
    match b.events().as_slice() {
        [Event::Status(status)] => assert_eq!((status.session, status.turns), (4, 0)),
        other => panic!("{other:?}"),
    }
}
