//! The device (state machine + driver) and the host `Client` in one process, joined by a serial
//! line in memory, serving a deterministic fake model: every scenario of `tests/serial.rs`
//! (which runs the real `emberd` on PTYs with a real model) in a second or two, plus the time
//! rules (stalled writes, a rate on trial, the frame-mode idle timeout).
//!
//! Expected replies come from the same fake model driven through `ChatSession` directly,
//! without the line: what arrives must be what the engine generated.

use embedded_io::Write;
use ember_core::device::{Device, LineConfig, Model, Settings};
use ember_core::protocol::{
    self, ChatOptions, ChatRequest, EndReason, ErrorCode, Event, Hello, MAX_FRAME, MessageRequest,
    PROTOCOL_VERSION, ReplyStats, Request, Role,
};
use ember_core::sampler::SamplingConfig;
use ember_engine::testing::{CHATML, Counting, chatml, tokenizer};
use ember_engine::{ChatFormat, ChatSession, GenerateOptions};
use ember_serial::{Client, ClientError, MemoryLine, Port};
use ember_signals::{Delay, Status};
use emberd::driver::{Driver, Exit, Panel};
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const PATIENCE: Duration = Duration::from_secs(5);
const MAX_TOKENS: u32 = 12;
const RATES: [u32; 3] = [115_200, 921_600, 3_000_000];

fn line_config(idle_timeout: Option<Duration>) -> LineConfig {
    LineConfig {
        baud: 115_200,
        max_baud: 921_600,
        rates: &RATES,
        idle_timeout,
    }
}

fn model() -> Model {
    Model {
        hello: Hello {
            protocol_version: PROTOCOL_VERSION,
            model_name: protocol::truncated("fake"),
            model_hash: [1; 32],
            context_length: 1024,
            max_frame: MAX_FRAME as u32,
            slot: None,
            last_flash: None,
            max_baud: 0,
        },
        settings: Settings {
            sampling: SamplingConfig::default(),
            max_tokens: MAX_TOKENS,
            stops: Vec::new(),
        },
        system: None,
    }
}

/// A device serving the fake model (each forward pass taking `step`) on one end of a line in
/// memory, in a thread; returns the other end.
fn device(config: LineConfig, step: Duration) -> (MemoryLine, JoinHandle<Exit>) {
    device_with_panel(config, step, None)
}

/// The same, with a board's LED and button.
fn device_with_panel(
    config: LineConfig,
    step: Duration,
    panel: Option<Panel>,
) -> (MemoryLine, JoinHandle<Exit>) {
    device_with_template(config, step, panel, CHATML)
}

/// The same, with the chat template `template`.
fn device_with_template(
    config: LineConfig,
    step: Duration,
    panel: Option<Panel>,
    template: &'static str,
) -> (MemoryLine, JoinHandle<Exit>) {
    let (host, mut line) = MemoryLine::pair(config.baud);
    line.set_write_timeout(Duration::from_millis(100));
    let thread = std::thread::spawn(move || {
        let tokenizer = tokenizer();
        let mut fake = Counting::new(usize::MAX);
        fake.delay = step;
        let format = ChatFormat::new(Some(template), &tokenizer, false).expect("the template");
        let mut chat = ChatSession::new(&mut fake, &tokenizer, format, None);
        let device = Device::new(config, model(), Duration::ZERO);
        Driver::new(line, Delay, device, panel).serve(&mut chat, None)
    });
    (host, thread)
}

/// Hangs up and expects the device to notice.
fn hang_up(host: impl Sized, thread: JoinHandle<Exit>) {
    drop(host);
    match thread.join().expect("the device thread") {
        Err(e) => assert!(e.to_string().contains("hung up"), "{e}"),
        Ok(slot) => panic!("a trial boot of slot {slot} without slots"),
    }
}

/// The replies the fake model gives to `messages`, one turn after another, without the line.
fn expected(messages: &[&str], max_tokens: u32) -> Vec<String> {
    let tokenizer = tokenizer();
    let mut fake = Counting::new(usize::MAX);
    let mut chat = ChatSession::new(&mut fake, &tokenizer, chatml(&tokenizer), None);
    let options = GenerateOptions {
        max_tokens: max_tokens as usize,
        sampling: SamplingConfig::default(),
    };
    messages
        .iter()
        .map(|m| {
            chat.say(m, &options, &mut |_| ControlFlow::Continue(()))
                .unwrap()
                .text
        })
        .collect()
}

/// The replies the fake model gives to `messages`, one turn after another, after the system
/// prompt `system` and the `remembered` messages, without the line: their texts and the
/// tokens prefilled for each.
fn expected_after(
    system: &str,
    remembered: &[(Role, &str)],
    messages: &[&str],
) -> Vec<(String, u32)> {
    let tokenizer = tokenizer();
    let mut fake = Counting::new(usize::MAX);
    let system = Some(system.to_string());
    let mut chat = ChatSession::new(&mut fake, &tokenizer, chatml(&tokenizer), system);
    for (role, text) in remembered {
        chat.remember(*role, text);
    }
    let options = GenerateOptions {
        max_tokens: MAX_TOKENS as usize,
        sampling: SamplingConfig::default(),
    };
    messages
        .iter()
        .map(|m| {
            let reply = chat
                .say(m, &options, &mut |_| ControlFlow::Continue(()))
                .unwrap();
            (reply.text, reply.stats.prompt_tokens as u32)
        })
        .collect()
}

fn chat(text: &str) -> Request {
    Request::Chat(ChatRequest {
        session: 0,
        text: protocol::truncated(text),
        options: ChatOptions::default(),
    })
}

/// Sends `request` and collects the reply's text and stats.
fn ask_stats<P: Port>(client: &mut Client<P>, request: &Request) -> (String, ReplyStats) {
    client.send(request).unwrap();
    let mut text = String::new();
    let (_, stats) = client
        .reply(PATIENCE, &mut |event| {
            if let Event::Token { text: piece } = event {
                text.push_str(piece);
            }
        })
        .unwrap();
    (text, stats)
}

/// Sends `request` and collects the reply's text and end.
fn ask<P: Port>(client: &mut Client<P>, request: &Request) -> (String, EndReason) {
    client.send(request).unwrap();
    let mut text = String::new();
    let (reason, _) = client
        .reply(PATIENCE, &mut |event| {
            if let Event::Token { text: piece } = event {
                text.push_str(piece);
            }
        })
        .unwrap();
    (text, reason)
}

/// Reads raw bytes until `want` has arrived; returns all of them as text.
fn read_until(line: &mut MemoryLine, want: &str) -> String {
    let deadline = Instant::now() + PATIENCE;
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains(want) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "{want:?} never came: {:?}", lossy(&seen));
        let mut buf = [0u8; 256];
        let n = line.read_timeout(&mut buf, left).unwrap();
        seen.extend_from_slice(&buf[..n]);
    }
    lossy(&seen)
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn frame_mode_conversation() {
    let (line, thread) = device(line_config(None), Duration::ZERO);
    let mut client = Client::over(line, PATIENCE).unwrap();
    // The banner before the greeting reads as one damaged frame; nothing after it may be.
    let greeted = client.line_errors();
    assert_eq!(client.hello().model_name.as_str(), "fake");
    assert_eq!(client.hello().max_baud, 921_600);
    let want = expected(&["hi", "and then?"], MAX_TOKENS);
    assert_eq!(
        ask(&mut client, &chat("hi")),
        (want[0].clone(), EndReason::Length)
    );
    assert_eq!(
        ask(&mut client, &chat("and then?")),
        (want[1].clone(), EndReason::Length)
    );
    client.send(&Request::Status).unwrap();
    match client.recv(PATIENCE).unwrap() {
        Event::Status(status) => assert_eq!((status.turns, status.replies), (2, 2)),
        other => panic!("{other:?}"),
    }
    // After a reset the first message gets the first reply again.
    client.send(&Request::Reset).unwrap();
    assert_eq!(client.recv(PATIENCE).unwrap(), Event::Done);
    assert_eq!(ask(&mut client, &chat("hi")).0, want[0]);
    // A bad setting is an error and an end.
    let bad = Request::Chat(ChatRequest {
        session: 0,
        text: protocol::truncated("x"),
        options: ChatOptions {
            top_p: Some(0.0),
            ..ChatOptions::default()
        },
    });
    client.send(&bad).unwrap();
    assert!(matches!(
        client.recv(PATIENCE).unwrap(),
        Event::Error {
            code: ErrorCode::BadSetting,
            ..
        }
    ));
    assert!(matches!(client.recv(PATIENCE).unwrap(), Event::End { .. }));
    assert_eq!(client.line_errors(), greeted);
    let line = client.goodbye(PATIENCE).unwrap();
    hang_up(line, thread);
}

/// A chat template that refuses the conversation (Gemma's refuses a system role) ends that reply
/// with an `Engine` error carrying the template's message; the device goes on.
#[test]
fn a_template_that_refuses_the_conversation_is_an_engine_error() {
    const NO_SYSTEM: &str = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}";
    let (line, thread) = device_with_template(line_config(None), Duration::ZERO, None, NO_SYSTEM);
    let mut client = Client::over(line, PATIENCE).unwrap();
    assert_eq!(ask(&mut client, &chat("hi")).1, EndReason::Length);
    client
        .send(&Request::SetSystem {
            text: protocol::truncated("Be brief."),
        })
        .unwrap();
    assert_eq!(client.recv(PATIENCE).unwrap(), Event::Done);
    client.send(&chat("hi")).unwrap();
    match client.recv(PATIENCE).unwrap() {
        Event::Error { code, detail, .. } => {
            assert_eq!(code, ErrorCode::Engine);
            assert!(detail.contains("System role not supported"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(client.recv(PATIENCE).unwrap(), Event::End { .. }));
    // Without the system prompt the template renders again.
    client
        .send(&Request::SetSystem {
            text: protocol::truncated(""),
        })
        .unwrap();
    assert_eq!(client.recv(PATIENCE).unwrap(), Event::Done);
    assert_eq!(ask(&mut client, &chat("hi")).1, EndReason::Length);
    let line = client.goodbye(PATIENCE).unwrap();
    hang_up(line, thread);
}

#[test]
fn line_mode_conversation_and_back_from_frame_mode() {
    let (mut line, thread) = device(line_config(None), Duration::ZERO);
    read_until(&mut line, "/help lists the commands.\r\n> ");
    let want = expected(&["hi", "hi"], MAX_TOKENS);
    line.write_all(b"hi\r").unwrap();
    let screen = read_until(&mut line, "\r\n> ");
    assert_eq!(screen, format!("hi\r\n{}\r\n> ", want[0]));
    line.write_all(b"/stats\r").unwrap();
    let screen = read_until(&mut line, "\r\n> ");
    assert!(screen.contains("prompt tokens, 12 generated"), "{screen}");
    // Into frame mode and out again; the line editor works as before, the conversation too.
    let client = Client::over(line, PATIENCE).unwrap();
    let mut line = client.goodbye(PATIENCE).unwrap();
    read_until(&mut line, "> ");
    line.write_all(
        b"hxi
",
    )
    .unwrap();
    let screen = read_until(&mut line, "\r\n> ");
    assert_eq!(screen, format!("hx\x08 \x08i\r\n{}\r\n> ", want[1]));
    hang_up(line, thread);
}

#[test]
fn cancel_mid_reply_in_both_modes() {
    let (mut line, thread) = device(line_config(None), Duration::from_millis(2));
    read_until(&mut line, "> ");
    line.write_all(b"/set max_tokens 100000\r").unwrap();
    read_until(&mut line, "> ");
    line.write_all(b"go\r").unwrap();
    read_until(&mut line, "go\r\na");
    line.write_all(&[0x03]).unwrap();
    let screen = read_until(&mut line, " ^C\r\n> ");
    assert!(!screen.contains("error"), "{screen}");
    let mut client = Client::over(line, PATIENCE).unwrap();
    client.send(&chat("again")).unwrap();
    assert!(matches!(
        client.recv(PATIENCE).unwrap(),
        Event::Token { .. }
    ));
    client.send(&Request::Cancel).unwrap();
    let (reason, stats) = client.reply(PATIENCE, &mut |_| {}).unwrap();
    assert_eq!(reason, EndReason::Cancelled);
    assert!(stats.generated_tokens < 1000, "{stats:?}");
    assert_eq!(
        client.recv(PATIENCE).unwrap(),
        Event::CancelAck {
            was_generating: true
        }
    );
    // A cancel during the prefill of a long message: the reply ends before its first token.
    let long = Request::Chat(ChatRequest {
        session: 0,
        text: protocol::truncated(&"numbers ".repeat(75)),
        options: ChatOptions {
            max_tokens: Some(8),
            ..ChatOptions::default()
        },
    });
    client.send(&long).unwrap();
    client.send(&Request::Cancel).unwrap();
    let (reason, stats) = client.reply(PATIENCE, &mut |_| {}).unwrap();
    assert_eq!((reason, stats.generated_tokens), (EndReason::Cancelled, 0));
    hang_up(client, thread);
}

#[test]
fn busy_noise_and_damaged_frames_are_answered_and_survived() {
    let (line, thread) = device(line_config(None), Duration::from_millis(2));
    let mut client = Client::over(line, PATIENCE).unwrap();
    client.send(&chat("one")).unwrap();
    client.send(&Request::Reset).unwrap();
    client.send(&Request::Status).unwrap();
    let mut seen = Vec::new();
    let (reason, _) = client
        .reply(PATIENCE, &mut |e| seen.push(e.clone()))
        .unwrap();
    assert_eq!(reason, EndReason::Length);
    assert!(seen.iter().any(|e| matches!(
        e,
        Event::Error {
            code: ErrorCode::Busy,
            ..
        }
    )));
    assert!(seen.iter().any(|e| matches!(e, Event::Status(_))));
    // Garbage with zero bytes, a frame that is too long, an unknown message.
    client.send_raw(&[0x41, 0x00, 0xFF, 0x12, 0x00]).unwrap();
    client.send_raw(&[0x55; MAX_FRAME + 4]).unwrap();
    client.send_raw(&[0x00]).unwrap();
    let mut codes = Vec::new();
    while let Ok(Event::Error { code, .. }) = client.recv(Duration::from_millis(300)) {
        codes.push(code);
    }
    assert!(codes.contains(&ErrorCode::BadFrame), "{codes:?}");
    assert!(codes.contains(&ErrorCode::Oversized), "{codes:?}");
    // Then a request is answered as if nothing happened.
    let want = expected(&["one", "two"], MAX_TOKENS);
    assert_eq!(ask(&mut client, &chat("two")).0, want[1]);
    hang_up(client, thread);
}

#[test]
fn a_host_that_stops_reading_does_not_stop_the_device() {
    let (line, thread) = device(line_config(None), Duration::ZERO);
    let mut client = Client::over(line, PATIENCE).unwrap();
    // A reply far longer than the line holds, never read: writes stall, the reply is given up.
    let flood = Request::Chat(ChatRequest {
        session: 0,
        text: protocol::truncated("flood"),
        options: ChatOptions {
            max_tokens: Some(50_000),
            ..ChatOptions::default()
        },
    });
    client.send(&flood).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    // Back: what is left is drained (a torn frame at most), and the device answers again.
    while client.recv(Duration::from_millis(200)).is_ok() {}
    client.send(&Request::Status).unwrap();
    let status = client
        .until(PATIENCE, |e| matches!(e, Event::Status(_)), &mut |_| {})
        .unwrap();
    assert!(matches!(status, Event::Status(s) if s.replies == 1));
    hang_up(client, thread);
}

#[test]
fn the_line_switches_rate_and_falls_back_when_no_frame_comes() {
    let (line, thread) = device(line_config(None), Duration::ZERO);
    let mut client = Client::over(line, PATIENCE).unwrap();
    assert_eq!(client.switch_baud(921_600).unwrap(), 921_600);
    let want = expected(&["fast"], MAX_TOKENS);
    assert_eq!(ask(&mut client, &chat("fast")).0, want[0]);
    // A rate the device does not take is refused at the current one.
    client.send(&Request::SetBaud { baud: 3_000_000 }).unwrap();
    assert!(matches!(
        client.recv(PATIENCE).unwrap(),
        Event::Error {
            code: ErrorCode::BadSetting,
            ..
        }
    ));
    // Goodbye brings the device back to its own rate, where it prompts.
    client.send(&Request::Goodbye).unwrap();
    assert_eq!(client.recv(PATIENCE).unwrap(), Event::Goodbye);
    let mut terminal = client.into_port();
    terminal.set_baud(115_200).unwrap();
    read_until(&mut terminal, "> ");
    hang_up(terminal, thread);

    // A host that asks for a rate and never speaks at it: the device goes back.
    let (line, thread) = device(line_config(None), Duration::ZERO);
    let mut client = Client::over(line, PATIENCE).unwrap();
    client.send(&Request::SetBaud { baud: 921_600 }).unwrap();
    assert_eq!(
        client.recv(PATIENCE).unwrap(),
        Event::BaudSwitch { baud: 921_600 }
    );
    let started = Instant::now();
    // At the old rate the device hears noise and answers nothing …
    client.send(&Request::Status).unwrap();
    assert!(matches!(
        client.recv(Duration::from_millis(500)),
        Err(ClientError::Timeout(_))
    ));
    // … until its trial ends and it is back at the old rate.
    std::thread::sleep(Duration::from_millis(
        u64::from(protocol::BAUD_TRIAL_MS) + 200,
    ));
    assert!(started.elapsed() >= Duration::from_millis(protocol::BAUD_TRIAL_MS.into()));
    client.send(&Request::Status).unwrap();
    assert!(matches!(client.recv(PATIENCE).unwrap(), Event::Status(_)));
    hang_up(client, thread);
}

#[test]
fn a_vanished_host_leaves_the_device_in_line_mode_after_the_idle_timeout() {
    let idle = Duration::from_millis(300);
    let (line, thread) = device(line_config(Some(idle)), Duration::ZERO);
    let mut client = Client::over(line, PATIENCE).unwrap();
    assert_eq!(client.switch_baud(921_600).unwrap(), 921_600);
    client.send(&Request::Status).unwrap();
    assert!(matches!(client.recv(PATIENCE).unwrap(), Event::Status(_)));
    // The host goes quiet; a person plugs a terminal in at the device's own rate.
    let mut terminal = client.into_port();
    terminal.set_baud(115_200).unwrap();
    let screen = read_until(&mut terminal, "back in line mode)\r\n> ");
    assert!(screen.contains("(no program spoke for 0.3 s"), "{screen}");
    let want = expected(&["hello"], MAX_TOKENS);
    terminal.write_all(b"hello\r").unwrap();
    let screen = read_until(&mut terminal, "\r\n> ");
    assert_eq!(screen, format!("hello\r\n{}\r\n> ", want[0]));
    // A program greets as always.
    let mut client = Client::over(terminal, PATIENCE).unwrap();
    client.send(&Request::Status).unwrap();
    assert!(matches!(client.recv(PATIENCE).unwrap(), Event::Status(s) if s.replies == 1));
    hang_up(client, thread);
}

#[test]
fn the_boards_button_stops_a_reply_and_its_led_shows_the_status() {
    // A fake panel: records each status shown and reports a press when the test asks for one.
    let shown = Arc::new(Mutex::new(Vec::<Status>::new()));
    let press = Arc::new(Mutex::new(false));
    let panel: Panel = {
        let (shown, press) = (shown.clone(), press.clone());
        Box::new(move |activity, _now| {
            let status = Status::from(activity);
            let mut shown = shown.lock().unwrap();
            if shown.last() != Some(&status) {
                shown.push(status);
            }
            std::mem::take(&mut *press.lock().unwrap())
        })
    };
    let config = line_config(None);
    let (line, thread) = device_with_panel(config, Duration::from_millis(2), Some(panel));
    let mut client = Client::over(line, PATIENCE).unwrap();
    let long = Request::Chat(ChatRequest {
        session: 0,
        text: protocol::truncated("go on"),
        options: ChatOptions {
            max_tokens: Some(100_000),
            ..ChatOptions::default()
        },
    });
    client.send(&long).unwrap();
    assert!(matches!(
        client.recv(PATIENCE).unwrap(),
        Event::Token { .. }
    ));
    *press.lock().unwrap() = true;
    let (reason, _) = client.reply(PATIENCE, &mut |_| {}).unwrap();
    assert_eq!(reason, EndReason::Cancelled);
    // No host asked: no CancelAck follows.
    client.send(&Request::Status).unwrap();
    assert!(matches!(client.recv(PATIENCE).unwrap(), Event::Status(_)));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        *shown.lock().unwrap(),
        [Status::Ready, Status::Generating, Status::Ready]
    );
    hang_up(client, thread);
}

fn turns<P: Port>(client: &mut Client<P>) -> u32 {
    match client.ask(&Request::Status, PATIENCE, |e| {
        matches!(e, Event::Status(_))
    }) {
        Ok(Event::Status(status)) => status.turns,
        other => panic!("{other:?}"),
    }
}

/// A host rebuilds a conversation: `SetSystem`, then the earlier messages as they are (in
/// pieces, without generating), then a chat. The reply is the engine's to the same
/// conversation; copies of taken messages change nothing; a lost message and an answer to no
/// user message are refused.
#[test]
fn remembered_messages_rebuild_a_conversation() {
    use Role::{Assistant, User};
    let (line, thread) = device(line_config(None), Duration::ZERO);
    let mut client = Client::over(line, PATIENCE).unwrap();
    let system = "Be brief.";
    let set_system = Request::SetSystem {
        text: protocol::truncated(system),
    };
    client
        .ask(&set_system, PATIENCE, |e| matches!(e, Event::Done))
        .unwrap();
    let history = [
        (User, "What is "),
        (User, "two plus two?"),
        (Assistant, "It is "),
        (Assistant, "four."),
        (User, "And "),
    ];
    let mut index = 0;
    for (role, text) in history {
        index = client.remember(0, index, role, text).unwrap();
    }
    assert_eq!(index, 5);
    assert_eq!(turns(&mut client), 1, "a user message and its answer");
    // The held "And " and the chat's text are one user message.
    let want = expected_after(system, &history, &["three?", "more"]);
    let (text, stats) = ask_stats(&mut client, &chat("three?"));
    assert_eq!((text.clone(), stats.prompt_tokens), want[0]);
    let plain = expected_after(system, &[], &["And three?"]);
    assert_ne!(plain[0].0, text, "the remembered turn changed the reply");
    assert_eq!(turns(&mut client), 2);

    // A copy of a message taken (its Done lost) is answered and changes nothing.
    let message = |index, role, text| {
        Request::Message(MessageRequest {
            session: 0,
            index,
            role,
            text: protocol::truncated(text),
        })
    };
    client.send(&message(1, User, "two plus two?")).unwrap();
    assert_eq!(client.recv(PATIENCE).unwrap(), Event::Done);
    // A lost message: the next index is 5, not 7.
    match client.remember(0, 7, User, "x") {
        Err(ClientError::Device { code, detail }) => {
            assert_eq!(code, ErrorCode::OutOfOrder);
            assert!(detail.contains("has taken 5,"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    // After a reply the next message must be a user's.
    match client.remember(0, 5, Assistant, "x") {
        Err(ClientError::Device { code, .. }) => assert_eq!(code, ErrorCode::OutOfOrder),
        other => panic!("{other:?}"),
    }
    assert_eq!(turns(&mut client), 2);
    // Nothing of the refused or copied messages is in the conversation.
    let (text, stats) = ask_stats(&mut client, &chat("more"));
    assert_eq!((text, stats.prompt_tokens), want[1]);
    let line = client.goodbye(PATIENCE).unwrap();
    hang_up(line, thread);
}
