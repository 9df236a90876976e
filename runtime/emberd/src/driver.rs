//! The thin driver around `ember_core::device::Device`: it reads the port into the device,
//! writes what the device sends, runs the replies it asks for on a [`ChatSession`], carries
//! out flash requests on the slots and rate switches on the port, and calls the device back at
//! its deadlines. Every decision is the device's.

use embedded_hal::delay::DelayNs;
use embedded_io::{Error as _, ErrorKind};
use ember_core::device::{Context, Device, Output, ReplyEnd, ReplyRequest};
use ember_core::flash::Slot;
use ember_core::protocol::{EndReason, ErrorCode, Request};
use ember_engine::{ChatSession, EngineError, FinishReason, GenerateOptions, Progress};
use ember_flash::SlotDir;
use ember_serial::{Port, TtyError};
use ember_signals::{POLL_INTERVAL, Status};
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

/// How long the driver waits, after the last byte at the old rate left, before it switches the
/// line's rate (USB serial adapters hold bytes for a while).
pub const SWITCH_PAUSE: Duration = ember_serial::SWITCH_PAUSE;

/// Why [`Driver::serve`] returned.
#[derive(Debug)]
pub enum Exit {
    /// The port failed (a hang-up).
    PortFailed(TtyError),
    /// A flashed image was verified and waits in this slot for its trial boot.
    Trial(Slot),
}

/// A board's status LED and cancel button: shown the device's status at a time, it says whether
/// the button was pressed (see `ember_signals::Panel::update`).
pub type Panel = Box<dyn FnMut(Status, Duration) -> bool + Send>;

/// The device on a port.
pub struct Driver<P: Port, D: DelayNs> {
    port: P,
    delay: D,
    /// The device's state machine.
    pub device: Device,
    start: Instant,
    /// Bytes read and not yet taken by the device.
    input: Vec<u8>,
    fatal: Option<TtyError>,
    panel: Option<Panel>,
    /// When a flash request was last carried out; whether the last reply failed.
    flashed: Option<Instant>,
    failed: bool,
}

impl<P: Port, D: DelayNs> Driver<P, D> {
    /// Drives `device` on `port`; `start` is the device's time zero; waits go through `delay`.
    pub fn new(port: P, delay: D, device: Device, start: Instant) -> Self {
        Driver {
            port,
            delay,
            device,
            start,
            input: Vec::new(),
            fatal: None,
            panel: None,
            flashed: None,
            failed: false,
        }
    }

    /// Shows the device's status on the board's `panel` and takes its button's presses.
    pub fn with_panel(mut self, panel: Panel) -> Self {
        self.panel = Some(panel);
        self
    }

    /// Updates the board's signals; a press of the button stops the reply in progress.
    fn signals(&mut self) {
        let now = self.now();
        let Some(panel) = &mut self.panel else {
            return;
        };
        let recent = |t: Option<Instant>| t.is_some_and(|t| t.elapsed() < Duration::from_secs(2));
        let status = match () {
            _ if self.device.replying() => Status::Generating,
            _ if recent(self.flashed) => Status::Flashing,
            _ if self.failed => Status::Error,
            _ => Status::Ready,
        };
        if panel(status, now) {
            self.device.interrupt();
        }
    }

    /// The device's time.
    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// Serves `chat` (and, with `slots`, flashing) until the port fails or a flashed image
    /// waits for its trial boot.
    pub fn serve(&mut self, chat: &mut ChatSession<'_>, mut slots: Option<&mut SlotDir>) -> Exit {
        loop {
            while let Some(output) = self.device.poll() {
                match output {
                    Output::Reply(request) => self.reply(chat, &request, slots.as_deref_mut()),
                    Output::Reset => chat.reset(),
                    Output::SetSystem(system) => chat.set_system(system),
                    Output::Flash(request) => {
                        if let Some(slot) = self.flash(slots.as_deref_mut(), &request) {
                            return Exit::Trial(slot);
                        }
                    }
                    other => self.carry_out(other, slots.as_deref_mut()),
                }
                if let Some(e) = self.fatal.take() {
                    return Exit::PortFailed(e);
                }
            }
            if !self.input.is_empty() {
                let taken = self.device.receive(self.now(), &self.input);
                self.input.drain(..taken);
                continue;
            }
            self.signals();
            let mut timeout = self
                .device
                .deadline()
                .map(|at| at.saturating_sub(self.now()));
            if self.panel.is_some() {
                timeout = Some(timeout.map_or(POLL_INTERVAL, |t| t.min(POLL_INTERVAL)));
            }
            match self.port.wait_readable(timeout) {
                Ok(true) => self.fill(),
                Ok(false) => self.device.handle_timeout(self.now()),
                Err(e) => return Exit::PortFailed(e),
            }
            if let Some(e) = self.fatal.take() {
                return Exit::PortFailed(e);
            }
        }
    }

    /// Carries out what needs neither the conversation nor a commit.
    fn carry_out(&mut self, output: Output, slots: Option<&mut SlotDir>) {
        match output {
            Output::Write(bytes) => self.write(&bytes),
            // A commit waits for the reply's end (the device answers Busy).
            Output::Flash(request) => drop(self.flash(slots, &request)),
            Output::SwitchBaud(baud) => {
                let switched = self
                    .port
                    .drain()
                    .and_then(|()| {
                        // The last bytes may still sit in a USB adapter: let them go.
                        self.delay.delay_ms(SWITCH_PAUSE.as_millis() as u32);
                        self.port.set_baud(baud)
                    })
                    .inspect_err(|e| log::warn!("cannot switch the line to {baud} baud: {e}"));
                self.device.baud_switched(self.now(), switched.is_ok());
            }
            other => log::error!("the device asked for {other:?} during a reply"),
        }
    }

    /// Reads what has arrived.
    fn fill(&mut self) {
        let mut buf = [0u8; 256];
        match self.port.read(&mut buf) {
            Ok(n) => self.input.extend_from_slice(&buf[..n]),
            Err(e) => self.fatal = Some(e),
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        match self.port.write_all(bytes) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::TimedOut => self.device.write_stalled(),
            Err(e) => self.fatal = Some(e),
        }
    }

    /// Writes what the device has to send, and hands it what arrived in the meantime (unless
    /// the reply is ending anyway).
    fn pump(&mut self, mut slots: Option<&mut SlotDir>) {
        self.signals();
        loop {
            while let Some(output) = self.device.poll() {
                self.carry_out(output, slots.as_deref_mut());
            }
            if self.fatal.is_some() || self.device.halt().is_some() {
                return;
            }
            if !self.input.is_empty() {
                let taken = self.device.receive(self.now(), &self.input);
                self.input.drain(..taken);
                continue;
            }
            match self.port.read_ready() {
                Ok(true) => self.fill(),
                Ok(false) => return,
                Err(e) => self.fatal = Some(e),
            }
        }
    }

    /// Generates a reply, reading the line between slices of the prefill and between tokens.
    fn reply(
        &mut self,
        chat: &mut ChatSession<'_>,
        request: &ReplyRequest,
        mut slots: Option<&mut SlotDir>,
    ) {
        let options = GenerateOptions {
            max_tokens: request.max_tokens as usize,
            sampling: request.sampling,
        };
        let result = chat.say(&request.text, &options, &mut |progress| {
            if let Progress::Text(piece) = progress {
                self.device.reply_text(self.now(), piece);
            }
            self.pump(slots.as_deref_mut());
            match (self.device.halt(), &self.fatal) {
                (Some(EndReason::Stop), _) => ControlFlow::Break(FinishReason::Stop),
                (Some(_), _) | (None, Some(_)) => ControlFlow::Break(FinishReason::Cancelled),
                (None, None) => ControlFlow::Continue(()),
            }
        });
        let end = match result {
            Ok(generation) => ReplyEnd::Finished {
                reason: match generation.finish {
                    FinishReason::Eos => EndReason::Eos,
                    FinishReason::Length => EndReason::Length,
                    FinishReason::Stop => EndReason::Stop,
                    FinishReason::Cancelled => EndReason::Cancelled,
                },
                prompt_tokens: generation.stats.prompt_tokens as u32,
                generated_tokens: generation.stats.generated_tokens as u32,
                decode_tokens_per_second: generation.stats.decode_tokens_per_second as f32,
                turns_dropped: chat.turns_dropped() as u32,
                context: Context {
                    turns: chat.turns().len() as u32,
                    used: chat.context_used() as u32,
                },
            },
            Err(e) => ReplyEnd::Failed {
                code: match e {
                    EngineError::PromptTooLong { .. } => ErrorCode::TooLong,
                    _ => ErrorCode::Engine,
                },
                detail: e.to_string(),
            },
        };
        self.failed = matches!(end, ReplyEnd::Failed { .. });
        self.device.reply_ended(self.now(), end);
    }

    /// Carries out a flash request on the slots, sending each answer as it comes (a commit's
    /// stages go out before its long steps); the slot a committed image waits in, if any.
    fn flash(&mut self, slots: Option<&mut SlotDir>, request: &Request) -> Option<Slot> {
        let Some(slots) = slots else {
            log::error!("a flash request without slots");
            return None;
        };
        self.flashed = Some(Instant::now());
        slots.answer(request, &mut |event| {
            self.device.send(event);
            while let Some(output) = self.device.poll() {
                self.carry_out(output, None);
            }
        })
    }
}
