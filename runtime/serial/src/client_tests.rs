//! The host's recovery of lost chats and lost ends ([`Recovery`]), against a scripted fake
//! device on a [`MemoryLine`] that loses chosen frames.

use super::*;
use crate::MemoryLine;
use embedded_io::Write as _;
use ember_core::protocol::{ChatOptions, ChatRequest, Status};
use std::sync::{Arc, Mutex};

/// What the fake device does wrong, and what it did.
#[derive(Default)]
struct Script {
    /// Chat frames (counted from 0) it never receives.
    lose_chats: Vec<usize>,
    /// Chat frames it receives as a damaged frame (answered `BadFrame`, no request).
    damage_chats: Vec<usize>,
    /// Event frames (counted from 0, greeting excluded) that never reach the host.
    lose_events: Vec<usize>,
    /// How long a reply prefills before its first token.
    prefill: Duration,
    /// Replies it ran (each chat it read and did not refuse).
    ran: Vec<u16>,
    /// Message frames (counted from 0) it never receives.
    lose_messages: Vec<usize>,
    /// The messages it took, by the index rule: (role, text), one per piece.
    messages: Vec<(Role, String)>,
}

fn hello() -> Hello {
    Hello {
        protocol_version: PROTOCOL_VERSION,
        model_name: protocol::truncated("fake"),
        model_hash: [0; 32],
        context_length: 256,
        max_frame: MAX_FRAME as u32,
        slot: None,
        last_flash: None,
        max_baud: 115_200,
    }
}

/// Runs the fake device on `line` until the host hangs up.
fn fake_device(mut line: MemoryLine, script: Arc<Mutex<Script>>) {
    let mut decoder = FrameDecoder::<MAX_FRAME>::new();
    let mut writer = FrameWriter::new();
    let mut events = 0usize;
    let mut chats = 0usize;
    let mut messages = 0usize;
    let mut replies = 0u32;
    // A reply prefilling: its chat's number and when its tokens go out.
    let mut running: Option<(u16, Instant)> = None;
    let mut send = |line: &mut MemoryLine, writer: &mut FrameWriter, event: &Event, count: bool| {
        let frame = writer.encode(event).unwrap().to_vec();
        if count {
            let lost = script.lock().unwrap().lose_events.contains(&events);
            events += 1;
            if lost {
                return;
            }
        }
        let _ = line.write_all(&frame);
    };
    let mut byte = [0u8; 1];
    loop {
        if let Some((seq, at)) = running
            && Instant::now() >= at
        {
            for text in ["Hel", "lo"] {
                let token = Event::Token {
                    text: protocol::truncated(text),
                };
                send(&mut line, &mut writer, &token, true);
            }
            replies += 1;
            let end = Event::End {
                reason: EndReason::Eos,
                stats: ReplyStats::default(),
                request: seq,
            };
            send(&mut line, &mut writer, &end, true);
            running = None;
        }
        match line.read_timeout(&mut byte, Duration::from_millis(2)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(_) => return,
        }
        let Some(Ok(frame)) = decoder.push(byte[0]) else {
            continue;
        };
        let seq = frame.seq;
        let Ok(request) = protocol::decode_request(frame.payload) else {
            continue;
        };
        let answer = match request {
            Request::Hello { .. } => {
                writer = FrameWriter::new();
                let _ = line.write_all(&[DELIMITER]);
                send(&mut line, &mut writer, &Event::Hello(hello()), false);
                continue;
            }
            Request::Chat(_) => {
                let n = chats;
                chats += 1;
                let mut script = script.lock().unwrap();
                if script.lose_chats.contains(&n) {
                    continue;
                }
                if script.damage_chats.contains(&n) {
                    Event::Error {
                        code: ErrorCode::BadFrame,
                        detail: protocol::truncated("bad CRC"),
                        request: None,
                    }
                } else if running.is_some() {
                    drop(script);
                    let busy = Event::Error {
                        code: ErrorCode::Busy,
                        detail: protocol::truncated("busy"),
                        request: Some(seq),
                    };
                    send(&mut line, &mut writer, &busy, true);
                    Event::End {
                        reason: EndReason::Error,
                        stats: ReplyStats::default(),
                        request: seq,
                    }
                } else {
                    script.ran.push(seq);
                    running = Some((seq, Instant::now() + script.prefill));
                    continue;
                }
            }
            Request::Message(message) => {
                let n = messages;
                messages += 1;
                let mut script = script.lock().unwrap();
                if script.lose_messages.contains(&n) {
                    continue;
                }
                let taken = script.messages.len() as u32;
                if message.index > taken {
                    Event::Error {
                        code: ErrorCode::OutOfOrder,
                        detail: protocol::truncated("a message was lost"),
                        request: Some(seq),
                    }
                } else {
                    if message.index == taken {
                        script
                            .messages
                            .push((message.role, message.text.to_string()));
                    }
                    Event::Done
                }
            }
            Request::Status => Event::Status(Status {
                session: 1,
                turns: replies,
                context_used: 0,
                context_length: 256,
                replies,
            }),
            Request::Cancel => Event::CancelAck {
                was_generating: false,
            },
            Request::Goodbye => Event::Goodbye,
            _ => Event::Done,
        };
        send(&mut line, &mut writer, &answer, true);
    }
}

fn client(script: Script) -> (Client<MemoryLine>, Arc<Mutex<Script>>) {
    let (host, device) = MemoryLine::pair(115_200);
    let script = Arc::new(Mutex::new(script));
    let shared = script.clone();
    std::thread::spawn(move || fake_device(device, shared));
    (Client::over(host, Duration::from_secs(2)).unwrap(), script)
}

fn chat_request() -> Request {
    Request::Chat(ChatRequest {
        session: 1,
        text: protocol::truncated("hi"),
        options: ChatOptions::default(),
    })
}

const FAST: Recovery = Recovery {
    silence: Duration::from_millis(150),
    resends: 2,
};

/// One chat: the outcome and the text that arrived.
fn say(client: &mut Client<MemoryLine>) -> Result<(ChatOutcome, String), ClientError> {
    let mut text = String::new();
    let outcome = client.chat(&chat_request(), FAST, &mut || false, &mut |event| {
        if let Event::Token { text: t } = event {
            text.push_str(t);
        }
    })?;
    Ok((outcome, text))
}

#[test]
fn a_clean_line_needs_no_recovery() {
    let (mut client, script) = client(Script::default());
    for _ in 0..3 {
        let (outcome, text) = say(&mut client).unwrap();
        assert_eq!(text, "Hello");
        assert_eq!(outcome.end.map(|e| e.0), Some(EndReason::Eos));
        assert_eq!((outcome.resent, outcome.lost_frames), (0, 0));
    }
    assert_eq!(script.lock().unwrap().ran.len(), 3);
}

#[test]
fn a_lost_chat_is_sent_again_after_the_silence() {
    let (mut client, script) = client(Script {
        lose_chats: vec![1],
        ..Script::default()
    });
    say(&mut client).unwrap();
    let start = Instant::now();
    let (outcome, text) = say(&mut client).unwrap();
    assert!(start.elapsed() >= FAST.silence);
    assert_eq!(text, "Hello");
    assert_eq!(outcome.resent, 1);
    assert_eq!(outcome.end.map(|e| e.0), Some(EndReason::Eos));
    assert_eq!(script.lock().unwrap().ran.len(), 2, "each turn ran once");
}

#[test]
fn a_damaged_chat_is_sent_again_at_once() {
    let (mut client, script) = client(Script {
        damage_chats: vec![0],
        ..Script::default()
    });
    let start = Instant::now();
    let (outcome, text) = say(&mut client).unwrap();
    assert!(start.elapsed() < FAST.silence, "{:?}", start.elapsed());
    assert_eq!(text, "Hello");
    assert_eq!((outcome.resent, outcome.unreadable), (1, 1));
    assert_eq!(script.lock().unwrap().ran.len(), 1);
}

#[test]
fn a_lost_end_is_not_sent_again() {
    // Events: Status (the count before the first chat), then Hel, lo, End.
    let (mut client, script) = client(Script {
        lose_events: vec![3],
        ..Script::default()
    });
    let (outcome, text) = say(&mut client).unwrap();
    assert_eq!(text, "Hello");
    assert_eq!(outcome.end, None, "the end was lost");
    assert_eq!(outcome.resent, 0);
    assert_eq!(script.lock().unwrap().ran.len(), 1, "the turn ran once");
    // The next turn goes on from the device's count.
    let (outcome, _) = say(&mut client).unwrap();
    assert_eq!(outcome.end.map(|e| e.0), Some(EndReason::Eos));
    assert_eq!(script.lock().unwrap().ran.len(), 2);
}

#[test]
fn a_lost_token_shows_as_a_gap() {
    let (mut client, _) = client(Script {
        lose_events: vec![1],
        ..Script::default()
    });
    let (outcome, text) = say(&mut client).unwrap();
    assert_eq!(text, "lo");
    assert_eq!(outcome.lost_frames, 1);
    assert_eq!(outcome.end.map(|e| e.0), Some(EndReason::Eos));
}

#[test]
fn a_long_prefill_is_waited_for_not_run_twice() {
    let (mut client, script) = client(Script {
        prefill: FAST.silence * 4,
        ..Script::default()
    });
    let (outcome, text) = say(&mut client).unwrap();
    assert_eq!(text, "Hello");
    assert!(outcome.resent >= 1, "the silence was taken for a lost chat");
    let ran = script.lock().unwrap().ran.clone();
    assert_eq!(ran.len(), 1, "the copies were refused as Busy");
    assert_eq!(client.last_chat(), Some(ran[0]));
    assert_eq!(outcome.end.map(|e| e.0), Some(EndReason::Eos));
}

#[test]
fn a_device_that_never_reads_the_chat_gives_a_typed_error() {
    let (mut client, script) = client(Script {
        lose_chats: (0..10).collect(),
        ..Script::default()
    });
    let err = say(&mut client).unwrap_err();
    assert!(matches!(err, ClientError::ReplyLost { sent: 3 }), "{err}");
    assert!(script.lock().unwrap().ran.is_empty());
    // The device still answers.
    client
        .ask(&Request::Status, Duration::from_secs(1), |e| {
            matches!(e, Event::Status(_))
        })
        .unwrap();
}

#[test]
fn a_lost_status_is_asked_again() {
    // Event 0 would be the first Status's answer.
    let (mut client, script) = client(Script {
        lose_events: vec![0],
        ..Script::default()
    });
    let (outcome, text) = say(&mut client).unwrap();
    assert_eq!(text, "Hello");
    assert_eq!(outcome.end.map(|e| e.0), Some(EndReason::Eos));
    assert_eq!(script.lock().unwrap().ran.len(), 1);
}

#[test]
fn a_long_message_goes_in_pieces_at_character_boundaries() {
    let (mut client, script) = client(Script::default());
    // 1 + 2 × 700 bytes: the first piece cannot end inside an "é".
    let text = format!("x{}", "é".repeat(700));
    assert_eq!(client.remember(1, 0, Role::User, &text).unwrap(), 2);
    assert_eq!(client.remember(1, 2, Role::Assistant, "").unwrap(), 3);
    let taken = script.lock().unwrap().messages.clone();
    let pieces: Vec<usize> = taken.iter().map(|(_, t)| t.len()).collect();
    assert_eq!(pieces, [MAX_TEXT - 1, 1401 - (MAX_TEXT - 1), 0]);
    let user: String = taken[..2].iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(user, text);
    assert_eq!(taken[2].0, Role::Assistant);
}

#[test]
fn a_lost_message_or_done_is_sent_again_and_taken_once() {
    // Message frame 1 never arrives; the Done of the message taken third (event 2) is lost.
    let (mut client, script) = client(Script {
        lose_messages: vec![1],
        lose_events: vec![2],
        ..Script::default()
    });
    let start = Instant::now();
    let mut index = 0;
    for (role, text) in [
        (Role::User, "a"),
        (Role::User, "b"),
        (Role::Assistant, "c"),
        (Role::User, "d"),
    ] {
        index = client.remember(1, index, role, text).unwrap();
    }
    assert_eq!(index, 4);
    assert!(
        start.elapsed() >= 2 * ANSWER_WAIT,
        "two waits for an answer"
    );
    let taken: Vec<String> = script
        .lock()
        .unwrap()
        .messages
        .iter()
        .map(|(_, t)| t.clone())
        .collect();
    assert_eq!(taken, ["a", "b", "c", "d"]);
}

#[test]
fn a_refused_message_is_a_typed_error() {
    let (mut client, script) = client(Script::default());
    match client.remember(1, 5, Role::User, "late") {
        Err(ClientError::Device { code, detail }) => {
            assert_eq!(code, ErrorCode::OutOfOrder);
            assert!(detail.contains("lost"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    assert!(script.lock().unwrap().messages.is_empty());
    assert_eq!(client.remember(1, 0, Role::User, "first").unwrap(), 1);
}
