//! ggml's block formats, converted to and from `f32`.
//!
//! - Q8_0: 32 values in 34 bytes: f16 scale `d`, then 32 × i8 `q`; value = d·q.
//! - Q4_0: 32 values in 18 bytes: f16 `d`, 16 bytes of nibbles; value j = d·((q[j] & 15) − 8),
//!   value j+16 = d·((q[j] >> 4) − 8).
//! - Q4_1: 32 values in 20 bytes: f16 `d`, f16 minimum `m`, 16 bytes of nibbles;
//!   value j = d·(q[j] & 15) + m, value j+16 = d·(q[j] >> 4) + m.
//! - Q5_0: 32 values in 22 bytes: f16 `d`, 4 bytes `qh` (bit j: value j's fifth bit), 16 bytes of
//!   nibbles as Q4_0; value = d·(q − 16) with q = nibble | fifth bit << 4.
//! - Q5_1: 32 values in 24 bytes: f16 `d`, f16 `m`, then as Q5_0; value = d·q + m.
//! - IQ4_NL: 32 values in 18 bytes: f16 `d`, 16 bytes of nibbles as Q4_0, each an index into a
//!   table of 16 non-uniform levels; value = d·level.
//!
//! The K-quants (256 values a block, with sub-block scales) are in [`crate::kquant`]. Each value
//! is computed with ggml's (and gguf-py's) operations in their order, so results are bit-exact.

use crate::{GgufError, TensorInfo, TensorType, kquant};
use half::f16;

/// IQ4_NL's (and IQ4_XS's) 16 levels (ggml's `kvalues_iq4nl`).
pub(crate) const IQ4_LEVELS: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// The 32 five-bit quants of a Q5_0/Q5_1 block: `qh` holds the fifth bits, `qs` the nibbles.
fn five_bit_quants(qh: &[u8], qs: &[u8]) -> impl Iterator<Item = u8> {
    let high = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    let nibbles = qs.iter().map(|q| q & 0x0F).chain(qs.iter().map(|q| q >> 4));
    nibbles
        .enumerate()
        .map(move |(j, low)| low | (((high >> j) & 1) as u8) << 4)
}

pub(crate) fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// Dequantizes `data` (the tensor's bytes, exactly [`TensorInfo::byte_size`] long) to `f32`.
pub fn dequantize(info: &TensorInfo, data: &[u8]) -> Result<Vec<f32>, GgufError> {
    let unsupported = || GgufError::UnsupportedType {
        name: info.name.clone(),
        ty: info.ty,
    };
    if data.len() as u64 != info.byte_size() {
        return Err(GgufError::BadTensorData {
            name: info.name.clone(),
            offset: info.offset,
            size: data.len() as u64,
            problem: "not the size its shape and type require",
        });
    }
    let n = info.element_count() as usize;
    let mut out = Vec::with_capacity(n);
    match info.ty {
        TensorType::F32 => out.extend(
            data.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        TensorType::F16 => out.extend(data.chunks_exact(2).map(|b| f16_at(b, 0))),
        TensorType::BF16 => out.extend(
            data.chunks_exact(2)
                .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16)),
        ),
        TensorType::Q8_0 => {
            for block in data.chunks_exact(34) {
                let d = f16_at(block, 0);
                out.extend(block[2..].iter().map(|&q| d * (q as i8) as f32));
            }
        }
        TensorType::Q4_0 => {
            for block in data.chunks_exact(18) {
                let d = f16_at(block, 0);
                let qs = &block[2..];
                out.extend(qs.iter().map(|&q| d * ((q & 0x0F) as i32 - 8) as f32));
                out.extend(qs.iter().map(|&q| d * ((q >> 4) as i32 - 8) as f32));
            }
        }
        TensorType::Q4_1 => {
            for block in data.chunks_exact(20) {
                let d = f16_at(block, 0);
                let m = f16_at(block, 2);
                let qs = &block[4..];
                out.extend(qs.iter().map(|&q| d * (q & 0x0F) as f32 + m));
                out.extend(qs.iter().map(|&q| d * (q >> 4) as f32 + m));
            }
        }
        TensorType::Q5_0 => {
            for block in data.chunks_exact(22) {
                let d = f16_at(block, 0);
                let quants = five_bit_quants(&block[2..6], &block[6..]);
                out.extend(quants.map(|q| d * (q as i32 - 16) as f32));
            }
        }
        TensorType::Q5_1 => {
            for block in data.chunks_exact(24) {
                let (d, m) = (f16_at(block, 0), f16_at(block, 2));
                let quants = five_bit_quants(&block[4..8], &block[8..]);
                out.extend(quants.map(|q| d * q as f32 + m));
            }
        }
        TensorType::IQ4NL => {
            for block in data.chunks_exact(18) {
                let d = f16_at(block, 0);
                let qs = &block[2..];
                let level = |nibble: u8| d * IQ4_LEVELS[nibble as usize] as f32;
                out.extend(qs.iter().map(|&q| level(q & 0x0F)));
                out.extend(qs.iter().map(|&q| level(q >> 4)));
            }
        }
        ty => {
            let block_values = kquant::block_dequantizer(ty).ok_or_else(unsupported)?;
            let (_, block_bytes) = ty.block_layout();
            for block in data.chunks_exact(block_bytes as usize) {
                block_values(block, &mut out);
            }
        }
    }
    Ok(out)
}

/// Quantizes `values` into `ty` with ggml's reference rounding. Supports F32, F16, Q8_0, Q4_0
/// and Q4_1; the length must be a whole number of blocks.
pub fn quantize(ty: TensorType, values: &[f32]) -> Result<Vec<u8>, GgufError> {
    let (block, bytes) = ty.block_layout();
    if !(values.len() as u64).is_multiple_of(block) {
        return Err(GgufError::BadShape {
            name: "<quantize input>".into(),
            dims: vec![values.len() as u64],
            ty,
        });
    }
    let mut out = Vec::with_capacity(values.len() / block as usize * bytes as usize);
    match ty {
        TensorType::F32 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        TensorType::F16 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
        TensorType::Q8_0 => {
            for x in values.chunks_exact(32) {
                let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                out.extend(x.iter().map(|v| (v * id).round() as i8 as u8));
            }
        }
        TensorType::Q4_0 => {
            for x in values.chunks_exact(32) {
                let mut max = 0.0f32;
                for &v in x {
                    if v.abs() > max.abs() {
                        max = v;
                    }
                }
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                let nibble = |v: f32| ((v * id + 8.5) as i8).clamp(0, 15) as u8;
                out.extend((0..16).map(|j| nibble(x[j]) | (nibble(x[j + 16]) << 4)));
            }
        }
        TensorType::Q4_1 => {
            for x in values.chunks_exact(32) {
                let min = x.iter().copied().fold(f32::INFINITY, f32::min);
                let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let d = (max - min) / 15.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
                let nibble = |v: f32| (((v - min) * id + 0.5) as i8).clamp(0, 15) as u8;
                out.extend((0..16).map(|j| nibble(x[j]) | (nibble(x[j + 16]) << 4)));
            }
        }
        _ => {
            return Err(GgufError::UnsupportedType {
                name: "<quantize input>".into(),
                ty,
            });
        }
    }
    Ok(out)
}
