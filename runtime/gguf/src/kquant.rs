//! ggml's super-block formats: 256 values a block, split into sub-blocks with their own scales
//! (the "K-quants", and IQ4_XS), converted to `f32` as ggml's `dequantize_row_*` and gguf-py's
//! `dequantize_blocks` do — the same operations in the same order, so the results are bit-exact.
//!
//! - Q2_K (84 B): 16 scale bytes (low nibble: scale, high: min), 64 bytes of 2-bit quants, f16
//!   `d`, f16 `dmin`; value = (d·scale)·q − dmin·min, 16 sub-blocks of 16.
//! - Q3_K (110 B): 32 bytes of high bits (set: +0, clear: −4), 64 bytes of 2-bit quants, 12 bytes
//!   of sixteen 6-bit scales (offset 32), f16 `d`; value = (d·(scale − 32))·q.
//! - Q4_K (144 B): f16 `d`, f16 `dmin`, 12 bytes of eight 6-bit scales and mins, 128 bytes of
//!   nibbles; value = (d·scale)·q − dmin·min, 8 sub-blocks of 32.
//! - Q5_K (176 B): as Q4_K with 32 bytes of fifth bits before the nibbles.
//! - Q6_K (210 B): 128 bytes of low nibbles, 64 bytes of 2-bit high parts, 16 × i8 scales, f16
//!   `d`; value = (d·scale)·(q − 32), 16 sub-blocks of 16.
//! - Q8_K (292 B): f32 `d`, 256 × i8, 16 × i16 sums (unused here); value = d·q.
//! - IQ4_XS (136 B): f16 `d`, u16 high scale bits, 4 bytes of low scale nibbles, 128 bytes of
//!   nibbles indexing IQ4_NL's levels; value = (d·(scale − 32))·level, 8 sub-blocks of 32.

use crate::TensorType;
use crate::quant::{IQ4_LEVELS, f16_at};

/// Appends one block's values to the output.
pub(crate) type BlockDequantizer = fn(&[u8], &mut Vec<f32>);

/// The [`BlockDequantizer`] of a super-block type; `None` for others.
pub(crate) fn block_dequantizer(ty: TensorType) -> Option<BlockDequantizer> {
    Some(match ty {
        TensorType::Q2K => q2_k,
        TensorType::Q3K => q3_k,
        TensorType::Q4K => q4_k,
        TensorType::Q5K => q5_k,
        TensorType::Q6K => q6_k,
        TensorType::Q8K => q8_k,
        TensorType::IQ4XS => iq4_xs,
        _ => return None,
    })
}

fn q2_k(block: &[u8], out: &mut Vec<f32>) {
    let (scales, qs) = (&block[..16], &block[16..80]);
    let (d, dmin) = (f16_at(block, 80), f16_at(block, 82));
    // Sub-block s of 16: half h = s / 8, shift k = (s / 2) % 4, bytes 16·(s % 2) … of the
    // half's 32.
    for (s, &scale) in scales.iter().enumerate() {
        let (h, k, first) = (s / 8, (s / 2) % 4, 16 * (s % 2));
        let dl = d * (scale & 0x0F) as f32;
        let ml = dmin * (scale >> 4) as f32;
        let bytes = &qs[h * 32 + first..h * 32 + first + 16];
        out.extend(bytes.iter().map(|&b| dl * ((b >> (2 * k)) & 3) as f32 - ml));
    }
}

fn q3_k(block: &[u8], out: &mut Vec<f32>) {
    let (hmask, qs, packed) = (&block[..32], &block[32..96], &block[96..108]);
    let d = f16_at(block, 108);
    // Sub-block s of 16: as Q2_K's, with its sixteen 6-bit scales' low nibbles in bytes 0..8
    // (low halves first) and high pairs in 8..12; the high bit of value l of quarter
    // 4h + k is bit 4h + k of hmask[l] (set: +0, clear: −4).
    for s in 0..16 {
        let (h, k, first) = (s / 8, (s / 2) % 4, 16 * (s % 2));
        let low = (packed[s % 8] >> (4 * (s / 8))) & 0x0F;
        let high = (packed[8 + s % 4] >> (2 * (s / 4))) & 3;
        let dl = d * ((low | high << 4) as i32 - 32) as f32;
        for l in first..first + 16 {
            let q = ((qs[h * 32 + l] >> (2 * k)) & 3) as i32;
            let high_set = hmask[l] >> (h * 4 + k) & 1 == 1;
            out.push(dl * (q - if high_set { 0 } else { 4 }) as f32);
        }
    }
}

/// Q4_K's and Q5_K's eight 6-bit scales and mins, packed in 12 bytes (ggml's
/// `get_scale_min_k4`).
fn scale_min_k4(j: usize, packed: &[u8]) -> (u8, u8) {
    if j < 4 {
        (packed[j] & 63, packed[j + 4] & 63)
    } else {
        (
            (packed[j + 4] & 0x0F) | ((packed[j - 4] >> 6) << 4),
            (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4),
        )
    }
}

/// Q4_K and Q5_K: sub-block s of 32 holds the low (even s) or high (odd s) nibbles of bytes
/// 32·(s / 2) … of `qs`; `fifth_bits`, for Q5_K, holds bit s of value l at byte l.
fn q45_k(block: &[u8], fifth_bits: Option<&[u8]>, qs: &[u8], out: &mut Vec<f32>) {
    let (d, dmin, packed) = (f16_at(block, 0), f16_at(block, 2), &block[4..16]);
    for s in 0..8 {
        let (scale, min) = scale_min_k4(s, packed);
        let dl = d * scale as f32;
        let ml = dmin * min as f32;
        for (l, &byte) in qs[(s / 2) * 32..(s / 2) * 32 + 32].iter().enumerate() {
            let mut q = if s % 2 == 0 { byte & 0x0F } else { byte >> 4 };
            if let Some(bits) = fifth_bits {
                q |= ((bits[l] >> s) & 1) << 4;
            }
            out.push(dl * q as f32 - ml);
        }
    }
}

fn q4_k(block: &[u8], out: &mut Vec<f32>) {
    q45_k(block, None, &block[16..144], out);
}

fn q5_k(block: &[u8], out: &mut Vec<f32>) {
    q45_k(block, Some(&block[16..48]), &block[48..176], out);
}

fn q6_k(block: &[u8], out: &mut Vec<f32>) {
    let (ql, qh, scales) = (&block[..128], &block[128..192], &block[192..208]);
    let d = f16_at(block, 208);
    // Sub-block s of 16: half h = s / 8, quarter k = (s / 2) % 4, values l = 16·(s % 2) … of
    // the quarter's 32: the low nibble of ql[64h + l] (k = 0) or ql[64h + 32 + l] (k = 1), their
    // high nibbles (k = 2, 3); the high two bits are bits 2k, 2k+1 of qh[32h + l].
    for (s, &scale) in scales.iter().enumerate() {
        let (h, k, first) = (s / 8, (s / 2) % 4, 16 * (s % 2));
        let dl = d * scale as i8 as f32;
        for l in first..first + 16 {
            let byte = ql[64 * h + 32 * (k % 2) + l];
            let low = if k < 2 { byte & 0x0F } else { byte >> 4 };
            let high = (qh[32 * h + l] >> (2 * k)) & 3;
            out.push(dl * ((low | high << 4) as i32 - 32) as f32);
        }
    }
}

fn q8_k(block: &[u8], out: &mut Vec<f32>) {
    let d = f32::from_le_bytes([block[0], block[1], block[2], block[3]]);
    out.extend(block[4..260].iter().map(|&q| d * q as i8 as f32));
}

fn iq4_xs(block: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(block, 0);
    let scales_high = u16::from_le_bytes([block[2], block[3]]);
    let (scales_low, qs) = (&block[4..8], &block[8..136]);
    for sub in 0..8 {
        let low = (scales_low[sub / 2] >> (4 * (sub % 2))) & 0x0F;
        let high = ((scales_high >> (2 * sub)) & 3) as u8;
        let dl = d * ((low | high << 4) as i32 - 32) as f32;
        let bytes = &qs[16 * sub..16 * sub + 16];
        let level = |nibble: u8| dl * IQ4_LEVELS[nibble as usize] as f32;
        out.extend(bytes.iter().map(|&q| level(q & 0x0F)));
        out.extend(bytes.iter().map(|&q| level(q >> 4)));
    }
}
