//! The thin driver around `ember_core::device::Device`: it feeds the device the port's bytes
//! and its deadlines, writes what it sends, and runs the replies, flash requests and rate
//! switches it asks for on a [`ChatSession`], the slots and the port. The device decides.

use embedded_hal::delay::DelayNs;
use embedded_io::{Error as _, ErrorKind};
use ember_core::device::{Activity, Device, Model, Output, ReplyRequest};
use ember_core::flash::Slot;
use ember_core::protocol::{EndReason, Request};
use ember_engine::{ChatSession, FinishReason, Progress};
use ember_flash::SlotDir;
use ember_serial::{Port, TtyError};
use ember_signals::POLL_INTERVAL;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

/// The device's model slots, if it can be flashed.
type Slots<'s> = Option<&'s mut SlotDir>;

/// How serving ends: the slot a flashed image waits in for its trial boot, or the port's failure.
pub type Exit = Result<Slot, TtyError>;

/// A board's status LED and cancel button: shown what the device does at a time, it says
/// whether the button was pressed (see `ember_signals::Panel::update`).
pub type Panel = Box<dyn FnMut(Activity, Duration) -> bool + Send>;

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
}

impl<P: Port, D: DelayNs> Driver<P, D> {
    /// Drives `device` (its time zero is now) on `port`, waiting through `delay`, showing what
    /// it does on the board's `panel` and taking the panel's button presses.
    pub fn new(port: P, delay: D, device: Device, panel: Option<Panel>) -> Self {
        let (start, input, fatal) = (Instant::now(), Vec::new(), None);
        Driver {
            port,
            delay,
            device,
            start,
            input,
            fatal,
            panel,
        }
    }

    /// Updates the board's signals; a press of the button stops the reply in progress.
    fn signals(&mut self) {
        let now = self.now();
        if let Some(panel) = &mut self.panel
            && panel(self.device.activity(now), now)
        {
            self.device.interrupt();
        }
    }

    /// Serves another model (after a flash) on the same line.
    pub fn load(&mut self, model: Model) -> &mut Self {
        self.device.load(model, self.now());
        self
    }

    /// The device's time.
    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// Serves `chat` (and, with `slots`, flashing) until the port fails (a hang-up) or a flashed
    /// image waits in a slot for its trial boot (returned).
    pub fn serve(&mut self, chat: &mut ChatSession<'_>, mut slots: Slots<'_>) -> Exit {
        loop {
            if let Some(exit) = self.step(Some(&mut *chat), slots.as_deref_mut()) {
                return exit;
            }
        }
    }

    /// Carries out what the device asks and feeds it what has arrived; then, between replies,
    /// waits for bytes or the device's next deadline. During a reply (`chat` is `None`: it is
    /// busy generating) it returns once nothing has arrived, or when the reply must end.
    fn step(
        &mut self,
        mut chat: Option<&mut ChatSession<'_>>,
        mut slots: Slots<'_>,
    ) -> Option<Exit> {
        self.signals();
        loop {
            while let Some(output) = self.device.poll() {
                match (output, chat.as_deref_mut()) {
                    (Output::Write(bytes), _) => self.write(&bytes),
                    (Output::Reply(request), Some(chat)) => {
                        self.reply(chat, &request, slots.as_deref_mut())
                    }
                    (Output::Reset, Some(chat)) => chat.reset(),
                    (Output::SetSystem(system), Some(chat)) => chat.set_system(system),
                    (Output::Remember { role, text }, Some(chat)) => chat.remember(role, &text),
                    (Output::Flash(request), _) => {
                        if let Some(slot) = self.flash(slots.as_deref_mut(), &request) {
                            return Some(Ok(slot));
                        }
                    }
                    (Output::SwitchBaud(baud), _) => {
                        let switched = self.port.switch_baud(baud, &mut self.delay);
                        if let Err(e) = &switched {
                            log::warn!("cannot switch the line to {baud} baud: {e}");
                        }
                        self.device.baud_switched(self.now(), switched.is_ok());
                    }
                    (other, None) => log::error!("the device asked for {other:?} during a reply"),
                }
            }
            let replying = chat.is_none();
            if !replying && let Some(e) = self.fatal.take() {
                return Some(Err(e));
            }
            if replying && (self.fatal.is_some() || self.device.halt().is_some()) {
                return None;
            }
            if !self.input.is_empty() {
                let taken = self.device.receive(self.now(), &self.input);
                self.input.drain(..taken);
                continue;
            }
            let deadline = self
                .device
                .deadline()
                .map(|at| at.saturating_sub(self.now()));
            let poll = self.panel.as_ref().map(|_| POLL_INTERVAL);
            let timeout = if replying {
                Some(Duration::ZERO)
            } else {
                deadline.into_iter().chain(poll).min()
            };
            let mut buf = [0u8; 256];
            match self.port.wait_readable(timeout) {
                Ok(true) => match self.port.read(&mut buf) {
                    Ok(n) => self.input.extend_from_slice(&buf[..n]),
                    Err(e) => self.fatal = Some(e),
                },
                // During a reply too: a probe that got no greeting gives back its bytes.
                Ok(false) => self.device.handle_timeout(self.now()),
                Err(e) => self.fatal = Some(e),
            }
            if !replying {
                return self.fatal.take().map(Err);
            } else if self.input.is_empty() {
                return None;
            }
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        match self.port.write_all(bytes) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::TimedOut => self.device.write_stalled(),
            Err(e) => self.fatal = Some(e),
        }
    }

    /// Generates a reply, reading the line between slices of the prefill and between tokens.
    fn reply(&mut self, chat: &mut ChatSession<'_>, request: &ReplyRequest, mut slots: Slots) {
        let end = chat.reply(request, &mut |progress| {
            if let Progress::Text(piece) = progress {
                self.device.reply_text(self.now(), piece);
            }
            // Serving cannot end during a reply: a commit waits for its end.
            let _ = self.step(None, slots.as_deref_mut());
            match (self.device.halt(), &self.fatal) {
                (Some(EndReason::Stop), _) => ControlFlow::Break(FinishReason::Stop),
                (Some(_), _) | (None, Some(_)) => ControlFlow::Break(FinishReason::Cancelled),
                (None, None) => ControlFlow::Continue(()),
            }
        });
        self.device.reply_ended(self.now(), end);
    }

    /// Carries out a flash request on the slots, sending each answer as it comes (a commit's
    /// stages go out before its long steps); the slot a committed image waits in, if any.
    fn flash(&mut self, slots: Slots<'_>, request: &Request) -> Option<Slot> {
        // (The device refuses flash requests itself when it has no slots.)
        slots?.answer(request, &mut |event| {
            self.device.send(event);
            while let Some(output) = self.device.poll() {
                match output {
                    Output::Write(bytes) => self.write(&bytes),
                    other => log::error!("the device asked for {other:?} during a flash request"),
                }
            }
        })
    }
}
