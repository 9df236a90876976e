//! The device's side of the serial line as a state machine, without I/O (sans-IO, like
//! quinn-proto): fed the bytes that arrive, the time, and the text the model produces, it
//! returns the bytes to send and what the driver must do — start a reply, forget the
//! conversation, carry out a flash request, switch the line's rate. Line mode, frame probing,
//! frame mode, the busy and cancel rules, stop sequences, sentences, settings and the baud rules
//! all live here; their behaviour is `docs/PROTOCOL.md`'s.
//!
//! A driver (`emberd`) loops:
//! 1. takes every [`Output`] from [`Device::poll`] and carries it out, in order;
//! 2. hands the bytes that arrived to [`Device::receive`], which takes bytes until it has work
//!    for the driver and says how many it took (the driver goes back to 1 with the rest);
//! 3. waits for bytes until [`Device::deadline`], then calls [`Device::handle_timeout`].
//!
//! While a reply runs ([`Output::Reply`]) the driver steps the model, hands each piece of text
//! to [`Device::reply_text`] and the bytes that arrive to [`Device::receive`], ends the reply
//! when [`Device::halt`] says so, and reports the end with [`Device::reply_ended`].
//!
//! Time is a [`Duration`] since any fixed start the driver picks; the device has no clock.

use crate::frame::{DELIMITER, FrameDecoder, FrameError};
use crate::line::{self, Command, LineEditor, LineEvent, Setting};
use crate::protocol::{
    self, BAUD_TRIAL_MS, CHAT_VARIANT, ChatOptions, ChatRequest, EndReason, ErrorCode, Event,
    FrameWriter, Hello, MAX_DELTA, MAX_FRAME, MAX_SENTENCE, MessageRequest, PROTOCOL_VERSION,
    ProtocolError, ReplyStats, Request, Role, Status,
};
use crate::sampler::SamplingConfig;
use crate::sentence::SentenceSplitter;
use crate::stop::StopFilter;
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt::Write as _;
use core::time::Duration;

/// Most bytes in one typed line.
pub const MAX_LINE: usize = protocol::MAX_TEXT;
/// What the device prints when it waits for a line.
pub const PROMPT: &str = "> ";
/// How long frame mode lasts without a request (while no reply runs) before the device goes
/// back to line mode, unless [`LineConfig::idle_timeout`] says otherwise.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long after a `0x00` in line mode the device waits for the end of a `Hello` frame before
/// it takes the bytes as typed.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Most bytes after a `0x00` in line mode before the device takes them as typed (a `Hello`
/// frame is far shorter).
pub const MAX_PROBE: usize = 64;

/// The settings replies use unless a request overrides them.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// How tokens are picked.
    pub sampling: SamplingConfig,
    /// Most tokens per reply.
    pub max_tokens: u32,
    /// Stop sequences.
    pub stops: Vec<String>,
}

/// The model the device serves, as the line sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    /// The greeting for programs (its `max_baud` is set from [`LineConfig::max_baud`]).
    pub hello: Hello,
    /// Settings of a reply when a request does not change them.
    pub settings: Settings,
    /// The system prompt (`None`: the model's own).
    pub system: Option<String>,
}

/// The serial line's rates and timeouts.
#[derive(Debug, Clone, PartialEq)]
pub struct LineConfig {
    /// The rate the line starts at (and returns to after a session at another rate).
    pub baud: u32,
    /// The fastest rate a program may switch the line to.
    pub max_baud: u32,
    /// The rates the port can be set to.
    pub rates: &'static [u32],
    /// Frame mode ends after this long without a request while no reply runs (`None`: never).
    pub idle_timeout: Option<Duration>,
}

/// Something the driver must do, in the order given.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Bytes for the line. If writing them times out, call [`Device::write_stalled`].
    Write(Vec<u8>),
    /// Generate the reply to a user's message (joined to a user message held from
    /// [`Output::Remember`], if any).
    Reply(ReplyRequest),
    /// Forget the conversation (the system prompt stays).
    Reset,
    /// Set the system prompt (`None`: the model's own) and forget the conversation.
    SetSystem(Option<String>),
    /// Add a message to the conversation without generating ([`Request::Message`]): a user
    /// message starts a held user message or continues it; an assistant message answers the
    /// held user message (a finished turn) or continues the answer taken just before it. The
    /// device has checked the order: an assistant message comes only after a user message or
    /// an assistant message taken since the last reply or reset.
    Remember {
        /// Who said it.
        role: Role,
        /// The text to add.
        text: String,
    },
    /// Carry out a flash request ([`Request::FlashBegin`], `FlashChunk`, `FlashAbort` or
    /// `FlashCommit`) on the model slots and answer it with events ([`Device::send`]).
    Flash(Box<Request>),
    /// Let the bytes written so far leave, switch the line to this rate, then call
    /// [`Device::baud_switched`].
    SwitchBaud(u32),
}

/// A reply to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplyRequest {
    /// The user's message (or, after a held user message, the rest of it).
    pub text: String,
    /// Most tokens to generate.
    pub max_tokens: u32,
    /// How to pick them.
    pub sampling: SamplingConfig,
}

/// The conversation as the engine holds it after a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Context {
    /// Finished turns.
    pub turns: u32,
    /// Positions in use.
    pub used: u32,
}

/// How a reply ended, as the driver reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplyEnd {
    /// The model ran: it ended its turn (`Eos`), reached the token limit (`Length`), or the
    /// driver stopped it because [`Device::halt`] asked (`Stop`, `Cancelled`).
    Finished {
        /// Why it ended.
        reason: EndReason,
        /// Tokens prefilled.
        prompt_tokens: u32,
        /// Tokens generated.
        generated_tokens: u32,
        /// Generated tokens per second after the first.
        decode_tokens_per_second: f32,
        /// Old turns dropped to make room.
        turns_dropped: u32,
        /// The conversation afterwards.
        context: Context,
    },
    /// The engine refused or failed.
    Failed {
        /// [`ErrorCode::TooLong`] or [`ErrorCode::Engine`].
        code: ErrorCode,
        /// For people.
        detail: String,
    },
}

/// What the device is doing, for a status light.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// Waiting for a message.
    Ready,
    /// Generating a reply.
    Generating,
    /// Taking a flash request (within the last [`FLASH_ACTIVITY`]).
    Flashing,
    /// The last reply failed.
    Error,
}

/// How long after a flash request the device counts as flashing.
pub const FLASH_ACTIVITY: Duration = Duration::from_secs(2);

/// Where the line's bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Text for a person's terminal.
    Line,
    /// A `0x00` arrived in line mode: is a `Hello` frame next ([`PROBE_TIMEOUT`],
    /// [`MAX_PROBE`])?
    Probe,
    /// Frames for a program.
    Frame,
}

/// The [`Request::Message`]s the device has taken in the current conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Messages {
    /// How many (the index the next one must have).
    taken: u32,
    /// The role of the last one, while it is held: `None` once a reply started or the
    /// conversation did.
    last: Option<Role>,
}

/// A reply being generated.
struct Reply {
    /// The sequence number of the chat's frame (frame mode).
    request: u16,
    start: Duration,
    first_token: Option<Duration>,
    stop: StopFilter,
    splitter: SentenceSplitter<MAX_SENTENCE>,
    /// Frame mode, with sentences for text-to-speech.
    sentences: bool,
    /// The host (or a person) asked to cancel.
    cancel: bool,
    /// The board asked to stop ([`Device::interrupt`]).
    interrupted: bool,
    /// A host greeted (its `Hello`'s sequence number and version): it is answered once the
    /// reply has stopped.
    greeted: Option<(u16, u16)>,
    /// The other end stopped reading: the reply was given up.
    abandoned: bool,
    status: Status,
}

/// A frame read whole: its sequence number and request, or why it could not be read
/// (with its sequence number when the frame itself was sound).
type Decoded = Result<(u16, Request), (Option<u16>, ProtocolError)>;

/// A rate switch asked of the driver and not yet done.
#[derive(Debug, Clone, Copy)]
struct Switch {
    to: u32,
    /// A trial: the rate to go back to if no frame arrives at the new one.
    from: Option<u32>,
}

/// The device's side of the line: see the [module docs](self).
pub struct Device {
    config: LineConfig,
    mode: Mode,
    line: LineEditor<MAX_LINE>,
    frames: FrameDecoder<MAX_FRAME>,
    writer: Box<FrameWriter>,
    out: VecDeque<Output>,
    /// The other end stopped taking bytes: output is dropped until it sends something.
    stalled: bool,
    /// A write gave up partway, maybe inside a frame: the next frame starts with a delimiter.
    torn: bool,
    /// The end of a reply given up while the host did not read (the chat's sequence number and
    /// the reply's stats): sent, after a `Stalled` error, once the host sends again.
    abandoned: Option<(u16, ReplyStats)>,
    /// Since when a probe has waited, and the bytes it holds (sent as typed if no `Hello`).
    probe: (Duration, Vec<u8>),
    /// The sequence number of the request being answered.
    answering: Option<u16>,
    baud: u32,
    switch: Option<Switch>,
    /// A rate on trial: the rate to go back to, and when.
    trial: Option<(u32, Duration)>,
    /// When frame mode last had a request (or finished a reply).
    last_request: Duration,
    model: Model,
    context: Context,
    messages: Messages,
    session: u32,
    last: Option<ReplyStats>,
    replies: u32,
    reply: Option<Reply>,
    /// When the last flash request came; whether the last reply failed.
    flashed: Option<Duration>,
    failed: bool,
    /// When the bytes being taken arrived.
    now: Duration,
}

impl Device {
    /// A device in line mode serving `model`; its banner is the first output.
    pub fn new(config: LineConfig, model: Model, now: Duration) -> Self {
        let mut device = Device {
            mode: Mode::Line,
            line: LineEditor::new(),
            frames: FrameDecoder::new(),
            writer: Box::default(),
            out: VecDeque::new(),
            stalled: false,
            torn: false,
            abandoned: None,
            probe: (now, Vec::new()),
            answering: None,
            baud: config.baud,
            switch: None,
            trial: None,
            last_request: now,
            model: model.clone(),
            context: Context::default(),
            messages: Messages::default(),
            session: 0,
            last: None,
            replies: 0,
            reply: None,
            flashed: None,
            failed: false,
            now,
            config,
        };
        device.load(model, now);
        device
    }

    /// Serves another model (after a flash): a new conversation with its settings. The line
    /// stays as it is; line mode shows the banner again.
    pub fn load(&mut self, mut model: Model, now: Duration) {
        model.hello.max_baud = self.config.max_baud.max(self.config.baud);
        self.model = model;
        self.context = Context::default();
        self.messages = Messages::default();
        self.session = 0;
        self.last = None;
        self.replies = 0;
        self.last_request = now;
        if self.mode == Mode::Line {
            let banner = format!(
                "\nEmber: {} is listening. Type a message; /help lists the commands.\n{PROMPT}",
                self.model.hello.model_name
            );
            self.text(&banner);
        }
    }

    /// The next thing for the driver to do.
    pub fn poll(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// The mode the line is in.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The line's rate as the device set it.
    pub fn baud(&self) -> u32 {
        self.baud
    }

    /// Whether a reply is being generated.
    pub fn replying(&self) -> bool {
        self.reply.is_some()
    }

    /// What the device is doing at `now`.
    pub fn activity(&self, now: Duration) -> Activity {
        let flashing = self
            .flashed
            .is_some_and(|t| now.saturating_sub(t) < FLASH_ACTIVITY);
        match () {
            _ if self.reply.is_some() => Activity::Generating,
            _ if flashing => Activity::Flashing,
            _ if self.failed => Activity::Error,
            _ => Activity::Ready,
        }
    }

    /// The greeting for programs.
    pub fn hello(&self) -> &Hello {
        &self.model.hello
    }

    /// Takes bytes that arrived on the line, until one of them gives the driver work (an
    /// [`Output`] other than bytes); returns how many it took. Bytes that arrive while a rate
    /// switch waits to be carried out were sent at the old rate and are dropped.
    pub fn receive(&mut self, now: Duration, bytes: &[u8]) -> usize {
        self.now = now;
        for (i, &byte) in bytes.iter().enumerate() {
            if core::mem::take(&mut self.stalled) {
                // Someone is there again: first the end of the reply it did not read.
                if let Some((request, stats)) = self.abandoned.take() {
                    self.answering = Some(request);
                    self.error(ErrorCode::Stalled, "the reply was given up: nobody read it");
                    self.send_end(EndReason::Cancelled, stats, request);
                }
            }
            if self.switch.is_some() {
                return bytes.len();
            }
            self.take(now, byte);
            if self.switch.is_some() {
                return bytes.len();
            }
            if self.out.iter().any(|o| !matches!(o, Output::Write(_))) {
                return i + 1;
            }
        }
        bytes.len()
    }

    /// When [`Device::handle_timeout`] is next due, if ever.
    pub fn deadline(&self) -> Option<Duration> {
        if let Some((_, at)) = self.trial {
            return Some(at);
        }
        if self.mode == Mode::Probe {
            return Some(self.probe.0 + PROBE_TIMEOUT);
        }
        match (self.mode, self.config.idle_timeout) {
            (Mode::Frame, Some(idle)) if self.reply.is_none() && self.switch.is_none() => {
                Some(self.last_request + idle)
            }
            _ => None,
        }
    }

    /// Acts on the time: a rate on trial that got no frame is given up; a probe without a
    /// `Hello` gives its bytes to the line editor; frame mode without requests for the idle
    /// timeout ends.
    pub fn handle_timeout(&mut self, now: Duration) {
        match self.deadline() {
            Some(at) if now >= at => {}
            _ => return,
        }
        self.now = now;
        if let Some((old, _)) = self.trial.take() {
            warn!("no frame arrived at {} baud: back to {}", self.baud, old);
            self.switch_to(old, None);
            return;
        }
        if self.mode == Mode::Probe {
            return self.end_probe(now, true);
        }
        info!("no request in frame mode for a while: back to line mode");
        self.mode = Mode::Line;
        if self.baud != self.config.baud {
            self.switch_to(self.config.baud, None);
        }
        self.line.clear();
        let idle = self.config.idle_timeout.unwrap_or_default().as_secs_f32();
        self.text(&format!(
            "\n(no program spoke for {idle} s: back in line mode)\n{PROMPT}"
        ));
    }

    /// The driver carried out [`Output::SwitchBaud`] (`switched`), or the port refused it.
    pub fn baud_switched(&mut self, now: Duration, switched: bool) {
        let Some(switch) = self.switch.take() else {
            return;
        };
        if !switched {
            warn!("cannot switch the line to {} baud", switch.to);
            return;
        }
        self.baud = switch.to;
        self.frames = FrameDecoder::new();
        self.last_request = now;
        if let Some(from) = switch.from {
            // The host greets at the new rate; without a frame in time the line does not carry it.
            self.trial = Some((from, now + Duration::from_millis(BAUD_TRIAL_MS.into())));
        }
    }

    /// Writing the bytes of an [`Output::Write`] timed out: the other end stopped reading.
    /// Output is dropped until it sends something, and a reply in progress is abandoned.
    pub fn write_stalled(&mut self) {
        if !self.stalled {
            warn!("the other end stopped reading: dropping output until it sends again");
        }
        self.stalled = true;
        self.torn = true;
        self.out.retain(|o| !matches!(o, Output::Write(_)));
        if let Some(reply) = &mut self.reply {
            reply.abandoned = true;
        }
    }

    /// Sends `event` if the line is in frame mode (a driver's answer to [`Output::Flash`], or
    /// news of a flash after a new model was loaded). An error that names no request answers
    /// the flash request.
    pub fn send(&mut self, event: &Event) {
        if self.mode != Mode::Frame {
            return;
        }
        match event {
            Event::Error {
                code,
                detail,
                request: None,
            } => self.send_frame(&Event::Error {
                code: *code,
                detail: detail.clone(),
                request: self.answering,
            }),
            event => self.send_frame(event),
        }
    }

    /// Takes the next piece of the reply's text.
    pub fn reply_text(&mut self, now: Duration, piece: &str) {
        let Some(mut reply) = self.reply.take() else {
            return;
        };
        reply.first_token.get_or_insert(now);
        let Reply {
            stop,
            splitter,
            sentences,
            ..
        } = &mut reply;
        stop.push(piece, &mut |visible| {
            self.show(splitter, *sentences, visible)
        });
        self.reply = Some(reply);
    }

    /// Whether the driver must end the reply now, and why (`Stop` or `Cancelled`).
    pub fn halt(&self) -> Option<EndReason> {
        let reply = self.reply.as_ref()?;
        if reply.stop.stopped() {
            Some(EndReason::Stop)
        } else if reply.cancel || reply.interrupted || reply.abandoned || reply.greeted.is_some() {
            Some(EndReason::Cancelled)
        } else {
            None
        }
    }

    /// The board asks to stop the reply in progress (a cancel button): it halts as for Ctrl-C
    /// or `Cancel`, without a `CancelAck` (no host asked).
    pub fn interrupt(&mut self) {
        if let Some(reply) = &mut self.reply {
            reply.interrupted = true;
        }
    }

    /// The reply ended.
    pub fn reply_ended(&mut self, now: Duration, end: ReplyEnd) {
        let Some(mut reply) = self.reply.take() else {
            return;
        };
        self.last_request = now;
        self.answering = Some(reply.request);
        self.failed = matches!(end, ReplyEnd::Failed { .. });
        // Given up while nobody reads: its end waits until the host sends again.
        let unread = reply.abandoned && self.stalled && self.mode == Mode::Frame;
        match end {
            ReplyEnd::Failed { code, detail } => {
                warn!("reply failed: {}", detail.as_str());
                if reply.sentences {
                    self.send_frame(&Event::SynthesizeStop);
                }
                if unread {
                    self.abandoned = Some((reply.request, ReplyStats::default()));
                } else {
                    self.report(code, &detail);
                }
            }
            ReplyEnd::Finished {
                reason,
                prompt_tokens,
                generated_tokens,
                decode_tokens_per_second,
                turns_dropped,
                context,
            } => {
                self.context = context;
                let stats = ReplyStats {
                    prompt_tokens,
                    generated_tokens,
                    time_to_first_token_ms: millis(
                        reply.first_token.unwrap_or(now).saturating_sub(reply.start),
                    ),
                    total_ms: millis(now.saturating_sub(reply.start)),
                    decode_tokens_per_second,
                    context_used: context.used,
                    turns_dropped,
                };
                self.finish(&mut reply, reason, stats, unread);
            }
        }
        if let Some((request, version)) = reply.greeted {
            self.greet(now, request, version);
        }
    }

    /// Sends what is left of a reply that ran, and its end.
    fn finish(
        &mut self,
        reply: &mut Reply,
        mut reason: EndReason,
        stats: ReplyStats,
        unread: bool,
    ) {
        let Reply {
            stop,
            splitter,
            sentences,
            ..
        } = reply;
        if matches!(reason, EndReason::Eos | EndReason::Length) {
            stop.finish(&mut |visible| self.show(splitter, *sentences, visible));
            // A stop sequence inside a longer one that never completed is cut only now.
            if stop.stopped() {
                reason = EndReason::Stop;
            }
        }
        if reply.sentences {
            if reason != EndReason::Cancelled {
                reply
                    .splitter
                    .finish(&mut |sentence| self.send_sentence(sentence));
            }
            self.send_frame(&Event::SynthesizeStop);
        }
        info!("reply: {}, {}", reason.as_str(), describe(&stats).as_str());
        self.last = Some(stats);
        self.replies += 1;
        if self.mode != Mode::Frame {
            self.text(if reason == EndReason::Cancelled {
                " ^C\n"
            } else {
                "\n"
            });
            if reply.greeted.is_none() {
                self.text(PROMPT);
            }
        } else if unread {
            self.abandoned = Some((reply.request, stats));
        } else if reply.abandoned {
            // The host sent again before the reply stopped.
            self.error(ErrorCode::Stalled, "the reply was given up: nobody read it");
            self.send_end(EndReason::Cancelled, stats, reply.request);
        } else {
            self.send_end(reason, stats, reply.request);
            if reply.cancel {
                self.send_frame(&Event::CancelAck {
                    was_generating: true,
                });
            }
        }
    }

    fn take(&mut self, now: Duration, byte: u8) {
        if self.reply.is_some() {
            return self.take_busy(now, byte);
        }
        if self.trial.is_some() {
            return self.take_trial(now, byte);
        }
        match self.mode {
            Mode::Line => self.take_line(now, byte),
            Mode::Probe => self.take_probe(now, byte),
            Mode::Frame => match self.decode(byte) {
                None => {}
                Some(Ok((seq, request))) => self.request(now, seq, request),
                Some(Err((seq, e))) => self.report_bad_frame(seq, e),
            },
        }
    }

    fn take_line(&mut self, now: Duration, byte: u8) {
        if byte == DELIMITER {
            return self.start_probe(now);
        }
        let mut echo = Vec::new();
        let event = self
            .line
            .push(byte, &mut |bytes| echo.extend_from_slice(bytes))
            .map(|event| match event {
                LineEvent::Line(text) => Ok(text.to_string()),
                LineEvent::Interrupt => Err(None),
                LineEvent::Error(e) => Err(Some(e.to_string())),
            });
        self.write(&echo);
        match event {
            None => return,
            Some(Ok(text)) => self.command(now, &text),
            Some(Err(None)) => {}
            Some(Err(Some(error))) => self.text(&format!("error: {error}\n")),
        }
        if self.mode == Mode::Line && self.reply.is_none() {
            self.text(PROMPT);
        }
    }

    fn command(&mut self, now: Duration, text: &str) {
        match line::parse_line(text) {
            Ok(Command::Empty) => {}
            Ok(Command::Say(message)) => {
                let settings = self.model.settings.clone();
                self.start_reply(now, 0, message, settings, false);
            }
            Ok(Command::Help) => self.text(line::HELP),
            Ok(Command::Reset) => {
                self.reset();
                self.text("(conversation reset)\n");
            }
            Ok(Command::Stats) => {
                let text = match &self.last {
                    Some(stats) => format!("{}\n", describe(stats)),
                    None => "(no reply yet)\n".to_string(),
                };
                self.text(&text);
            }
            Ok(Command::ShowSettings) => {
                let text = format!("{}\n", describe_settings(&self.model.settings));
                self.text(&text);
            }
            Ok(Command::Set(setting)) => match apply(&self.model.settings, setting) {
                Ok(settings) => {
                    let text = format!("({})\n", describe_settings(&settings));
                    self.model.settings = settings;
                    self.text(&text);
                }
                Err(e) => self.text(&format!("error: {e}\n")),
            },
            Ok(Command::ShowSystem) => {
                let text = match &self.model.system {
                    Some(system) => format!("system prompt: {system}\n"),
                    None => "(the model's default system prompt)\n".to_string(),
                };
                self.text(&text);
            }
            Ok(Command::System(text)) => {
                self.set_system(Some(text.to_string()));
                self.text("(system prompt set; conversation reset)\n");
            }
            Err(e) => self.text(&format!("error: {e}\n")),
        }
    }

    fn start_probe(&mut self, now: Duration) {
        self.mode = Mode::Probe;
        self.frames = FrameDecoder::new();
        self.probe = (now, Vec::new());
    }

    /// A byte after a `0x00` in line mode: a `Hello` frame opens frame mode; any other frame is
    /// dropped; bytes that do not end in a frame soon ([`PROBE_TIMEOUT`], [`MAX_PROBE`]) were
    /// typed.
    fn take_probe(&mut self, now: Duration, byte: u8) {
        if byte != DELIMITER {
            self.probe.1.push(byte);
        }
        match self.decode(byte) {
            None if byte == DELIMITER => self.probe = (now, Vec::new()),
            None if self.probe.1.len() > MAX_PROBE => self.end_probe(now, true),
            None => {}
            Some(Ok((seq, Request::Hello { protocol_version }))) => {
                self.probe.1.clear();
                match &mut self.reply {
                    // A program takes the line from a person: their reply stops first.
                    Some(reply) => {
                        reply.greeted = Some((seq, protocol_version));
                        self.mode = Mode::Line;
                    }
                    None => self.greet(now, seq, protocol_version),
                }
            }
            // Not a greeting: a program's frame, or noise.
            Some(_) => self.end_probe(now, false),
        }
    }

    /// Back to line mode after a probe, giving its bytes to the line editor if `typed`.
    fn end_probe(&mut self, now: Duration, typed: bool) {
        self.mode = Mode::Line;
        self.frames = FrameDecoder::new();
        let (_, held) = core::mem::take(&mut self.probe);
        if typed {
            debug!("no Hello after a 0x00: {} bytes were typed", held.len());
            for byte in held {
                self.take(now, byte);
            }
        }
    }

    /// Answers a host's `Hello`: frame mode, frames numbered from 0, an empty line editor.
    fn greet(&mut self, now: Duration, request: u16, version: u16) {
        info!("frame mode");
        self.mode = Mode::Frame;
        self.line.clear();
        self.last_request = now;
        self.answering = Some(request);
        *self.writer = FrameWriter::new();
        // A delimiter first ends whatever the host has half-read.
        self.write(&[DELIMITER]);
        let hello = Event::Hello(self.model.hello.clone());
        self.send_frame(&hello);
        if version != PROTOCOL_VERSION {
            let detail = format!(
                "this device speaks protocol version {PROTOCOL_VERSION}, not {version}: say Goodbye"
            );
            self.error(ErrorCode::UnsupportedVersion, &detail);
        }
    }

    /// A byte during a rate trial: the first whole request confirms the rate; noise does not
    /// count (it is what a rate the line cannot carry looks like).
    fn take_trial(&mut self, now: Duration, byte: u8) {
        if let Some(Ok((seq, request))) = self.decode(byte) {
            info!("line switched to {} baud", self.baud);
            self.trial = None;
            self.request(now, seq, request);
        }
    }

    fn status(&self) -> Status {
        Status {
            session: self.session,
            turns: self.context.turns,
            context_used: self.context.used,
            context_length: self.model.hello.context_length,
            replies: self.replies,
        }
    }

    fn request(&mut self, now: Duration, seq: u16, request: Request) {
        self.last_request = now;
        self.answering = Some(seq);
        match request {
            Request::Hello { protocol_version } => self.greet(now, seq, protocol_version),
            Request::Chat(chat) => self.chat(now, seq, chat),
            Request::Cancel => self.send_frame(&Event::CancelAck {
                was_generating: false,
            }),
            Request::Reset => {
                self.reset();
                self.send_frame(&Event::Done);
            }
            Request::SetSystem { text } => {
                self.set_system((!text.is_empty()).then(|| text.to_string()));
                self.send_frame(&Event::Done);
            }
            Request::Status => self.send_frame(&Event::Status(self.status())),
            Request::Goodbye => {
                info!("line mode");
                self.send_frame(&Event::Goodbye);
                self.mode = Mode::Line;
                self.line.clear();
                if self.baud != self.config.baud {
                    self.switch_to(self.config.baud, None);
                }
                self.text(&format!("\n{PROMPT}"));
            }
            Request::SetBaud { baud } => self.set_baud(baud),
            Request::Message(message) => self.message(message),
            flash @ (Request::FlashBegin(_)
            | Request::FlashChunk(_)
            | Request::FlashAbort
            | Request::FlashCommit) => self.flash(flash),
        }
    }

    /// Takes a message for the conversation's history, by the index and order rules of
    /// [`MessageRequest`].
    fn message(&mut self, message: MessageRequest) {
        if message.session != self.session {
            self.session = message.session;
            self.reset();
        }
        let taken = self.messages.taken;
        if message.index < taken {
            // A copy of a message already taken: its `Done` was lost.
            return self.send_frame(&Event::Done);
        }
        if message.index > taken {
            let detail = format!(
                "message {} is out of order (one was lost?): the conversation has taken {taken}, \
                 so message {taken} is next",
                message.index
            );
            return self.error(ErrorCode::OutOfOrder, &detail);
        }
        match (message.role, self.messages.last) {
            (Role::User, _) | (Role::Assistant, Some(Role::Assistant)) => {}
            (Role::Assistant, Some(Role::User)) => {
                self.context.turns = self.context.turns.saturating_add(1)
            }
            (Role::Assistant, None) => {
                return self.error(
                    ErrorCode::OutOfOrder,
                    "an assistant message must follow a user message",
                );
            }
        }
        self.messages = Messages {
            taken: taken.saturating_add(1),
            last: Some(message.role),
        };
        self.out.push_back(Output::Remember {
            role: message.role,
            text: message.text.to_string(),
        });
        self.send_frame(&Event::Done);
    }

    fn chat(&mut self, now: Duration, seq: u16, chat: ChatRequest) {
        if chat.session != self.session {
            self.session = chat.session;
            self.reset();
        }
        match request_settings(&self.model.settings, &chat.options) {
            Ok(settings) => {
                self.start_reply(now, seq, &chat.text, settings, chat.options.sentences)
            }
            Err(e) => self.report(ErrorCode::BadSetting, &e),
        }
    }

    /// A flash request goes to the driver, unless the device has no slots.
    fn flash(&mut self, request: Request) {
        if self.model.hello.slot.is_none() {
            self.error(
                ErrorCode::FlashUnavailable,
                "this device serves a fixed --model file and has no slots to flash",
            );
        } else {
            self.flashed = Some(self.now);
            self.out.push_back(Output::Flash(Box::new(request)));
        }
    }

    /// Switches the line to `baud` on trial: kept if a frame arrives at that rate in time.
    fn set_baud(&mut self, baud: u32) {
        let max = self.model.hello.max_baud;
        if baud != self.baud && (baud > max || !self.config.rates.contains(&baud)) {
            let detail = format!(
                "cannot switch to {baud} baud: this device takes standard rates up to {max}"
            );
            return self.error(ErrorCode::BadSetting, &detail);
        }
        self.send_frame(&Event::BaudSwitch { baud });
        if baud != self.baud {
            self.switch_to(baud, Some(self.baud));
        }
    }

    fn switch_to(&mut self, baud: u32, from: Option<u32>) {
        self.switch = Some(Switch { to: baud, from });
        self.out.push_back(Output::SwitchBaud(baud));
    }

    fn reset(&mut self) {
        self.context = Context::default();
        self.messages = Messages::default();
        self.out.push_back(Output::Reset);
    }

    fn set_system(&mut self, system: Option<String>) {
        self.context = Context::default();
        self.messages = Messages::default();
        self.model.system = system.clone();
        self.out.push_back(Output::SetSystem(system));
    }

    /// Starts generating the reply to `text`.
    fn start_reply(
        &mut self,
        now: Duration,
        request: u16,
        text: &str,
        settings: Settings,
        sentences: bool,
    ) {
        let stops: Vec<&str> = settings.stops.iter().map(String::as_str).collect();
        let stop = match StopFilter::new(&stops) {
            Ok(stop) => stop,
            Err(e) => {
                return self.report(ErrorCode::BadSetting, &format!("bad stop sequences: {e}"));
            }
        };
        let sentences = sentences && self.mode == Mode::Frame;
        if sentences {
            self.send_frame(&Event::SynthesizeStart);
        }
        self.reply = Some(Reply {
            request,
            start: now,
            first_token: None,
            stop,
            splitter: SentenceSplitter::new(),
            sentences,
            cancel: false,
            interrupted: false,
            greeted: None,
            abandoned: false,
            status: self.status(),
        });
        // The reply takes a held user message (joined with this text); the next message
        // starts a new user message.
        self.messages.last = None;
        self.out.push_back(Output::Reply(ReplyRequest {
            text: text.to_string(),
            max_tokens: settings.max_tokens,
            sampling: settings.sampling,
        }));
    }

    /// A byte during a reply. Flash transfers go on during a reply (a commit waits for its end);
    /// a host's `Hello` stops it.
    fn take_busy(&mut self, now: Duration, byte: u8) {
        match self.mode {
            // People cancel with Ctrl-C; anything else typed during a reply is ignored, but a
            // program may greet.
            Mode::Line if byte == 0x03 => {
                if let Some(reply) = &mut self.reply {
                    reply.cancel = true;
                }
            }
            Mode::Line if byte == DELIMITER => self.start_probe(now),
            Mode::Line => {}
            Mode::Probe => self.take_probe(now, byte),
            Mode::Frame => match self.decode(byte) {
                None => {}
                Some(Ok((seq, request))) => self.request_busy(seq, request),
                Some(Err((seq, e))) => self.report_bad_frame(seq, e),
            },
        }
    }

    /// A request while a reply runs.
    fn request_busy(&mut self, seq: u16, request: Request) {
        self.answering = Some(seq);
        let Some(reply) = &mut self.reply else {
            return;
        };
        match request {
            Request::Cancel => reply.cancel = true,
            Request::Status => {
                let status = reply.status;
                self.send_frame(&Event::Status(status));
            }
            Request::Hello { protocol_version } => {
                reply.greeted = Some((seq, protocol_version));
            }
            flash @ (Request::FlashBegin(_) | Request::FlashChunk(_) | Request::FlashAbort) => {
                self.flash(flash)
            }
            Request::Chat(_) => self.report(ErrorCode::Busy, "a reply is in progress"),
            _ => self.error(ErrorCode::Busy, "a reply is in progress: cancel it first"),
        }
    }

    /// Shows visible reply text: on the terminal, or as token events (and sentences).
    fn show(&mut self, splitter: &mut SentenceSplitter<MAX_SENTENCE>, sentences: bool, text: &str) {
        if self.mode != Mode::Frame {
            return self.text(text);
        }
        let mut rest = text;
        while !rest.is_empty() {
            let piece: protocol::BoundedText<MAX_DELTA> = protocol::truncated(rest);
            rest = &rest[piece.len()..];
            self.send_frame(&Event::Token { text: piece });
        }
        if sentences {
            splitter.push(text, &mut |sentence| self.send_sentence(sentence));
        }
    }

    fn send_sentence(&mut self, sentence: &str) {
        self.send_frame(&Event::SynthesizeChunk {
            text: protocol::truncated(sentence),
        });
    }

    /// A failed chat: an error line, or an error event and the end of the reply.
    fn report(&mut self, code: ErrorCode, detail: &str) {
        if self.mode == Mode::Frame {
            self.error(code, detail);
            let request = self.answering.unwrap_or_default();
            self.send_end(EndReason::Error, ReplyStats::default(), request);
        } else {
            self.text(&format!("error: {detail}\n"));
            self.text(PROMPT);
        }
    }

    /// Feeds `byte` to the frame decoder: the request a completed frame holds and its
    /// sequence number, or why not (and the sequence number, if the frame was whole).
    fn decode(&mut self, byte: u8) -> Option<Decoded> {
        self.frames.push(byte).map(|frame| {
            let frame = frame.map_err(|e| (None, ProtocolError::from(e)))?;
            protocol::decode_request(frame.payload)
                .map(|request| (frame.seq, request))
                .map_err(|e| (Some(frame.seq), e))
        })
    }

    /// Answers a frame that could not be read, or whose request could not be; a chat so
    /// refused also gets its end.
    fn report_bad_frame(&mut self, seq: Option<u16>, error: ProtocolError) {
        self.answering = seq;
        let detail = error.to_string();
        debug!("dropped a frame: {}", detail.as_str());
        match error {
            ProtocolError::Frame(FrameError::Oversized { .. }) => {
                self.error(ErrorCode::Oversized, &detail)
            }
            ProtocolError::BadMessage => self.error(ErrorCode::UnknownMessage, &detail),
            ProtocolError::BadFields {
                variant: CHAT_VARIANT,
            } => self.report(ErrorCode::BadField, &detail),
            ProtocolError::BadFields { .. } => self.error(ErrorCode::BadField, &detail),
            _ => self.error(ErrorCode::BadFrame, &detail),
        }
    }

    /// An error answering the request at hand.
    fn error(&mut self, code: ErrorCode, detail: &str) {
        self.send_frame(&Event::Error {
            code,
            detail: protocol::truncated(detail),
            request: self.answering,
        });
    }

    fn send_end(&mut self, reason: EndReason, stats: ReplyStats, request: u16) {
        self.send_frame(&Event::End {
            reason,
            stats,
            request,
        });
    }

    /// One event as a frame.
    fn send_frame(&mut self, event: &Event) {
        match self.writer.encode(event) {
            Ok(frame) => {
                let frame = frame.to_vec();
                self.write(&frame);
            }
            // Every event's fields are bounded to fit a frame; nothing to send if not.
            Err(_) => warn!("an event did not fit a frame"),
        }
    }

    /// Text for a terminal: `\n` becomes `\r\n`; other control characters are dropped (model
    /// output must not drive the terminal).
    fn text(&mut self, text: &str) {
        let mut out = String::with_capacity(text.len() + 8);
        for c in text.chars() {
            match c {
                '\n' => out.push_str("\r\n"),
                '\t' => out.push('\t'),
                c if c.is_control() => {}
                c => out.push(c),
            }
        }
        self.write(out.as_bytes());
    }

    /// Queues `bytes` for the line unless it is stalled.
    fn write(&mut self, bytes: &[u8]) {
        if self.stalled || bytes.is_empty() {
            return;
        }
        let torn = core::mem::take(&mut self.torn) && self.mode == Mode::Frame;
        let out = match self.out.back_mut() {
            Some(Output::Write(out)) => out,
            _ => {
                self.out.push_back(Output::Write(Vec::new()));
                match self.out.back_mut() {
                    Some(Output::Write(out)) => out,
                    _ => unreachable!("a write was just queued"),
                }
            }
        };
        if torn {
            out.push(DELIMITER);
        }
        out.extend_from_slice(bytes);
    }
}

fn millis(d: Duration) -> u32 {
    d.as_millis().min(u32::MAX as u128) as u32
}

/// A reply's stats as one line for people.
pub fn describe(stats: &ReplyStats) -> String {
    let mut text = format!(
        "{} prompt tokens, {} generated, first token after {} ms, {:.1} tokens/s, {} ms in all, context {} used",
        stats.prompt_tokens,
        stats.generated_tokens,
        stats.time_to_first_token_ms,
        stats.decode_tokens_per_second,
        stats.total_ms,
        stats.context_used
    );
    if stats.turns_dropped > 0 {
        let _ = write!(text, ", {} old turns dropped", stats.turns_dropped);
    }
    text
}

fn describe_settings(s: &Settings) -> String {
    let mut text = format!(
        "temperature {} top_k {} top_p {} repeat_penalty {} seed {} max_tokens {}",
        s.sampling.temperature,
        s.sampling.top_k,
        s.sampling.top_p,
        s.sampling.repetition_penalty,
        s.sampling.seed,
        s.max_tokens
    );
    if !s.stops.is_empty() {
        let _ = write!(text, " stops {:?}", s.stops);
    }
    text
}

/// `settings` with one setting changed, if the result is valid.
fn apply(settings: &Settings, setting: Setting) -> Result<Settings, String> {
    let mut next = settings.clone();
    match setting {
        Setting::Temperature(v) => next.sampling.temperature = v,
        Setting::TopK(v) => next.sampling.top_k = v,
        Setting::TopP(v) => next.sampling.top_p = v,
        Setting::RepeatPenalty(v) => next.sampling.repetition_penalty = v,
        Setting::Seed(v) => next.sampling.seed = v,
        Setting::MaxTokens(v) => next.max_tokens = v,
    }
    validate(&next)?;
    Ok(next)
}

/// Checks settings a reply would use.
fn validate(settings: &Settings) -> Result<(), String> {
    settings.sampling.validate().map_err(|e| e.to_string())?;
    if settings.max_tokens == 0 {
        return Err("max_tokens must be at least 1".into());
    }
    Ok(())
}

/// The device's settings with a request's overrides.
fn request_settings(settings: &Settings, options: &ChatOptions) -> Result<Settings, String> {
    let mut next = settings.clone();
    let s = &mut next.sampling;
    s.temperature = options.temperature.unwrap_or(s.temperature);
    s.top_k = options.top_k.unwrap_or(s.top_k);
    s.top_p = options.top_p.unwrap_or(s.top_p);
    s.repetition_penalty = options.repeat_penalty.unwrap_or(s.repetition_penalty);
    s.seed = options.seed.unwrap_or(s.seed);
    next.max_tokens = options.max_tokens.unwrap_or(next.max_tokens);
    if !options.stop.is_empty() {
        next.stops = options.stop.iter().map(|s| s.to_string()).collect();
    }
    validate(&next)?;
    Ok(next)
}
