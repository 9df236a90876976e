//! The messages of frame mode: what a program on the host and the device say to each other.
//!
//! Each message is one frame (see [`crate::frame`]) whose payload is the message encoded with
//! postcard. Every type here has a bounded size (`heapless` strings), so both sides decode
//! without allocating. `docs/PROTOCOL.md` describes the encoding byte by byte.
//!
//! The host sends [`Request`]s; the device answers with [`Event`]s. Frame mode starts when the
//! device, in line mode, receives a `0x00` byte followed by a frame holding
//! [`Request::Hello`]; it answers [`Event::Hello`] and stays in frame mode until
//! [`Request::Goodbye`].

use crate::flash::{BlockEncoding, FlashOutcome, MAX_CHUNK, Position, Slot};
use crate::frame::{self, FrameError};
use core::fmt;
use heapless::{String, Vec};
use serde::{Deserialize, Serialize};

/// The protocol version this core speaks. A peer with another version must say goodbye.
pub const PROTOCOL_VERSION: u16 = 4;
/// Most encoded bytes in one frame, delimiter included, in either direction.
pub const MAX_FRAME: usize = 2048;
/// Most bytes of text in a chat request, a message or a system prompt.
pub const MAX_TEXT: usize = 1024;
/// Most bytes of text in one [`Event::Token`].
pub const MAX_DELTA: usize = 128;
/// Most bytes of text in one [`Event::SynthesizeChunk`].
pub const MAX_SENTENCE: usize = 256;
/// Most bytes of an error's detail.
pub const MAX_DETAIL: usize = 128;
/// Most bytes of a model name.
pub const MAX_NAME: usize = 64;
/// Most stop sequences per request.
pub const MAX_STOPS: usize = 4;
/// Most bytes of one stop sequence.
pub const MAX_STOP_BYTES: usize = 32;

/// What the host asks of the device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)] // no `Box` without alloc; one request is held at a time
pub enum Request {
    /// Opens frame mode (or re-opens it); the device answers [`Event::Hello`].
    Hello {
        /// The host's [`PROTOCOL_VERSION`].
        protocol_version: u16,
    },
    /// Adds a user message to the conversation and generates the reply (a user message held
    /// from [`Request::Message`] is joined with it first).
    Chat(ChatRequest),
    /// Stops the reply in progress; always answered with [`Event::CancelAck`].
    Cancel,
    /// Forgets the conversation (the system prompt stays); answered with [`Event::Done`].
    Reset,
    /// Replaces the system prompt (empty: the model's default) and forgets the conversation;
    /// answered with [`Event::Done`].
    SetSystem {
        /// The new system prompt.
        text: String<MAX_TEXT>,
    },
    /// Asks for [`Event::Status`].
    Status,
    /// Leaves frame mode: the device answers [`Event::Goodbye`] and returns to line mode.
    Goodbye,
    /// Starts (or resumes) sending an image into the device's other slot; answered with
    /// [`Event::FlashNext`] (where to start) or an [`Event::Error`] refusing the image.
    FlashBegin(FlashBegin),
    /// A piece of one block of the image; answered with [`Event::FlashNext`].
    FlashChunk(FlashChunk),
    /// Every block is sent: verify the image, boot it on trial, and switch to it if its
    /// self-test passes. Answered with [`Event::FlashStage`]s, then [`Event::FlashDone`] or an
    /// [`Event::Error`].
    FlashCommit,
    /// Forgets the image being received; answered with [`Event::Done`].
    FlashAbort,
    /// Asks the device to switch the line to `baud` (at most [`Hello::max_baud`]). The device
    /// answers [`Event::BaudSwitch`] at the old rate, then switches and waits for a frame at the
    /// new rate; if none arrives within [`BAUD_TRIAL_MS`] it returns to the old rate. The rate
    /// lasts until [`Request::Goodbye`], which returns the line to the device's own rate.
    SetBaud {
        /// The new rate.
        baud: u32,
    },
    /// Adds a message to the conversation's history without generating (a host rebuilding a
    /// conversation it holds); answered with [`Event::Done`], or an [`Event::Error`] with
    /// [`ErrorCode::OutOfOrder`]. See [`MessageRequest`] for the rules.
    Message(MessageRequest),
}

/// How long a device waits for a frame at a new baud rate before it returns to the old one.
pub const BAUD_TRIAL_MS: u32 = 2000;

/// What the host declares before sending an image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlashBegin {
    /// Length of the whole image in bytes.
    pub image_len: u64,
    /// SHA-256 of the whole image (uncompressed).
    pub sha256: [u8; 32],
    /// The image's 64-byte header (magic, version, manifest length and hash, file length), so
    /// the device can refuse an image it cannot use before receiving it.
    pub header: Vec<u8, 64>,
    /// An ed25519 signature of [`crate::flash::signed_message`], if the image was signed.
    pub signature: Option<Signature>,
}

/// An ed25519 signature (64 bytes, as two halves for the encoding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// The first 32 bytes (R).
    pub r: [u8; 32],
    /// The last 32 bytes (S).
    pub s: [u8; 32],
}

impl Signature {
    /// The signature from its 64 bytes.
    pub fn from_bytes(bytes: &[u8; 64]) -> Self {
        let mut r = [0u8; 32];
        let mut s = [0u8; 32];
        r.copy_from_slice(&bytes[..32]);
        s.copy_from_slice(&bytes[32..]);
        Signature { r, s }
    }

    /// Its 64 bytes.
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(&self.r);
        out[32..].copy_from_slice(&self.s);
        out
    }
}

/// A piece of one block of an image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlashChunk {
    /// Image offset of the block (a multiple of [`crate::flash::FLASH_BLOCK`]).
    pub offset: u64,
    /// Where `data` starts in the encoded block.
    pub at: u32,
    /// How the block is encoded.
    pub encoding: BlockEncoding,
    /// Length of the whole encoded block.
    pub encoded_len: u32,
    /// CRC-32 of `data` (as in frames).
    pub crc32: u32,
    /// The bytes.
    pub data: Vec<u8, MAX_CHUNK>,
}

/// A user message and how to answer it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ChatRequest {
    /// Names the conversation; a request with another session than the last one starts a new
    /// conversation (the system prompt stays).
    pub session: u32,
    /// The user's message (appended to a user message held from [`Request::Message`]s, if
    /// any: see [`MessageRequest`]).
    pub text: String<MAX_TEXT>,
    /// Settings for this reply; unset fields keep the device's current settings.
    pub options: ChatOptions,
}

/// A message for the conversation's history, taken without generating a reply.
///
/// The device counts the messages it takes in a conversation (from its start: a new session,
/// [`Request::Reset`], [`Request::SetSystem`]); a [`Request::Chat`]'s reply neither resets nor
/// advances the count. `index` is the count the host expects: equal, the message is taken;
/// lower, it is a copy of one already taken (its answer was lost) and is answered
/// [`Event::Done`] without changing anything; higher, a message was lost on the line and the
/// device answers [`ErrorCode::OutOfOrder`], changing nothing.
///
/// Consecutive messages of the same role join into one (the text appended with no separator):
/// so a message longer than [`MAX_TEXT`] bytes is sent in pieces. A [`Role::User`] message is
/// always taken; a [`Role::Assistant`] message only right after a user message or an assistant
/// message taken since the last reply (it answers the user message, or continues that answer),
/// otherwise [`ErrorCode::OutOfOrder`]. A [`Request::Chat`] while a user message is held (no
/// answer after it) appends its text to that message, which becomes the user's turn.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct MessageRequest {
    /// Names the conversation, as in [`ChatRequest::session`]: another session than the last
    /// one starts a new conversation first (the system prompt stays).
    pub session: u32,
    /// How many messages the host has had taken in this conversation before this one.
    pub index: u32,
    /// Who said it.
    pub role: Role,
    /// The message, or a piece of it.
    pub text: BoundedText<MAX_TEXT>,
}

/// Who said a [`MessageRequest`]'s text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Role {
    /// The person (or program) talking to the model.
    #[default]
    User = 0,
    /// The model.
    Assistant = 1,
}

/// Per-request overrides of the device's settings.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ChatOptions {
    /// Most tokens in the reply.
    pub max_tokens: Option<u32>,
    /// Softmax temperature (0: greedy).
    pub temperature: Option<f32>,
    /// Keep the `top_k` most likely tokens (0: no limit).
    pub top_k: Option<u32>,
    /// Nucleus sampling threshold in (0, 1].
    pub top_p: Option<f32>,
    /// Repetition penalty (1: none).
    pub repeat_penalty: Option<f32>,
    /// Seed of the sampler's random generator.
    pub seed: Option<u64>,
    /// The reply ends before the first of these (not included in the reply).
    pub stop: Vec<String<MAX_STOP_BYTES>, MAX_STOPS>,
    /// Also send the reply as sentences for text-to-speech ([`Event::SynthesizeStart`] …).
    pub sentences: bool,
}

/// What the device tells the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// The device's greeting: who it is and what it can take.
    Hello(Hello),
    /// The next piece of the reply: whole UTF-8 characters, never part of a stop sequence.
    Token {
        /// The text.
        text: String<MAX_DELTA>,
    },
    /// The reply will also come as sentences (Wyoming's `synthesize-start`).
    SynthesizeStart,
    /// One sentence of the reply, ready to speak (Wyoming's `synthesize-chunk`).
    SynthesizeChunk {
        /// The sentence.
        text: String<MAX_SENTENCE>,
    },
    /// No more sentences for this reply (Wyoming's `synthesize-stop`); [`Event::End`] follows.
    SynthesizeStop,
    /// The reply is over: every [`Request::Chat`] gets exactly one.
    End {
        /// Why it ended.
        reason: EndReason,
        /// Counts and timings.
        stats: ReplyStats,
        /// The sequence number of the chat's frame.
        request: u16,
    },
    /// Answers [`Request::Cancel`].
    CancelAck {
        /// Whether a reply was in progress (its [`Event::End`] with reason `Cancelled` came first).
        was_generating: bool,
    },
    /// Answers [`Request::Reset`], [`Request::SetSystem`], [`Request::FlashAbort`] and
    /// [`Request::Message`].
    Done,
    /// Answers [`Request::Status`].
    Status(Status),
    /// Something went wrong; the device keeps serving.
    Error {
        /// What kind of problem.
        code: ErrorCode,
        /// A sentence for people.
        detail: String<MAX_DETAIL>,
        /// The sequence number of the frame this answers (`None`: a frame that could not be
        /// read, so its number is unknown).
        request: Option<u16>,
    },
    /// Answers [`Request::Goodbye`]; the device is back in line mode.
    Goodbye,
    /// Answers [`Request::FlashBegin`] and [`Request::FlashChunk`]: the next position of the
    /// image the device needs (the image length when it has every block).
    FlashNext(Position),
    /// A commit is under way (the next stage takes a while).
    FlashStage {
        /// What the device is doing.
        stage: FlashStage,
    },
    /// The committed image passed its self-test and is now served.
    FlashDone {
        /// The slot now active.
        slot: Slot,
        /// SHA-256 of the new image's manifest (the new [`Hello::model_hash`]).
        model_hash: [u8; 32],
    },
    /// Answers [`Request::SetBaud`]: the device switches to `baud` right after this frame.
    BaudSwitch {
        /// The new rate.
        baud: u32,
    },
}

/// The stages of a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FlashStage {
    /// Checking the image's SHA-256, section hashes and signature.
    Verifying,
    /// Loading the new image and running its self-test (chat pauses).
    Testing,
}

/// The device's greeting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// The device's [`PROTOCOL_VERSION`].
    pub protocol_version: u16,
    /// The model's name.
    pub model_name: String<MAX_NAME>,
    /// SHA-256 of the model image's manifest (which holds every section's SHA-256).
    pub model_hash: [u8; 32],
    /// Positions the device's context holds.
    pub context_length: u32,
    /// Most encoded bytes per frame the device accepts.
    pub max_frame: u32,
    /// The slot being served, or none when the device serves a fixed file and cannot be flashed.
    pub slot: Option<Slot>,
    /// How the last flash ended (none if the device never flashed).
    pub last_flash: Option<FlashOutcome>,
    /// The fastest baud rate the device can switch the line to ([`Request::SetBaud`]).
    pub max_baud: u32,
}

/// Why a reply ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EndReason {
    /// The model ended its turn.
    Eos,
    /// A stop sequence was produced.
    Stop,
    /// The token limit was reached.
    Length,
    /// The host cancelled.
    Cancelled,
    /// The engine failed; an [`Event::Error`] came before.
    Error,
}

impl EndReason {
    /// Lower-case name (`eos`, `stop`, `length`, `cancelled`, `error`).
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Eos => "eos",
            EndReason::Stop => "stop",
            EndReason::Length => "length",
            EndReason::Cancelled => "cancelled",
            EndReason::Error => "error",
        }
    }
}

/// Counts and timings of one reply.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct ReplyStats {
    /// Tokens prefilled for this turn (the new text only, unless the cache was rebuilt).
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub generated_tokens: u32,
    /// Milliseconds from receiving the request to the first token.
    pub time_to_first_token_ms: u32,
    /// Milliseconds from receiving the request to the end.
    pub total_ms: u32,
    /// Generated tokens per second after the first.
    pub decode_tokens_per_second: f32,
    /// Positions of the context in use after the reply.
    pub context_used: u32,
    /// Old turns dropped to make room (0 unless the context was full).
    pub turns_dropped: u32,
}

/// The device's state.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Status {
    /// The current conversation's session.
    pub session: u32,
    /// Finished turns in the conversation.
    pub turns: u32,
    /// Positions of the context in use.
    pub context_used: u32,
    /// Positions the context holds.
    pub context_length: u32,
    /// Replies since the device started.
    pub replies: u32,
}

/// Kinds of [`Event::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// A frame arrived damaged (bad CRC or encoding) and was dropped.
    BadFrame,
    /// A frame was longer than [`Hello::max_frame`] and was dropped.
    Oversized,
    /// A frame's payload is not a known [`Request`] (an unknown variant, or empty).
    UnknownMessage,
    /// A request other than hello, cancel, status or a flash transfer arrived while a reply was
    /// in progress.
    Busy,
    /// The message does not fit in the context even alone.
    TooLong,
    /// A setting is out of range.
    BadSetting,
    /// The host's `Hello` names another protocol version (sent after the device's `Hello`).
    UnsupportedVersion,
    /// The host stopped reading, so the reply was abandoned (sent once the host sends again).
    Stalled,
    /// The engine failed.
    Engine,
    /// The device serves a fixed file: it has no slots to flash.
    FlashUnavailable,
    /// A chunk or commit arrived with no transfer under way.
    NoTransfer,
    /// The image cannot be used: bad header, wrong version, a length that disagrees with its
    /// header, or a section that fails its hash.
    ImageRejected,
    /// The image does not fit the device (its storage or its memory budget).
    ImageTooLarge,
    /// The received image's SHA-256 is not the one declared.
    HashMismatch,
    /// The device holds a public key and the image is unsigned or its signature is wrong.
    SignatureRejected,
    /// The new image failed its self-test; the device went back to the previous one.
    SelfTestFailed,
    /// The device could not write its storage.
    Storage,
    /// A chunk failed its CRC, did not decompress to its block, or does not fit the transfer.
    ChunkRejected,
    /// A known request whose fields do not decode within their limits (a text over
    /// [`MAX_TEXT`] bytes, too many or too long stop sequences, bad UTF-8, trailing bytes).
    BadField,
    /// The image's version is lower than the active image's and the device does not allow
    /// downgrades (its operator can, on the device: `SLOT_DIR/allow-downgrade`).
    Downgrade,
    /// A [`Request::Message`] out of order: its index is past the messages the device has
    /// taken (one was lost on the line), or an assistant message follows no user message.
    OutOfOrder,
}

/// Why a message could not be encoded or decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolError {
    /// The framing failed.
    Frame(FrameError),
    /// The payload is not a valid message (postcard could not decode it, or bytes were left).
    BadMessage,
    /// The payload names a known request whose fields do not decode within their limits.
    BadFields {
        /// The request's variant index.
        variant: u32,
    },
    /// The message does not fit in [`MAX_FRAME`].
    TooBig,
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::Frame(e) => write!(f, "bad frame: {e}"),
            ProtocolError::BadMessage => f.write_str("frame payload is not a known message"),
            ProtocolError::BadFields { variant } => write!(
                f,
                "a {}'s fields do not decode within their limits (texts of at most {MAX_TEXT} \
                 bytes, {MAX_STOPS} stop sequences of {MAX_STOP_BYTES} bytes, UTF-8)",
                REQUEST_NAMES.get(*variant as usize).unwrap_or(&"request")
            ),
            ProtocolError::TooBig => write!(f, "message does not fit in {MAX_FRAME} bytes"),
        }
    }
}

impl core::error::Error for ProtocolError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            ProtocolError::Frame(e) => Some(e),
            _ => None,
        }
    }
}

impl From<FrameError> for ProtocolError {
    fn from(e: FrameError) -> Self {
        ProtocolError::Frame(e)
    }
}

/// Encodes messages into frames with consecutive sequence numbers, in fixed buffers.
#[derive(Debug, Clone)]
pub struct FrameWriter {
    seq: u16,
    payload: [u8; MAX_FRAME],
    scratch: [u8; MAX_FRAME],
    out: [u8; MAX_FRAME],
}

impl Default for FrameWriter {
    fn default() -> Self {
        FrameWriter {
            seq: 0,
            payload: [0; MAX_FRAME],
            scratch: [0; MAX_FRAME],
            out: [0; MAX_FRAME],
        }
    }
}

impl FrameWriter {
    /// A writer whose first frame has sequence number 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// The sequence number the next frame gets.
    pub fn next_seq(&self) -> u16 {
        self.seq
    }

    /// The frame (delimiter included) for `message`, numbered with the next sequence number.
    pub fn encode<M: Serialize>(&mut self, message: &M) -> Result<&[u8], ProtocolError> {
        let payload =
            postcard::to_slice(message, &mut self.payload).map_err(|_| ProtocolError::TooBig)?;
        let len = frame::encode_frame(self.seq, payload, &mut self.scratch, &mut self.out)
            .map_err(|_| ProtocolError::TooBig)?;
        self.seq = self.seq.wrapping_add(1);
        Ok(&self.out[..len])
    }
}

/// Decodes a frame payload as a message of type `M` (a [`Request`] or an [`Event`]); trailing
/// bytes are an error.
pub fn decode<'a, M: Deserialize<'a>>(payload: &'a [u8]) -> Result<M, ProtocolError> {
    match postcard::take_from_bytes(payload) {
        Ok((message, [])) => Ok(message),
        _ => Err(ProtocolError::BadMessage),
    }
}

/// How many variants [`Request`] has: a payload starting with a smaller index names a known
/// request.
pub const REQUEST_VARIANTS: u32 = 13;
/// [`Request`]'s variant names, by index.
const REQUEST_NAMES: [&str; REQUEST_VARIANTS as usize] = [
    "Hello",
    "Chat",
    "Cancel",
    "Reset",
    "SetSystem",
    "Status",
    "Goodbye",
    "FlashBegin",
    "FlashChunk",
    "FlashCommit",
    "FlashAbort",
    "SetBaud",
    "Message",
];
/// [`Request`]'s variant index of [`Request::Chat`].
pub const CHAT_VARIANT: u32 = 1;

/// Decodes a frame payload as a [`Request`], telling an unknown request
/// ([`ProtocolError::BadMessage`]) from a known one whose fields are bad
/// ([`ProtocolError::BadFields`]).
pub fn decode_request(payload: &[u8]) -> Result<Request, ProtocolError> {
    decode(payload).map_err(|e| match postcard::take_from_bytes::<u32>(payload) {
        Ok((variant, _)) if variant < REQUEST_VARIANTS => ProtocolError::BadFields { variant },
        _ => e,
    })
}

/// Text of at most `N` bytes, as carried in messages.
pub type BoundedText<const N: usize> = String<N>;

/// Copies as much of `text` as fits into a bounded string, cutting at a character boundary.
pub fn truncated<const N: usize>(text: &str) -> String<N> {
    let mut end = text.len().min(N);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::new();
    // `end` bytes fit by construction.
    let _ = out.push_str(&text[..end]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameDecoder;
    use quickcheck::{Arbitrary, Gen, quickcheck};
    use std::vec::Vec as StdVec;

    fn text<const N: usize>(g: &mut Gen) -> String<N> {
        let s = std::string::String::arbitrary(g);
        truncated(&s)
    }

    fn bytes32(g: &mut Gen) -> [u8; 32] {
        core::array::from_fn(|_| u8::arbitrary(g))
    }

    fn bytes<const N: usize>(g: &mut Gen) -> Vec<u8, N> {
        let v = StdVec::<u8>::arbitrary(g);
        v.into_iter().take(N).collect()
    }

    fn float(g: &mut Gen) -> f32 {
        // Finite values only: NaN != NaN would fail the equality check, not the codec.
        let f = f32::arbitrary(g);
        if f.is_finite() { f } else { 0.5 }
    }

    impl Arbitrary for ChatOptions {
        fn arbitrary(g: &mut Gen) -> Self {
            let mut stop = Vec::new();
            for _ in 0..usize::arbitrary(g) % (MAX_STOPS + 1) {
                let _ = stop.push(text(g));
            }
            ChatOptions {
                max_tokens: Option::arbitrary(g),
                temperature: bool::arbitrary(g).then(|| float(g)),
                top_k: Option::arbitrary(g),
                top_p: bool::arbitrary(g).then(|| float(g)),
                repeat_penalty: bool::arbitrary(g).then(|| float(g)),
                seed: Option::arbitrary(g),
                stop,
                sentences: bool::arbitrary(g),
            }
        }
    }

    impl Arbitrary for Request {
        fn arbitrary(g: &mut Gen) -> Self {
            match u8::arbitrary(g) % 13 {
                0 => Request::Hello {
                    protocol_version: u16::arbitrary(g),
                },
                1 => Request::Chat(ChatRequest {
                    session: u32::arbitrary(g),
                    text: text(g),
                    options: ChatOptions::arbitrary(g),
                }),
                2 => Request::Cancel,
                3 => Request::Reset,
                4 => Request::SetSystem { text: text(g) },
                5 => Request::Status,
                6 => Request::Goodbye,
                7 => Request::FlashBegin(FlashBegin {
                    image_len: u64::arbitrary(g),
                    sha256: bytes32(g),
                    header: bytes(g),
                    signature: bool::arbitrary(g).then(|| Signature {
                        r: bytes32(g),
                        s: bytes32(g),
                    }),
                }),
                8 => Request::FlashChunk(FlashChunk {
                    offset: u64::arbitrary(g),
                    at: u32::arbitrary(g),
                    encoding: if bool::arbitrary(g) {
                        BlockEncoding::Raw
                    } else {
                        BlockEncoding::Zstd
                    },
                    encoded_len: u32::arbitrary(g),
                    crc32: u32::arbitrary(g),
                    data: bytes(g),
                }),
                9 => Request::FlashCommit,
                10 => Request::FlashAbort,
                11 => Request::SetBaud {
                    baud: u32::arbitrary(g),
                },
                _ => Request::Message(MessageRequest {
                    session: u32::arbitrary(g),
                    index: u32::arbitrary(g),
                    role: *g.choose(&[Role::User, Role::Assistant]).unwrap(),
                    text: text(g),
                }),
            }
        }
    }

    impl Arbitrary for Event {
        fn arbitrary(g: &mut Gen) -> Self {
            let reasons = [
                EndReason::Eos,
                EndReason::Stop,
                EndReason::Length,
                EndReason::Cancelled,
                EndReason::Error,
            ];
            let codes = [
                ErrorCode::BadFrame,
                ErrorCode::Oversized,
                ErrorCode::UnknownMessage,
                ErrorCode::Busy,
                ErrorCode::TooLong,
                ErrorCode::BadSetting,
                ErrorCode::UnsupportedVersion,
                ErrorCode::Stalled,
                ErrorCode::Engine,
                ErrorCode::FlashUnavailable,
                ErrorCode::NoTransfer,
                ErrorCode::ImageRejected,
                ErrorCode::ImageTooLarge,
                ErrorCode::HashMismatch,
                ErrorCode::SignatureRejected,
                ErrorCode::SelfTestFailed,
                ErrorCode::Storage,
                ErrorCode::ChunkRejected,
                ErrorCode::BadField,
                ErrorCode::Downgrade,
                ErrorCode::OutOfOrder,
            ];
            let slot = |g: &mut Gen| if bool::arbitrary(g) { Slot::A } else { Slot::B };
            let outcomes = [
                FlashOutcome::Activated,
                FlashOutcome::SelfTestFailed,
                FlashOutcome::TrialInterrupted,
            ];
            match u8::arbitrary(g) % 15 {
                0 => Event::Hello(Hello {
                    protocol_version: u16::arbitrary(g),
                    model_name: text(g),
                    model_hash: core::array::from_fn(|_| u8::arbitrary(g)),
                    context_length: u32::arbitrary(g),
                    max_frame: u32::arbitrary(g),
                    slot: bool::arbitrary(g).then(|| slot(g)),
                    last_flash: bool::arbitrary(g).then(|| *g.choose(&outcomes).unwrap()),
                    max_baud: u32::arbitrary(g),
                }),
                1 => Event::Token { text: text(g) },
                2 => Event::SynthesizeStart,
                3 => Event::SynthesizeChunk { text: text(g) },
                4 => Event::SynthesizeStop,
                5 => Event::End {
                    reason: *g.choose(&reasons).unwrap(),
                    stats: ReplyStats {
                        prompt_tokens: u32::arbitrary(g),
                        generated_tokens: u32::arbitrary(g),
                        time_to_first_token_ms: u32::arbitrary(g),
                        total_ms: u32::arbitrary(g),
                        decode_tokens_per_second: float(g),
                        context_used: u32::arbitrary(g),
                        turns_dropped: u32::arbitrary(g),
                    },
                    request: u16::arbitrary(g),
                },
                6 => Event::CancelAck {
                    was_generating: bool::arbitrary(g),
                },
                7 => Event::Done,
                8 => Event::Status(Status {
                    session: u32::arbitrary(g),
                    turns: u32::arbitrary(g),
                    context_used: u32::arbitrary(g),
                    context_length: u32::arbitrary(g),
                    replies: u32::arbitrary(g),
                }),
                9 => Event::Error {
                    code: *g.choose(&codes).unwrap(),
                    detail: text(g),
                    request: Option::arbitrary(g),
                },
                10 => Event::Goodbye,
                11 => Event::FlashNext(Position {
                    offset: u64::arbitrary(g),
                    at: u32::arbitrary(g),
                }),
                12 => Event::FlashStage {
                    stage: if bool::arbitrary(g) {
                        FlashStage::Verifying
                    } else {
                        FlashStage::Testing
                    },
                },
                13 => Event::FlashDone {
                    slot: slot(g),
                    model_hash: bytes32(g),
                },
                _ => Event::BaudSwitch {
                    baud: u32::arbitrary(g),
                },
            }
        }
    }

    /// Encodes `messages` as a byte stream and decodes them back, the stream cut into pieces
    /// at `splits` (the decoder sees bytes one at a time, whatever the pieces).
    fn round_trip<M>(messages: &[M]) -> StdVec<M>
    where
        M: Serialize + for<'a> Deserialize<'a>,
    {
        let mut writer = FrameWriter::new();
        let mut stream = StdVec::new();
        for m in messages {
            stream.extend_from_slice(writer.encode(m).unwrap());
        }
        let mut decoder = FrameDecoder::<MAX_FRAME>::new();
        let mut out = StdVec::new();
        let mut expected_seq = 0u16;
        for &b in &stream {
            if let Some(frame) = decoder.push(b) {
                let frame = frame.unwrap();
                assert_eq!(frame.seq, expected_seq);
                expected_seq += 1;
                out.push(decode(frame.payload).unwrap());
            }
        }
        out
    }

    quickcheck! {
        fn requests_round_trip(messages: StdVec<Request>) -> bool {
            round_trip(&messages) == messages
        }

        fn events_round_trip(messages: StdVec<Event>) -> bool {
            round_trip(&messages) == messages
        }

        fn arbitrary_payloads_never_panic(bytes: StdVec<u8>) -> bool {
            let _ = decode::<Request>(&bytes);
            let _ = decode::<Event>(&bytes);
            // Known requests with bad fields are told from unknown ones.
            match decode_request(&bytes) {
                Ok(request) => decode::<Request>(&bytes) == Ok(request),
                Err(ProtocolError::BadFields { variant }) => variant < REQUEST_VARIANTS,
                Err(e) => e == ProtocolError::BadMessage,
            }
        }

        fn truncation_keeps_whole_characters(s: std::string::String) -> bool {
            let t: String<7> = truncated(&s);
            s.starts_with(t.as_str()) && t.len() <= 7 && (t.len() == s.len() || t.len() > 7 - 4)
        }
    }

    #[test]
    fn largest_messages_fit_in_a_frame() {
        let stop: Vec<String<MAX_STOP_BYTES>, MAX_STOPS> = (0..MAX_STOPS)
            .map(|_| truncated(&"x".repeat(MAX_STOP_BYTES)))
            .collect();
        let request = Request::Chat(ChatRequest {
            session: u32::MAX,
            text: truncated(&"y".repeat(MAX_TEXT)),
            options: ChatOptions {
                max_tokens: Some(u32::MAX),
                temperature: Some(1.0),
                top_k: Some(u32::MAX),
                top_p: Some(1.0),
                repeat_penalty: Some(1.0),
                seed: Some(u64::MAX),
                stop,
                sentences: true,
            },
        });
        let mut writer = FrameWriter::new();
        assert!(writer.encode(&request).unwrap().len() <= MAX_FRAME);
        let error = Event::Error {
            code: ErrorCode::Engine,
            detail: truncated(&"z".repeat(MAX_DETAIL)),
            request: Some(u16::MAX),
        };
        assert!(writer.encode(&error).unwrap().len() <= MAX_FRAME);
        // The worst chunk: every field at its widest, data that COBS cannot shorten.
        let chunk = Request::FlashChunk(FlashChunk {
            offset: u64::MAX,
            at: u32::MAX,
            encoding: BlockEncoding::Zstd,
            encoded_len: u32::MAX,
            crc32: u32::MAX,
            data: core::iter::repeat_n(0xFF, MAX_CHUNK).collect(),
        });
        assert!(writer.encode(&chunk).unwrap().len() <= MAX_FRAME);
        let begin = Request::FlashBegin(FlashBegin {
            image_len: u64::MAX,
            sha256: [0xFF; 32],
            header: core::iter::repeat_n(0xFF, 64).collect(),
            signature: Some(Signature {
                r: [0xFF; 32],
                s: [0xFF; 32],
            }),
        });
        assert!(writer.encode(&begin).unwrap().len() <= MAX_FRAME);
        let message = Request::Message(MessageRequest {
            session: u32::MAX,
            index: u32::MAX,
            role: Role::Assistant,
            text: truncated(&"\u{7ff}".repeat(MAX_TEXT)),
        });
        assert!(writer.encode(&message).unwrap().len() <= MAX_FRAME);
    }

    /// The bytes `docs/PROTOCOL.md` shows, computed independently with Python (`zlib.crc32`
    /// and a textbook COBS encoder).
    #[test]
    fn frames_match_the_documented_bytes() {
        let mut writer = FrameWriter::new();
        let hello = Request::Hello {
            protocol_version: PROTOCOL_VERSION,
        };
        assert_eq!(
            writer.encode(&hello).unwrap(),
            [0x01, 0x01, 0x01, 0x06, 0x04, 0x05, 0x1b, 0x29, 0x26, 0x00]
        );
        let mut writer = FrameWriter::new();
        assert_eq!(
            writer.encode(&Request::Cancel).unwrap(),
            [0x01, 0x01, 0x06, 0x02, 0x3e, 0xb8, 0x4f, 0x11, 0x00]
        );
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut buf = [0u8; 16];
        let bytes = postcard::to_slice(&Request::Cancel, &mut buf)
            .unwrap()
            .to_vec();
        assert_eq!(decode::<Request>(&bytes), Ok(Request::Cancel));
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode::<Request>(&longer), Err(ProtocolError::BadMessage));
        assert_eq!(decode::<Request>(&[200]), Err(ProtocolError::BadMessage));
        assert_eq!(
            decode_request(&longer),
            Err(ProtocolError::BadFields { variant: 2 })
        );
        assert_eq!(decode_request(&[200]), Err(ProtocolError::BadMessage));
        assert_eq!(decode_request(&[]), Err(ProtocolError::BadMessage));
    }

    #[test]
    fn a_chat_over_its_limits_is_known_as_a_chat() {
        let mut payload = std::vec![CHAT_VARIANT as u8, 7];
        // A text one byte over the limit: length as a varint, then the bytes.
        let len = MAX_TEXT + 1;
        payload.extend([(len as u8 & 0x7F) | 0x80, (len >> 7) as u8]);
        payload.extend(std::iter::repeat_n(b'a', len));
        payload.extend([0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            decode_request(&payload),
            Err(ProtocolError::BadFields {
                variant: CHAT_VARIANT
            })
        );
    }

    /// The documented encoding of a `Message`: variant 12, session, index, role (0 `User`,
    /// 1 `Assistant`), text; another role value is a bad field of a known request.
    #[test]
    fn a_message_encodes_as_documented_and_an_unknown_role_is_a_bad_field() {
        let message = Request::Message(MessageRequest {
            session: 1,
            index: 300,
            role: Role::Assistant,
            text: truncated("ok"),
        });
        let mut buf = [0u8; 16];
        let bytes = postcard::to_slice(&message, &mut buf).unwrap().to_vec();
        assert_eq!(bytes, [12, 1, 0xAC, 0x02, 1, 2, b'o', b'k']);
        assert_eq!(decode_request(&bytes), Ok(message));
        let mut unknown = bytes.clone();
        unknown[4] = 2;
        assert_eq!(
            decode_request(&unknown),
            Err(ProtocolError::BadFields { variant: 12 })
        );
        // A text one byte over the limit.
        let mut long = std::vec![12, 1, 0, 0];
        let len = MAX_TEXT + 1;
        long.extend([(len as u8 & 0x7F) | 0x80, (len >> 7) as u8]);
        long.extend(std::iter::repeat_n(b'a', len));
        assert_eq!(
            decode_request(&long),
            Err(ProtocolError::BadFields { variant: 12 })
        );
        assert_eq!(decode_request(&[13]), Err(ProtocolError::BadMessage));
    }
}
