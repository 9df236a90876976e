//! The host side of frame mode: open the line, say hello, send requests, read events.

use crate::port::Port;
use crate::tty::{Tty, TtyError};
use ember_core::device::IDLE_TIMEOUT;
use ember_core::frame::{DELIMITER, FrameDecoder};
use ember_core::protocol::{
    self, BoundedText, EndReason, ErrorCode, Event, FrameWriter, Hello, MAX_FRAME, MAX_TEXT,
    MessageRequest, PROTOCOL_VERSION, ReplyStats, Request, Role,
};
use std::path::Path;
use std::time::{Duration, Instant};

/// How often the greeting is tried before giving up.
const HELLO_ATTEMPTS: u32 = 3;
/// How long either end waits, after its last byte at the old rate left, before switching the
/// line's rate (USB serial adapters hold bytes for a while; esptool waits as long).
pub const SWITCH_PAUSE: Duration = Duration::from_millis(50);

/// Why talking to the device failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The serial line failed.
    #[error(transparent)]
    Tty(#[from] TtyError),
    /// The device never answered the greeting.
    #[error(
        "no Ember device answered on {port} within {waited:?} (is emberd running on the other end, at the same baud rate?)"
    )]
    NoHello {
        /// The port.
        port: String,
        /// How long we waited in all.
        waited: Duration,
    },
    /// The device speaks another protocol version.
    #[error("the device speaks protocol version {device}, this tool speaks {host}")]
    Version {
        /// The device's version.
        device: u16,
        /// Ours.
        host: u16,
    },
    /// Nothing arrived in time.
    #[error("the device sent nothing for {0:?}")]
    Timeout(Duration),
    /// A request could not be encoded.
    #[error(transparent)]
    Protocol(#[from] protocol::ProtocolError),
    /// A chat went unanswered: sent `sent` times, the device never started it (its `Status`
    /// shows no new reply) and no answer came.
    #[error(
        "the device did not answer the message, sent {sent} times (a noisy line? see --silence-ms)"
    )]
    ReplyLost {
        /// How many times the chat was sent.
        sent: u32,
    },
    /// A request that every state of the device answers got no answer, sent `sent` times.
    #[error("the device did not answer {request} (sent {sent} times)")]
    Unanswered {
        /// The request's name.
        request: &'static str,
        /// How many times it was sent.
        sent: u32,
    },
    /// The device refused a request with an [`Event::Error`] naming it.
    #[error("{}", describe_error(*code, detail))]
    Device {
        /// What kind of problem.
        code: ErrorCode,
        /// The device's sentence.
        detail: String,
    },
}

/// How the host recovers a chat whose answer was lost on the line (see `docs/PROTOCOL.md`,
/// "Recovering a lost answer").
///
/// The rule: a chat is sent again only when the device has certainly not run it. The host
/// knows how many replies the device has run (`Status.replies`, asked before the first chat
/// and counted on from each `End`). When a reply stays silent for `silence` (no event at all:
/// replies stream, so this is an idle timeout, not a bound on the reply's length), or a
/// `BadFrame`/`Oversized` (a frame the device could not read, maybe the chat) comes before
/// the reply started, the host asks `Status`:
///
/// - more replies than before: the device ran this turn and the reply's end (and maybe more)
///   was lost. The turn is in the device's conversation: it is not sent again, the reply is
///   what arrived ([`ChatOutcome::end`] is `None`).
/// - as many as before, and nothing of the reply arrived: the device either never read the
///   chat or is still prefilling it (`Status` during a reply gives the status from before
///   it). The chat is sent again (a new frame, same session). A device busy with the first
///   copy refuses the second with `Busy` (and its `End`), which the host ignores: it goes on
///   waiting for the first copy's reply. So a turn is never run twice.
/// - as many as before, but tokens arrived: the reply is running; keep waiting.
///
/// At most `resends` re-sends, then [`ClientError::ReplyLost`]. Tokens lost inside a reply
/// show as a gap in the device's sequence numbers ([`ChatOutcome::lost_frames`]); they are not
/// fetched again (the device does not repeat events): the reply is what arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    /// How long a reply may stay silent before the host asks the device about it.
    pub silence: Duration,
    /// How many times a chat the device never started is sent again.
    pub resends: u32,
}

impl Default for Recovery {
    fn default() -> Self {
        Recovery {
            silence: Duration::from_secs(10),
            resends: 3,
        }
    }
}

impl Recovery {
    /// How long to wait for the answer to a request the device answers at once (`Status`,
    /// `Reset`, …) before sending it again.
    fn answer_wait(&self) -> Duration {
        self.silence.min(ANSWER_WAIT)
    }
}

/// How long [`Client::remember`] waits for a message's `Done` before sending it again.
const ANSWER_WAIT: Duration = Duration::from_secs(2);
/// How often a request the device answers at once is sent before giving up.
const ANSWER_ATTEMPTS: u32 = 4;
/// How often a waiting chat checks whether to cancel.
const TICK: Duration = Duration::from_millis(20);
/// Most re-sent copies of a chat a busy device may refuse (it is running the first one).
const MAX_BUSY: u32 = 1000;

/// A chat's reply as the host received it ([`Client::chat`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatOutcome {
    /// How the reply ended and its statistics; `None` when its `End` was lost but the device's
    /// `Status` shows it ran the turn (the reply is then what arrived).
    pub end: Option<(EndReason, ReplyStats)>,
    /// Times the chat was sent again because the device had not started it.
    pub resent: u32,
    /// Device frames missing from the sequence while the reply came (tokens may be missing).
    pub lost_frames: u64,
    /// Frames that arrived damaged while the reply came.
    pub damaged_frames: u64,
    /// Frames of the host's the device could not read (`BadFrame`, `Oversized`) meanwhile.
    pub unreadable: u32,
}

/// A frame-mode connection to an Ember device over a serial line `P` (a [`Tty`], or a
/// [`crate::MemoryLine`] in tests).
pub struct Client<P: Port = Tty> {
    tty: P,
    decoder: FrameDecoder<MAX_FRAME>,
    writer: FrameWriter,
    hello: Hello,
    next_seq: Option<u16>,
    /// The sequence number of the last chat sent: its end names it.
    chat: Option<u16>,
    damaged: u64,
    lost: u64,
    sent: u64,
    /// The line's rate (0: unknown, as for a PTY master).
    baud: u32,
    /// Since when the device has had nothing to do (no request sent, no reply running); `None`
    /// while a reply runs. After [`IDLE_TIMEOUT`] of this the device is back in line mode.
    quiet_since: Option<Instant>,
    /// How many replies the device has run (`Status.replies`), when known.
    replies: Option<u32>,
    /// `Done`s that may still come for copies of messages already answered
    /// ([`Client::remember`] skips them, so a late one is not taken for the next message's).
    owed_done: u32,
}

impl Client<Tty> {
    /// Opens `port` at `baud`, switches the device to frame mode and reads its greeting.
    /// Each attempt waits `timeout`.
    pub fn connect(port: &Path, baud: u32, timeout: Duration) -> Result<Client, ClientError> {
        let mut tty = Tty::open(port, baud)?;
        tty.discard_input()?;
        let mut client = Client::over(tty, timeout)?;
        client.baud = baud;
        Ok(client)
    }
}

impl<P: Port> Client<P> {
    /// Says hello over an open line.
    pub fn over(tty: P, timeout: Duration) -> Result<Self, ClientError> {
        let mut client = Client {
            tty,
            decoder: FrameDecoder::new(),
            writer: FrameWriter::new(),
            hello: Hello {
                protocol_version: 0,
                model_name: Default::default(),
                model_hash: [0; 32],
                context_length: 0,
                max_frame: 0,
                slot: None,
                last_flash: None,
                max_baud: 0,
            },
            next_seq: None,
            chat: None,
            damaged: 0,
            lost: 0,
            sent: 0,
            baud: 0,
            quiet_since: None,
            replies: None,
            owed_done: 0,
        };
        client.greet(timeout, HELLO_ATTEMPTS)?;
        Ok(client)
    }

    /// Sends `0x00` + `Hello` up to `attempts` times, each waiting `timeout` for the greeting
    /// (also to find a device again after the line failed: the greeting works in either mode).
    pub fn greet(&mut self, timeout: Duration, attempts: u32) -> Result<(), ClientError> {
        for _ in 0..attempts {
            // A delimiter first: in line mode it tells the device a frame follows; in frame mode
            // it ends whatever partial frame the device holds.
            self.tty.write_all(&[DELIMITER])?;
            self.send(&Request::Hello {
                protocol_version: PROTOCOL_VERSION,
            })?;
            let deadline = Instant::now() + timeout;
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                match self.recv(left) {
                    Ok(Event::Hello(hello)) => {
                        if hello.protocol_version != PROTOCOL_VERSION {
                            let _ = self.send(&Request::Goodbye);
                            return Err(ClientError::Version {
                                device: hello.protocol_version,
                                host: PROTOCOL_VERSION,
                            });
                        }
                        self.hello = hello;
                        return Ok(());
                    }
                    // Leftovers of an earlier conversation.
                    Ok(_) => {}
                    Err(ClientError::Timeout(_)) => break,
                    Err(e) => return Err(e),
                }
            }
        }
        Err(ClientError::NoHello {
            port: self.tty.name().to_string(),
            waited: timeout * attempts,
        })
    }

    /// The line's baud rate as this client set it (0 when it did not: a PTY master).
    pub fn baud(&self) -> u32 {
        self.baud
    }

    /// Asks the device to switch the line to `baud`, switches this end, and checks that the
    /// device answers at the new rate. If it does not (the line cannot carry the rate), both
    /// ends return to the old rate. Returns the rate in use afterwards.
    pub fn switch_baud(&mut self, baud: u32) -> Result<u32, ClientError> {
        let old = self.baud;
        self.send(&Request::SetBaud { baud })?;
        let answer = self.until(
            Duration::from_secs(2),
            |e| matches!(e, Event::BaudSwitch { .. } | Event::Error { .. }),
            &mut |_| {},
        )?;
        if !matches!(answer, Event::BaudSwitch { baud: b } if b == baud) {
            return Ok(old);
        }
        // The device lets the answer leave, waits a little (SWITCH_PAUSE), then switches.
        std::thread::sleep(SWITCH_PAUSE);
        self.tty.set_baud(baud)?;
        self.tty.discard_input()?;
        self.decoder.discard_partial();
        self.baud = baud;
        if self.greet(Duration::from_millis(300), 3).is_ok() {
            return Ok(baud);
        }
        // The line does not carry the new rate: the device goes back once its trial ends.
        self.tty.set_baud(old)?;
        self.baud = old;
        std::thread::sleep(Duration::from_millis(
            u64::from(protocol::BAUD_TRIAL_MS) + 300,
        ));
        self.tty.discard_input()?;
        self.decoder.discard_partial();
        self.greet(Duration::from_secs(1), HELLO_ATTEMPTS)?;
        Ok(old)
    }

    /// The device's greeting.
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// The sequence number of the last chat sent (its end names it).
    pub fn last_chat(&self) -> Option<u16> {
        self.chat
    }

    /// Frames that arrived damaged and frames missing from the sequence, so far.
    pub fn line_errors(&self) -> (u64, u64) {
        (self.damaged, self.lost)
    }

    /// Bytes written to the line so far.
    pub fn bytes_sent(&self) -> u64 {
        self.sent
    }

    /// Sends one request. A device left quiet for half its idle timeout may be about to go
    /// back to line mode: it is greeted again first.
    pub fn send(&mut self, request: &Request) -> Result<(), ClientError> {
        let quiet = self
            .quiet_since
            .is_some_and(|t| t.elapsed() > IDLE_TIMEOUT / 2);
        if quiet && !matches!(request, Request::Hello { .. }) {
            self.greet(Duration::from_secs(1), HELLO_ATTEMPTS)?;
        }
        self.quiet_since = match request {
            Request::Chat(_) => None,
            _ => Some(Instant::now()),
        };
        if matches!(request, Request::Chat(_)) {
            self.chat = Some(self.writer.next_seq());
        }
        let frame = self.writer.encode(request)?;
        self.tty.write_all(frame)?;
        self.sent += frame.len() as u64;
        Ok(())
    }

    /// Sends raw bytes (for tests of the device's robustness).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.tty.write_all(bytes)?;
        Ok(())
    }

    /// The next event, waiting at most `timeout`. Damaged frames and frames that are not events
    /// are skipped (and counted, see [`Client::line_errors`]).
    pub fn recv(&mut self, timeout: Duration) -> Result<Event, ClientError> {
        match self.next_event(timeout)? {
            Some(event) => Ok(event),
            None => {
                // The device writes a frame at once: a partial one that sat through a whole
                // timeout is what remains of a write it abandoned (a stalled line). Dropped
                // here, it cannot spoil the next frame.
                if self.decoder.discard_partial() {
                    self.damaged += 1;
                }
                Err(ClientError::Timeout(timeout))
            }
        }
    }

    /// An event whose bytes have already arrived, without waiting (a frame still arriving is
    /// kept for the next call).
    pub fn poll(&mut self) -> Result<Option<Event>, ClientError> {
        self.next_event(Duration::ZERO)
    }

    fn next_event(&mut self, timeout: Duration) -> Result<Option<Event>, ClientError> {
        let deadline = Instant::now() + timeout;
        let mut byte = [0u8; 1];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.tty.read_timeout(&mut byte, left)? == 0 {
                return Ok(None);
            }
            let Some(frame) = self.decoder.push(byte[0]) else {
                continue;
            };
            let Ok(frame) = frame else {
                self.damaged += 1;
                continue;
            };
            let expected = self.next_seq.replace(frame.seq.wrapping_add(1));
            match protocol::decode::<Event>(frame.payload) {
                Ok(event) => {
                    // The device numbers its frames from 0 again at each greeting.
                    if let Some(expected) = expected
                        && frame.seq != expected
                        && !matches!(event, Event::Hello(_))
                    {
                        self.lost += u64::from(frame.seq.wrapping_sub(expected));
                    }
                    match &event {
                        Event::End { .. } => {
                            self.quiet_since = Some(Instant::now());
                            // [`Client::chat`] counts its own ends.
                            self.replies = None;
                        }
                        Event::Hello(_) | Event::FlashDone { .. } => self.replies = None,
                        Event::Status(status) => self.replies = Some(status.replies),
                        _ => {}
                    }
                    return Ok(Some(event));
                }
                Err(_) => self.damaged += 1,
            }
        }
    }

    /// Reads the events of the last chat's reply until its end, handing each to `on_event` (the
    /// end too). Ends of other chats (an earlier connection's) are skipped. `timeout` bounds
    /// the wait for each event.
    pub fn reply(
        &mut self,
        timeout: Duration,
        on_event: &mut dyn FnMut(&Event),
    ) -> Result<(EndReason, ReplyStats), ClientError> {
        loop {
            let event = self.recv(timeout)?;
            if let Event::End { request, .. } = event
                && Some(request) != self.chat
            {
                continue;
            }
            on_event(&event);
            if let Event::End { reason, stats, .. } = event {
                return Ok((reason, stats));
            }
        }
    }

    /// Reads events until one that `done` accepts, handing the others to `on_event`.
    pub fn until(
        &mut self,
        timeout: Duration,
        done: impl Fn(&Event) -> bool,
        on_event: &mut dyn FnMut(&Event),
    ) -> Result<Event, ClientError> {
        loop {
            let event = self.recv(timeout)?;
            if done(&event) {
                return Ok(event);
            }
            on_event(&event);
        }
    }

    /// Leaves frame mode: the device goes back to line mode. Returns the line.
    /// When no answer came within a share of `timeout`, either the `Goodbye` was lost (the
    /// device is still in frame mode) or its answer was (the device is in line mode, where
    /// another `Goodbye` frame is typed text): the client greets again, which works in either
    /// mode, and says `Goodbye` again, up to [`ANSWER_ATTEMPTS`] times in all.
    pub fn goodbye(mut self, timeout: Duration) -> Result<P, ClientError> {
        let wait = timeout / ANSWER_ATTEMPTS;
        for attempt in 0..ANSWER_ATTEMPTS {
            if attempt > 0 && self.greet(wait, 1).is_err() {
                continue;
            }
            self.send(&Request::Goodbye)?;
            match self.until(wait, |e: &Event| matches!(e, Event::Goodbye), &mut |_| {}) {
                Err(ClientError::Timeout(_)) => continue,
                Err(e) => return Err(e),
                Ok(_) => return Ok(self.tty),
            }
        }
        Err(ClientError::Unanswered {
            request: request_name(&Request::Goodbye),
            sent: ANSWER_ATTEMPTS,
        })
    }

    /// Sends `request` — one the device answers at once and that may be repeated (`Status`,
    /// `Reset`, `SetSystem`) — and returns the first event `answer` accepts. The
    /// request is sent again when no answer came within `wait` (it or its answer was lost on
    /// the line), up to [`ANSWER_ATTEMPTS`] times in all. Other events are dropped.
    pub fn ask(
        &mut self,
        request: &Request,
        wait: Duration,
        answer: impl Fn(&Event) -> bool,
    ) -> Result<Event, ClientError> {
        for _ in 0..ANSWER_ATTEMPTS {
            self.send(request)?;
            match self.until(wait, &answer, &mut |_| {}) {
                Err(ClientError::Timeout(_)) => continue,
                answered => return answered,
            }
        }
        Err(ClientError::Unanswered {
            request: request_name(request),
            sent: ANSWER_ATTEMPTS,
        })
    }

    /// Adds `text` to the device's conversation `session` as a message of `role`, without
    /// generating a reply ([`Request::Message`]); returns the index of the next message.
    ///
    /// `index` is how many messages the device has taken in this conversation (0 after a new
    /// session, `Reset` or `SetSystem`; replies do not count). A text over [`MAX_TEXT`] bytes
    /// goes in pieces cut at character boundaries, which the device joins (consecutive messages
    /// of one role are one message); an empty text is one empty piece. Each piece waits for its
    /// `Done` and is sent again, with the same index, when none came within 2 s (or the device
    /// could not read a frame): the device answers a copy of a message it took with `Done` and
    /// does not take it twice. The order rules (an assistant message follows a user message, no
    /// index skipped) are the device's: its refusal is [`ClientError::Device`]
    /// ([`ErrorCode::OutOfOrder`], or `Busy` during a reply).
    pub fn remember(
        &mut self,
        session: u32,
        index: u32,
        role: Role,
        text: &str,
    ) -> Result<u32, ClientError> {
        let mut index = index;
        let mut rest = text;
        loop {
            let piece: BoundedText<MAX_TEXT> = protocol::truncated(rest);
            rest = &rest[piece.len()..];
            self.message(&Request::Message(MessageRequest {
                session,
                index,
                role,
                text: piece,
            }))?;
            index = index.wrapping_add(1);
            if rest.is_empty() {
                return Ok(index);
            }
        }
    }

    /// Sends a `Message` until the device answers it: `Done`, or an error naming one of its
    /// copies.
    fn message(&mut self, request: &Request) -> Result<(), ClientError> {
        // The frames of this message's copies.
        let mut sent = Vec::new();
        while sent.len() < ANSWER_ATTEMPTS as usize {
            self.send(request)?;
            // The frame just written (a greeting `send` may have sent comes before it).
            sent.push(self.writer.next_seq().wrapping_sub(1));
            let deadline = Instant::now() + ANSWER_WAIT;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.recv(left) {
                    // A `Done` names no request: one owed to an earlier copy is skipped.
                    Ok(Event::Done) if self.owed_done > 0 => self.owed_done -= 1,
                    Ok(Event::Done) => {
                        // The other copies' answers may still come.
                        self.owed_done += sent.len() as u32 - 1;
                        return Ok(());
                    }
                    Ok(Event::Error {
                        code,
                        detail,
                        request: Some(r),
                    }) if sent.contains(&r) => {
                        return Err(ClientError::Device {
                            code,
                            detail: detail.to_string(),
                        });
                    }
                    // A frame the device could not read, maybe this one: send it again now.
                    Ok(Event::Error {
                        code: ErrorCode::BadFrame | ErrorCode::Oversized,
                        request: None,
                        ..
                    })
                    | Err(ClientError::Timeout(_)) => break,
                    // Leftovers of earlier requests.
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Err(ClientError::Unanswered {
            request: request_name(request),
            sent: ANSWER_ATTEMPTS,
        })
    }

    /// How many replies the device has run: counted from the last `Status`, else asked.
    fn replies(&mut self, recovery: &Recovery) -> Result<u32, ClientError> {
        if let Some(replies) = self.replies {
            return Ok(replies);
        }
        match self.ask(&Request::Status, recovery.answer_wait(), |e| {
            matches!(e, Event::Status(_))
        })? {
            Event::Status(status) => Ok(status.replies),
            _ => unreachable!("ask returns the accepted event"),
        }
    }

    /// Sends `request` (a `Chat`) and reads its reply, handing each event of it to `on_event`
    /// (its `End` too; not the line's noise, nor the answers of the recovery), recovering a
    /// lost chat or a lost end by the rule of [`Recovery`]. When `cancel` returns true the
    /// reply is cancelled (once): it then ends with `Cancelled`, and the `CancelAck` that
    /// follows is left for the caller.
    pub fn chat(
        &mut self,
        request: &Request,
        recovery: Recovery,
        cancel: &mut dyn FnMut() -> bool,
        on_event: &mut dyn FnMut(&Event),
    ) -> Result<ChatOutcome, ClientError> {
        let before = self.replies(&recovery)?;
        let (lost, damaged) = (self.lost, self.damaged);
        let mut outcome = ChatOutcome::default();
        // The chat's frames (the first, then copies sent again) and the copies a busy device
        // refused (errors by request).
        let mut sent = Vec::new();
        let mut refused: Vec<(u16, ErrorCode)> = Vec::new();
        let mut busy = 0;
        self.send(request)?;
        sent.extend(self.chat);
        let mut started = false;
        let mut cancelled = false;
        let mut heard = Instant::now();
        // A `Status` asked: when, and how many times in this round.
        let mut asked: Option<(Instant, u32)> = None;
        let end = loop {
            if !cancelled && cancel() {
                self.send(&Request::Cancel)?;
                cancelled = true;
            }
            let event = match self.recv(TICK) {
                Ok(event) => event,
                Err(ClientError::Timeout(_)) => {
                    let ask_now = match asked {
                        Some((at, _)) => at.elapsed() >= recovery.answer_wait(),
                        None => heard.elapsed() >= recovery.silence,
                    };
                    if ask_now {
                        let times = asked.map_or(0, |(_, n)| n);
                        if times >= ANSWER_ATTEMPTS {
                            return Err(ClientError::Unanswered {
                                request: "Status",
                                sent: times,
                            });
                        }
                        self.send(&Request::Status)?;
                        asked = Some((Instant::now(), times + 1));
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            heard = Instant::now();
            match &event {
                Event::End {
                    request: r,
                    reason,
                    stats,
                } if sent.contains(r) => {
                    // A copy sent again and refused (the device runs the first, or refused it
                    // for a reason the first copy's own answer will give).
                    let copy = sent.first() != Some(r);
                    let refusal = refused.iter().find(|(q, _)| q == r).map(|(_, code)| *code);
                    if copy
                        && *reason == EndReason::Error
                        && matches!(refusal, None | Some(ErrorCode::Busy))
                    {
                        continue;
                    }
                    on_event(&event);
                    self.chat = Some(*r);
                    self.replies = Some(before + u32::from(*reason != EndReason::Error));
                    break Some((*reason, *stats));
                }
                // Another chat's end (an earlier host's).
                Event::End { .. } => {}
                Event::Error {
                    code,
                    request: Some(r),
                    ..
                } if sent.contains(r) && sent.first() != Some(r) => {
                    refused.push((*r, *code));
                    if *code == ErrorCode::Busy {
                        busy += 1;
                        if busy > MAX_BUSY {
                            return Err(ClientError::ReplyLost {
                                sent: sent.len() as u32,
                            });
                        }
                    } else {
                        on_event(&event);
                    }
                }
                Event::Error {
                    code: ErrorCode::BadFrame | ErrorCode::Oversized,
                    request: None,
                    ..
                } => {
                    outcome.unreadable += 1;
                    // Maybe the chat itself: ask now rather than after the silence.
                    if !started && asked.is_none() {
                        self.send(&Request::Status)?;
                        asked = Some((Instant::now(), 1));
                    }
                }
                Event::Status(status) if asked.is_some() => {
                    asked = None;
                    if status.replies != before {
                        // The device ran this turn; its end was lost.
                        break None;
                    }
                    if started {
                        // The reply runs (its tokens came): wait on.
                        continue;
                    }
                    if cancelled {
                        // Never started, and no longer wanted.
                        break Some((EndReason::Cancelled, ReplyStats::default()));
                    }
                    // Copies refused as `Busy` showed the device at work on the first one:
                    // they do not count against the bound.
                    if outcome.resent - busy >= recovery.resends {
                        return Err(ClientError::ReplyLost {
                            sent: sent.len() as u32,
                        });
                    }
                    self.send(request)?;
                    sent.extend(self.chat);
                    outcome.resent += 1;
                }
                // The answer to a `Status` asked earlier in this recovery.
                Event::Status(_) => {}
                _ => {
                    if matches!(
                        event,
                        Event::Token { .. }
                            | Event::SynthesizeStart
                            | Event::SynthesizeChunk { .. }
                    ) {
                        started = true;
                    }
                    on_event(&event);
                }
            }
        };
        outcome.end = end;
        outcome.lost_frames = self.lost - lost;
        outcome.damaged_frames = self.damaged - damaged;
        if end.is_none() {
            // `recv` kept the device's count from its `Status`.
            self.chat = sent.last().copied();
        }
        Ok(outcome)
    }

    /// The line, as it is (in frame mode, unless the device left it).
    pub fn into_port(self) -> P {
        self.tty
    }
}

/// A request's name for messages.
fn request_name(request: &Request) -> &'static str {
    match request {
        Request::Hello { .. } => "Hello",
        Request::Chat(_) => "Chat",
        Request::Cancel => "Cancel",
        Request::Reset => "Reset",
        Request::SetSystem { .. } => "SetSystem",
        Request::Status => "Status",
        Request::Goodbye => "Goodbye",
        Request::FlashBegin(_) => "FlashBegin",
        Request::FlashChunk(_) => "FlashChunk",
        Request::FlashCommit => "FlashCommit",
        Request::FlashAbort => "FlashAbort",
        Request::SetBaud { .. } => "SetBaud",
        Request::Message(_) => "Message",
    }
}

/// A device error as one line for people.
pub fn describe_error(code: ErrorCode, detail: &str) -> String {
    format!("device error ({code:?}): {detail}")
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
