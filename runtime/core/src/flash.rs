//! Flashing a model over the serial line: the device's two model slots, the record of which one
//! it boots, and the rules of a transfer.
//!
//! The device keeps two slots, A and B. It serves the *active* slot and writes a new image into
//! the other one. An image arrives in blocks of [`FLASH_BLOCK`] bytes (the last one shorter),
//! each sent whole or zstd-compressed and cut into chunks that fit a frame. The device answers
//! every chunk with the next position it needs ([`Position`]), so a transfer cut off anywhere
//! resumes where it stopped, even after the device restarts (it records its progress in the
//! [`SlotTable`]).
//!
//! After the last block the host commits: the device checks the SHA-256 of the whole image, the
//! image's own section hashes and, when it holds a public key, an ed25519 signature over
//! [`signed_message`]. Then it boots the new image on trial and runs the self-test stored in
//! its manifest; only if that passes does the new slot become active. A device that restarts
//! at any point boots the active slot, which always held a verified, tested image.

use core::fmt;
use serde::{Deserialize, Serialize};

/// Bytes of image per block (the last block of an image is shorter). Blocks are compressed
/// independently, so the device holds at most one in memory.
pub const FLASH_BLOCK: u32 = 64 * 1024;
/// Most bytes of block data in one [`crate::protocol::FlashChunk`].
pub const MAX_CHUNK: usize = 1792;
/// What an ed25519 signature of an Ember image signs, before the image's SHA-256 and length.
pub const SIGNATURE_CONTEXT: &[u8; 24] = b"ember-image-signature-v1";

/// The 48 bytes an image's ed25519 signature covers: [`SIGNATURE_CONTEXT`], the SHA-256 of the
/// whole image and its length (u64 little-endian). The length is redundant with the hash but
/// lets a device refuse an oversized image before receiving it.
pub fn signed_message(sha256: &[u8; 32], image_len: u64) -> [u8; 64] {
    let mut message = [0u8; 64];
    message[..24].copy_from_slice(SIGNATURE_CONTEXT);
    message[24..56].copy_from_slice(sha256);
    message[56..].copy_from_slice(&image_len.to_le_bytes());
    message
}

/// One of the device's two model slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Slot {
    /// The first slot.
    A,
    /// The second slot.
    B,
}

impl Slot {
    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// `a` or `b`.
    pub fn as_str(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Slot::A => "A",
            Slot::B => "B",
        })
    }
}

/// How a block travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlockEncoding {
    /// The block's bytes as they are.
    Raw,
    /// One zstd frame that decompresses to exactly the block.
    Zstd,
}

/// Where a transfer stands: the block starting at image offset `offset`, of which `at` encoded
/// bytes have arrived. `offset` equal to the image length means every block has arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Position {
    /// Image offset of the block (a multiple of [`FLASH_BLOCK`]).
    pub offset: u64,
    /// Encoded bytes of that block received so far.
    pub at: u32,
}

/// Length of the block starting at `offset` in an image of `image_len` bytes (0 past the end).
pub fn block_len(offset: u64, image_len: u64) -> u32 {
    image_len.saturating_sub(offset).min(FLASH_BLOCK as u64) as u32
}

/// An image being received: what the host declared, and how much of it is safely on storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incoming {
    /// Length of the whole image.
    pub image_len: u64,
    /// SHA-256 of the whole (uncompressed) image.
    pub sha256: [u8; 32],
    /// The slot it is written into (never the active one).
    pub slot: Slot,
    /// Bytes from the start of the image that are written and synced.
    pub stored: u64,
}

impl Incoming {
    /// Whether every block is stored.
    pub fn complete(&self) -> bool {
        self.stored == self.image_len
    }
}

/// How the last flash ended, for the host that asks after a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FlashOutcome {
    /// The new image passed its self-test and is active.
    Activated,
    /// The new image failed its self-test; the device went back to the previous one.
    SelfTestFailed,
    /// The device restarted while the new image was on trial; it went back to the previous one.
    TrialInterrupted,
}

/// What the device records about its slots, in one small file written atomically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotTable {
    /// The slot the device boots: it held a verified image that passed its self-test.
    pub active: Slot,
    /// The image being received into the other slot, if any.
    pub incoming: Option<Incoming>,
    /// The other slot's verified image is on trial (set just before the trial boot starts).
    pub trial: Option<Slot>,
    /// How the last flash ended.
    pub last: Option<FlashOutcome>,
    /// Times the active slot changed.
    pub switches: u32,
}

/// The four bytes a slot table file starts with.
pub const SLOT_TABLE_MAGIC: [u8; 4] = *b"EMST";
/// Most bytes of an encoded slot table.
pub const MAX_SLOT_TABLE: usize = 128;

/// Why a slot table could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotTableError {
    /// It does not start with [`SLOT_TABLE_MAGIC`].
    BadMagic,
    /// Its CRC does not match (a torn or damaged write).
    BadCrc,
    /// It does not decode.
    BadEncoding,
}

impl fmt::Display for SlotTableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SlotTableError::BadMagic => "not an Ember slot table (no EMST magic)",
            SlotTableError::BadCrc => "slot table fails its CRC (damaged)",
            SlotTableError::BadEncoding => "slot table does not decode",
        })
    }
}

impl core::error::Error for SlotTableError {}

impl SlotTable {
    /// A device whose image is in slot A and that never flashed.
    pub fn new() -> Self {
        SlotTable {
            active: Slot::A,
            incoming: None,
            trial: None,
            last: None,
            switches: 0,
        }
    }

    /// The table as bytes: magic, postcard body, CRC-32 of the body (u32 LE). Returns the
    /// length written into `out`.
    pub fn encode(&self, out: &mut [u8; MAX_SLOT_TABLE]) -> usize {
        out[..4].copy_from_slice(&SLOT_TABLE_MAGIC);
        // Every field is bounded: the body always fits (checked by a test).
        let body_len = postcard::to_slice(self, &mut out[4..MAX_SLOT_TABLE - 4])
            .map(|b| b.len())
            .unwrap_or(0);
        let crc = crate::frame::crc32(&[&out[4..4 + body_len]]);
        out[4 + body_len..8 + body_len].copy_from_slice(&crc.to_le_bytes());
        8 + body_len
    }

    /// Reads a table written by [`SlotTable::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, SlotTableError> {
        if bytes.len() < 8 || bytes[..4] != SLOT_TABLE_MAGIC {
            return Err(SlotTableError::BadMagic);
        }
        let (body, crc) = bytes[4..].split_at(bytes.len() - 8);
        let carried = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        if crate::frame::crc32(&[body]) != carried {
            return Err(SlotTableError::BadCrc);
        }
        match postcard::take_from_bytes(body) {
            Ok((table, [])) => Ok(table),
            _ => Err(SlotTableError::BadEncoding),
        }
    }

    /// The table a device should act on when it starts: a trial that was under way when it
    /// stopped counts as failed (the image may be what stopped it), so the device stays on the
    /// active slot. The received image stays, so committing again retries it.
    pub fn at_boot(&self) -> SlotTable {
        let mut table = self.clone();
        if table.trial.take().is_some() {
            table.last = Some(FlashOutcome::TrialInterrupted);
        }
        table
    }

    /// Where a transfer of `sha256` (`image_len` bytes) resumes: the stored prefix of the same
    /// image, or the start.
    pub fn resume_point(&self, sha256: &[u8; 32], image_len: u64) -> Option<u64> {
        self.incoming
            .as_ref()
            .filter(|i| &i.sha256 == sha256 && i.image_len == image_len)
            .map(|i| i.stored)
    }

    /// The table once the other slot's image passed its self-test: it becomes active.
    pub fn activated(&self) -> SlotTable {
        SlotTable {
            active: self.active.other(),
            incoming: None,
            trial: None,
            last: Some(FlashOutcome::Activated),
            switches: self.switches.wrapping_add(1),
        }
    }

    /// The table once the other slot's image failed its self-test: the active slot stays, and
    /// the failed image is forgotten (a new transfer starts from scratch).
    pub fn rolled_back(&self, outcome: FlashOutcome) -> SlotTable {
        SlotTable {
            active: self.active,
            incoming: None,
            trial: None,
            last: Some(outcome),
            switches: self.switches,
        }
    }
}

impl Default for SlotTable {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::{Arbitrary, Gen, quickcheck};

    fn slot(g: &mut Gen) -> Slot {
        if bool::arbitrary(g) { Slot::A } else { Slot::B }
    }

    impl Arbitrary for SlotTable {
        fn arbitrary(g: &mut Gen) -> Self {
            let outcomes = [
                FlashOutcome::Activated,
                FlashOutcome::SelfTestFailed,
                FlashOutcome::TrialInterrupted,
            ];
            SlotTable {
                active: slot(g),
                incoming: bool::arbitrary(g).then(|| Incoming {
                    image_len: u64::arbitrary(g),
                    sha256: core::array::from_fn(|_| u8::arbitrary(g)),
                    slot: slot(g),
                    stored: u64::arbitrary(g),
                }),
                trial: bool::arbitrary(g).then(|| slot(g)),
                last: bool::arbitrary(g).then(|| *g.choose(&outcomes).unwrap()),
                switches: u32::arbitrary(g),
            }
        }
    }

    quickcheck! {
        fn slot_tables_round_trip(table: SlotTable) -> bool {
            let mut buf = [0u8; MAX_SLOT_TABLE];
            let len = table.encode(&mut buf);
            SlotTable::decode(&buf[..len]) == Ok(table)
        }

        fn damaged_slot_tables_are_refused(table: SlotTable, at: usize, flip: u8) -> bool {
            let mut buf = [0u8; MAX_SLOT_TABLE];
            let len = table.encode(&mut buf);
            let flip = flip.max(1);
            buf[at % len] ^= flip;
            SlotTable::decode(&buf[..len]).is_err()
        }

        fn arbitrary_bytes_never_panic(bytes: std::vec::Vec<u8>) -> bool {
            let _ = SlotTable::decode(&bytes);
            true
        }

        fn truncated_slot_tables_are_refused(table: SlotTable, cut: usize) -> bool {
            let mut buf = [0u8; MAX_SLOT_TABLE];
            let len = table.encode(&mut buf);
            SlotTable::decode(&buf[..cut % len]).is_err()
        }
    }

    #[test]
    fn largest_table_fits() {
        let table = SlotTable {
            active: Slot::B,
            incoming: Some(Incoming {
                image_len: u64::MAX,
                sha256: [0xFF; 32],
                slot: Slot::A,
                stored: u64::MAX,
            }),
            trial: Some(Slot::A),
            last: Some(FlashOutcome::TrialInterrupted),
            switches: u32::MAX,
        };
        let mut buf = [0u8; MAX_SLOT_TABLE];
        let len = table.encode(&mut buf);
        assert_eq!(SlotTable::decode(&buf[..len]), Ok(table));
    }

    #[test]
    fn an_interrupted_trial_falls_back_to_the_active_slot() {
        let mut table = SlotTable::new();
        table.incoming = Some(Incoming {
            image_len: 10,
            sha256: [1; 32],
            slot: Slot::B,
            stored: 10,
        });
        table.trial = Some(Slot::B);
        let booted = table.at_boot();
        assert_eq!(booted.active, Slot::A);
        assert_eq!(booted.trial, None);
        assert_eq!(booted.last, Some(FlashOutcome::TrialInterrupted));
        // The received image stays: committing again retries it without a new transfer.
        assert_eq!(booted.resume_point(&[1; 32], 10), Some(10));
        assert_eq!(booted.resume_point(&[2; 32], 10), None);
        assert_eq!(booted.resume_point(&[1; 32], 11), None);
        let activated = booted.activated();
        assert_eq!((activated.active, activated.switches), (Slot::B, 1));
        assert_eq!(activated.incoming, None);
        let rolled = booted.rolled_back(FlashOutcome::SelfTestFailed);
        assert_eq!(rolled.active, Slot::A);
        assert_eq!(rolled.resume_point(&[1; 32], 10), None);
    }

    #[test]
    fn blocks_cover_the_image() {
        assert_eq!(block_len(0, 10), 10);
        assert_eq!(block_len(0, 200_000), FLASH_BLOCK);
        assert_eq!(block_len(196_608, 200_000), 200_000 - 196_608);
        assert_eq!(block_len(200_000, 200_000), 0);
    }

    #[test]
    fn the_signed_message_is_context_hash_and_length() {
        let message = signed_message(&[7; 32], 0x0102);
        assert_eq!(&message[..24], b"ember-image-signature-v1");
        assert_eq!(&message[24..56], &[7; 32]);
        assert_eq!(&message[56..], &[2, 1, 0, 0, 0, 0, 0, 0]);
    }
}
