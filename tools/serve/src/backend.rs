//! What every front end talks to: one Ember device — a board running `emberd` on a serial port,
//! or an image served in this process by the same device code over a line in memory — and one
//! worker thread that runs its replies one at a time, taken from a bounded queue.
//!
//! The device holds one conversation; the front ends' requests each carry a whole one. The
//! worker remembers what the device holds (the system prompt and the finished turns, as the
//! device's own events told them): a conversation that extends it by one user message sends
//! only that message; any other first sets the system prompt, sends the earlier messages as
//! history (`Message` requests: the device keeps them without generating) and then the new one.

use ember_boot::{Boot, Defaults, Source};
use ember_core::device::{Device, LineConfig};
use ember_core::protocol::{
    self, ChatOptions, ChatRequest, EndReason, ErrorCode, Event, ReplyStats, Request, Role,
};
use ember_serial::{Client, ClientError, MemoryLine, Port, Recovery, describe_error};
use emberd::driver::Driver;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc as std_mpsc};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How long a device on a serial port has to answer the greeting (per attempt).
const HELLO_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the device in this process has to load its image and answer the greeting.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// How often a device is greeted again after a failure before the line is opened again.
const GREETINGS: u32 = 4;
/// How long to wait for the answer to `SetSystem` before sending it again.
const ANSWER_WAIT: Duration = Duration::from_secs(2);

/// A conversation as a front end has it: the system prompt (`None`: the device's), the
/// finished turns (user message, reply) and the user's new message.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Conversation {
    /// The system prompt; `None` keeps the device's.
    pub system: Option<String>,
    /// Earlier turns, oldest first: (user message, assistant reply).
    pub turns: Vec<(String, String)>,
    /// The message to reply to.
    pub user: String,
}

/// A reply to ask for: the conversation and the request's options (unset ones keep the
/// device's settings; `sentences` also sends the reply as sentences).
#[derive(Debug, Clone)]
pub struct Ask {
    /// The conversation to reply in.
    pub conversation: Conversation,
    /// Per-reply settings.
    pub options: ChatOptions,
}

/// A piece of a reply, in the order the device sent it.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    /// More of the reply's text.
    Text(String),
    /// A whole sentence (when `sentences` was asked for).
    Sentence(String),
    /// The reply ended.
    End(Ending),
    /// The reply failed; nothing follows.
    Failed(Failure),
}

/// How a reply ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ending {
    /// Why (`None`: the device finished the reply but its end was lost on the line).
    pub reason: Option<EndReason>,
    /// The device's counts and timings (zero when the end was lost).
    pub stats: ReplyStats,
}

/// Why a reply failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Failure {
    /// The device refused the request: a setting out of range, a message that does not fit
    /// its context, a template that refuses the conversation, a model that failed.
    #[error("{}", describe_error(*code, detail))]
    Refused {
        /// The device's error code.
        code: ErrorCode,
        /// What it said.
        detail: String,
    },
    /// The device stopped answering, or its line failed.
    #[error("the device is not answering: {0}")]
    Unavailable(String),
}

/// The queue of replies is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy {
    /// When to try again: the replies queued times their mean time so far.
    pub retry_after: Duration,
}

/// The device and model behind the backend.
#[derive(Debug, Clone)]
pub struct Info {
    /// The model's name (from its image).
    pub model_name: String,
    /// Context positions the device serves.
    pub context_length: u32,
    /// Where the device is: `image PATH` or `device on PORT`.
    pub location: String,
}

/// A reply in progress. Dropping it (or [`Reply::cancel`]) cancels it on the device.
#[derive(Debug)]
pub struct Reply {
    pieces: mpsc::UnboundedReceiver<Piece>,
    cancel: Arc<AtomicBool>,
}

impl Reply {
    /// The next piece; `None` after the last one.
    pub async fn next(&mut self) -> Option<Piece> {
        self.pieces.recv().await
    }

    /// Asks the device to stop the reply; pieces already sent still arrive, then its end.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// One reply to run: what to ask, where its pieces go and whether it is still wanted.
struct Job {
    ask: Ask,
    pieces: mpsc::UnboundedSender<Piece>,
    cancel: Arc<AtomicBool>,
}

impl Job {
    /// Nobody waits for the reply any more.
    fn abandoned(&self) -> bool {
        self.cancel.load(Ordering::SeqCst) || self.pieces.is_closed()
    }
}

/// The device, shared by the front ends.
#[derive(Clone)]
pub struct Backend {
    jobs: mpsc::Sender<Job>,
    info: Arc<Info>,
    queue: usize,
    /// Mean milliseconds per reply so far (0: none yet).
    mean_ms: Arc<AtomicU64>,
}

/// Settings of the device `ember serve --model` runs in this process.
#[derive(Debug, Clone)]
pub struct LocalDevice {
    /// The Ember image.
    pub image: PathBuf,
    /// Engine threads.
    pub threads: usize,
    /// Context positions (default: the model's).
    pub context: Option<usize>,
    /// Replies' settings unless a request changes them, and the system prompt.
    pub defaults: Defaults,
}

/// Why the backend could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The device did not answer.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The image could not be served.
    #[error("cannot serve {image}: {reason}")]
    Image {
        /// The image.
        image: PathBuf,
        /// Why.
        reason: String,
    },
    /// A thread could not start.
    #[error("cannot start a thread: {0}")]
    Thread(#[from] std::io::Error),
}

impl Backend {
    /// Connects to the device running `emberd` on the serial `port` at `baud`; at most `queue`
    /// replies wait while one runs.
    pub fn device(port: &Path, baud: u32, queue: usize) -> Result<Backend, StartError> {
        let client = Client::connect(port, baud, HELLO_TIMEOUT)?;
        let location = format!("device on {}", port.display());
        let port = port.to_owned();
        let reconnect = Box::new(move || Client::connect(&port, baud, HELLO_TIMEOUT));
        Backend::start(client, Some(reconnect), location, queue)
    }

    /// Serves `local.image` in this process: the device's own code (`emberd`'s driver and
    /// state machine) on a line in memory. At most `queue` replies wait while one runs.
    pub fn local(local: LocalDevice, queue: usize) -> Result<Backend, StartError> {
        let (device_end, host_end) = MemoryLine::pair(115_200);
        let (failed, failure) = std_mpsc::channel();
        let image = local.image.clone();
        std::thread::Builder::new()
            .name("ember-device".into())
            .spawn(move || {
                let reason = run_device(local, device_end);
                let _ = failed.send(reason);
            })?;
        let client = match Client::over(host_end, BOOT_TIMEOUT) {
            Ok(client) => client,
            Err(e) => {
                let reason = failure
                    .recv_timeout(Duration::from_secs(5))
                    .unwrap_or_else(|_| e.to_string());
                return Err(StartError::Image { image, reason });
            }
        };
        let location = format!("image {}", image.display());
        Backend::start(client, None, location, queue)
    }

    fn start<P: Port + Send + 'static>(
        client: Client<P>,
        reconnect: Option<Reconnect<P>>,
        location: String,
        queue: usize,
    ) -> Result<Backend, StartError> {
        let hello = client.hello();
        let info = Arc::new(Info {
            model_name: hello.model_name.to_string(),
            context_length: hello.context_length,
            location,
        });
        let (jobs, waiting) = mpsc::channel(queue.max(1));
        let mean_ms = Arc::new(AtomicU64::new(0));
        let link = Link {
            client: Some(client),
            reconnect,
            held: None,
            system: None,
            stale: false,
        };
        let mean = mean_ms.clone();
        std::thread::Builder::new()
            .name("ember-replies".into())
            .spawn(move || work(link, waiting, mean))?;
        Ok(Backend {
            jobs,
            info,
            queue: queue.max(1),
            mean_ms,
        })
    }

    /// The device and its model.
    pub fn info(&self) -> &Info {
        &self.info
    }

    /// Queues a reply; [`Busy`] when `queue` replies already wait.
    pub fn submit(&self, ask: Ask) -> Result<Reply, Busy> {
        let (pieces, receiver) = mpsc::unbounded_channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let job = Job {
            ask,
            pieces,
            cancel: cancel.clone(),
        };
        match self.jobs.try_send(job) {
            Ok(()) => Ok(Reply {
                pieces: receiver,
                cancel,
            }),
            Err(_) => {
                let mean = self.mean_ms.load(Ordering::Relaxed).max(1000);
                let wait = mean * (self.queue as u64 + 1);
                Err(Busy {
                    retry_after: Duration::from_millis(wait.div_ceil(1000) * 1000),
                })
            }
        }
    }
}

/// Runs the device on its end of the memory line until the line closes; returns why it stopped.
fn run_device(local: LocalDevice, line: MemoryLine) -> String {
    let boot = Boot {
        board: None,
        context: local.context,
        threads: local.threads,
    };
    let config = LineConfig {
        baud: 115_200,
        max_baud: 115_200,
        rates: &ember_serial::STANDARD_BAUDS,
        // The host in this process never leaves frame mode.
        idle_timeout: None,
    };
    let mut source = Source::Image(local.image);
    let mut line = Some(line);
    let mut driver: Option<Driver<MemoryLine, ember_signals::Delay>> = None;
    let error: DeviceStop = boot.run(
        &mut source,
        &local.defaults,
        Instant::now(),
        |chat, model, _notice, slots| {
            let driver = match &mut driver {
                Some(driver) => driver.load(model),
                None => {
                    let line = line.take().ok_or(DeviceStop::LineClosed)?;
                    let device = Device::new(config.clone(), model, Duration::ZERO);
                    driver.insert(Driver::new(line, ember_signals::Delay, device, None))
                }
            };
            driver
                .serve(chat, slots)
                .map_err(|_| DeviceStop::LineClosed)
        },
    );
    error.to_string()
}

/// Why the device in this process stopped.
#[derive(Debug, thiserror::Error)]
enum DeviceStop {
    #[error(transparent)]
    Boot(#[from] ember_boot::BootError),
    #[error("the line to the device closed")]
    LineClosed,
}

/// Opens the line again after it failed.
type Reconnect<P> = Box<dyn FnMut() -> Result<Client<P>, ClientError> + Send>;

/// The conversation the device holds, as far as the worker knows it.
#[derive(Debug, Clone, PartialEq)]
struct Held {
    session: u32,
    system: Option<String>,
    turns: Vec<(String, String)>,
    /// `Message` requests the device has taken in this session.
    messages: u32,
}

/// The worker's side of the line.
struct Link<P: Port> {
    client: Option<Client<P>>,
    reconnect: Option<Reconnect<P>>,
    /// What the device holds, when known (`None`: replay the next conversation whole).
    held: Option<Held>,
    /// The system prompt this worker set (`None`: still the device's own).
    system: Option<Option<String>>,
    /// The last reply failed on the line: greet the device before the next.
    stale: bool,
}

/// Takes replies off the queue one at a time until every [`Backend`] is gone.
fn work<P: Port>(mut link: Link<P>, mut jobs: mpsc::Receiver<Job>, mean_ms: Arc<AtomicU64>) {
    let mut replies = 0u64;
    while let Some(job) = jobs.blocking_recv() {
        if job.abandoned() {
            continue;
        }
        let started = Instant::now();
        let piece = match link.reply(&job) {
            Ok(ending) => Piece::End(ending),
            Err(failure) => {
                log::warn!("reply failed: {failure}");
                Piece::Failed(failure)
            }
        };
        let _ = job.pieces.send(piece);
        let took = started.elapsed().as_millis() as u64;
        let mean = mean_ms.load(Ordering::Relaxed);
        mean_ms.store((mean * replies + took) / (replies + 1), Ordering::Relaxed);
        replies = (replies + 1).min(100);
    }
}

impl<P: Port> Link<P> {
    /// Runs `job`'s reply, sending its text and sentences as they come.
    fn reply(&mut self, job: &Job) -> Result<Ending, Failure> {
        if self.stale {
            self.recover()?;
        }
        let result = self.run(job);
        if let Err(Failure::Unavailable(_)) = &result {
            self.stale = true;
        }
        result
    }

    /// After a failure: greets the device again, or opens the line again when it does not
    /// answer. What the device holds is unknown after either.
    fn recover(&mut self) -> Result<(), Failure> {
        self.held = None;
        let greeted = self
            .client
            .as_mut()
            .is_some_and(|client| client.greet(HELLO_TIMEOUT, GREETINGS).is_ok());
        if !greeted {
            let Some(reconnect) = self.reconnect.as_mut() else {
                return Err(Failure::Unavailable(
                    "the device in this process does not answer".into(),
                ));
            };
            // The old line closes before the new one opens.
            self.client = None;
            self.client = Some(reconnect().map_err(unavailable)?);
            self.system = None;
        }
        self.stale = false;
        Ok(())
    }

    fn run(&mut self, job: &Job) -> Result<Ending, Failure> {
        let conversation = &job.ask.conversation;
        let held = self
            .held
            .take()
            .filter(|held| held.system == conversation.system && held.turns == conversation.turns);
        let Some(client) = self.client.as_mut() else {
            return Err(Failure::Unavailable("no line".into()));
        };
        let (session, mut messages) = match held {
            Some(held) => (held.session, held.messages),
            None => {
                let system = conversation.system.clone();
                // Without a system prompt the device's own stays, unless this worker set
                // another: then the model's default comes back.
                if system.is_some() || self.system.as_ref().is_some_and(Option::is_some) {
                    set_system(client, system.as_deref().unwrap_or_default())?;
                    self.system = Some(system);
                }
                let session = next_session();
                let mut messages = 0;
                for (user, assistant) in &conversation.turns {
                    if job.abandoned() {
                        return Ok(cancelled());
                    }
                    messages = remember(client, session, messages, Role::User, user)?;
                    messages = remember(client, session, messages, Role::Assistant, assistant)?;
                }
                (session, messages)
            }
        };
        // A message longer than a frame carries goes first as history; the chat joins its end.
        let (head, tail) = split_last(&conversation.user, protocol::MAX_TEXT);
        if !head.is_empty() {
            messages = remember(client, session, messages, Role::User, head)?;
        }
        if job.abandoned() {
            return Ok(cancelled());
        }
        let request = Request::Chat(ChatRequest {
            session,
            text: protocol::truncated(tail),
            options: job.ask.options.clone(),
        });
        let mut text = String::new();
        let mut refusal = None;
        let outcome = client
            .chat(
                &request,
                Recovery::default(),
                &mut || job.abandoned(),
                &mut |event| match event {
                    Event::Token { text: piece } => {
                        text.push_str(piece);
                        let _ = job.pieces.send(Piece::Text(piece.to_string()));
                    }
                    Event::SynthesizeChunk { text } => {
                        let _ = job.pieces.send(Piece::Sentence(text.to_string()));
                    }
                    Event::Error { code, detail, .. } => {
                        refusal.get_or_insert((*code, detail.to_string()));
                    }
                    _ => {}
                },
            )
            .map_err(unavailable)?;
        match outcome.end {
            Some((EndReason::Error, _)) => {
                let (code, detail) = refusal.unwrap_or((ErrorCode::Engine, String::new()));
                Err(Failure::Refused { code, detail })
            }
            Some((reason, stats)) => {
                // Only a reply the model ended itself, arrived whole and without stop
                // sequences, is known to be in the device's conversation exactly as sent.
                let exact = reason == EndReason::Eos
                    && outcome.lost_frames == 0
                    && job.ask.options.stop.is_empty();
                if exact {
                    let mut turns = conversation.turns.clone();
                    turns.push((conversation.user.clone(), text));
                    self.held = Some(Held {
                        session,
                        system: conversation.system.clone(),
                        turns,
                        messages,
                    });
                }
                Ok(Ending {
                    reason: Some(reason),
                    stats,
                })
            }
            None => Ok(Ending {
                reason: None,
                stats: ReplyStats::default(),
            }),
        }
    }
}

/// The ending of a reply abandoned before it started.
fn cancelled() -> Ending {
    Ending {
        reason: Some(EndReason::Cancelled),
        stats: ReplyStats::default(),
    }
}

fn unavailable(e: ClientError) -> Failure {
    Failure::Unavailable(e.to_string())
}

/// Sets the device's system prompt (empty: the model's); the conversation starts over.
fn set_system<P: Port>(client: &mut Client<P>, system: &str) -> Result<(), Failure> {
    let request = Request::SetSystem {
        text: protocol::truncated(system),
    };
    match client
        .ask(&request, ANSWER_WAIT, |e| {
            matches!(e, Event::Done | Event::Error { .. })
        })
        .map_err(unavailable)?
    {
        Event::Error { code, detail, .. } => Err(Failure::Refused {
            code,
            detail: detail.to_string(),
        }),
        _ => Ok(()),
    }
}

/// Sends `text` as history; returns the count of messages the device has taken.
fn remember<P: Port>(
    client: &mut Client<P>,
    session: u32,
    taken: u32,
    role: Role,
    text: &str,
) -> Result<u32, Failure> {
    client
        .remember(session, taken, role, text)
        .map_err(|e| match e {
            ClientError::Device { code, detail } => Failure::Refused { code, detail },
            e => unavailable(e),
        })
}

/// `text` cut before its last `limit` bytes (at a character boundary): (head, tail).
fn split_last(text: &str, limit: usize) -> (&str, &str) {
    let mut at = text.len().saturating_sub(limit);
    while !text.is_char_boundary(at) {
        at += 1;
    }
    text.split_at(at)
}

/// A session number unlike the last one.
fn next_session() -> u32 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let previous = LAST.fetch_add(1, Ordering::Relaxed);
    ((nanos ^ previous.rotate_left(17)) as u32).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_piece_of_a_long_message_is_whole_characters() {
        assert_eq!(split_last("short", 1024), ("", "short"));
        let text = "é".repeat(600);
        let (head, tail) = split_last(&text, 1024);
        assert!(tail.len() <= 1024 && !head.is_empty());
        assert_eq!(format!("{head}{tail}"), text);
    }
}
