//! `ember keygen`, `ember sign`, `ember flash`: signing images and sending them to devices over
//! their serial lines.
//!
//! An image is cut into blocks of [`FLASH_BLOCK`] bytes, each zstd-compressed on its own (kept
//! raw if that is not smaller), and the blocks are cut into chunks that fit a frame. The host
//! keeps a few chunks in flight; the device answers each with the next position it needs, so a
//! damaged or lost chunk shows up as a position that does not advance and the host re-sends from
//! there. A transfer cut off by a disconnect or a device restart resumes from what the device
//! recorded (see `ember_core::flash`).

use anyhow::{Context, Result, bail};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use ember_core::flash::{
    BlockEncoding, FLASH_BLOCK, FlashOutcome, MAX_CHUNK, Position, Slot, block_len, signed_message,
};
use ember_core::frame::crc32;
use ember_core::image::{HEADER_LEN, ImageHeader};
use ember_core::protocol::{
    ErrorCode, Event, FlashBegin, FlashChunk, FlashStage, Request, Signature,
};
use ember_flash::read_hex_file;
use ember_models::fetch::hex;
use ember_serial::{Client, ClientError};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// zstd level `ember flash` compresses with unless told otherwise.
pub const DEFAULT_LEVEL: i32 = 19;
/// Encoded bytes the host sends ahead of the device's answers unless told otherwise.
pub const DEFAULT_WINDOW: usize = 8 * MAX_CHUNK;
/// How long the device may stay silent while chunks are in flight before the host asks again.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the device may stay silent during a commit (verification, loading the new model,
/// its self-test) before the host greets it again.
const COMMIT_SILENCE: Duration = Duration::from_secs(30);
/// How long each greeting attempt waits.
const HELLO_TIMEOUT: Duration = Duration::from_millis(700);
/// Pause between attempts to reach a device that went away.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Makes a key pair: `<name>.key` (the secret, readable by its owner only) and `<name>.pub`.
/// Refuses to overwrite either.
pub fn keygen(name: &Path) -> Result<(PathBuf, PathBuf)> {
    let secret_path = name.with_extension("key");
    let public_path = name.with_extension("pub");
    for path in [&secret_path, &public_path] {
        if path.exists() {
            bail!("{} exists; not overwriting a key", path.display());
        }
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let key = SigningKey::from_bytes(&seed);
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut secret = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&secret_path)
        .with_context(|| format!("cannot create {}", secret_path.display()))?;
    writeln!(
        secret,
        "# Ember image signing key (ed25519 secret). Keep it off the devices.\n{}",
        hex(&seed)
    )?;
    std::fs::write(
        &public_path,
        format!(
            "# Ember image signing key (ed25519 public): install as SLOT_DIR/flash.pub\n{}\n",
            hex(key.verifying_key().as_bytes())
        ),
    )
    .with_context(|| format!("cannot write {}", public_path.display()))?;
    Ok((secret_path, public_path))
}

fn key_hex(path: &Path) -> Result<Vec<u8>> {
    read_hex_file(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .with_context(|| format!("{} is not hex", path.display()))
}

/// Reads a secret key written by [`keygen`].
pub fn read_signing_key(path: &Path) -> Result<SigningKey> {
    let bytes: [u8; 32] = key_hex(path)?
        .try_into()
        .map_err(|_| anyhow::anyhow!("{} is not a 32-byte ed25519 secret key", path.display()))?;
    Ok(SigningKey::from_bytes(&bytes))
}

/// Where `ember sign` puts an image's signature: `<image>.sig`.
pub fn signature_path(image: &Path) -> PathBuf {
    let mut path = image.as_os_str().to_owned();
    path.push(".sig");
    PathBuf::from(path)
}

/// Reads a signature written by [`sign`].
pub fn read_signature(path: &Path) -> Result<Signature> {
    let bytes: [u8; 64] = key_hex(path)?
        .try_into()
        .map_err(|_| anyhow::anyhow!("{} is not a 64-byte ed25519 signature", path.display()))?;
    Ok(Signature::from_bytes(&bytes))
}

/// Signs the image at `image` (after checking it) and writes the signature to `output`;
/// returns the signer's public key.
pub fn sign(image: &Path, key: &Path, output: &Path) -> Result<VerifyingKey> {
    let key = read_signing_key(key)?;
    let bytes = read_image(image)?;
    let sha256 = ember_image::sha256(&bytes);
    let signature = key.sign(&signed_message(&sha256, bytes.len() as u64));
    std::fs::write(
        output,
        format!(
            "# ed25519 signature of {} (sha256 {}) by {}\n{}\n",
            image.file_name().unwrap_or_default().to_string_lossy(),
            hex(&sha256),
            hex(key.verifying_key().as_bytes()),
            hex(&signature.to_bytes())
        ),
    )
    .with_context(|| format!("cannot write {}", output.display()))?;
    Ok(key.verifying_key())
}

/// Reads an image and checks it whole (header, manifest, every section's hash).
fn read_image(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    ember_image::parse(&bytes, true)
        .with_context(|| format!("{} is not a valid Ember image", path.display()))?;
    Ok(bytes)
}

/// One block as it travels.
#[derive(Debug, Clone)]
struct Block {
    encoding: BlockEncoding,
    data: Vec<u8>,
}

/// An image ready to send: checked, hashed, cut into blocks and compressed (once, for every
/// device it goes to).
pub struct Prepared {
    /// Length of the image.
    pub image_len: u64,
    /// SHA-256 of the image.
    pub sha256: [u8; 32],
    /// SHA-256 of the image's manifest (what the device reports once it serves the image).
    pub manifest_hash: [u8; 32],
    header: Vec<u8>,
    signature: Option<Signature>,
    blocks: Vec<Block>,
    /// `stream[i]`: encoded bytes before block `i`.
    stream: Vec<u64>,
}

impl Prepared {
    /// Reads and checks the image at `path`, and compresses its blocks at zstd `level` (0: no
    /// compression) on all cores, showing progress unless `quiet`.
    pub fn new(path: &Path, signature: Option<Signature>, level: i32, quiet: bool) -> Result<Self> {
        let bytes = read_image(path)?;
        let header = ImageHeader::parse(&bytes)?;
        let bar = if quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(bytes.len() as u64).with_style(
                ProgressStyle::with_template(
                    "compressing {wide_bar} {binary_bytes}/{binary_total_bytes} ({eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            )
        };
        let blocks: Vec<Block> = bytes
            .par_chunks(FLASH_BLOCK as usize)
            .map(|plain| {
                let block = encode_block(plain, level);
                bar.inc(plain.len() as u64);
                block
            })
            .collect();
        bar.finish_and_clear();
        let mut stream = Vec::with_capacity(blocks.len() + 1);
        let mut total = 0u64;
        for block in &blocks {
            stream.push(total);
            total += block.data.len() as u64;
        }
        stream.push(total);
        Ok(Prepared {
            image_len: bytes.len() as u64,
            sha256: ember_image::sha256(&bytes),
            manifest_hash: header.manifest_sha256,
            header: bytes[..HEADER_LEN].to_vec(),
            signature,
            blocks,
            stream,
        })
    }

    /// Encoded bytes of the whole image.
    pub fn encoded_len(&self) -> u64 {
        self.stream.last().copied().unwrap_or(0)
    }

    /// Encoded bytes before `position`.
    fn stream_offset(&self, position: Position) -> u64 {
        let block = (position.offset / FLASH_BLOCK as u64) as usize;
        self.stream
            .get(block)
            .copied()
            .unwrap_or(self.encoded_len())
            + position.at as u64
    }

    /// The chunk at `position` and the position after it, or `None` at the end.
    fn chunk_at(&self, position: Position) -> Option<(FlashChunk, Position)> {
        if position.offset >= self.image_len {
            return None;
        }
        let block = self
            .blocks
            .get((position.offset / FLASH_BLOCK as u64) as usize)?;
        let at = position.at as usize;
        let data = block.data.get(at..(at + MAX_CHUNK).min(block.data.len()))?;
        let end = at + data.len();
        let next = if end == block.data.len() {
            Position {
                offset: position.offset + block_len(position.offset, self.image_len) as u64,
                at: 0,
            }
        } else {
            Position {
                offset: position.offset,
                at: end as u32,
            }
        };
        let chunk = FlashChunk {
            offset: position.offset,
            at: position.at,
            encoding: block.encoding,
            encoded_len: block.data.len() as u32,
            crc32: crc32(&[data]),
            data: data.iter().copied().collect(),
        };
        Some((chunk, next))
    }

    fn begin(&self) -> Request {
        Request::FlashBegin(FlashBegin {
            image_len: self.image_len,
            sha256: self.sha256,
            header: self.header.iter().copied().collect(),
            signature: self.signature,
        })
    }
}

/// zstd at `level` if that makes the block smaller, else the block as it is.
fn encode_block(plain: &[u8], level: i32) -> Block {
    if level > 0
        && let Ok(packed) = zstd::bulk::compress(plain, level)
        && packed.len() < plain.len()
    {
        return Block {
            encoding: BlockEncoding::Zstd,
            data: packed,
        };
    }
    Block {
        encoding: BlockEncoding::Raw,
        data: plain.to_vec(),
    }
}

/// How to reach a device and how hard to try.
#[derive(Debug, Clone)]
pub struct FlashOptions {
    /// Baud rate of the port.
    pub baud: u32,
    /// Fastest rate to switch the line to for the transfer (the device's limit applies too).
    pub max_baud: u32,
    /// Encoded bytes sent ahead of the device's answers.
    pub window: usize,
    /// Give up when the device made no progress for this long (disconnected, silent).
    pub patience: Duration,
}

/// What a finished flash did.
#[derive(Debug, Clone, Serialize)]
pub struct FlashReport {
    /// The port.
    pub port: String,
    /// Bytes of the image.
    pub image_bytes: u64,
    /// Encoded (compressed) bytes of the image.
    pub encoded_bytes: u64,
    /// Bytes written to the line, frames and re-sends included.
    pub wire_bytes: u64,
    /// Encoded bytes ÷ image bytes.
    pub compression_ratio: f64,
    /// Seconds from the first greeting to the device's confirmation.
    pub seconds: f64,
    /// Seconds of the transfer alone (first chunk to last answer).
    pub transfer_seconds: f64,
    /// Image bytes received by the device during this run ÷ transfer seconds.
    pub image_bytes_per_second: f64,
    /// Wire bytes ÷ transfer seconds.
    pub wire_bytes_per_second: f64,
    /// Where this run started in the image (non-zero when it resumed an earlier transfer).
    pub resumed_from: u64,
    /// Times the connection was lost and made again.
    pub reconnects: u32,
    /// Times the host went back to re-send (damaged or lost chunks, silence).
    pub resends: u32,
    /// The baud rate the transfer ran at (after switching).
    pub baud: u32,
    /// The slot now active.
    pub slot: String,
    /// SHA-256 of the active model's manifest.
    pub model_hash: String,
}

/// One line per device for people.
impl std::fmt::Display for FlashReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: slot {} active (model {}) after {:.1} s: {} image bytes as {} on the wire ({:.1}% compressed) at {} baud, {:.0} image bytes/s, {} reconnects, {} re-sends",
            self.port,
            self.slot,
            &self.model_hash[..self.model_hash.len().min(16)],
            self.seconds,
            self.image_bytes,
            self.wire_bytes,
            100.0 * self.compression_ratio,
            self.baud,
            self.image_bytes_per_second,
            self.reconnects,
            self.resends,
        )?;
        if self.resumed_from > 0 {
            write!(f, ", resumed at byte {}", self.resumed_from)?;
        }
        Ok(())
    }
}

/// Why flashing a device failed.
#[derive(Debug, thiserror::Error)]
pub enum FlashFailure {
    /// The device refused (its error code and detail).
    #[error("{port}: the device refused the image ({code:?}): {detail}")]
    Refused {
        /// The port.
        port: String,
        /// The device's code.
        code: ErrorCode,
        /// The device's words.
        detail: String,
    },
    /// The device could not be reached, or stopped making progress, for too long.
    #[error("{port}: gave up after {waited:?} without progress: {last}")]
    GaveUp {
        /// The port.
        port: String,
        /// How long.
        waited: Duration,
        /// The last problem seen.
        last: String,
    },
}

/// Errors that end a flash: everything but a chunk refused (which is re-sent).
fn fatal(code: ErrorCode) -> bool {
    !matches!(
        code,
        ErrorCode::ChunkRejected
            | ErrorCode::BadFrame
            | ErrorCode::Oversized
            | ErrorCode::UnknownMessage
            | ErrorCode::Stalled
            | ErrorCode::Busy
    )
}

/// What one connection got to.
enum Attempt {
    Done {
        slot: Slot,
        model_hash: [u8; 32],
    },
    /// The line broke or went quiet; try again.
    Lost(String),
}

/// State of one device's flash across reconnections.
struct Run<'a> {
    port: &'a Path,
    image: &'a Prepared,
    options: &'a FlashOptions,
    bar: &'a ProgressBar,
    client: Option<Client>,
    wire_bytes: u64,
    resends: u32,
    resumed_from: Option<u64>,
    transfer_start: Option<Instant>,
    transfer_end: Option<Instant>,
    last_progress: Instant,
    /// A commit was sent (the device may have tried the image since).
    committed: bool,
    /// The rate the line was switched to, if it was.
    switched: Option<u32>,
    /// The rate of the last transfer.
    transfer_baud: u32,
}

impl Run<'_> {
    fn refused(&self, code: ErrorCode, detail: &str) -> FlashFailure {
        FlashFailure::Refused {
            port: self.port.display().to_string(),
            code,
            detail: detail.to_string(),
        }
    }

    /// Switches the line to the fastest rate both ends allow, stepping down when a rate does not
    /// get through.
    fn switch_up(&mut self) -> Result<(), ClientError> {
        let Some(client) = self.client.as_mut() else {
            return Ok(());
        };
        let base = client.baud();
        let top = self.options.max_baud.min(client.hello().max_baud);
        let ladder = std::iter::once(top).chain(
            [921_600, 460_800, 230_400]
                .into_iter()
                .filter(|&rate| rate < top),
        );
        for rate in ladder.filter(|&rate| rate > base) {
            if !ember_serial::STANDARD_BAUDS.contains(&rate) {
                continue;
            }
            self.bar.set_message(format!("trying {rate} baud"));
            if client.switch_baud(rate)? == rate {
                self.switched = Some(rate);
                break;
            }
        }
        self.bar.set_message("");
        self.transfer_baud = client.baud();
        Ok(())
    }

    /// Sends `request` on the current connection.
    fn send(&mut self, request: &Request) -> Result<(), ClientError> {
        let client = self
            .client
            .as_mut()
            .ok_or(ClientError::Timeout(Duration::ZERO))?;
        let before = client.bytes_sent();
        let result = client.send(request);
        self.wire_bytes += client.bytes_sent() - before;
        result
    }

    fn recv(&mut self, timeout: Duration) -> Result<Event, ClientError> {
        let client = self
            .client
            .as_mut()
            .ok_or(ClientError::Timeout(Duration::ZERO))?;
        client.recv(timeout)
    }

    fn poll(&mut self) -> Result<Option<Event>, ClientError> {
        let client = self
            .client
            .as_mut()
            .ok_or(ClientError::Timeout(Duration::ZERO))?;
        client.poll()
    }

    /// One connection's worth: greet, begin (or resume), send, commit.
    fn attempt(&mut self) -> Result<Attempt, FlashFailure> {
        let lost = |e: ClientError| Ok(Attempt::Lost(e.to_string()));
        if self.client.is_none() {
            // The device may still be at the rate we switched it to (we lost the line, it did
            // not restart), or back at its own.
            let rates = [Some(self.options.baud), self.switched.take()];
            let mut last = None;
            for baud in rates.into_iter().flatten() {
                match Client::connect(self.port, baud, HELLO_TIMEOUT) {
                    Ok(client) => {
                        self.client = Some(client);
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            if self.client.is_none() {
                return match last {
                    Some(e) => lost(e),
                    None => Ok(Attempt::Lost("not connected".into())),
                };
            }
            if let Err(e) = self.switch_up() {
                return lost(e);
            }
        }
        let hello = self.client.as_ref().map(|c| c.hello().clone());
        let Some(hello) = hello else {
            return Ok(Attempt::Lost("not connected".into()));
        };
        let Some(active) = hello.slot else {
            return Err(self.refused(
                ErrorCode::FlashUnavailable,
                "the device serves a fixed --model file and has no slots to flash",
            ));
        };
        // The device already serves the image (it switched before a restart cut us off, or an
        // earlier run flashed it).
        if hello.model_hash == self.image.manifest_hash {
            return Ok(Attempt::Done {
                slot: active,
                model_hash: hello.model_hash,
            });
        }
        // The verdict on our commit was lost with the connection; the greeting tells it.
        if self.committed && hello.last_flash == Some(FlashOutcome::SelfTestFailed) {
            return Err(self.refused(
                ErrorCode::SelfTestFailed,
                &format!("the image failed its self-test; slot {active} stays active"),
            ));
        }
        if let Err(e) = self.send(&self.image.begin()) {
            return lost(e);
        }
        let start = loop {
            match self.recv(ACK_TIMEOUT) {
                Ok(Event::FlashNext(position)) => break position,
                Ok(Event::Error { code, detail, .. }) if fatal(code) => {
                    return Err(self.refused(code, &detail));
                }
                Ok(_) => {}
                Err(e) => return lost(e),
            }
        };
        self.resumed_from.get_or_insert(start.offset);
        self.transfer_start.get_or_insert_with(Instant::now);
        self.last_progress = Instant::now();
        if let Some(lost) = self.transfer(start)? {
            return Ok(Attempt::Lost(lost));
        }
        self.transfer_end.get_or_insert_with(Instant::now);
        self.commit()
    }

    /// Sends chunks from `start` until the device has them all. Returns why the connection was
    /// lost, if it was.
    fn transfer(&mut self, start: Position) -> Result<Option<String>, FlashFailure> {
        let image = self.image;
        let (mut acked, mut cursor) = (start, start);
        self.bar.set_position(acked.offset);
        while acked.offset < image.image_len {
            let in_flight = image.stream_offset(cursor) - image.stream_offset(acked);
            let event = if in_flight < self.options.window as u64
                && let Some((chunk, next)) = image.chunk_at(cursor)
            {
                if let Err(e) = self.send(&Request::FlashChunk(chunk)) {
                    return Ok(Some(e.to_string()));
                }
                cursor = next;
                match self.poll() {
                    Ok(event) => event,
                    Err(e) => return Ok(Some(e.to_string())),
                }
            } else {
                match self.recv(ACK_TIMEOUT) {
                    Ok(event) => Some(event),
                    // The answers stopped (a device that restarted is back in line mode):
                    // greet it again and ask where it stands.
                    Err(e) => {
                        self.resends += 1;
                        return Ok(Some(e.to_string()));
                    }
                }
            };
            match event {
                Some(Event::FlashNext(position)) => {
                    let ordered = |p: Position| (p.offset, p.at);
                    if ordered(position) <= ordered(acked) || ordered(position) > ordered(cursor) {
                        // No progress: a gap or a refused chunk. Go back to where the device is.
                        self.resends += 1;
                        cursor = position;
                    } else {
                        self.last_progress = Instant::now();
                    }
                    acked = position;
                    self.bar.set_position(acked.offset);
                }
                Some(Event::Error { code, detail, .. }) if fatal(code) => {
                    return Err(self.refused(code, &detail));
                }
                Some(_) | None => {}
            }
            if self.last_progress.elapsed() > self.options.patience {
                return Err(FlashFailure::GaveUp {
                    port: self.port.display().to_string(),
                    waited: self.options.patience,
                    last: "the device stopped taking chunks".into(),
                });
            }
        }
        Ok(None)
    }

    /// Commits and waits for the device's verdict.
    fn commit(&mut self) -> Result<Attempt, FlashFailure> {
        self.bar.set_message("verifying");
        if let Err(e) = self.send(&Request::FlashCommit) {
            return Ok(Attempt::Lost(e.to_string()));
        }
        self.committed = true;
        let damaged = self.client.as_ref().map_or(0, |c| c.line_errors().0);
        let mut heard = Instant::now();
        loop {
            match self.recv(Duration::from_secs(1)) {
                Err(ClientError::Timeout(_)) => {
                    // A device in frame mode sends only frames: anything else is the banner of
                    // an emberd that restarted (in line mode) and will not answer the commit.
                    let now_damaged = self.client.as_ref().map_or(0, |c| c.line_errors().0);
                    if now_damaged > damaged {
                        return Ok(Attempt::Lost("the device restarted".into()));
                    }
                    if heard.elapsed() > COMMIT_SILENCE {
                        return Ok(Attempt::Lost(format!(
                            "no answer to the commit for {COMMIT_SILENCE:?}"
                        )));
                    }
                }
                Ok(Event::FlashStage { stage }) => {
                    heard = Instant::now();
                    self.bar.set_message(match stage {
                        FlashStage::Verifying => "verifying",
                        FlashStage::Testing => "self-test",
                    });
                }
                Ok(Event::FlashDone { slot, model_hash }) => {
                    return Ok(Attempt::Done { slot, model_hash });
                }
                Ok(Event::Error { code, detail, .. }) if fatal(code) => {
                    return Err(self.refused(code, &detail));
                }
                Ok(_) => heard = Instant::now(),
                Err(e) => return Ok(Attempt::Lost(e.to_string())),
            }
        }
    }
}

/// Flashes `image` onto the device at `port`, reconnecting and resuming until it is done, the
/// device refuses, or `options.patience` passes without progress.
pub fn flash(
    port: &Path,
    image: &Prepared,
    options: &FlashOptions,
    bar: &ProgressBar,
) -> Result<FlashReport, FlashFailure> {
    let started = Instant::now();
    let mut run = Run {
        port,
        image,
        options,
        bar,
        client: None,
        wire_bytes: 0,
        resends: 0,
        resumed_from: None,
        transfer_start: None,
        transfer_end: None,
        last_progress: Instant::now(),
        committed: false,
        switched: None,
        transfer_baud: options.baud,
    };
    let mut reconnects = 0u32;
    let (slot, model_hash) = loop {
        match run.attempt()? {
            Attempt::Done { slot, model_hash } => break (slot, model_hash),
            Attempt::Lost(why) => {
                if run.client.take().is_some() {
                    reconnects += 1;
                    bar.set_message(format!("reconnecting ({why})"));
                }
                if run.last_progress.elapsed() > options.patience {
                    return Err(FlashFailure::GaveUp {
                        port: port.display().to_string(),
                        waited: options.patience,
                        last: why,
                    });
                }
                std::thread::sleep(RETRY_PAUSE);
            }
        }
    };
    if let Some(client) = run.client.take() {
        let _ = client.goodbye(Duration::from_secs(2));
    }
    let transfer_seconds = match (run.transfer_start, run.transfer_end) {
        (Some(start), Some(end)) => (end - start).as_secs_f64(),
        _ => 0.0,
    };
    let resumed_from = run.resumed_from.unwrap_or(0);
    let per_second = |bytes: u64| {
        if transfer_seconds > 0.0 {
            bytes as f64 / transfer_seconds
        } else {
            0.0
        }
    };
    Ok(FlashReport {
        port: port.display().to_string(),
        image_bytes: image.image_len,
        encoded_bytes: image.encoded_len(),
        wire_bytes: run.wire_bytes,
        compression_ratio: image.encoded_len() as f64 / image.image_len.max(1) as f64,
        seconds: started.elapsed().as_secs_f64(),
        transfer_seconds,
        image_bytes_per_second: per_second(image.image_len - resumed_from),
        wire_bytes_per_second: per_second(run.wire_bytes),
        resumed_from,
        reconnects,
        resends: run.resends,
        baud: run.transfer_baud,
        slot: slot.to_string(),
        model_hash: hex(&model_hash),
    })
}
