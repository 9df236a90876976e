//! The device's two model slots in a directory, and receiving an image into one of them.
//!
//! ```text
//! SLOT_DIR/slot-a.ember   an image (the first install puts it here)
//! SLOT_DIR/slot-b.ember   the other slot
//! SLOT_DIR/slots.state    which slot is active, the transfer under way (ember_core::flash::SlotTable)
//! SLOT_DIR/flash.pub      optional: the ed25519 public key images must be signed with (hex)
//! ```
//!
//! [`SlotDir`] receives an image block by block into the slot that is not active, records its
//! progress so a transfer resumes after a restart, and verifies the whole image on commit. The
//! state file is replaced atomically (written to a temporary file, synced, renamed, directory
//! synced), so a device that loses power at any moment finds either the old table or the new
//! one. The rules are in [`ember_core::flash`].
//!
//! Every file operation goes through a [`Storage`]: [`StdStorage`] is the real file system;
//! with the `testing` feature, `MemoryStorage` simulates one that loses power after any step
//! (`tests/power_cut.rs` cuts the power at every step of a flash).

#![warn(missing_docs)]

#[cfg(feature = "testing")]
mod memory;
mod storage;

#[cfg(feature = "testing")]
pub use memory::{MemoryFile, MemoryStorage};
pub use storage::{StdStorage, Storage, StorageFile};

use ed25519_dalek::{Signature as Ed25519Signature, VerifyingKey};
use ember_core::flash::{
    BlockEncoding, FlashOutcome, Incoming, MAX_SLOT_TABLE, Position, Slot, SlotTable,
    SlotTableError, block_len, signed_message,
};
use ember_core::frame::crc32;
use ember_core::image::{ImageError, ImageHeader};
use ember_core::protocol::{self, ErrorCode, Event, FlashBegin, FlashChunk, FlashStage, Request};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The slot table's file in the slot directory.
pub const TABLE_FILE: &str = "slots.state";
/// The trusted public key's file in the slot directory.
pub const KEY_FILE: &str = "flash.pub";
/// Received bytes are synced and recorded at least this often: what a restart can lose.
pub const PERSIST_EVERY: u64 = 1 << 20;
/// Most bytes a zstd block may take beyond the block itself (incompressible data grows a little).
const ZSTD_SLACK: u32 = 1024;

/// Why flashing failed. Each maps to the protocol's [`ErrorCode`] through [`FlashError::code`].
#[derive(Debug, thiserror::Error)]
pub enum FlashError {
    /// The slot directory holds no image to serve.
    #[error(
        "{} holds no model: install one as {}/slot-a.ember (`ember package` does)",
        .0.display(), .0.display()
    )]
    NoModel(PathBuf),
    /// The public key file is not an ed25519 key.
    #[error("{} is not an ed25519 public key (64 hex digits): {reason}", path.display())]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The slot table does not read.
    #[error("{} is damaged", path.display())]
    Table {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: SlotTableError,
    },
    /// A chunk or commit came without a transfer.
    #[error("no image transfer is under way (send FlashBegin first)")]
    NoTransfer,
    /// A commit came before every block.
    #[error("only {stored} of the image's {image_len} bytes have arrived")]
    Incomplete {
        /// Bytes received.
        stored: u64,
        /// Bytes declared.
        image_len: u64,
    },
    /// The image cannot be used (its structure is the source).
    #[error("image refused: {0}")]
    Rejected(ImageError),
    /// The image is larger than the device can hold.
    #[error("image of {image_len} bytes does not fit: this device takes at most {limit} ({why})")]
    TooLarge {
        /// The image's length.
        image_len: u64,
        /// The limit.
        limit: u64,
        /// Which limit.
        why: &'static str,
    },
    /// The image received is not the one declared.
    #[error("the image received does not match its declared SHA-256 (transfer discarded)")]
    HashMismatch,
    /// The device requires a signature and the image has none.
    #[error("this device only takes signed images and the image is unsigned")]
    Unsigned,
    /// The signature does not verify with the device's key.
    #[error("the image's signature does not verify with this device's public key")]
    BadSignature,
    /// A chunk was damaged or does not fit its block.
    #[error("chunk refused: {0}")]
    BadChunk(String),
    /// The file system failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The system's error.
        source: std::io::Error,
    },
}

impl FlashError {
    /// The protocol's code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            FlashError::NoTransfer | FlashError::Incomplete { .. } => ErrorCode::NoTransfer,
            FlashError::Rejected(_) => ErrorCode::ImageRejected,
            FlashError::TooLarge { .. } => ErrorCode::ImageTooLarge,
            FlashError::HashMismatch => ErrorCode::HashMismatch,
            FlashError::Unsigned | FlashError::BadSignature => ErrorCode::SignatureRejected,
            FlashError::BadChunk(_) => ErrorCode::ChunkRejected,
            FlashError::NoModel(_)
            | FlashError::BadKey { .. }
            | FlashError::Table { .. }
            | FlashError::Io { .. } => ErrorCode::Storage,
        }
    }
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FlashError {
    let path = path.to_path_buf();
    move |source| FlashError::Io {
        action,
        path,
        source,
    }
}

/// Reads a file of hex digits (Ember's key and signature files): blank lines and `#` comments
/// are ignored; `None` if the rest is not hex.
pub fn read_hex_file(path: &Path) -> Result<Option<Vec<u8>>, std::io::Error> {
    Ok(decode_hex_text(&std::fs::read_to_string(path)?))
}

/// The bytes of a hex file's text (see [`read_hex_file`]).
fn decode_hex_text(text: &str) -> Option<Vec<u8>> {
    let hex: String = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    decode_hex(&hex)
}

/// Reads a public key file: 64 hex digits (blank lines and `#` comments are ignored).
pub fn read_public_key(storage: &impl Storage, path: &Path) -> Result<VerifyingKey, FlashError> {
    let bad = |reason: &str| FlashError::BadKey {
        path: path.to_path_buf(),
        reason: reason.into(),
    };
    let text = storage.read(path).map_err(io("read", path))?;
    let bytes = std::str::from_utf8(&text)
        .ok()
        .and_then(decode_hex_text)
        .ok_or_else(|| bad("not hex"))?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| bad("not 32 bytes (64 hex digits)"))?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| bad("not a point of Ed25519"))
}

/// Bytes from lower- or upper-case hex, or `None`.
pub fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Writes `bytes` to `dir/name` so that a crash leaves the old file or the new one: a temporary
/// file, synced, renamed over the old one, then the directory synced.
pub fn replace_file(
    storage: &impl Storage,
    dir: &Path,
    name: &str,
    bytes: &[u8],
) -> Result<(), FlashError> {
    let path = dir.join(name);
    let temp = dir.join(format!(".{name}.new"));
    let mut file = storage.create(&temp).map_err(io("create", &temp))?;
    file.write_all_at(bytes, 0)
        .and_then(|()| file.sync_all())
        .map_err(io("write", &temp))?;
    storage.rename(&temp, &path).map_err(io("rename", &temp))?;
    storage.sync_dir(dir).map_err(io("sync", dir))
}

/// Whether `path` exists.
fn exists(storage: &impl Storage, path: &Path) -> Result<bool, FlashError> {
    match storage.len(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io("read", path)(e)),
    }
}

/// The file of `slot` in the slot directory `dir`.
fn slot_path(dir: &Path, slot: Slot) -> PathBuf {
    dir.join(format!("slot-{}.ember", slot.as_str()))
}

/// An image being received into a slot.
struct Transfer<F> {
    incoming: Incoming,
    /// The slot's file, open for writing at `path`.
    file: F,
    path: PathBuf,
    position: Position,
    /// Encoding and encoded length of the block in progress (known from its first chunk).
    block_kind: Option<(BlockEncoding, u32)>,
    block: Vec<u8>,
    /// A gap was already reported for the current position (reported once, then silence until
    /// the host re-sends from there).
    gap_reported: bool,
}

/// What became of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkReply {
    /// Tell the host the position the device needs next (after a stored chunk, or a gap).
    Next(Position),
    /// A repeat of bytes already received, or a gap already reported: say nothing.
    Quiet,
}

/// The slot directory of a device that can be flashed, on the real file system or another
/// [`Storage`].
pub struct SlotDir<S: Storage = StdStorage> {
    storage: S,
    dir: PathBuf,
    table: SlotTable,
    key: Option<VerifyingKey>,
    transfer: Option<Transfer<S::File>>,
    /// Largest image the device's memory can serve (from its board profile), if known.
    max_image: Option<u64>,
}

impl SlotDir {
    /// Opens `dir` on the real file system (see [`SlotDir::open_with`]).
    pub fn open(dir: &Path, max_image: Option<u64>) -> Result<SlotDir, FlashError> {
        SlotDir::open_with(StdStorage, dir, max_image)
    }
}

impl<S: Storage> SlotDir<S> {
    /// Opens `dir` in `storage`: reads the slot table (a first start with `slot-a.ember` and no
    /// table makes one), and the public key if `flash.pub` exists. A trial that was under way
    /// when the device stopped is recorded as interrupted (see [`SlotTable::at_boot`]). The
    /// active slot is then the image to boot.
    pub fn open_with(
        storage: S,
        dir: &Path,
        max_image: Option<u64>,
    ) -> Result<SlotDir<S>, FlashError> {
        let table_path = dir.join(TABLE_FILE);
        let table = match storage.read(&table_path) {
            Ok(bytes) => SlotTable::decode(&bytes).map_err(|source| FlashError::Table {
                path: table_path.clone(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => SlotTable::new(),
            Err(e) => return Err(io("read", &table_path)(e)),
        };
        let key_path = dir.join(KEY_FILE);
        let key = exists(&storage, &key_path)?
            .then(|| read_public_key(&storage, &key_path))
            .transpose()?;
        let table_exists = exists(&storage, &table_path)?;
        let mut slots = SlotDir {
            storage,
            dir: dir.to_path_buf(),
            table: SlotTable::new(),
            key,
            transfer: None,
            max_image,
        };
        if !exists(&slots.storage, &slots.path(table.active))? {
            return Err(FlashError::NoModel(dir.to_path_buf()));
        }
        let booted = table.at_boot();
        if booted != table || !table_exists {
            slots.store(&booted)?;
        }
        slots.table = booted;
        Ok(slots)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The slot table.
    pub fn table(&self) -> &SlotTable {
        &self.table
    }

    /// Whether images must be signed.
    pub fn requires_signature(&self) -> bool {
        self.key.is_some()
    }

    /// The file of `slot`.
    pub fn path(&self, slot: Slot) -> PathBuf {
        slot_path(&self.dir, slot)
    }

    /// The file of the active slot: what the device serves.
    pub fn active_path(&self) -> PathBuf {
        self.path(self.table.active)
    }

    fn store(&mut self, table: &SlotTable) -> Result<(), FlashError> {
        let mut buf = [0u8; MAX_SLOT_TABLE];
        let len = table.encode(&mut buf);
        replace_file(&self.storage, &self.dir, TABLE_FILE, &buf[..len])?;
        self.table = table.clone();
        Ok(())
    }

    /// Starts receiving the image `begin` declares, or resumes receiving it: returns the position
    /// the device needs first. The image is refused here if its header is unusable, its length
    /// disagrees with its header, it is too large, or its signature is missing or wrong.
    pub fn begin(&mut self, begin: &FlashBegin) -> Result<Position, FlashError> {
        let header = ImageHeader::parse(&begin.header).map_err(FlashError::Rejected)?;
        if header.file_len != begin.image_len {
            return Err(FlashError::Rejected(if begin.image_len < header.file_len {
                ImageError::Truncated {
                    needed: header.file_len,
                    found: begin.image_len,
                }
            } else {
                ImageError::TrailingBytes {
                    expected: header.file_len,
                    found: begin.image_len,
                }
            }));
        }
        if let Some(key) = &self.key {
            let signature = begin.signature.ok_or(FlashError::Unsigned)?;
            let message = signed_message(&begin.sha256, begin.image_len);
            key.verify_strict(
                &message,
                &Ed25519Signature::from_bytes(&signature.to_bytes()),
            )
            .map_err(|_| FlashError::BadSignature)?;
        }
        let slot = self.table.active.other();
        let path = self.path(slot);
        if let Some(limit) = self.max_image
            && begin.image_len > limit
        {
            return Err(FlashError::TooLarge {
                image_len: begin.image_len,
                limit,
                why: "the board's memory budget",
            });
        }
        let space = self
            .storage
            .free_space(&self.dir)
            .map_err(io("measure free space in", &self.dir))?
            .saturating_add(self.storage.len(&path).unwrap_or(0));
        if begin.image_len > space {
            return Err(FlashError::TooLarge {
                image_len: begin.image_len,
                limit: space,
                why: "free space in the slot directory",
            });
        }
        // The same image as the transfer under way (or recorded before a restart) resumes.
        if let Some(transfer) = &mut self.transfer
            && transfer.incoming.sha256 == begin.sha256
            && transfer.incoming.image_len == begin.image_len
        {
            transfer.gap_reported = false;
            return Ok(transfer.position);
        }
        let stored = self
            .table
            .resume_point(&begin.sha256, begin.image_len)
            .filter(|&stored| self.storage.len(&path).is_ok_and(|len| len >= stored))
            .unwrap_or(0);
        let mut file = self.storage.open(&path).map_err(io("open", &path))?;
        file.set_len(begin.image_len).map_err(io("size", &path))?;
        let incoming = Incoming {
            image_len: begin.image_len,
            sha256: begin.sha256,
            slot,
            stored,
        };
        let mut table = self.table.clone();
        table.incoming = Some(incoming.clone());
        self.store(&table)?;
        let position = Position {
            offset: stored,
            at: 0,
        };
        self.transfer = Some(Transfer {
            incoming,
            file,
            path,
            position,
            block_kind: None,
            block: Vec::new(),
            gap_reported: false,
        });
        Ok(position)
    }

    /// The position the transfer under way needs next.
    pub fn position(&self) -> Option<Position> {
        self.transfer.as_ref().map(|t| t.position)
    }

    /// Takes one chunk. A damaged or inconsistent chunk is an error; the transfer then waits
    /// for its block from the start ([`SlotDir::position`]).
    pub fn chunk(&mut self, chunk: &FlashChunk) -> Result<ChunkReply, FlashError> {
        let transfer = self.transfer.as_mut().ok_or(FlashError::NoTransfer)?;
        if crc32(&[&chunk.data]) != chunk.crc32 {
            return Err(FlashError::BadChunk(format!(
                "chunk at {}+{} fails its CRC",
                chunk.offset, chunk.at
            )));
        }
        let here = transfer.position;
        // Nothing is needed once every block is in: a late repeat.
        if (chunk.offset, chunk.at) < (here.offset, here.at)
            || here.offset >= transfer.incoming.image_len
        {
            return Ok(ChunkReply::Quiet);
        }
        if (chunk.offset, chunk.at) > (here.offset, here.at) {
            if transfer.gap_reported {
                return Ok(ChunkReply::Quiet);
            }
            transfer.gap_reported = true;
            return Ok(ChunkReply::Next(here));
        }
        transfer.gap_reported = false;
        let result = transfer.take(chunk);
        if result.is_err() {
            transfer.position.at = 0;
            transfer.block_kind = None;
            transfer.block.clear();
            return result.map(|()| ChunkReply::Quiet);
        }
        let transfer = self.transfer.as_ref().ok_or(FlashError::NoTransfer)?;
        let position = transfer.position;
        let stored = transfer.incoming.stored;
        if position.at == 0
            && (position.offset - stored >= PERSIST_EVERY
                || position.offset == transfer.incoming.image_len)
        {
            self.persist()?;
        }
        Ok(ChunkReply::Next(position))
    }

    /// Syncs the received blocks and records how far they reach.
    fn persist(&mut self) -> Result<(), FlashError> {
        let Some(transfer) = &mut self.transfer else {
            return Ok(());
        };
        if let Err(e) = transfer.file.sync_data() {
            // What arrived since the last record may not be on storage, and a later sync would
            // not tell (Linux forgets a failed write-back): the host sends it again.
            transfer.position = Position {
                offset: transfer.incoming.stored,
                at: 0,
            };
            return Err(io("sync", &transfer.path)(e));
        }
        transfer.incoming.stored = transfer.position.offset;
        let mut table = self.table.clone();
        table.incoming = Some(transfer.incoming.clone());
        self.store(&table)
    }

    /// Forgets the transfer under way (the slot's bytes stay until the next one overwrites them).
    pub fn abort(&mut self) -> Result<(), FlashError> {
        self.transfer = None;
        let mut table = self.table.clone();
        table.incoming = None;
        self.store(&table)
    }

    /// Answers a flash request from the line with `send`: `FlashNext` where the host goes on,
    /// `Done` for an abort, `FlashStage`s during a commit, an `Error` when refused. Returns the
    /// slot a committed image waits in for its trial boot.
    pub fn answer(&mut self, request: &Request, send: &mut dyn FnMut(&Event)) -> Option<Slot> {
        let error = |e: &FlashError| Event::Error {
            code: e.code(),
            detail: protocol::truncated(&e.to_string()),
            // The device names the flash request this answers.
            request: None,
        };
        let result = match request {
            Request::FlashBegin(begin) => self.begin(begin).map(|position| {
                log::info!(
                    "flash: receiving {} bytes from offset {}",
                    begin.image_len,
                    position.offset
                );
                Some(Event::FlashNext(position))
            }),
            Request::FlashChunk(chunk) => match self.chunk(chunk) {
                Ok(ChunkReply::Next(position)) => Ok(Some(Event::FlashNext(position))),
                Ok(ChunkReply::Quiet) => Ok(None),
                Err(e) => {
                    log::debug!("flash: {e}");
                    send(&error(&e));
                    // Where to go on from (the start of the damaged block).
                    Ok(self.position().map(Event::FlashNext))
                }
            },
            Request::FlashAbort => self.abort().map(|()| Some(Event::Done)),
            Request::FlashCommit => {
                let verifying = Event::FlashStage {
                    stage: FlashStage::Verifying,
                };
                match self.commit(|| send(&verifying)) {
                    Ok(slot) => {
                        log::info!("flash: image in slot {slot} verified; trial boot");
                        send(&Event::FlashStage {
                            stage: FlashStage::Testing,
                        });
                        return Some(slot);
                    }
                    Err(e) => Err(e),
                }
            }
            _ => Ok(None),
        };
        match result {
            Ok(event) => {
                if let Some(event) = event {
                    send(&event);
                }
            }
            Err(e) => {
                log::warn!("flash: {e}");
                send(&error(&e));
            }
        }
        None
    }

    /// Checks the received image (every block, its SHA-256, its header, manifest and section
    /// hashes) and marks it for its trial boot; returns its slot. `verifying` is called once the
    /// image is known to be complete, before the (slow) hashing. A hash mismatch forgets the
    /// transfer: what arrived is not what was declared, so resuming it cannot help.
    pub fn commit(&mut self, verifying: impl FnOnce()) -> Result<Slot, FlashError> {
        let incoming = match (&self.transfer, &self.table.incoming) {
            (Some(t), _) => t.incoming.clone(),
            (None, Some(incoming)) if incoming.complete() => incoming.clone(),
            _ => return Err(FlashError::NoTransfer),
        };
        if let Some(t) = &self.transfer
            && t.position.offset != incoming.image_len
        {
            return Err(FlashError::Incomplete {
                stored: t.position.offset,
                image_len: incoming.image_len,
            });
        }
        verifying();
        let path = self.path(incoming.slot);
        let map = self.storage.map(&path).map_err(io("map", &path))?;
        let sha256: [u8; 32] = Sha256::digest(&map[..]).into();
        if sha256 != incoming.sha256 {
            drop(map);
            self.abort()?;
            return Err(FlashError::HashMismatch);
        }
        if let Err(e) = ember_image::parse(&map, true) {
            drop(map);
            self.abort()?;
            return Err(FlashError::Rejected(e));
        }
        self.transfer = None;
        let mut table = self.table.clone();
        table.incoming = Some(Incoming {
            stored: incoming.image_len,
            ..incoming
        });
        table.trial = Some(incoming.slot);
        self.store(&table)?;
        Ok(incoming.slot)
    }

    /// The slot on trial passed its self-test: it becomes the active slot.
    pub fn activate(&mut self) -> Result<Slot, FlashError> {
        let table = self.table.activated();
        self.store(&table)?;
        Ok(table.active)
    }

    /// The slot on trial failed: the active slot stays, and the failed image is forgotten.
    pub fn roll_back(&mut self, outcome: FlashOutcome) -> Result<(), FlashError> {
        let table = self.table.rolled_back(outcome);
        self.store(&table)
    }
}

impl<F: StorageFile> Transfer<F> {
    /// Appends a chunk at the current position; stores the block when it is complete.
    fn take(&mut self, chunk: &FlashChunk) -> Result<(), FlashError> {
        let expected = block_len(self.position.offset, self.incoming.image_len);
        let kind = (chunk.encoding, chunk.encoded_len);
        let bad = |what: String| Err(FlashError::BadChunk(what));
        match self.block_kind {
            None => {
                let fits = match chunk.encoding {
                    BlockEncoding::Raw => chunk.encoded_len == expected,
                    BlockEncoding::Zstd => {
                        chunk.encoded_len > 0 && chunk.encoded_len <= expected + ZSTD_SLACK
                    }
                };
                if !fits {
                    return bad(format!(
                        "a {:?} block of {} bytes cannot hold the {expected} bytes at offset {}",
                        chunk.encoding, chunk.encoded_len, chunk.offset
                    ));
                }
                self.block_kind = Some(kind);
                self.block.clear();
            }
            Some(known) if known != kind => {
                return bad(format!(
                    "chunk at {}+{} disagrees with its block's encoding or length",
                    chunk.offset, chunk.at
                ));
            }
            Some(_) => {}
        }
        if chunk.data.is_empty() || chunk.at as usize + chunk.data.len() > kind.1 as usize {
            return bad(format!(
                "chunk at {}+{} of {} bytes runs past its block",
                chunk.offset,
                chunk.at,
                chunk.data.len()
            ));
        }
        self.block.extend_from_slice(&chunk.data);
        self.position.at += chunk.data.len() as u32;
        if self.position.at < kind.1 {
            return Ok(());
        }
        let mut plain = vec![0u8; expected as usize];
        let bytes: &[u8] = match chunk.encoding {
            BlockEncoding::Raw => &self.block,
            BlockEncoding::Zstd => {
                let mut decoder = ruzstd::decoding::FrameDecoder::new();
                match decoder.decode_all(&self.block, &mut plain) {
                    Ok(n) if n == expected as usize => &plain,
                    Ok(n) => {
                        return bad(format!(
                            "block at {} decompresses to {n} bytes, not {expected}",
                            chunk.offset
                        ));
                    }
                    Err(e) => {
                        return bad(format!(
                            "block at {} does not decompress: {e}",
                            chunk.offset
                        ));
                    }
                }
            }
        };
        self.file
            .write_all_at(bytes, self.position.offset)
            .map_err(io("write", &self.path))?;
        self.position = Position {
            offset: self.position.offset + expected as u64,
            at: 0,
        };
        self.block_kind = None;
        self.block.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember_core::flash::FLASH_BLOCK;

    /// A slot directory whose slot A holds some bytes (not parsed until a commit).
    fn slots(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ember-flash-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("slot-a.ember"), b"the active image").unwrap();
        dir
    }

    /// `len` bytes that compress somewhat, with a header that declares `len`.
    fn image(len: usize) -> Vec<u8> {
        let mut bytes: Vec<u8> = (0..len).map(|i| ((i * 7919) % 251 / 3) as u8).collect();
        let header = ImageHeader {
            version: ember_core::image::IMAGE_VERSION,
            manifest_len: 0,
            manifest_sha256: [0; 32],
            file_len: len as u64,
        };
        bytes[..64].copy_from_slice(&header.to_bytes());
        bytes
    }

    fn begin(bytes: &[u8]) -> FlashBegin {
        FlashBegin {
            image_len: bytes.len() as u64,
            sha256: Sha256::digest(bytes).into(),
            header: bytes[..64].iter().copied().collect(),
            signature: None,
        }
    }

    /// The chunks of block `index`, zstd-compressed (by the C library) when `zstd`.
    fn block_chunks(bytes: &[u8], index: usize, zstd: bool) -> Vec<FlashChunk> {
        let start = index * FLASH_BLOCK as usize;
        let plain = &bytes[start..(start + FLASH_BLOCK as usize).min(bytes.len())];
        let (encoding, data) = if zstd {
            (BlockEncoding::Zstd, zstd::bulk::compress(plain, 3).unwrap())
        } else {
            (BlockEncoding::Raw, plain.to_vec())
        };
        data.chunks(ember_core::flash::MAX_CHUNK)
            .enumerate()
            .map(|(i, piece)| FlashChunk {
                offset: start as u64,
                at: (i * ember_core::flash::MAX_CHUNK) as u32,
                encoding,
                encoded_len: data.len() as u32,
                crc32: crc32(&[piece]),
                data: piece.iter().copied().collect(),
            })
            .collect()
    }

    fn send_block(slots: &mut SlotDir, bytes: &[u8], index: usize) -> ChunkReply {
        let mut last = ChunkReply::Quiet;
        for chunk in block_chunks(bytes, index, index.is_multiple_of(2)) {
            last = slots.chunk(&chunk).unwrap();
        }
        last
    }

    #[test]
    fn blocks_arrive_raw_and_compressed_and_a_restart_resumes_from_the_last_record() {
        let dir = slots("resume");
        let bytes = image(3 * 1024 * 1024 + 1000);
        let mut slots = SlotDir::open(&dir, None).unwrap();
        assert_eq!(slots.begin(&begin(&bytes)).unwrap(), Position::default());
        for index in 0..20 {
            let next = send_block(&mut slots, &bytes, index);
            let offset = ((index + 1) * FLASH_BLOCK as usize) as u64;
            assert_eq!(next, ChunkReply::Next(Position { offset, at: 0 }));
        }
        // 20 blocks arrived; the last record (every MiB) says 16.
        drop(slots);
        let mut slots = SlotDir::open(&dir, None).unwrap();
        let resumed = slots.begin(&begin(&bytes)).unwrap();
        assert_eq!(
            resumed,
            Position {
                offset: PERSIST_EVERY,
                at: 0
            }
        );
        let blocks = bytes.len().div_ceil(FLASH_BLOCK as usize);
        for index in 16..blocks {
            send_block(&mut slots, &bytes, index);
        }
        assert_eq!(slots.position().unwrap().offset, bytes.len() as u64);
        assert_eq!(std::fs::read(dir.join("slot-b.ember")).unwrap(), bytes);
        assert_eq!(
            slots.table().incoming.as_ref().unwrap().stored,
            bytes.len() as u64
        );
        // Another image's transfer starts from scratch.
        let other = image(100_000);
        assert_eq!(slots.begin(&begin(&other)).unwrap(), Position::default());
    }

    #[test]
    fn gaps_repeats_and_damage_get_the_needed_position() {
        let dir = slots("gaps");
        let bytes = image(300_000);
        let mut slots = SlotDir::open(&dir, None).unwrap();
        slots.begin(&begin(&bytes)).unwrap();
        let block0 = block_chunks(&bytes, 0, false);
        let block1 = block_chunks(&bytes, 1, true);
        // A gap is reported once, then silence until the needed chunk comes.
        let start = ChunkReply::Next(Position::default());
        assert_eq!(slots.chunk(&block0[1]).unwrap(), start);
        assert_eq!(slots.chunk(&block0[2]).unwrap(), ChunkReply::Quiet);
        for chunk in &block0 {
            slots.chunk(chunk).unwrap();
        }
        // A repeat of a stored chunk is ignored.
        assert_eq!(slots.chunk(&block0[0]).unwrap(), ChunkReply::Quiet);
        // A damaged chunk is refused; the block starts over.
        let mut damaged = block1[0].clone();
        damaged.data[3] ^= 0x40;
        assert!(matches!(
            slots.chunk(&damaged),
            Err(FlashError::BadChunk(_))
        ));
        // A compressed block whose data is not zstd (right CRC, wrong bytes) is refused whole.
        let mut garbage: Vec<FlashChunk> = block1.clone();
        for chunk in &mut garbage {
            chunk.data.iter_mut().for_each(|b| *b = !*b);
            chunk.crc32 = crc32(&[&chunk.data]);
        }
        let mut result = Ok(ChunkReply::Quiet);
        for chunk in &garbage {
            result = slots.chunk(chunk);
            if result.is_err() {
                break;
            }
        }
        assert!(matches!(result, Err(FlashError::BadChunk(_))), "{result:?}");
        let block_start = Position {
            offset: FLASH_BLOCK as u64,
            at: 0,
        };
        assert_eq!(slots.position(), Some(block_start));
        // A chunk claiming a raw block of the wrong length is refused.
        let mut wrong = block_chunks(&bytes, 1, false)[0].clone();
        wrong.encoded_len += 1;
        assert!(matches!(slots.chunk(&wrong), Err(FlashError::BadChunk(_))));
        for index in 1..5 {
            send_block(&mut slots, &bytes, index);
        }
        assert_eq!(std::fs::read(dir.join("slot-b.ember")).unwrap(), bytes);
        // Committing checks the hash first: this one matches, and the bytes are no image.
        assert!(matches!(slots.commit(|| {}), Err(FlashError::Rejected(_))));
        assert_eq!(slots.table().incoming, None);
    }

    #[test]
    fn begins_that_cannot_work_are_refused_up_front() {
        let dir = slots("refusals");
        let bytes = image(100_000);
        let mut slots = SlotDir::open(&dir, Some(50_000)).unwrap();
        assert!(matches!(
            slots.begin(&begin(&bytes)),
            Err(FlashError::TooLarge { limit: 50_000, .. })
        ));
        let mut short = begin(&bytes);
        short.image_len -= 1;
        assert!(matches!(
            slots.begin(&short),
            Err(FlashError::Rejected(ImageError::Truncated { .. }))
        ));
        assert!(matches!(
            slots.chunk(&block_chunks(&bytes, 0, false)[0]),
            Err(FlashError::NoTransfer)
        ));
        assert!(matches!(slots.commit(|| {}), Err(FlashError::NoTransfer)));
        // A key makes signatures mandatory; a damaged table or key stops the device with a reason.
        let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        let public: String = key
            .verifying_key()
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        std::fs::write(dir.join(KEY_FILE), format!("# test key\n{public}\n")).unwrap();
        let mut slots = SlotDir::open(&dir, None).unwrap();
        assert!(matches!(
            slots.begin(&begin(&image(1000))),
            Err(FlashError::Unsigned)
        ));
        std::fs::write(dir.join(KEY_FILE), "not hex").unwrap();
        assert!(matches!(
            SlotDir::open(&dir, None),
            Err(FlashError::BadKey { .. })
        ));
        std::fs::remove_file(dir.join(KEY_FILE)).unwrap();
        std::fs::write(dir.join(TABLE_FILE), b"EMST garbage").unwrap();
        assert!(matches!(
            SlotDir::open(&dir, None),
            Err(FlashError::Table { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        assert!(matches!(
            SlotDir::open(&dir, None),
            Err(FlashError::NoModel(_))
        ));
    }
}
