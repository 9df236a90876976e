//! The host side of frame mode: open the line, say hello, send requests, read events.

use crate::port::Port;
use crate::tty::{Tty, TtyError};
use ember_core::device::IDLE_TIMEOUT;
use ember_core::frame::{DELIMITER, FrameDecoder};
use ember_core::protocol::{
    self, EndReason, ErrorCode, Event, FrameWriter, Hello, MAX_FRAME, PROTOCOL_VERSION, ReplyStats,
    Request,
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
        };
        client.greet(timeout, HELLO_ATTEMPTS)?;
        Ok(client)
    }

    /// Sends `0x00` + `Hello` up to `attempts` times, each waiting `timeout` for the greeting.
    fn greet(&mut self, timeout: Duration, attempts: u32) -> Result<(), ClientError> {
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
                    if matches!(event, Event::End { .. }) {
                        self.quiet_since = Some(Instant::now());
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
    pub fn goodbye(mut self, timeout: Duration) -> Result<P, ClientError> {
        self.send(&Request::Goodbye)?;
        self.until(timeout, |e| matches!(e, Event::Goodbye), &mut |_| {})?;
        Ok(self.tty)
    }

    /// The line, as it is (in frame mode, unless the device left it).
    pub fn into_port(self) -> P {
        self.tty
    }
}

/// A device error as one line for people.
pub fn describe_error(code: ErrorCode, detail: &str) -> String {
    format!("device error ({code:?}): {detail}")
}
