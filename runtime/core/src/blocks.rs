//! Ember's block formats, each defined once: how values become blocks of [`BLOCK`], how a block
//! is stored, where a row's blocks lie, how they are read back. The quantizer (`ember
//! quantize`), the image reader and writer, the graph builder, the int8 engine's ops and its
//! kernels all take their constants and their row access from here.
//!
//! - [`int8`]: weights as symmetric int8 blocks, stored `u = q + 128` (ONNX `MatMulNBits` bits
//!   8); value = `d · (u − 128)` with an f32 scale `d` per block.
//! - [`int4`]: weights as 4-bit blocks (GGUF `Q4_0`/`Q4_1` exactly); value = `d · q + m` with
//!   an f32 scale `d` and minimum `m` per block.
//! - [`activation`]: activations as int8 blocks for the int8 dot products, llama.cpp's way.
//!
//! An image stores a weight matrix of `rows × cols` (`cols` a multiple of [`BLOCK`]) as arrays
//! of quants, scales (and minimums), with the rows taken in groups of [`ROW_GROUP`] and
//! interleaved the way the kernels stream them; a last partial group is padded with zero rows.
//! The scales (and minimums) are little-endian f32, one per block, the 16 rows of a group side
//! by side ([`scale_index`]).

/// Values in one block; every block has one scale (and, 4-bit, one minimum).
pub const BLOCK: usize = 32;

/// Rows a weight matrix stores together, interleaved (one 512-bit vector of 32-bit lanes).
pub const ROW_GROUP: usize = 16;

/// Rows a matrix of `rows` rows stores: whole groups of [`ROW_GROUP`].
pub fn padded_rows(rows: u64) -> u64 {
    rows.div_ceil(ROW_GROUP as u64) * ROW_GROUP as u64
}

/// Where the scale (and, for 4-bit matrices, the minimum) of block `block` of `row` is stored,
/// counted in f32 values: the 16 rows of a group side by side.
pub fn scale_index(cols: usize, row: usize, block: usize) -> usize {
    (row / ROW_GROUP) * ROW_GROUP * (cols / BLOCK) + block * ROW_GROUP + row % ROW_GROUP
}

/// Scales (or minimums) of one group of [`ROW_GROUP`] rows of `cols` columns.
pub fn group_scales(cols: usize) -> usize {
    ROW_GROUP * cols / BLOCK
}

/// Bytes of the scales (or minimums) array of a `rows × cols` matrix, padding rows included.
pub fn scale_bytes(cols: u64, rows: u64) -> u64 {
    cols * padded_rows(rows) / BLOCK as u64 * 4
}

/// Symmetric int8 weight blocks.
pub mod int8 {
    use super::{BLOCK, ROW_GROUP, padded_rows, scale_index};

    /// What a stored byte `u` is offset by: value = `d · (u − ZERO)`, so `u = q + 128` for a
    /// signed `q`. The kernels that flip the top bit of `u` to get `q` rely on it being 128.
    pub const ZERO: i32 = 128;

    /// Largest `|q|` the quantizer gives: a block's scale is `max |w| / MAX_Q`.
    pub const MAX_Q: f32 = 127.0;

    /// Bytes of the quants of one block: one a value.
    pub const BLOCK_BYTES: usize = BLOCK;

    /// Columns of one run: a kernel multiplies a run of [`ROW_GROUP`] rows by this many
    /// activation bytes broadcast to every 32-bit lane.
    pub const RUN: usize = 4;

    /// Bytes of one block of [`BLOCK`] columns of a row group: [`BLOCK`] / [`RUN`] runs of
    /// `RUN × ROW_GROUP` bytes.
    pub const GROUP_BLOCK_BYTES: usize = BLOCK_BYTES * ROW_GROUP;

    /// Bytes of one group of [`ROW_GROUP`] rows of `cols` columns.
    pub fn group_bytes(cols: usize) -> usize {
        ROW_GROUP * cols
    }

    /// Bytes of the quants of a `rows × cols` matrix, padding rows included.
    pub fn quant_bytes(cols: u64, rows: u64) -> u64 {
        cols * padded_rows(rows)
    }

    /// Where the quantized value at `row`, `col` of a matrix with `cols` columns is stored.
    ///
    /// Group `row / 16` holds `16 · cols` bytes; within it each block of 32 columns is 512
    /// bytes: eight runs of four columns, each run holding those four values of the group's 16
    /// rows in row order (64 bytes). A kernel multiplies one run by four activation bytes
    /// broadcast to every 32-bit lane and gets 16 rows' partial sums at once.
    pub fn quant_index(cols: usize, row: usize, col: usize) -> usize {
        let (group, lane) = (row / ROW_GROUP, row % ROW_GROUP);
        let (block, within) = (col / BLOCK, col % BLOCK);
        group * ROW_GROUP * cols
            + block * GROUP_BLOCK_BYTES
            + (within / RUN) * RUN * ROW_GROUP
            + lane * RUN
            + within % RUN
    }

    /// The stored byte of a signed quant `q` (GGUF `Q8_0`'s int8, or `Q4_0`'s nibble − 8).
    pub fn stored(q: i8) -> u8 {
        q as u8 ^ 0x80
    }

    /// Quantizes one block: scale `d = max |w| / 127`, `u = round(w / d) + 128` (half away from
    /// zero), every `u` 128 when the block is zero.
    pub fn quantize(block: &[f32; BLOCK]) -> (f32, [u8; BLOCK]) {
        let amax = block.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let d = amax / MAX_Q;
        let inverse = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut quants = [0u8; BLOCK];
        for (u, v) in quants.iter_mut().zip(block) {
            *u = (libm::roundf(v * inverse).clamp(-MAX_Q, MAX_Q) as i32 + ZERO) as u8;
        }
        (d, quants)
    }

    /// The value of stored byte `u` in a block of scale `d`.
    pub fn value(u: u8, d: f32) -> f32 {
        d * (u as i32 - ZERO) as f32
    }

    /// Row `row` of a matrix with `cols` columns, decoded: `quants` and `scales` are the
    /// matrix's stored arrays (as [`quant_index`] and [`scale_index`] place them).
    pub fn row<'a>(
        quants: &'a [u8],
        scales: &'a [f32],
        cols: usize,
        row: usize,
    ) -> impl Iterator<Item = f32> + 'a {
        (0..cols).map(move |col| {
            value(
                quants[quant_index(cols, row, col)],
                scales[scale_index(cols, row, col / BLOCK)],
            )
        })
    }
}

/// Asymmetric 4-bit weight blocks.
pub mod int4 {
    use super::{BLOCK, ROW_GROUP, padded_rows, scale_index};

    /// Columns of one run: its first four columns in the low nibbles of four bytes a row, its
    /// last four in their high nibbles.
    pub const RUN: usize = 8;

    /// Bytes of the quants of one block: two values a byte.
    pub const BLOCK_BYTES: usize = BLOCK / 2;

    /// Bytes of one block of [`BLOCK`] columns of a row group: [`BLOCK`] / [`RUN`] runs of
    /// `4 × ROW_GROUP` bytes.
    pub const GROUP_BLOCK_BYTES: usize = BLOCK_BYTES * ROW_GROUP;

    /// Bytes of one group of [`ROW_GROUP`] rows of `cols` columns.
    pub fn group_bytes(cols: usize) -> usize {
        ROW_GROUP * cols / 2
    }

    /// Bytes of the quants of a `rows × cols` matrix, padding rows included.
    pub fn quant_bytes(cols: u64, rows: u64) -> u64 {
        cols * padded_rows(rows) / 2
    }

    /// Where the 4-bit value at `row`, `col` of a matrix with `cols` columns is stored: the
    /// byte, and whether it is that byte's high nibble.
    ///
    /// Group `row / 16` holds `8 · cols` bytes; within it each block of 32 columns is 256
    /// bytes: four runs of eight columns, each run holding those eight values of the group's
    /// 16 rows in row order (4 bytes a row: columns `8t..8t + 4` in the low nibbles,
    /// `8t + 4..8t + 8` in the high ones). A kernel masks or shifts a run and multiplies it by
    /// four activation bytes broadcast to every 32-bit lane, as for int8.
    pub fn nibble_index(cols: usize, row: usize, col: usize) -> (usize, bool) {
        let (group, lane) = (row / ROW_GROUP, row % ROW_GROUP);
        let (block, within) = (col / BLOCK, col % BLOCK);
        let (run, in_run) = (within / RUN, within % RUN);
        (
            group * ROW_GROUP * cols / 2
                + block * GROUP_BLOCK_BYTES
                + run * RUN / 2 * ROW_GROUP
                + lane * RUN / 2
                + in_run % (RUN / 2),
            in_run >= RUN / 2,
        )
    }

    /// The 4-bit value at `row`, `col` of a matrix's stored quants.
    pub fn nibble(quants: &[u8], cols: usize, row: usize, col: usize) -> u8 {
        let (at, high) = nibble_index(cols, row, col);
        if high {
            quants[at] >> 4
        } else {
            quants[at] & 0x0F
        }
    }

    /// Stores the 4-bit value `q` at `row`, `col` of a matrix's quants (zeroed beforehand).
    pub fn set_nibble(quants: &mut [u8], cols: usize, row: usize, col: usize, q: u8) {
        let (at, high) = nibble_index(cols, row, col);
        quants[at] |= (q & 0x0F) << if high { 4 } else { 0 };
    }

    /// The value of nibble `q` in a block of scale `d` and minimum `m`.
    pub fn value(q: u8, d: f32, m: f32) -> f32 {
        d * q as f32 + m
    }

    /// Row `row` of a matrix with `cols` columns, decoded from its stored arrays.
    pub fn row<'a>(
        quants: &'a [u8],
        scales: &'a [f32],
        mins: &'a [f32],
        cols: usize,
        row: usize,
    ) -> impl Iterator<Item = f32> + 'a {
        (0..cols).map(move |col| {
            let at = scale_index(cols, row, col / BLOCK);
            value(nibble(quants, cols, row, col), scales[at], mins[at])
        })
    }
}

/// Activations as int8 blocks, the twin of [`int8`] for the dot products' other operand.
pub mod activation {
    use super::BLOCK;

    /// Quantizes the blocks of [`BLOCK`] values of `x` the way llama.cpp quantizes activations
    /// for its 8-bit dot products (`d = max |x| / 127`, `q = round(x / d)` half to even) into
    /// `quants`, one scale per block in `scales` and `Σ q` per block in `sums` (which corrects
    /// for the weights' offset [`int8::ZERO`](super::int8::ZERO)).
    ///
    /// Plain loops over fixed-size blocks, inlined into each caller (the int8 engine builds it
    /// once more for AVX2) so that the compiler turns them into vector code.
    #[inline(always)]
    pub fn quantize(x: &[f32], quants: &mut [i8], scales: &mut [f32], sums: &mut [i32]) {
        /// Adding and removing 1.5 · 2²³ rounds an f32 of magnitude below 2²² to an integer,
        /// half to even, in plain arithmetic (|v / d_a| ≤ 127 here).
        const ROUNDING: f32 = 12_582_912.0;
        let (blocks, _) = x.as_chunks::<BLOCK>();
        let (quant_blocks, _) = quants.as_chunks_mut::<BLOCK>();
        for (((block, quants), scale), sum) in blocks
            .iter()
            .zip(quant_blocks.iter_mut())
            .zip(scales.iter_mut())
            .zip(sums.iter_mut())
        {
            // max |v| in eight lanes (`>` keeps the maximum as `f32::max` does: no NaN here).
            let mut lanes = [0f32; 8];
            for chunk in block.as_chunks::<8>().0 {
                for (m, v) in lanes.iter_mut().zip(chunk) {
                    let v = v.abs();
                    if v > *m {
                        *m = v;
                    }
                }
            }
            let amax = lanes.iter().fold(0.0f32, |m, &v| if v > m { v } else { m });
            *scale = amax / super::int8::MAX_Q;
            let inverse = if *scale > 0.0 { 1.0 / *scale } else { 0.0 };
            let mut total = 0i32;
            for (q, v) in quants.iter_mut().zip(block) {
                *q = ((v * inverse + ROUNDING) - ROUNDING) as i8;
                total += *q as i32;
            }
            *sum = total;
        }
    }
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    use super::*;

    #[test]
    fn interleaved_indices_cover_every_stored_byte_once() {
        for (cols, rows) in [(32, 1), (64, 16), (96, 37), (576, 48)] {
            let stored = int8::quant_bytes(cols as u64, rows as u64) as usize;
            let mut seen = alloc::vec![false; stored];
            for row in 0..rows {
                for col in 0..cols {
                    let at = int8::quant_index(cols, row, col);
                    assert!(at < stored && !seen[at], "{cols}×{rows}: {row},{col}");
                    seen[at] = true;
                }
            }
            let mut scales = alloc::vec![false; stored / 32];
            assert_eq!(
                scale_bytes(cols as u64, rows as u64) as usize,
                stored / 32 * 4
            );
            for row in 0..rows {
                for block in 0..cols / 32 {
                    let at = scale_index(cols, row, block);
                    assert!(
                        at < stored / 32 && !scales[at],
                        "{cols}×{rows}: {row},{block}"
                    );
                    scales[at] = true;
                }
            }
            // Four columns of a row are adjacent; a run holds them for 16 rows side by side.
            assert_eq!(int8::quant_index(cols, 1, 0), 4);
            assert_eq!(int8::quant_index(cols, 0, 4), 64);
            assert_eq!(int8::quant_index(cols, 0, 32), int8::GROUP_BLOCK_BYTES);
            assert_eq!(int8::quant_index(cols, 16, 0), int8::group_bytes(cols));
        }
    }

    #[test]
    fn nibble_indices_cover_every_stored_nibble_once() {
        for (cols, rows) in [(32, 1), (64, 16), (96, 37), (576, 48)] {
            let stored = int4::quant_bytes(cols as u64, rows as u64) as usize;
            let mut seen = alloc::vec![[false; 2]; stored];
            for row in 0..rows {
                for col in 0..cols {
                    let (at, high) = int4::nibble_index(cols, row, col);
                    assert!(
                        at < stored && !seen[at][high as usize],
                        "{cols}×{rows}: {row},{col}"
                    );
                    seen[at][high as usize] = true;
                }
            }
            // Columns 0–3 of row 0 in the low nibbles of bytes 0–3, 4–7 in their high nibbles;
            // row 1 follows; the next eight columns start a new run of 64 bytes.
            assert_eq!(int4::nibble_index(cols, 0, 3), (3, false));
            assert_eq!(int4::nibble_index(cols, 0, 4), (0, true));
            assert_eq!(int4::nibble_index(cols, 1, 0), (4, false));
            assert_eq!(int4::nibble_index(cols, 0, 8), (64, false));
            assert_eq!(int4::nibble_index(cols, 0, 32).0, int4::GROUP_BLOCK_BYTES);
            assert_eq!(int4::nibble_index(cols, 16, 0).0, int4::group_bytes(cols));
        }
    }

    #[test]
    fn int8_blocks_round_half_away_from_zero_and_decode_back() {
        let mut block = [0f32; BLOCK];
        for (i, v) in block.iter_mut().enumerate() {
            *v = (i as f32 - 15.5) * 0.37;
        }
        block[3] = -12.7; // the largest magnitude: q = −127
        let (d, quants) = int8::quantize(&block);
        assert_eq!(d, 12.7 / 127.0);
        assert_eq!(quants[3], 1);
        for (v, &u) in block.iter().zip(&quants) {
            let q = ((v / d) as f64).round() as i32; // f64 agrees away from exact halves
            assert!((u as i32 - 128 - q).abs() <= 1, "{v}");
            assert!((int8::value(u, d) - v).abs() <= d / 2.0 + 1e-6, "{v}");
        }
        // Exact halves round away from zero, as std's f32::round does.
        for x in [-2.5f32, -1.5, -0.5, 0.5, 1.5, 2.5, 126.5, -126.5] {
            assert_eq!(libm::roundf(x), x.round(), "{x}");
        }
        assert_eq!(int8::quantize(&[0.0; BLOCK]), (0.0, [128; BLOCK]));
        assert_eq!(
            (int8::stored(-8), int8::stored(7), int8::stored(-128)),
            (120, 135, 0)
        );
    }

    #[test]
    fn activations_round_half_to_even_and_sum_their_quants() {
        let mut x = [0f32; 2 * BLOCK];
        for (i, v) in x.iter_mut().enumerate() {
            *v = if i < BLOCK { i as f32 - 0.5 } else { 0.0 };
        }
        x[0] = -127.0 / 2.0; // so d = 0.5
        (x[2], x[3]) = (0.25, 0.75); // halves: 0.5 and 1.5 round to 0 and 2
        let (mut quants, mut scales, mut sums) = ([0i8; 2 * BLOCK], [0f32; 2], [0i32; 2]);
        activation::quantize(&x, &mut quants, &mut scales, &mut sums);
        assert_eq!(scales, [0.5, 0.0]);
        assert_eq!(quants[..5], [-127, 1, 0, 2, 7]);
        assert_eq!(
            sums[0],
            quants[..BLOCK].iter().map(|&q| q as i32).sum::<i32>()
        );
        assert_eq!((&quants[BLOCK..], sums[1]), (&[0i8; BLOCK][..], 0));
    }
}
