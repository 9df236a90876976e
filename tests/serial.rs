//! `emberd` over real PTY pairs: a person typing in line mode, a program in frame mode, cancel,
//! line noise, a long chat that overflows the context, and the host tool's `ask`/`chat --port`.
//! All on the tiny synthetic model; the reply to the first message of a conversation is checked
//! against llama.cpp's greedy tokens recorded in `tests/fixtures/tiny/golden.json`.

use embedded_io::Write as _;
use ember_core::frame::{DELIMITER, encode_frame};
use ember_core::protocol::{
    self, ChatOptions, ChatRequest, EndReason, ErrorCode, Event, FrameWriter, Request, Role,
};
use ember_e2e::{Running, binary, ember_at, emberd_on_pty, tiny_image};
use ember_serial::{Client, Port, PtyPair, Tty};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long any single expectation may take.
const PATIENCE: Duration = Duration::from_secs(30);
/// Token budget of the golden replies.
const GOLDEN_TOKENS: usize = 32;

/// `emberd` serving the tiny image on a PTY whose master side the test holds.
struct Device {
    child: Running,
    line: Tty,
}

impl Device {
    fn start(extra: &[&str]) -> Device {
        Device::spawn(extra, Stdio::inherit())
    }

    /// Like [`Device::start`], with emberd's log written to `log`.
    fn start_logging(extra: &[&str], log: &Path) -> Device {
        Device::spawn(extra, std::fs::File::create(log).unwrap().into())
    }

    fn spawn(extra: &[&str], stderr: Stdio) -> Device {
        let pair = PtyPair::open().expect("PTY pair");
        let image = tiny_image().0;
        let mut args = vec![
            "--model".to_string(),
            image.display().to_string(),
            "--port".to_string(),
            pair.path().display().to_string(),
            "--threads".to_string(),
            "2".to_string(),
        ];
        if !extra.contains(&"--max-tokens") {
            args.extend(["--max-tokens".to_string(), GOLDEN_TOKENS.to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = Command::new(binary("emberd"))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("emberd starts");
        let mut device = Device {
            child: Running(child),
            line: pair.into_master().expect("PTY master"),
        };
        device.expect("> ");
        device
    }

    /// Reads until `needle` has arrived; returns everything read.
    fn expect(&mut self, needle: &str) -> String {
        let mut seen = Vec::new();
        let deadline = Instant::now() + PATIENCE;
        let mut buf = [0u8; 512];
        loop {
            if String::from_utf8_lossy(&seen).contains(needle) {
                return String::from_utf8_lossy(&seen).into_owned();
            }
            if let Ok(Some(status)) = self.child.0.try_wait() {
                panic!(
                    "emberd exited ({status}) before {needle:?}; saw {:?}",
                    lossy(&seen)
                );
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {needle:?} within {PATIENCE:?}; saw {:?}",
                lossy(&seen)
            );
            let n = self
                .line
                .read_timeout(&mut buf, left.min(Duration::from_millis(200)));
            seen.extend_from_slice(&buf[..n.expect("read the PTY")]);
        }
    }

    /// Types `text` one byte at a time, as a person would.
    fn type_text(&mut self, text: &[u8]) {
        for &b in text {
            self.line.write_all(&[b]).expect("write the PTY");
        }
    }

    fn client(self) -> (Running, Client) {
        let client = Client::over(self.line, Duration::from_secs(5)).expect("frame mode");
        (self.child, client)
    }

    fn alive(&mut self) -> bool {
        self.child.0.try_wait().expect("emberd status").is_none()
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The reply llama.cpp gave to the golden chat prompt `prompt` (greedy, 32 tokens), as text.
fn golden_reply(prompt: &str) -> String {
    assert_eq!(ember_e2e::tiny_golden()["max_tokens"], GOLDEN_TOKENS);
    ember_e2e::golden_chat_reply(prompt)
}

/// What line mode prints for `text`: CRLF line ends, no other control characters.
fn as_terminal_shows(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\r\n"),
            '\t' => out.push('\t'),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// The text between the echo of a typed line and the next prompt.
fn reply_after(output: &str, typed: &str) -> String {
    let start = output
        .find(typed)
        .unwrap_or_else(|| panic!("{typed:?} not echoed in {output:?}"));
    let rest = &output[start + typed.len()..];
    let rest = rest.strip_prefix("\r\n").expect("the echo ends with CRLF");
    rest.strip_suffix("\r\n> ").unwrap_or(rest).to_string()
}

#[test]
fn line_mode_conversation_as_a_person_types_it() {
    let mut device = Device::start(&[]);
    // A typo fixed with backspace, a stray arrow key, CR as the line end (picocom's Enter).
    device.type_text(b"Hi therx\x7fe\x1b[D!\r");
    let output = device.expect("\r\n> ");
    assert!(output.contains("Hi therx\x08 \x08e!"), "{output:?}");
    assert_eq!(
        reply_after(&output, "e!"),
        as_terminal_shows(&golden_reply("Hi there!")),
        "line-mode reply differs from llama.cpp's greedy reply"
    );

    device.type_text(b"/stats\n");
    let stats = device.expect("\r\n> ");
    assert!(stats.contains("prompt tokens"), "{stats:?}");
    assert!(
        stats.contains(&format!("{GOLDEN_TOKENS} generated")),
        "{stats:?}"
    );

    device.type_text(b"/set temperature 0.7\r\n");
    assert!(device.expect("\r\n> ").contains("temperature 0.7"));
    device.type_text(b"/set top_p 2\r");
    assert!(
        device
            .expect("\r\n> ")
            .contains("not a valid value for top_p")
    );
    device.type_text(b"/set temperature 0\r");
    device.expect("\r\n> ");
    device.type_text(b"/frobnicate\r");
    assert!(device.expect("\r\n> ").contains("/help"));
    device.type_text(b"/help\r");
    let help = device.expect("\r\n> ");
    for command in ["/reset", "/system", "/set", "/stats"] {
        assert!(help.contains(command), "{command} missing from {help:?}");
    }

    // Invalid UTF-8 and an over-long line are refused; the device keeps serving.
    device.type_text(b"caf\xc3(\r");
    assert!(device.expect("\r\n> ").contains("error"));
    device.type_text(&vec![b'x'; 3000]);
    device.type_text(b"\r");
    assert!(device.expect("\r\n> ").contains("error"));

    // After /reset the same first message gets the same reply (LF alone ends this line).
    device.type_text(b"/reset\n");
    assert!(device.expect("\r\n> ").contains("reset"));
    device.type_text(b"Hi there!\n");
    let output = device.expect("\r\n> ");
    assert_eq!(
        reply_after(&output, "Hi there!"),
        as_terminal_shows(&golden_reply("Hi there!"))
    );
    assert!(device.alive());
}

#[test]
fn frame_mode_conversation() {
    let device = Device::start(&[]);
    let (_child, mut client) = device.client();
    let hello = client.hello().clone();
    assert_eq!(hello.protocol_version, protocol::PROTOCOL_VERSION);
    assert_eq!(hello.model_name.as_str(), "ember-tiny");
    assert_eq!(hello.context_length, 512);
    let image = ember_image::Image::open(tiny_image().0).unwrap();
    let header = ember_core::image::ImageHeader::parse(&image.mapping()[..]).unwrap();
    assert_eq!(hello.model_hash, header.manifest_sha256);

    let (text, reason, stats) = chat(
        &mut client,
        7,
        "What is the weather like?",
        ChatOptions::default(),
    );
    assert_eq!(text, golden_reply("What is the weather like?"));
    assert_eq!(reason, EndReason::Length);
    assert_eq!(stats.generated_tokens as usize, GOLDEN_TOKENS);
    let first_prompt = stats.prompt_tokens;

    // The second turn prefills only its own tokens.
    let (_, reason, stats) = chat(&mut client, 7, "And tomorrow?", ChatOptions::default());
    assert_eq!(reason, EndReason::Length);
    assert!(
        stats.prompt_tokens < first_prompt,
        "{} vs {first_prompt}",
        stats.prompt_tokens
    );
    client.send(&Request::Status).unwrap();
    let Event::Status(status) = next(&mut client) else {
        panic!("no status")
    };
    assert_eq!((status.session, status.turns), (7, 2));
    assert_eq!(status.context_used, stats.context_used);

    // A cancel for nothing is acknowledged.
    client.send(&Request::Cancel).unwrap();
    assert_eq!(
        next(&mut client),
        Event::CancelAck {
            was_generating: false
        }
    );
    // Reset and a system prompt.
    client.send(&Request::Reset).unwrap();
    assert_eq!(next(&mut client), Event::Done);
    client
        .send(&Request::SetSystem {
            text: protocol::truncated("Answer briefly."),
        })
        .unwrap();
    assert_eq!(next(&mut client), Event::Done);
    client.send(&Request::Status).unwrap();
    let Event::Status(status) = next(&mut client) else {
        panic!("no status")
    };
    assert_eq!((status.turns, status.context_used), (0, 0));

    // Stop sequences: the reply ends before the first occurrence of a piece of the golden text.
    client
        .send(&Request::SetSystem {
            text: protocol::truncated(""),
        })
        .unwrap();
    assert_eq!(next(&mut client), Event::Done);
    let golden = golden_reply("Hi there!");
    let (cut, stop) = stop_candidate(&golden);
    let options = ChatOptions {
        stop: [protocol::truncated(stop)].into_iter().collect(),
        ..ChatOptions::default()
    };
    let (text, reason, _) = chat(&mut client, 8, "Hi there!", options);
    assert_eq!(reason, EndReason::Stop);
    assert_eq!(text, golden[..cut]);

    // Sentences for TTS arrive between start and stop and hold the same text.
    let options = ChatOptions {
        sentences: true,
        ..ChatOptions::default()
    };
    client
        .send(&Request::Chat(ChatRequest {
            session: 9,
            text: protocol::truncated("Hi there!"),
            options,
        }))
        .unwrap();
    let mut events = Vec::new();
    loop {
        let event = next(&mut client);
        let end = matches!(event, Event::End { .. });
        events.push(event);
        if end {
            break;
        }
    }
    assert_eq!(events.first(), Some(&Event::SynthesizeStart));
    assert!(matches!(events[events.len() - 2], Event::SynthesizeStop));
    let spoken: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            Event::SynthesizeChunk { text } => Some(text.to_string()),
            _ => None,
        })
        .collect();
    assert!(!spoken.is_empty());
    let squash = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    assert_eq!(squash(&spoken.join(" ")), squash(&golden));

    // Goodbye: back to line mode, where typing works again.
    client.send(&Request::Goodbye).unwrap();
    assert_eq!(next(&mut client), Event::Goodbye);
}

/// A split of `text` at a stop sequence that occurs in it: (bytes before it, the sequence).
fn stop_candidate(text: &str) -> (usize, &str) {
    let mut boundaries = text.char_indices().map(|(i, _)| i).skip(5);
    let start = boundaries
        .next()
        .expect("a reply of more than 5 characters");
    let end = text[start..]
        .char_indices()
        .nth(2)
        .map_or(text.len(), |(i, _)| start + i);
    let stop = &text[start..end];
    (text.find(stop).unwrap(), stop)
}

fn next(client: &mut Client) -> Event {
    client.recv(PATIENCE).expect("an event")
}

fn chat(
    client: &mut Client,
    session: u32,
    text: &str,
    options: ChatOptions,
) -> (String, EndReason, protocol::ReplyStats) {
    client
        .send(&Request::Chat(ChatRequest {
            session,
            text: protocol::truncated(text),
            options,
        }))
        .unwrap();
    let mut reply = String::new();
    let (reason, stats) = client
        .reply(PATIENCE, &mut |event| match event {
            Event::Token { text } => reply.push_str(text),
            Event::Error { code, detail, .. } => panic!("device error {code:?}: {detail}"),
            _ => {}
        })
        .expect("a reply");
    (reply, reason, stats)
}

#[test]
fn cancel_mid_reply_in_both_modes() {
    let mut device = Device::start(&["--max-tokens", "400"]);
    // Line mode: Ctrl-C after the reply has started.
    device.type_text(b"Hi there!\r");
    let mut before = device.expect("Hi there!\r\n");
    before.push_str(&device.expect_some_reply());
    device.type_text(b"\x03");
    let after = device.expect("^C\r\n> ");
    assert!(before.len() + after.len() < 4000);
    device.type_text(b"/stats\r");
    let stats = device.expect("\r\n> ");
    let generated: u32 = stats
        .split(" generated")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {stats:?}"));
    assert!(generated < 400, "Ctrl-C did not stop the reply: {stats:?}");

    // Frame mode: Cancel → End { Cancelled } then CancelAck { was_generating: true }.
    let (_child, mut client) = device.client();
    client
        .send(&Request::Chat(ChatRequest {
            session: 1,
            text: protocol::truncated("What is the weather like?"),
            options: ChatOptions::default(),
        }))
        .unwrap();
    let mut tokens = 0;
    while tokens < 3 {
        if let Event::Token { .. } = next(&mut client) {
            tokens += 1;
        }
    }
    client.send(&Request::Cancel).unwrap();
    let end = client
        .until(PATIENCE, |e| matches!(e, Event::End { .. }), &mut |_| {})
        .unwrap();
    let Event::End { reason, stats, .. } = end else {
        unreachable!()
    };
    assert_eq!(reason, EndReason::Cancelled);
    assert!(stats.generated_tokens < 400);
    assert_eq!(
        next(&mut client),
        Event::CancelAck {
            was_generating: true
        }
    );
    // The conversation goes on.
    let (_, reason, _) = chat(
        &mut client,
        1,
        "Hi there!",
        ChatOptions {
            max_tokens: Some(4),
            ..Default::default()
        },
    );
    assert_eq!(reason, EndReason::Length);
}

impl Device {
    /// Waits until at least one byte of a reply has arrived; returns it.
    fn expect_some_reply(&mut self) -> String {
        let mut buf = [0u8; 64];
        let n = self.line.read_timeout(&mut buf, PATIENCE).unwrap();
        assert!(n > 0, "no reply started");
        lossy(&buf[..n])
    }
}

#[test]
fn line_noise_is_survived_in_both_modes() {
    let mut device = Device::start(&[]);
    // Garbage, zero bytes included (each 0x00 makes the device look for a greeting frame).
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut noise = Vec::new();
    for _ in 0..2000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // No Ctrl-C, CR or LF: the noise must not end a line by itself.
        let b = (seed >> 24) as u8;
        if !matches!(b, 0x03 | b'\r' | b'\n') {
            noise.push(b);
        }
    }
    device.line.write_all(&noise).unwrap();
    // A zero byte ends any half-read greeting; Ctrl-U clears the line.
    device.type_text(b"\x00\x15Hi there!\r");
    let output = device.expect("\r\n> ");
    let reply = reply_after(&output, "Hi there!");
    assert_eq!(reply, as_terminal_shows(&golden_reply("Hi there!")));

    let (_child, mut client) = device.client();
    let mut writer = FrameWriter::new();
    let chat_request = Request::Chat(ChatRequest {
        session: 3,
        text: protocol::truncated("Hi there!"),
        options: ChatOptions::default(),
    });
    let good = writer.encode(&chat_request).unwrap().to_vec();
    // A flipped bit, dropped bytes, an oversized frame, an unknown message: each refused.
    let mut flipped = good.clone();
    flipped[3] ^= 0x10;
    client.send_raw(&flipped).unwrap();
    assert_error(&mut client, ErrorCode::BadFrame);
    let dropped: Vec<u8> = good
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 7 != 3)
        .map(|(_, b)| *b)
        .collect();
    client.send_raw(&dropped).unwrap();
    assert_error(&mut client, ErrorCode::BadFrame);
    let mut oversized = vec![0x55u8; 5000];
    oversized.push(DELIMITER);
    client.send_raw(&oversized).unwrap();
    assert_error(&mut client, ErrorCode::Oversized);
    let mut scratch = [0u8; 64];
    let mut out = [0u8; 64];
    let n = encode_frame(99, &[42, 1, 2, 3], &mut scratch, &mut out).unwrap();
    client.send_raw(&out[..n]).unwrap();
    assert_error(&mut client, ErrorCode::UnknownMessage);
    // Then the intact request is answered as if nothing happened.
    let (text, reason, _) = chat(&mut client, 3, "Hi there!", ChatOptions::default());
    assert_eq!(reason, EndReason::Length);
    assert_eq!(text, golden_reply("Hi there!"));
}

fn assert_error(client: &mut Client, code: ErrorCode) {
    match next(client) {
        Event::Error { code: got, .. } if got == code => {}
        other => panic!("expected error {code:?}, got {other:?}"),
    }
}

/// A conversation rebuilt with `Message`s: a user message sent in pieces and completed by a
/// chat is the whole message (the golden reply); remembered turns are prefilled with the next
/// chat; a copy of a message taken changes nothing, a gap is refused.
#[test]
fn messages_rebuild_a_conversation() {
    let device = Device::start(&[]);
    let (_child, mut client) = device.client();
    let next = client.remember(9, 0, Role::User, "What is ").unwrap();
    assert_eq!(client.remember(9, next, Role::User, "the ").unwrap(), 2);
    let (text, reason, first) = chat(&mut client, 9, "weather like?", ChatOptions::default());
    assert_eq!(text, golden_reply("What is the weather like?"));
    assert_eq!(reason, EndReason::Length);
    // A new conversation holding that turn as remembered messages, then a new message.
    let mut index = 0;
    for (role, text) in [
        (Role::User, "What is the weather like?"),
        (Role::Assistant, text.as_str()),
    ] {
        index = client.remember(10, index, role, text).unwrap();
    }
    assert_eq!(index, 2);
    // A copy of the first (as when its Done is lost) is answered.
    client
        .remember(10, 0, Role::User, "What is the weather like?")
        .unwrap();
    let (_, reason, stats) = chat(&mut client, 10, "And tomorrow?", ChatOptions::default());
    assert_eq!(reason, EndReason::Length);
    assert!(
        stats.prompt_tokens > first.prompt_tokens,
        "{stats:?} vs {first:?}"
    );
    match client.remember(10, index + 1, Role::User, "lost") {
        Err(ember_serial::ClientError::Device { code, .. }) => {
            assert_eq!(code, ErrorCode::OutOfOrder)
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_long_chat_overflows_the_context_without_errors() {
    let device = Device::start(&["--context", "160", "--max-tokens", "24"]);
    let (_child, mut client) = device.client();
    assert_eq!(client.hello().context_length, 160);
    let mut dropped = 0;
    for turn in 0..14 {
        let text = format!("Turn {turn}: tell me something new about the weather.");
        let (reply, reason, stats) = chat(&mut client, 5, &text, ChatOptions::default());
        assert!(
            matches!(reason, EndReason::Eos | EndReason::Length),
            "turn {turn}: {reason:?}"
        );
        assert!(!reply.is_empty() || reason == EndReason::Eos);
        assert!(stats.context_used <= 160, "turn {turn}: {stats:?}");
        dropped += stats.turns_dropped;
    }
    assert!(
        dropped > 0,
        "14 turns of ~45 tokens never filled a 160-token context"
    );
}

#[test]
fn a_client_that_stops_reading_does_not_stop_the_device() {
    let log = std::env::temp_dir().join(format!("emberd-stall-{}.log", std::process::id()));
    let device = Device::start_logging(&["--max-tokens", "400", "--write-timeout-ms", "200"], &log);
    let (mut child, mut client) = device.client();
    // Ask and never read: the replies pile up in the PTY until it is full and writes stall.
    for session in 0..40 {
        let options = ChatOptions {
            sentences: true,
            ..ChatOptions::default()
        };
        let text = protocol::truncated("What is the weather like?");
        client
            .send(&Request::Chat(ChatRequest {
                session,
                text,
                options,
            }))
            .unwrap();
        std::thread::sleep(Duration::from_millis(150));
    }
    std::thread::sleep(Duration::from_secs(1));
    assert!(child.0.try_wait().unwrap().is_none(), "emberd died");
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(
        log_text.contains("stopped reading"),
        "the line never stalled: {log_text}"
    );
    // Back: drain what is left, then the device answers again.
    while client.recv(Duration::from_millis(500)).is_ok() {}
    client.send(&Request::Status).unwrap();
    let status = client
        .until(PATIENCE, |e| matches!(e, Event::Status(_)), &mut |_| {})
        .unwrap();
    assert!(matches!(status, Event::Status(_)));
    let (_, reason, _) = chat(
        &mut client,
        99,
        "Hi there!",
        ChatOptions {
            max_tokens: Some(4),
            ..Default::default()
        },
    );
    assert_eq!(reason, EndReason::Length);
    let _ = std::fs::remove_file(log);
}

#[test]
fn ember_ask_and_chat_over_a_pty() {
    let (_child, port) = emberd_on_pty(&tiny_image().0, &["--max-tokens", "32", "--threads", "2"]);
    let output = ember_at(&port, &["ask", "--json", "--sentences", "Hi there!"], "");
    let stdout = ember_e2e::stdout_of(&output);
    let result = ember_e2e::last_json_line(&stdout);
    assert_eq!(result["text"], golden_reply("Hi there!"));
    assert_eq!(result["finish"], "length");
    assert_eq!(result["stats"]["generated_tokens"], 32);
    assert!(!result["sentences"].as_array().unwrap().is_empty());

    // A two-turn chat from stdin, then a reset; one JSON line per reply.
    let output = ember_at(
        &port,
        &["chat", "--json", "-n", "32"],
        "What is the weather like?\nAnd tomorrow?\n/reset\nWhat is the weather like?\n",
    );
    let stdout = ember_e2e::stdout_of(&output);
    let replies: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(replies.len(), 3, "{stdout}");
    let golden = golden_reply("What is the weather like?");
    assert_eq!(replies[0]["text"], golden);
    assert_eq!(replies[2]["text"], golden);
    assert!(
        replies[1]["stats"]["prompt_tokens"].as_u64()
            < replies[0]["stats"]["prompt_tokens"].as_u64()
    );

    // Bad input on the host side: a message longer than the protocol carries.
    let long = "x".repeat(protocol::MAX_TEXT + 1);
    let output = ember_at(&port, &["ask", &long], "");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("longer than"));
    // The device went back to line mode after each goodbye and still serves.
    let output = ember_at(&port, &["ask", "Hi there!", "-n", "4"], "");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn emberd_refuses_bad_arguments_clearly() {
    let gguf = ember_e2e::tiny_model();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--model".into(), gguf.display().to_string(), "--pty".into()],
            "emberd serves Ember images",
        ),
        (
            vec![
                "--model".into(),
                "/nonexistent.ember".into(),
                "--pty".into(),
            ],
            "cannot load model /nonexistent.ember",
        ),
        (
            vec![
                "--model".into(),
                tiny_image().0.display().to_string(),
                "--port".into(),
                "/dev/nonexistent-tty".into(),
            ],
            "cannot open serial port /dev/nonexistent-tty",
        ),
    ];
    for (args, message) in cases {
        let output = Command::new(binary("emberd")).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// Without a model, a board or slots, emberd serves the default model only once `ember` has
/// made it: on an empty `$EMBER_HOME` it says how to make it, and downloads nothing.
#[test]
fn emberd_without_a_model_asks_for_the_default_one_to_be_made() {
    let home = ember_e2e::fresh_temp_dir("emberd-no-default");
    let output = Command::new(binary("emberd"))
        .arg("--pty")
        .env("EMBER_HOME", &home)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("run `ember chat` once"), "{stderr}");
    assert!(stderr.contains(home.to_str().unwrap()), "{stderr}");
    assert_eq!(std::fs::read_dir(&home).unwrap().count(), 0, "{stderr}");
    let _ = std::fs::remove_dir_all(&home);
}
