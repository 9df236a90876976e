//! The device's side of the serial line. It sees the port only through the `embedded-io`
//! traits ([`Read`], [`ReadReady`], [`Write`]), so the same code serves a UART, a PTY, or a
//! test double.
//!
//! The line starts in line mode: a person types, the device echoes, and each line is a message
//! or a `/command`. A `0x00` byte followed by a frame holding `Hello` switches to frame mode
//! (see `docs/PROTOCOL.md`) until `Goodbye`. Whatever the mode, a reply streams while it is
//! generated and the device keeps reading: Ctrl-C (line mode) or `Cancel` (frame mode) stops it.

use embedded_io::{Error as _, ErrorKind, ErrorType, Read, ReadReady, Write};
use ember_core::flash::Slot;
use ember_core::frame::{DELIMITER, FrameDecoder};
use ember_core::line::{self, Command, LineEditor, LineEvent, Setting};
use ember_core::protocol::{
    self, ChatOptions, EndReason, ErrorCode, Event, FlashStage, FrameWriter, Hello, MAX_DELTA,
    MAX_FRAME, MAX_SENTENCE, ProtocolError, ReplyStats, Request, Status,
};
use ember_core::sampler::SamplingConfig;
use ember_core::sentence::SentenceSplitter;
use ember_core::stop::StopFilter;
use ember_engine::{ChatSession, EngineError, FinishReason, GenerateOptions, Progress};
use ember_flash::{ChunkReply, SlotDir};
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

/// Most bytes in one typed line.
pub const MAX_LINE: usize = protocol::MAX_TEXT;
/// What the device prints when it waits for a line.
const PROMPT: &str = "> ";

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

/// A port whose baud rate can change: a UART, or a PTY (where the rate is only a setting).
pub trait Baud: ErrorType {
    /// Waits until the bytes written have left, then switches to `baud`.
    fn switch_to(&mut self, baud: u32) -> Result<(), Self::Error>;
}

impl Baud for ember_serial::Tty {
    fn switch_to(&mut self, baud: u32) -> Result<(), Self::Error> {
        self.drain()?;
        // The last bytes may still sit in a USB adapter (or a simulated line): let them go.
        std::thread::sleep(ember_serial::SWITCH_PAUSE);
        self.set_baud(baud)
    }
}

/// Where a reply goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Text for a person's terminal.
    Line,
    /// A `0x00` arrived in line mode: is a `Hello` frame next?
    Probe,
    /// Frames for a program.
    Frame,
}

/// The port and everything about the bytes on it. It outlives a [`Server`]: when the device
/// switches to a newly flashed model, the next server takes the line over as it was (mode,
/// frame numbers, unread bytes).
pub struct Wire<P: ErrorType> {
    port: P,
    mode: Mode,
    frames: FrameDecoder<MAX_FRAME>,
    writer: FrameWriter,
    /// Bytes read but not handled yet.
    pending: VecDeque<u8>,
    /// The other end stopped taking bytes: output is dropped until it sends something.
    stalled: bool,
    /// A write gave up partway, maybe inside a frame: the next frame starts with a delimiter so
    /// the other end drops the torn one instead of merging the two.
    torn: bool,
    /// The port failed for good.
    fatal: Option<P::Error>,
    /// The line's rate now, the device's own rate (restored at Goodbye), the fastest allowed.
    baud: u32,
    base_baud: u32,
    max_baud: u32,
}

impl<P: Read + Write + ReadReady> Wire<P> {
    /// A line in line mode on `port`, at `baud`; programs may switch it up to `max_baud`.
    pub fn new(port: P, baud: u32, max_baud: u32) -> Self {
        Wire {
            port,
            mode: Mode::Line,
            frames: FrameDecoder::new(),
            writer: FrameWriter::new(),
            pending: VecDeque::new(),
            stalled: false,
            torn: false,
            fatal: None,
            baud,
            base_baud: baud,
            max_baud: max_baud.max(baud),
        }
    }

    /// The fastest rate programs may switch the line to.
    pub fn max_baud(&self) -> u32 {
        self.max_baud
    }

    /// Sends an event if the line is in frame mode.
    pub fn announce(&mut self, event: &Event) {
        if self.mode == Mode::Frame {
            self.send(event);
        }
    }

    /// The next byte, waiting for it.
    fn next_byte(&mut self) -> Result<u8, P::Error> {
        loop {
            if let Some(byte) = self.pending.pop_front() {
                return Ok(byte);
            }
            self.fill()?;
        }
    }

    /// The next byte if one has arrived.
    fn poll_byte(&mut self) -> Option<u8> {
        if self.pending.is_empty() && self.fatal.is_none() {
            match self.port.read_ready() {
                Ok(true) => {
                    if let Err(e) = self.fill() {
                        self.fatal = Some(e);
                    }
                }
                Ok(false) => {}
                Err(e) => self.fatal = Some(e),
            }
        }
        self.pending.pop_front()
    }

    fn fill(&mut self) -> Result<(), P::Error> {
        let mut buf = [0u8; 256];
        let n = self.port.read(&mut buf)?;
        self.pending.extend(&buf[..n]);
        Ok(())
    }

    /// Feeds `byte` to the frame decoder: the request a completed frame holds, or why not.
    fn decode(&mut self, byte: u8) -> Option<Result<Request, ProtocolError>> {
        self.frames.push(byte).map(|frame| {
            frame
                .map_err(ProtocolError::from)
                .and_then(|frame| protocol::decode::<Request>(frame.payload))
        })
    }

    /// Answers a frame that could not be read.
    fn report_bad_frame(&mut self, error: ProtocolError) {
        log::debug!("dropped a frame: {error}");
        let code = match error {
            ProtocolError::Frame(ember_core::frame::FrameError::Oversized { .. }) => {
                ErrorCode::Oversized
            }
            ProtocolError::BadMessage => ErrorCode::UnknownMessage,
            _ => ErrorCode::BadFrame,
        };
        self.error(code, &error.to_string());
    }

    /// Writes `bytes` unless the line is stalled or broken.
    fn write(&mut self, bytes: &[u8]) {
        if self.stalled || self.fatal.is_some() || bytes.is_empty() {
            return;
        }
        let result = if self.torn && self.mode == Mode::Frame {
            self.port
                .write_all(&[DELIMITER])
                .and_then(|()| self.port.write_all(bytes))
        } else {
            self.port.write_all(bytes)
        };
        match result {
            Ok(()) => self.torn = false,
            Err(e) if e.kind() == ErrorKind::TimedOut => {
                log::warn!("the other end stopped reading: dropping output until it sends again");
                self.stalled = true;
                self.torn = true;
            }
            Err(e) => self.fatal = Some(e),
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

    /// One event as a frame.
    fn send(&mut self, event: &Event) {
        match self.writer.encode(event) {
            Ok(frame) => {
                let frame = frame.to_vec();
                self.write(&frame);
            }
            // Every event's fields are bounded to fit a frame; nothing to send if not.
            Err(e) => log::error!("cannot encode {event:?}: {e}"),
        }
    }

    fn error(&mut self, code: ErrorCode, detail: &str) {
        self.send(&Event::Error {
            code,
            detail: protocol::truncated(detail),
        });
    }
}

/// What a reply is for.
struct Turn<'t> {
    text: &'t str,
    options: GenerateOptions,
    stops: Vec<String>,
    sentences: bool,
}

/// Why a server stopped.
pub enum Exit<P: ErrorType> {
    /// The port failed (a hang-up).
    PortFailed(P::Error),
    /// A flashed image was verified and waits in `slot` for its trial boot; the line goes on.
    Trial(Box<Wire<P>>, Slot),
}

/// The chat device: a conversation with the model, served over a port.
pub struct Server<'m, P: ErrorType> {
    wire: Wire<P>,
    chat: ChatSession<'m>,
    hello: Hello,
    settings: Settings,
    slots: Option<&'m mut SlotDir>,
    line: LineEditor<MAX_LINE>,
    session: u32,
    last: Option<ReplyStats>,
    replies: u32,
    trial: Option<Slot>,
}

impl<'m, P: Read + Write + ReadReady + Baud> Server<'m, P> {
    /// A server for `chat` on `wire`; `hello` is what it tells programs about itself. With
    /// `slots` it can be flashed.
    pub fn new(
        wire: Wire<P>,
        chat: ChatSession<'m>,
        hello: Hello,
        settings: Settings,
        slots: Option<&'m mut SlotDir>,
    ) -> Self {
        Server {
            wire,
            chat,
            hello,
            settings,
            slots,
            line: LineEditor::new(),
            session: 0,
            last: None,
            replies: 0,
            trial: None,
        }
    }

    /// Serves until the port fails (a hang-up) or a flashed image waits for its trial boot.
    pub fn run(mut self) -> Exit<P> {
        if self.wire.mode == Mode::Line {
            self.wire.text(&format!(
                "\nEmber: {} is listening. Type a message; /help lists the commands.\n{PROMPT}",
                self.hello.model_name
            ));
        }
        loop {
            if let Some(slot) = self.trial {
                return Exit::Trial(Box::new(self.wire), slot);
            }
            let byte = match self.wire.next_byte() {
                Ok(byte) => byte,
                Err(e) => return Exit::PortFailed(e),
            };
            // Someone is there again.
            self.wire.stalled = false;
            match self.wire.mode {
                Mode::Line => self.take_line(byte),
                Mode::Probe => self.take_probe(byte),
                Mode::Frame => self.take_frame(byte),
            }
            if let Some(e) = self.wire.fatal.take() {
                return Exit::PortFailed(e);
            }
        }
    }

    fn take_line(&mut self, byte: u8) {
        if byte == DELIMITER {
            self.wire.mode = Mode::Probe;
            self.wire.frames = FrameDecoder::new();
            return;
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
        self.wire.write(&echo);
        match event {
            None => return,
            Some(Ok(text)) => self.command(&text),
            Some(Err(None)) => {}
            Some(Err(Some(error))) => self.wire.text(&format!("error: {error}\n")),
        }
        if self.wire.mode == Mode::Line {
            self.wire.text(PROMPT);
        }
    }

    fn command(&mut self, text: &str) {
        match line::parse_line(text) {
            Ok(Command::Empty) => {}
            Ok(Command::Say(message)) => {
                let options = GenerateOptions {
                    max_tokens: self.settings.max_tokens as usize,
                    sampling: self.settings.sampling,
                };
                let stops = self.settings.stops.clone();
                self.reply(Turn {
                    text: message,
                    options,
                    stops,
                    sentences: false,
                });
            }
            Ok(Command::Help) => self.wire.text(line::HELP),
            Ok(Command::Reset) => {
                self.chat.reset();
                self.wire.text("(conversation reset)\n");
            }
            Ok(Command::Stats) => {
                let text = match &self.last {
                    Some(stats) => format!("{}\n", describe(stats)),
                    None => "(no reply yet)\n".to_string(),
                };
                self.wire.text(&text);
            }
            Ok(Command::ShowSettings) => {
                let text = format!("{}\n", describe_settings(&self.settings));
                self.wire.text(&text);
            }
            Ok(Command::Set(setting)) => match apply(&self.settings, setting) {
                Ok(settings) => {
                    self.settings = settings;
                    let text = format!("({})\n", describe_settings(&self.settings));
                    self.wire.text(&text);
                }
                Err(e) => self.wire.text(&format!("error: {e}\n")),
            },
            Ok(Command::ShowSystem) => {
                let text = match self.chat.system() {
                    Some(system) => format!("system prompt: {system}\n"),
                    None => "(the model's default system prompt)\n".to_string(),
                };
                self.wire.text(&text);
            }
            Ok(Command::System(text)) => {
                self.chat.set_system(Some(text.to_string()));
                self.wire.text("(system prompt set; conversation reset)\n");
            }
            Err(e) => self.wire.text(&format!("error: {e}\n")),
        }
    }

    fn take_probe(&mut self, byte: u8) {
        match self.wire.decode(byte) {
            None => {}
            Some(Ok(Request::Hello { .. })) => {
                log::info!("frame mode");
                self.wire.mode = Mode::Frame;
                // A delimiter first ends whatever line-mode text the host has half-read.
                self.wire.write(&[DELIMITER]);
                let hello = Event::Hello(self.hello.clone());
                self.wire.send(&hello);
            }
            // Not a greeting: it was noise on the line.
            Some(_) => self.wire.mode = Mode::Line,
        }
    }

    fn take_frame(&mut self, byte: u8) {
        match self.wire.decode(byte) {
            None => {}
            Some(Ok(request)) => self.request(request),
            Some(Err(e)) => self.wire.report_bad_frame(e),
        }
    }

    fn status(&self) -> Status {
        Status {
            session: self.session,
            turns: self.chat.turns().len() as u32,
            context_used: self.chat.context_used() as u32,
            context_length: self.chat.context_length() as u32,
            replies: self.replies,
        }
    }

    fn request(&mut self, request: Request) {
        match request {
            Request::Hello { .. } => {
                let hello = Event::Hello(self.hello.clone());
                self.wire.send(&hello);
            }
            Request::Chat(chat) => {
                if chat.session != self.session {
                    self.session = chat.session;
                    self.chat.reset();
                }
                match request_settings(&self.settings, &chat.options) {
                    Ok(settings) => self.reply(Turn {
                        text: &chat.text,
                        options: GenerateOptions {
                            max_tokens: settings.max_tokens as usize,
                            sampling: settings.sampling,
                        },
                        stops: settings.stops,
                        sentences: chat.options.sentences,
                    }),
                    Err(e) => {
                        self.wire.error(ErrorCode::BadSetting, &e);
                        self.end(EndReason::Error, ReplyStats::default());
                    }
                }
            }
            Request::Cancel => self.wire.send(&Event::CancelAck {
                was_generating: false,
            }),
            Request::Reset => {
                self.chat.reset();
                self.wire.send(&Event::Done);
            }
            Request::SetSystem { text } => {
                let system = (!text.is_empty()).then(|| text.to_string());
                self.chat.set_system(system);
                self.wire.send(&Event::Done);
            }
            Request::Status => {
                let status = Event::Status(self.status());
                self.wire.send(&status);
            }
            Request::Goodbye => {
                log::info!("line mode");
                self.wire.send(&Event::Goodbye);
                self.wire.mode = Mode::Line;
                if self.wire.baud != self.wire.base_baud {
                    let base = self.wire.base_baud;
                    self.set_line_baud(base);
                }
                self.wire.text(&format!("\n{PROMPT}"));
            }
            Request::SetBaud { baud } => self.switch_baud(baud),
            Request::FlashCommit => self.commit(),
            flash => take_flash(&mut self.wire, self.slots.as_deref_mut(), flash),
        }
    }

    /// Switches the line to `baud` and keeps it if a frame arrives at that rate in time.
    fn switch_baud(&mut self, baud: u32) {
        let wire = &mut self.wire;
        if baud != wire.baud
            && (baud > wire.max_baud || !ember_serial::STANDARD_BAUDS.contains(&baud))
        {
            let detail = format!(
                "cannot switch to {baud} baud: this device takes standard rates up to {}",
                wire.max_baud
            );
            return wire.error(ErrorCode::BadSetting, &detail);
        }
        wire.send(&Event::BaudSwitch { baud });
        if baud == wire.baud {
            return;
        }
        let old = wire.baud;
        if !self.set_line_baud(baud) {
            return;
        }
        // The host greets at the new rate; without a frame in time the line does not carry it.
        let deadline = Instant::now() + Duration::from_millis(protocol::BAUD_TRIAL_MS.into());
        while Instant::now() < deadline && self.wire.fatal.is_none() {
            let Some(byte) = self.wire.poll_byte() else {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            };
            if let Some(Ok(request)) = self.wire.decode(byte) {
                log::info!("line switched to {baud} baud");
                return self.request(request);
            }
        }
        log::warn!("no frame arrived at {baud} baud: back to {old}");
        self.set_line_baud(old);
    }

    /// Switches the port's rate (after the bytes written have left); false if the port refused.
    fn set_line_baud(&mut self, baud: u32) -> bool {
        match self.wire.port.switch_to(baud) {
            Ok(()) => {
                self.wire.baud = baud;
                self.wire.pending.clear();
                self.wire.frames = FrameDecoder::new();
                true
            }
            Err(e) => {
                log::warn!("cannot switch the line to {baud} baud: {e:?}");
                false
            }
        }
    }

    /// Verifies the received image and, if it holds up, leaves serving for its trial boot.
    fn commit(&mut self) {
        let Some(slots) = self.slots.as_deref_mut() else {
            return flash_unavailable(&mut self.wire);
        };
        let wire = &mut self.wire;
        let verifying = || {
            wire.send(&Event::FlashStage {
                stage: FlashStage::Verifying,
            })
        };
        match slots.commit(verifying) {
            Ok(slot) => {
                log::info!("flash: image in slot {slot} verified; trial boot");
                self.wire.send(&Event::FlashStage {
                    stage: FlashStage::Testing,
                });
                self.trial = Some(slot);
            }
            Err(e) => {
                log::warn!("flash: commit refused: {e}");
                self.wire.error(e.code(), &e.to_string());
            }
        }
    }

    fn end(&mut self, reason: EndReason, stats: ReplyStats) {
        self.wire.send(&Event::End { reason, stats });
    }

    /// Generates the reply to `turn`, streaming it, reading the line between tokens.
    fn reply(&mut self, turn: Turn<'_>) {
        let start = Instant::now();
        let frame_mode = self.wire.mode == Mode::Frame;
        let stops: Vec<&str> = turn.stops.iter().map(String::as_str).collect();
        let mut stop = match StopFilter::new(&stops) {
            Ok(stop) => stop,
            Err(e) => {
                self.report(&format!("bad stop sequences: {e}"), ErrorCode::BadSetting);
                return;
            }
        };
        let sentences = frame_mode && turn.sentences;
        if sentences {
            self.wire.send(&Event::SynthesizeStart);
        }
        let mut splitter = SentenceSplitter::<MAX_SENTENCE>::new();
        let status = self.status();
        let wire = &mut self.wire;
        let mut slots = self.slots.as_deref_mut();
        let mut first_token = None;
        let mut cancel_requested = false;
        // The line is read between slices of the prompt's prefill and between tokens.
        let result = self.chat.say(turn.text, &turn.options, &mut |progress| {
            if let Progress::Text(piece) = progress {
                first_token.get_or_insert_with(|| start.elapsed());
                let stopped = stop.push(piece, &mut |visible| {
                    show(wire, &mut splitter, sentences, visible);
                });
                if stopped {
                    return ControlFlow::Break(FinishReason::Stop);
                }
            }
            while let Some(byte) = wire.poll_byte() {
                cancel_requested |= take_busy(wire, slots.as_deref_mut(), byte, &status);
            }
            if cancel_requested || wire.stalled || wire.fatal.is_some() {
                return ControlFlow::Break(FinishReason::Cancelled);
            }
            ControlFlow::Continue(())
        });
        let generation = match result {
            Ok(generation) => generation,
            Err(e) => {
                let code = match e {
                    EngineError::PromptTooLong { .. } => ErrorCode::TooLong,
                    _ => ErrorCode::Engine,
                };
                log::warn!("reply failed: {e}");
                if sentences {
                    self.wire.send(&Event::SynthesizeStop);
                }
                self.report(&e.to_string(), code);
                return;
            }
        };
        let mut reason = match generation.finish {
            FinishReason::Eos => EndReason::Eos,
            FinishReason::Length => EndReason::Length,
            FinishReason::Stop => EndReason::Stop,
            FinishReason::Cancelled => EndReason::Cancelled,
        };
        if matches!(reason, EndReason::Eos | EndReason::Length) {
            stop.finish(&mut |visible| show(&mut self.wire, &mut splitter, sentences, visible));
            // A stop sequence inside a longer one that never completed is cut only now.
            if stop.stopped() {
                reason = EndReason::Stop;
            }
        }
        if sentences {
            if reason != EndReason::Cancelled {
                splitter.finish(&mut |sentence| send_sentence(&mut self.wire, sentence));
            }
            self.wire.send(&Event::SynthesizeStop);
        }
        let elapsed = start.elapsed();
        let stats = ReplyStats {
            prompt_tokens: generation.stats.prompt_tokens as u32,
            generated_tokens: generation.stats.generated_tokens as u32,
            time_to_first_token_ms: millis(first_token.unwrap_or(elapsed)),
            total_ms: millis(elapsed),
            decode_tokens_per_second: generation.stats.decode_tokens_per_second as f32,
            context_used: self.chat.context_used() as u32,
            turns_dropped: self.chat.turns_dropped() as u32,
        };
        log::info!("reply: {}, {}", reason.as_str(), describe(&stats));
        self.last = Some(stats);
        self.replies += 1;
        if frame_mode {
            self.end(reason, stats);
            if cancel_requested {
                self.wire.send(&Event::CancelAck {
                    was_generating: true,
                });
            }
        } else if reason == EndReason::Cancelled {
            self.wire.text(" ^C\n");
        } else {
            self.wire.text("\n");
        }
    }

    /// A failed request: an error line, or an error event and the end of the reply.
    fn report(&mut self, detail: &str, code: ErrorCode) {
        if self.wire.mode == Mode::Frame {
            self.wire.error(code, detail);
            self.end(EndReason::Error, ReplyStats::default());
        } else {
            self.wire.text(&format!("error: {detail}\n"));
        }
    }
}

/// Shows visible reply text: on the terminal, or as token events (and sentences).
fn show<P: Read + Write + ReadReady>(
    wire: &mut Wire<P>,
    splitter: &mut SentenceSplitter<MAX_SENTENCE>,
    sentences: bool,
    text: &str,
) {
    if wire.mode != Mode::Frame {
        wire.text(text);
        return;
    }
    let mut rest = text;
    while !rest.is_empty() {
        let piece: protocol::BoundedText<MAX_DELTA> = protocol::truncated(rest);
        rest = &rest[piece.len()..];
        wire.send(&Event::Token { text: piece });
    }
    if sentences {
        splitter.push(text, &mut |sentence| send_sentence(wire, sentence));
    }
}

fn send_sentence<P: Read + Write + ReadReady>(wire: &mut Wire<P>, sentence: &str) {
    wire.send(&Event::SynthesizeChunk {
        text: protocol::truncated(sentence),
    });
}

/// Handles a byte that arrives during a reply; true when it asks to cancel. Flash transfers go
/// on during a reply (a commit waits for its end).
fn take_busy<P: Read + Write + ReadReady>(
    wire: &mut Wire<P>,
    slots: Option<&mut SlotDir>,
    byte: u8,
    status: &Status,
) -> bool {
    wire.stalled = false;
    if wire.mode != Mode::Frame {
        // People cancel with Ctrl-C; anything else typed during a reply is ignored.
        return byte == 0x03;
    }
    match wire.decode(byte) {
        None => false,
        Some(Ok(Request::Cancel)) => true,
        Some(Ok(Request::Status)) => {
            wire.send(&Event::Status(*status));
            false
        }
        Some(Ok(
            flash @ (Request::FlashBegin(_) | Request::FlashChunk(_) | Request::FlashAbort),
        )) => {
            take_flash(wire, slots, flash);
            false
        }
        Some(Ok(_)) => {
            wire.error(ErrorCode::Busy, "a reply is in progress: cancel it first");
            false
        }
        Some(Err(e)) => {
            wire.report_bad_frame(e);
            false
        }
    }
}

/// Answers a flash request other than a commit.
fn take_flash<P: Read + Write + ReadReady>(
    wire: &mut Wire<P>,
    slots: Option<&mut SlotDir>,
    request: Request,
) {
    let Some(slots) = slots else {
        return flash_unavailable(wire);
    };
    let result = match request {
        Request::FlashBegin(begin) => slots.begin(&begin).map(|position| {
            log::info!(
                "flash: receiving {} bytes from offset {}",
                begin.image_len,
                position.offset
            );
            Event::FlashNext(position)
        }),
        Request::FlashChunk(chunk) => match slots.chunk(&chunk) {
            Ok(ChunkReply::Next(position)) => Ok(Event::FlashNext(position)),
            Ok(ChunkReply::Quiet) => return,
            Err(e) => {
                log::debug!("flash: {e}");
                wire.error(e.code(), &e.to_string());
                // Where to go on from (the start of the damaged block).
                match slots.position() {
                    Some(position) => Ok(Event::FlashNext(position)),
                    None => return,
                }
            }
        },
        Request::FlashAbort => slots.abort().map(|()| Event::Done),
        _ => return,
    };
    match result {
        Ok(event) => wire.send(&event),
        Err(e) => {
            log::warn!("flash: {e}");
            wire.error(e.code(), &e.to_string());
        }
    }
}

fn flash_unavailable<P: Read + Write + ReadReady>(wire: &mut Wire<P>) {
    wire.error(
        ErrorCode::FlashUnavailable,
        "this device serves a fixed --model file and has no slots to flash",
    );
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
