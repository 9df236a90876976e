//! Frames of the serial protocol's frame mode: COBS-encoded bytes ended by a `0x00`, each holding
//! a 16-bit sequence number, a payload, and a CRC32 over both.
//!
//! ```text
//! frame   = cobs(seq: u16 LE ‖ payload ‖ crc32(seq ‖ payload): u32 LE) ‖ 0x00
//! ```
//!
//! COBS removes every zero byte from the body, so `0x00` marks frame ends unambiguously and a
//! receiver that joins mid-stream, or loses bytes to line noise, resynchronizes at the next one.
//! Everything here works on caller-provided buffers: no allocation.

use core::fmt;

/// Ends every frame; never appears inside one.
pub const DELIMITER: u8 = 0x00;
/// Bytes of the sequence number and the CRC around a payload.
pub const OVERHEAD: usize = 2 + 4;

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// More bytes arrived before a delimiter than the receiver's limit allows.
    Oversized {
        /// The receiver's limit in encoded bytes, the delimiter included.
        limit: usize,
    },
    /// The bytes are not valid COBS (a zero inside, or a block running past the end).
    BadEncoding,
    /// The frame is shorter than a sequence number and a CRC.
    TooShort,
    /// The CRC does not match: the frame was damaged on the line.
    BadCrc {
        /// CRC carried by the frame.
        carried: u32,
        /// CRC of the bytes received.
        computed: u32,
    },
    /// The output buffer is too small for the result.
    BufferTooSmall,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Oversized { limit } => {
                write!(
                    f,
                    "frame longer than {limit} bytes (its delimiter included)"
                )
            }
            FrameError::BadEncoding => f.write_str("frame is not valid COBS"),
            FrameError::TooShort => f.write_str("frame shorter than its sequence number and CRC"),
            FrameError::BadCrc { carried, computed } => write!(
                f,
                "frame CRC {carried:#010x} does not match its bytes ({computed:#010x})"
            ),
            FrameError::BufferTooSmall => f.write_str("buffer too small for the frame"),
        }
    }
}

impl core::error::Error for FrameError {}

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            bit += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

const CRC_TABLE: [u32; 256] = crc_table();

/// CRC-32 (IEEE 802.3, as in zlib and Ethernet) of `parts` taken one after another.
pub fn crc32(parts: &[&[u8]]) -> u32 {
    let mut crc = !0u32;
    for part in parts {
        for &b in *part {
            crc = CRC_TABLE[((crc ^ b as u32) & 0xFF) as usize] ^ (crc >> 8);
        }
    }
    !crc
}

/// Largest COBS encoding of `len` bytes (one code byte per 254 data bytes, plus one).
pub const fn max_encoded_len(len: usize) -> usize {
    len + len / 254 + 1
}

/// COBS-encodes `input` into `out` (no delimiter) and returns the encoded length.
pub fn cobs_encode(input: &[u8], out: &mut [u8]) -> Result<usize, FrameError> {
    let mut put = |at: usize, b: u8| -> Result<(), FrameError> {
        *out.get_mut(at).ok_or(FrameError::BufferTooSmall)? = b;
        Ok(())
    };
    let (mut code_at, mut code, mut next) = (0usize, 1u8, 1usize);
    for &b in input {
        if b == 0 {
            put(code_at, code)?;
            (code_at, code, next) = (next, 1, next + 1);
        } else {
            put(next, b)?;
            next += 1;
            code += 1;
            if code == 0xFF {
                put(code_at, code)?;
                (code_at, code, next) = (next, 1, next + 1);
            }
        }
    }
    put(code_at, code)?;
    Ok(next)
}

/// Decodes COBS `input` (without its delimiter) into `out` and returns the decoded length.
pub fn cobs_decode(input: &[u8], out: &mut [u8]) -> Result<usize, FrameError> {
    let (mut at, mut written) = (0usize, 0usize);
    let mut put = |b: u8, written: &mut usize| -> Result<(), FrameError> {
        *out.get_mut(*written).ok_or(FrameError::BufferTooSmall)? = b;
        *written += 1;
        Ok(())
    };
    while at < input.len() {
        let code = input[at] as usize;
        if code == 0 || at + code > input.len() {
            return Err(FrameError::BadEncoding);
        }
        for &b in &input[at + 1..at + code] {
            if b == 0 {
                return Err(FrameError::BadEncoding);
            }
            put(b, &mut written)?;
        }
        at += code;
        if code < 0xFF && at < input.len() {
            put(0, &mut written)?;
        }
    }
    Ok(written)
}

/// Writes the frame for `seq` and `payload` (delimiter included) into `out`; returns its length.
/// `scratch` holds the unencoded body and needs `payload.len() + OVERHEAD` bytes.
pub fn encode_frame(
    seq: u16,
    payload: &[u8],
    scratch: &mut [u8],
    out: &mut [u8],
) -> Result<usize, FrameError> {
    let body_len = payload.len() + OVERHEAD;
    let body = scratch
        .get_mut(..body_len)
        .ok_or(FrameError::BufferTooSmall)?;
    let seq = seq.to_le_bytes();
    body[..2].copy_from_slice(&seq);
    body[2..2 + payload.len()].copy_from_slice(payload);
    let crc = crc32(&[&seq, payload]);
    body[2 + payload.len()..].copy_from_slice(&crc.to_le_bytes());
    let len = cobs_encode(body, out)?;
    *out.get_mut(len).ok_or(FrameError::BufferTooSmall)? = DELIMITER;
    Ok(len + 1)
}

/// A received frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The sender's sequence number.
    pub seq: u16,
    /// The message bytes.
    pub payload: &'a [u8],
}

/// Collects bytes from the line and yields frames, resynchronizing at every delimiter. Takes
/// frames of at most `N` encoded bytes, the delimiter included; longer frames are reported
/// (once) and skipped.
#[derive(Debug, Clone)]
pub struct FrameDecoder<const N: usize> {
    raw: heapless::Vec<u8, N>,
    overflowed: bool,
    decoded: [u8; N],
}

impl<const N: usize> Default for FrameDecoder<N> {
    fn default() -> Self {
        FrameDecoder {
            raw: heapless::Vec::new(),
            overflowed: false,
            decoded: [0; N],
        }
    }
}

impl<const N: usize> FrameDecoder<N> {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Drops the bytes of an unfinished frame; true if there were any. A sender that gave up in
    /// the middle of a frame (a write that timed out) leaves its start on the line, which would
    /// otherwise spoil the next frame: call this when the line has been quiet for longer than
    /// any frame takes to arrive.
    pub fn discard_partial(&mut self) -> bool {
        self.overflowed = false;
        let had = !self.raw.is_empty();
        self.raw.clear();
        had
    }

    /// Takes one byte from the line: `None` until a delimiter ends a frame, then the frame or why
    /// it was refused. Delimiters with nothing before them (an idle line) yield `None`.
    pub fn push(&mut self, byte: u8) -> Option<Result<Frame<'_>, FrameError>> {
        if byte != DELIMITER {
            // The delimiter still has to fit within `N`.
            if (self.raw.len() + 1 >= N || self.raw.push(byte).is_err()) && !self.overflowed {
                warn!("frame longer than {} bytes: dropping it", N);
                self.overflowed = true;
            }
            return None;
        }
        if core::mem::take(&mut self.overflowed) {
            self.raw.clear();
            return Some(Err(FrameError::Oversized { limit: N }));
        }
        if self.raw.is_empty() {
            return None;
        }
        let decoded = cobs_decode(&self.raw, &mut self.decoded);
        self.raw.clear();
        Some(decoded.and_then(|len| {
            if len < OVERHEAD {
                return Err(FrameError::TooShort);
            }
            let (content, crc) = self.decoded[..len].split_at(len - 4);
            let carried = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
            let computed = crc32(&[content]);
            if carried != computed {
                debug!("frame of {} bytes with a bad CRC: dropping it", len);
                return Err(FrameError::BadCrc { carried, computed });
            }
            Ok(Frame {
                seq: u16::from_le_bytes([content[0], content[1]]),
                payload: &content[2..],
            })
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::quickcheck;
    use std::vec::Vec;

    const N: usize = 600;

    fn frame_bytes(seq: u16, payload: &[u8]) -> Vec<u8> {
        let mut scratch = [0u8; N];
        let mut out = [0u8; N + 8];
        let len = encode_frame(seq, payload, &mut scratch, &mut out).unwrap();
        out[..len].to_vec()
    }

    #[test]
    fn the_start_of_an_abandoned_frame_is_discarded_and_the_next_frame_comes_through() {
        let whole = frame_bytes(7, b"status");
        let mut decoder = FrameDecoder::<N>::new();
        assert!(!decoder.discard_partial());
        for &byte in &frame_bytes(6, b"a token")[..5] {
            assert!(decoder.push(byte).is_none());
        }
        assert!(decoder.discard_partial());
        let mut yielded = Vec::new();
        for &byte in &whole {
            if let Some(frame) = decoder.push(byte) {
                let frame = frame.unwrap();
                yielded.push((frame.seq, frame.payload.to_vec()));
            }
        }
        assert_eq!(yielded, [(7, b"status".to_vec())]);
    }

    /// Every frame the decoder yields from `stream`: (seq, payload) or the error.
    fn decode_all(stream: &[u8]) -> Vec<Result<(u16, Vec<u8>), FrameError>> {
        let mut decoder = FrameDecoder::<N>::new();
        stream
            .iter()
            .filter_map(|&b| {
                decoder
                    .push(b)
                    .map(|r| r.map(|f| (f.seq, f.payload.to_vec())))
            })
            .collect()
    }

    #[test]
    fn crc32_is_the_ieee_one() {
        assert_eq!(crc32(&[b"123456789"]), 0xCBF4_3926);
        assert_eq!(crc32(&[b"1234", b"56789"]), 0xCBF4_3926);
        assert_eq!(crc32(&[]), 0);
    }

    #[test]
    fn cobs_matches_the_papers_examples() {
        let cases: [(&[u8], &[u8]); 4] = [
            (&[0x00], &[0x01, 0x01]),
            (&[0x00, 0x00], &[0x01, 0x01, 0x01]),
            (&[0x11, 0x22, 0x00, 0x33], &[0x03, 0x11, 0x22, 0x02, 0x33]),
            (&[0x11, 0x00, 0x00, 0x00], &[0x02, 0x11, 0x01, 0x01, 0x01]),
        ];
        for (plain, encoded) in cases {
            let mut out = [0u8; 16];
            let len = cobs_encode(plain, &mut out).unwrap();
            assert_eq!(&out[..len], encoded);
            let mut back = [0u8; 16];
            let len = cobs_decode(encoded, &mut back).unwrap();
            assert_eq!(&back[..len], plain);
        }
        // 254 non-zero bytes fill one block exactly.
        let plain = [7u8; 254];
        let mut out = [0u8; 300];
        let len = cobs_encode(&plain, &mut out).unwrap();
        assert_eq!((len, out[0]), (256, 0xFF));
    }

    #[test]
    fn the_limit_counts_the_delimiter() {
        let mut decoder = FrameDecoder::<N>::new();
        for _ in 0..N - 2 {
            assert!(decoder.push(1).is_none());
        }
        // N - 1 bytes and the delimiter: N in all, taken (and found damaged, not oversized).
        assert!(decoder.push(1).is_none());
        assert!(matches!(
            decoder.push(DELIMITER),
            Some(Err(FrameError::BadCrc { .. }))
        ));
        for _ in 0..N {
            assert!(decoder.push(1).is_none());
        }
        assert_eq!(
            decoder.push(DELIMITER),
            Some(Err(FrameError::Oversized { limit: N }))
        );
    }

    #[test]
    fn oversized_frames_are_reported_once_and_the_next_frame_is_read() {
        let mut stream = std::vec![9u8; N + 10];
        stream.push(DELIMITER);
        stream.extend(frame_bytes(5, b"after"));
        assert_eq!(
            decode_all(&stream),
            std::vec![
                Err(FrameError::Oversized { limit: N }),
                Ok((5, b"after".to_vec()))
            ]
        );
    }

    quickcheck! {
        fn cobs_round_trips_without_zeros(plain: Vec<u8>) -> bool {
            let mut out = std::vec![0u8; max_encoded_len(plain.len())];
            let len = cobs_encode(&plain, &mut out).unwrap();
            let mut back = std::vec![0u8; plain.len()];
            let decoded = cobs_decode(&out[..len], &mut back).unwrap();
            !out[..len].contains(&0) && back[..decoded] == plain[..]
        }

        fn frames_survive_garbage_between_them(frames: Vec<(u16, Vec<u8>)>, garbage: Vec<u8>) -> bool {
            let frames: Vec<(u16, Vec<u8>)> = frames
                .into_iter()
                .map(|(s, mut p)| { p.truncate(500); (s, p) })
                .collect();
            let mut stream = Vec::new();
            for (seq, payload) in &frames {
                // Noise ended by a delimiter, then a frame: the frame must come through.
                stream.extend(garbage.iter().take(40));
                stream.push(DELIMITER);
                stream.extend(frame_bytes(*seq, payload));
            }
            let good: Vec<(u16, Vec<u8>)> =
                decode_all(&stream).into_iter().filter_map(Result::ok).collect();
            good == frames
        }

        fn accepted_frames_carry_a_valid_crc(bytes: Vec<u8>) -> bool {
            // Arbitrary bytes never panic the decoder; what it accepts re-encodes to itself.
            decode_all(&bytes).into_iter().all(|r| match r {
                Ok((seq, payload)) => decode_all(&frame_bytes(seq, &payload)) == std::vec![Ok((seq, payload))],
                Err(_) => true,
            })
        }

        fn a_flipped_bit_is_never_accepted(seq: u16, payload: Vec<u8>, at: usize, bit: u8) -> bool {
            let mut payload = payload;
            payload.truncate(500);
            let mut bytes = frame_bytes(seq, &payload);
            // Any byte but the final delimiter.
            let at = at % (bytes.len() - 1);
            bytes[at] ^= 1 << (bit % 8);
            decode_all(&bytes).iter().all(Result::is_err)
        }
    }
}
