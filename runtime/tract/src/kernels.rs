//! Int8 dot products between a group of 16 weight rows, interleaved as the image stores them
//! (`ember_core::blocks::int8::quant_index`), and one row of int8-quantized activations
//! (`ember_core::blocks::activation`). The formats, their constants and the activations'
//! quantization are `ember_core::blocks`'; the kernels here are their SIMD readers.
//!
//! Weights are blocks of 32 bytes `u` with an f32 scale `d_w` (value = `d_w · (u − 128)`).
//! Activations are quantized per block of 32 the same way llama.cpp quantizes them for its
//! 8-bit dot products (`q = round(x / d_a)`, `d_a = max|x| / 127`), so a block contributes
//! `d_w · d_a · Σ (u − 128) · q`, an exact integer sum scaled once, added up block after block.
//!
//! In a group, each block of 32 columns is eight runs of 64 bytes; run `c` holds columns
//! `4c..4c + 4` of the 16 rows, row after row. A kernel broadcasts four activation bytes to
//! every 32-bit lane, multiplies a run and gets 16 rows' partial sums in 16 lanes: no
//! horizontal sums, one weight stream read front to back.
//!
//! 4-bit weights (`dot_group4`) are nibbles `q` with an f32 scale `d_w` and minimum `m_w` per
//! block (value = `d_w · q + m_w`, GGUF `Q4_1`); a block of a group is four runs of 64 bytes
//! (`ember_core::blocks::int4::nibble_index`), whose low nibbles are the run's first four columns and
//! high nibbles its last four. A block contributes `d_w · d_a · Σ q · q_a + m_w · d_a · Σ q_a`.

use ember_core::blocks::{BLOCK, ROW_GROUP, activation, int4, int8};

/// Bytes of one block of 32 columns of a row group.
const GROUP_BLOCK: usize = int8::GROUP_BLOCK_BYTES;
/// Bytes of one block of 32 columns of a 4-bit row group.
const GROUP_BLOCK4: usize = int4::GROUP_BLOCK_BYTES;
/// The kernels take `u − 128` as `u` with its top bit flipped (`vpsignb`/`veor`/`vmov #0x80`
/// operands and `−128 · Σq` starting sums): the int8 format's zero must be 128.
const _: () = assert!(int8::ZERO == 128);

/// Which dot-product implementation runs. Only detection makes one (`detect`, `available`), so
/// a kernel in hand is one this CPU can run and its safe `dot_group` cannot reach an instruction
/// the CPU lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernel(Isa);

/// The instruction sets behind the kernels; private, so that safe code cannot name one the CPU
/// lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isa {
    /// x86-64 AVX-512 VNNI (Ice Lake, Zen 4 and later): `vpdpbusd` on 512 bits, one run of 16
    /// rows per instruction.
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
    /// x86-64 AVX-VNNI (Alder Lake and later): `vpdpbusd` on 256 bits.
    #[cfg(target_arch = "x86_64")]
    AvxVnni,
    /// x86-64 AVX2: `vpmaddubsw` on sign-adjusted operands.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// aarch64 with the dot-product extension (Cortex-A76 and later, e.g. Raspberry Pi 5): `sdot`.
    #[cfg(target_arch = "aarch64")]
    NeonDot,
    /// aarch64 NEON (every aarch64 core, e.g. Raspberry Pi 4 / Zero 2 W): `smull` + `sadalp`.
    #[cfg(target_arch = "aarch64")]
    Neon,
    /// 32-bit ARM with NEON (every armv7 Raspberry Pi, e.g. a Pi 3 on a 32-bit OS).
    #[cfg(target_arch = "arm")]
    NeonArmv7,
    /// Plain Rust.
    Portable,
}

impl Kernel {
    /// The fastest kernel this CPU runs.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni")
            {
                return Kernel(Isa::Avx512Vnni);
            }
            if std::arch::is_x86_feature_detected!("avxvnni")
                && std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Kernel(Isa::AvxVnni);
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Kernel(Isa::Avx2);
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            if std::arch::is_aarch64_feature_detected!("dotprod") {
                Kernel(Isa::NeonDot)
            } else {
                Kernel(Isa::Neon)
            }
        }
        #[cfg(target_arch = "arm")]
        {
            if armv7::has_neon() {
                Kernel(Isa::NeonArmv7)
            } else {
                Kernel(Isa::Portable)
            }
        }
        #[cfg(not(any(target_arch = "aarch64", target_arch = "arm")))]
        Kernel(Isa::Portable)
    }

    /// Every kernel this CPU can run (for tests that compare them).
    pub fn available() -> Vec<Self> {
        let portable = vec![Kernel(Isa::Portable)];
        #[cfg(target_arch = "x86_64")]
        {
            let mut kernels = portable;
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                kernels.push(Kernel(Isa::Avx2));
                if std::arch::is_x86_feature_detected!("avxvnni") {
                    kernels.push(Kernel(Isa::AvxVnni));
                }
            }
            if Kernel::detect() == Kernel(Isa::Avx512Vnni) {
                kernels.push(Kernel(Isa::Avx512Vnni));
            }
            kernels
        }
        #[cfg(target_arch = "aarch64")]
        {
            let mut kernels = portable;
            kernels.push(Kernel(Isa::Neon));
            if Kernel::detect() == Kernel(Isa::NeonDot) {
                kernels.push(Kernel(Isa::NeonDot));
            }
            kernels
        }
        #[cfg(target_arch = "arm")]
        {
            let mut kernels = portable;
            if armv7::has_neon() {
                kernels.push(Kernel(Isa::NeonArmv7));
            }
            kernels
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "arm")))]
        portable
    }

    /// Short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel(Isa::Avx512Vnni) => "avx512-vnni",
            #[cfg(target_arch = "x86_64")]
            Kernel(Isa::AvxVnni) => "avx-vnni",
            #[cfg(target_arch = "x86_64")]
            Kernel(Isa::Avx2) => "avx2",
            #[cfg(target_arch = "aarch64")]
            Kernel(Isa::NeonDot) => "neon-sdot",
            #[cfg(target_arch = "aarch64")]
            Kernel(Isa::Neon) => "neon",
            #[cfg(target_arch = "arm")]
            Kernel(Isa::NeonArmv7) => "neon-armv7",
            Kernel(Isa::Portable) => "portable",
        }
    }

    /// The dot products of the 16 rows of one group with activation row `row` of `a`: for row
    /// `r`, `Σ_b w_scales[16b + r] · a.scales[b] · Σ_j (u_rj − 128) · a.quants[32b + j]`, where
    /// `w` is the group's `16 · cols` interleaved bytes and `w_scales` its `16 · cols / 32`
    /// scales.
    #[inline]
    pub fn dot_group(
        self,
        w: &[u8],
        w_scales: &[f32],
        a: &QuantizedRows,
        row: usize,
    ) -> [f32; ROW_GROUP] {
        let blocks = a.cols / BLOCK;
        #[cfg_attr(
            not(any(target_arch = "x86_64", target_arch = "aarch64")),
            allow(unused_variables)
        )]
        let (quants, scales, sums) = a.row(row);
        assert!(w.len() >= blocks * GROUP_BLOCK && w_scales.len() >= blocks * ROW_GROUP);
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `detect`/`available` only return this kernel when the CPU has AVX-512 F,
            // BW and VNNI; the slices hold `blocks` full blocks (asserted above).
            Kernel(Isa::Avx512Vnni) => unsafe {
                x86::group_avx512vnni(w, w_scales, quants, scales, sums)
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above, for AVX-VNNI, AVX2 and FMA.
            Kernel(Isa::AvxVnni) => unsafe {
                x86::group_avxvnni(w, w_scales, quants, scales, sums)
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above, for AVX2 and FMA.
            Kernel(Isa::Avx2) => unsafe {
                x86::rows_avx2(w, w_scales, [(quants, scales, sums)])[0]
            },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: `detect`/`available` only return this kernel when the CPU has FEAT_DotProd;
            // the slices hold `blocks` full blocks (asserted above).
            Kernel(Isa::NeonDot) => unsafe {
                arm::rows_sdot(w, w_scales, [(quants, scales, sums)])[0]
            },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: every aarch64 CPU has NEON; the slices hold `blocks` full blocks.
            Kernel(Isa::Neon) => unsafe {
                arm::rows_neon(w, w_scales, [(quants, scales, sums)])[0]
            },
            #[cfg(target_arch = "arm")]
            // SAFETY: `detect`/`available` only return this kernel when the CPU has NEON; the
            // slices hold `blocks` full blocks.
            Kernel(Isa::NeonArmv7) => unsafe { armv7::group_neon(w, w_scales, quants, scales) },
            Kernel(Isa::Portable) => group_portable(w, w_scales, quants, scales),
        }
    }

    /// [`Kernel::dot_group`] for activation rows `0..out.len() / 16`, each row's 16 results in
    /// turn in `out`. Where a row-blocked kernel exists (AVX-512 VNNI, AVX2, NEON `sdot`, NEON),
    /// several activation rows share each load of the weights (a prefill's rows); the results
    /// are the same as row by row, bit for bit.
    pub fn dot_group_rows(self, w: &[u8], w_scales: &[f32], a: &QuantizedRows, out: &mut [f32]) {
        let rows = out.len() / ROW_GROUP;
        let blocks = a.cols / BLOCK;
        assert!(w.len() >= blocks * GROUP_BLOCK && w_scales.len() >= blocks * ROW_GROUP);
        // Runs `kernel` over batches of `R` rows; returns the rows it took (the rest go one by
        // one).
        #[allow(unused)]
        fn batched<const R: usize>(
            rows: usize,
            a: &QuantizedRows,
            out: &mut [f32],
            kernel: impl Fn([(&[i8], &[f32], &[i32]); R]) -> [[f32; ROW_GROUP]; R],
        ) -> usize {
            let batched = rows - rows % R;
            for first in (0..batched).step_by(R) {
                let results = kernel(std::array::from_fn(|i| a.row(first + i)));
                for (out, result) in out[first * ROW_GROUP..]
                    .chunks_exact_mut(ROW_GROUP)
                    .zip(results)
                {
                    out.copy_from_slice(&result);
                }
            }
            batched
        }
        // SAFETY (each kernel below): a kernel exists only when the CPU has its instructions
        // (`Kernel::detect`); the weights hold `blocks` full blocks and their scales (asserted
        // above), and every activation row of `a` holds `blocks` blocks.
        let done = match self.0 {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => batched::<4>(rows, a, out, |r| unsafe {
                x86::rows_avx512vnni(w, w_scales, r)
            }),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => batched::<4>(rows, a, out, |r| unsafe { x86::rows_avx2(w, w_scales, r) }),
            #[cfg(target_arch = "aarch64")]
            Isa::NeonDot => {
                batched::<4>(rows, a, out, |r| unsafe { arm::rows_sdot(w, w_scales, r) })
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => batched::<2>(rows, a, out, |r| unsafe { arm::rows_neon(w, w_scales, r) }),
            _ => 0,
        };
        for r in done..rows {
            out[r * ROW_GROUP..][..ROW_GROUP].copy_from_slice(&self.dot_group(w, w_scales, a, r));
        }
    }

    /// The dot products of the 16 rows of one 4-bit group with activation row `row` of `a`:
    /// for row `r`, `Σ_b a.scales[b] · (w_scales[16b + r] · Σ_j q_rj · a.quants[32b + j]
    /// + w_mins[16b + r] · a.sums[b])`, where `w` is the group's `8 · cols` interleaved bytes
    /// and `w_scales`, `w_mins` its `16 · cols / 32` scales and minimums.
    #[inline]
    pub fn dot_group4(
        self,
        w: &[u8],
        w_scales: &[f32],
        w_mins: &[f32],
        a: &QuantizedRows,
        row: usize,
    ) -> [f32; ROW_GROUP] {
        let blocks = a.cols / BLOCK;
        let (quants, scales, sums) = a.row(row);
        assert!(
            w.len() >= blocks * GROUP_BLOCK4
                && w_scales.len() >= blocks * ROW_GROUP
                && w_mins.len() >= blocks * ROW_GROUP
        );
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `detect`/`available` only return this kernel when the CPU has AVX-512 F,
            // BW and VNNI; the slices hold `blocks` full blocks (asserted above).
            Kernel(Isa::Avx512Vnni) => unsafe {
                x86::group4_avx512vnni(w, w_scales, w_mins, quants, scales, sums)
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above, for AVX-VNNI, AVX2 and FMA.
            Kernel(Isa::AvxVnni) => unsafe {
                x86::group4_avxvnni(w, w_scales, w_mins, quants, scales, sums)
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above, for AVX2 and FMA.
            Kernel(Isa::Avx2) => unsafe {
                x86::group4_avx2(w, w_scales, w_mins, quants, scales, sums)
            },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: `detect`/`available` only return this kernel when the CPU has FEAT_DotProd;
            // the slices hold `blocks` full blocks (asserted above).
            Kernel(Isa::NeonDot) => unsafe {
                arm::group4_sdot(w, w_scales, w_mins, quants, scales, sums)
            },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: every aarch64 CPU has NEON; the slices hold `blocks` full blocks.
            Kernel(Isa::Neon) => unsafe {
                arm::group4_neon(w, w_scales, w_mins, quants, scales, sums)
            },
            #[cfg(target_arch = "arm")]
            // SAFETY: `detect`/`available` only return this kernel when the CPU has NEON; the
            // slices hold `blocks` full blocks.
            Kernel(Isa::NeonArmv7) => unsafe {
                armv7::group4_neon(w, w_scales, w_mins, quants, scales, sums)
            },
            Kernel(Isa::Portable) => group4_portable(w, w_scales, w_mins, quants, scales, sums),
        }
    }
}

/// Activation rows quantized to int8 in blocks of 32.
#[derive(Debug, Clone, Default)]
pub struct QuantizedRows {
    /// Values per row (a multiple of 32).
    pub cols: usize,
    /// `rows × cols` quantized values.
    pub quants: Vec<i8>,
    /// One scale per block.
    pub scales: Vec<f32>,
    /// `Σ q` per block (corrects for the weights' offset of 128).
    pub sums: Vec<i32>,
}

impl QuantizedRows {
    /// Quantizes `x` (rows of `cols` values, `cols` a multiple of 32), rounding half to even
    /// as llama.cpp's vector code does.
    pub fn new(x: &[f32], cols: usize) -> Self {
        let mut rows = QuantizedRows::zeroed(x.len() / cols.max(1), cols);
        Self::quantize_blocks(x, &mut rows.quants, &mut rows.scales, &mut rows.sums);
        rows
    }

    /// `rows` rows of zeros, to be filled by [`QuantizedRows::quantize_blocks`].
    pub fn zeroed(rows: usize, cols: usize) -> Self {
        let blocks = rows * cols / BLOCK;
        QuantizedRows {
            cols,
            quants: vec![0; blocks * BLOCK],
            scales: vec![0.0; blocks],
            sums: vec![0; blocks],
        }
    }

    /// Quantizes the blocks of 32 of `x` into `quants`, `scales` and `sums` (on x86-64 with
    /// AVX2 compiled for 256-bit vectors: the same arithmetic, bit for bit).
    pub fn quantize_blocks(x: &[f32], quants: &mut [i8], scales: &mut [f32], sums: &mut [i32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            /// The caller guarantees AVX2.
            #[target_feature(enable = "avx2")]
            unsafe fn avx2(x: &[f32], quants: &mut [i8], scales: &mut [f32], sums: &mut [i32]) {
                activation::quantize(x, quants, scales, sums);
            }
            // SAFETY: the CPU has AVX2 (detected above).
            return unsafe { avx2(x, quants, scales, sums) };
        }
        activation::quantize(x, quants, scales, sums);
    }

    /// Row `row`: its quantized values, its blocks' scales and their sums.
    pub fn row(&self, row: usize) -> (&[i8], &[f32], &[i32]) {
        let blocks = self.cols / BLOCK;
        (
            &self.quants[row * self.cols..][..self.cols],
            &self.scales[row * blocks..][..blocks],
            &self.sums[row * blocks..][..blocks],
        )
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.quants.len().checked_div(self.cols).unwrap_or(0)
    }
}

fn group_portable(w: &[u8], w_scales: &[f32], a: &[i8], a_scales: &[f32]) -> [f32; ROW_GROUP] {
    let mut out = [0f32; ROW_GROUP];
    for (b, (block, quants)) in w
        .chunks_exact(GROUP_BLOCK)
        .zip(a.chunks_exact(BLOCK))
        .enumerate()
    {
        let mut sums = [0i32; ROW_GROUP];
        for (run, q) in block
            .chunks_exact(4 * ROW_GROUP)
            .zip(quants.chunks_exact(4))
        {
            for (sum, u) in sums.iter_mut().zip(run.chunks_exact(4)) {
                *sum += (0..4)
                    .map(|j| (u[j] as i32 - int8::ZERO) * q[j] as i32)
                    .sum::<i32>();
            }
        }
        let scales = &w_scales[b * ROW_GROUP..][..ROW_GROUP];
        for ((o, &sum), &d) in out.iter_mut().zip(&sums).zip(scales) {
            *o += d * a_scales[b] * sum as f32;
        }
    }
    out
}

fn group4_portable(
    w: &[u8],
    w_scales: &[f32],
    w_mins: &[f32],
    a: &[i8],
    a_scales: &[f32],
    a_sums: &[i32],
) -> [f32; ROW_GROUP] {
    let mut out = [0f32; ROW_GROUP];
    for (b, (block, quants)) in w
        .chunks_exact(GROUP_BLOCK4)
        .zip(a.chunks_exact(BLOCK))
        .enumerate()
    {
        let mut sums = [0i32; ROW_GROUP];
        for (run, q) in block
            .chunks_exact(4 * ROW_GROUP)
            .zip(quants.chunks_exact(8))
        {
            for (sum, u) in sums.iter_mut().zip(run.chunks_exact(4)) {
                *sum += (0..4)
                    .map(|j| {
                        (u[j] & 0x0F) as i32 * q[j] as i32 + (u[j] >> 4) as i32 * q[4 + j] as i32
                    })
                    .sum::<i32>();
            }
        }
        let (scales, mins) = (
            &w_scales[b * ROW_GROUP..][..ROW_GROUP],
            &w_mins[b * ROW_GROUP..][..ROW_GROUP],
        );
        let offset = a_scales[b] * a_sums[b] as f32;
        for (r, o) in out.iter_mut().enumerate() {
            *o += scales[r] * a_scales[b] * sums[r] as f32 + mins[r] * offset;
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{BLOCK, GROUP_BLOCK, GROUP_BLOCK4, ROW_GROUP, int4, int8};
    use std::arch::x86_64::*;

    /// How far ahead of its reads the AVX-512 kernel asks for weights: the hardware
    /// prefetcher stops at each 4 KiB page of the mapping, software prefetch does not.
    const PREFETCH_BYTES: usize = 16 << 10;

    /// `Σ (u − 128)·q` of block `b` for the 16 rows, in two dependency chains.
    ///
    /// The caller guarantees AVX-512 F/BW/VNNI and that block `b` lies within `w` and `a`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn block_avx512vnni(w: &[u8], a: &[i8], a_sum: i32, b: usize) -> __m512i {
        // Start at −128·Σq so that the sum ends at Σ(u − 128)·q.
        let mut sums = [
            _mm512_set1_epi32(-int8::ZERO * a_sum),
            _mm512_setzero_si512(),
        ];
        for c in 0..8 {
            // SAFETY: run c of block b lies within `w`, and four bytes at 32b + 4c within `a`
            // (caller); unaligned loads.
            unsafe {
                let run = _mm512_loadu_si512(w.as_ptr().add(b * GROUP_BLOCK + c * 64).cast());
                let q = (a.as_ptr().add(BLOCK * b + int8::RUN * c) as *const i32).read_unaligned();
                sums[c % 2] = _mm512_dpbusd_epi32(sums[c % 2], run, _mm512_set1_epi32(q));
            }
        }
        _mm512_add_epi32(sums[0], sums[1])
    }

    /// The caller guarantees AVX-512 F/BW/VNNI and that `w`, `w_scales`, `a` and `a_sums` hold
    /// `a_scales.len()` blocks.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn group_avx512vnni(
        w: &[u8],
        w_scales: &[f32],
        a: &[i8],
        a_scales: &[f32],
        a_sums: &[i32],
    ) -> [f32; ROW_GROUP] {
        // Two blocks at a time, in separate accumulators, to keep more loads in flight.
        let mut acc = [_mm512_setzero_ps(); 2];
        for b in 0..a_scales.len() {
            if b % 2 == 0 {
                let ahead = w.as_ptr().wrapping_add(b * GROUP_BLOCK + PREFETCH_BYTES);
                for line in 0..2 * GROUP_BLOCK / 64 {
                    // Prefetching never faults, whatever the address.
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * line).cast());
                }
            }
            // SAFETY: block b lies within the slices (caller).
            let (sum, d) = unsafe {
                (
                    block_avx512vnni(w, a, a_sums[b], b),
                    _mm512_loadu_ps(w_scales.as_ptr().add(b * ROW_GROUP)),
                )
            };
            let d = _mm512_mul_ps(d, _mm512_set1_ps(a_scales[b]));
            acc[b % 2] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), d, acc[b % 2]);
        }
        let mut out = [0f32; ROW_GROUP];
        // SAFETY: `out` holds 16 floats.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), _mm512_add_ps(acc[0], acc[1])) };
        out
    }

    /// `group_avx512vnni` for `R` activation rows (quants, scales, sums) at once, each row's
    /// arithmetic in the same order as there, sharing each load of the weights.
    ///
    /// The caller guarantees AVX-512 F/BW/VNNI and that `w`, `w_scales` and every row hold its
    /// scales' number of blocks.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn rows_avx512vnni<const R: usize>(
        w: &[u8],
        w_scales: &[f32],
        rows: [(&[i8], &[f32], &[i32]); R],
    ) -> [[f32; ROW_GROUP]; R] {
        let blocks = rows[0].1.len();
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        for b in 0..blocks {
            let mut sums = [[_mm512_setzero_si512(); 2]; R];
            for (sums, (_, _, a_sums)) in sums.iter_mut().zip(&rows) {
                sums[0] = _mm512_set1_epi32(-int8::ZERO * a_sums[b]);
            }
            for c in 0..8 {
                // SAFETY: run c of block b lies within `w`, and four bytes at 32b + 4c within
                // each row (caller); unaligned loads.
                unsafe {
                    let run = _mm512_loadu_si512(w.as_ptr().add(b * GROUP_BLOCK + c * 64).cast());
                    for (sums, (a, _, _)) in sums.iter_mut().zip(&rows) {
                        let q = (a.as_ptr().add(BLOCK * b + int8::RUN * c) as *const i32)
                            .read_unaligned();
                        sums[c % 2] = _mm512_dpbusd_epi32(sums[c % 2], run, _mm512_set1_epi32(q));
                    }
                }
            }
            // SAFETY: block b's scales lie within `w_scales` (caller).
            let d = unsafe { _mm512_loadu_ps(w_scales.as_ptr().add(b * ROW_GROUP)) };
            for ((acc, sums), (_, a_scales, _)) in acc.iter_mut().zip(&sums).zip(&rows) {
                let sum = _mm512_add_epi32(sums[0], sums[1]);
                let d = _mm512_mul_ps(d, _mm512_set1_ps(a_scales[b]));
                acc[b % 2] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), d, acc[b % 2]);
            }
        }
        let mut out = [[0f32; ROW_GROUP]; R];
        for (out, acc) in out.iter_mut().zip(&acc) {
            // SAFETY: `out` holds 16 floats.
            unsafe { _mm512_storeu_ps(out.as_mut_ptr(), _mm512_add_ps(acc[0], acc[1])) };
        }
        out
    }

    /// The caller guarantees AVX-VNNI, AVX2 and FMA and that `w`, `w_scales`, `a` and `a_sums`
    /// hold `a_scales.len()` blocks.
    #[target_feature(enable = "avx2,fma,avxvnni")]
    pub(super) unsafe fn group_avxvnni(
        w: &[u8],
        w_scales: &[f32],
        a: &[i8],
        a_scales: &[f32],
        a_sums: &[i32],
    ) -> [f32; ROW_GROUP] {
        let mut acc = [_mm256_setzero_ps(); 2];
        for b in 0..a_scales.len() {
            let start = _mm256_set1_epi32(-int8::ZERO * a_sums[b]);
            let (mut sum_low, mut sum_high) = (start, start);
            for c in 0..8 {
                // SAFETY: as in `group_avx512vnni`.
                unsafe {
                    let run = w.as_ptr().add(b * GROUP_BLOCK + c * 64);
                    let q = _mm256_set1_epi32(
                        (a.as_ptr().add(BLOCK * b + int8::RUN * c) as *const i32).read_unaligned(),
                    );
                    sum_low = _mm256_dpbusd_avx_epi32(sum_low, _mm256_loadu_si256(run.cast()), q);
                    sum_high = _mm256_dpbusd_avx_epi32(
                        sum_high,
                        _mm256_loadu_si256(run.add(32).cast()),
                        q,
                    );
                }
            }
            // SAFETY: block b's scales lie within `w_scales` (caller).
            unsafe { add_scaled(&mut acc, [sum_low, sum_high], w_scales, b, a_scales[b]) };
        }
        store(acc)
    }

    /// The group's dot products with `R` activation rows (quants, scales, sums) at once,
    /// sharing each load of the weights and their sign adjustment; each row's arithmetic is
    /// the same whatever `R` (one row: `Kernel::dot_group`).
    ///
    /// The caller guarantees AVX2 and FMA and that `w`, `w_scales` and every row hold its
    /// scales' number of blocks.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn rows_avx2<const R: usize>(
        w: &[u8],
        w_scales: &[f32],
        rows: [(&[i8], &[f32], &[i32]); R],
    ) -> [[f32; ROW_GROUP]; R] {
        let offset = _mm256_set1_epi8(-128);
        let ones = _mm256_set1_epi16(1);
        let blocks = rows[0].1.len();
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for b in 0..blocks {
            let mut sums = [[_mm256_setzero_si256(); 2]; R];
            for c in 0..8 {
                for half in 0..2 {
                    // SAFETY: run c of block b lies within `w`, and four bytes at 32b + 4c
                    // within each row (caller); unaligned loads.
                    let run = unsafe {
                        _mm256_loadu_si256(
                            w.as_ptr().add(b * GROUP_BLOCK + c * 64 + 32 * half).cast(),
                        )
                    };
                    // u − 128 as i8, then |w| · (q · sign w) so that vpmaddubsw sees an
                    // unsigned operand; |(u − 128) · q| · 2 ≤ 2 · 128 · 127 fits its i16 pairs.
                    let wq = _mm256_xor_si256(run, offset);
                    let magnitude = _mm256_sign_epi8(wq, wq);
                    for (sums, (a, _, _)) in sums.iter_mut().zip(&rows) {
                        // SAFETY: as above.
                        let q = _mm256_set1_epi32(unsafe {
                            (a.as_ptr().add(BLOCK * b + int8::RUN * c) as *const i32)
                                .read_unaligned()
                        });
                        let pairs = _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(q, wq));
                        sums[half] = _mm256_add_epi32(sums[half], _mm256_madd_epi16(pairs, ones));
                    }
                }
            }
            for (acc, (sums, (_, a_scales, _))) in acc.iter_mut().zip(sums.iter().zip(&rows)) {
                // SAFETY: block b's scales lie within `w_scales` (caller).
                unsafe { add_scaled(acc, *sums, w_scales, b, a_scales[b]) };
            }
        }
        acc.map(|acc| store(acc))
    }

    /// Adds block `b`'s integer sums of the 16 rows (rows 0–7, rows 8–15), times their weight
    /// scales and `a_scale`, into `acc`.
    ///
    /// The caller guarantees AVX2 and FMA and that block `b`'s 16 scales lie within `w_scales`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn add_scaled(
        acc: &mut [__m256; 2],
        sums: [__m256i; 2],
        w_scales: &[f32],
        b: usize,
        a_scale: f32,
    ) {
        let scale = _mm256_set1_ps(a_scale);
        for half in 0..2 {
            // SAFETY: the block's 16 scales lie within `w_scales` (caller).
            let d = unsafe { _mm256_loadu_ps(w_scales.as_ptr().add(b * ROW_GROUP + 8 * half)) };
            acc[half] = _mm256_fmadd_ps(
                _mm256_cvtepi32_ps(sums[half]),
                _mm256_mul_ps(d, scale),
                acc[half],
            );
        }
    }

    /// The caller guarantees AVX-512 F/BW/VNNI and that `w`, `w_scales`, `w_mins`, `a` and
    /// `a_sums` hold `a_scales.len()` 4-bit blocks.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn group4_avx512vnni(
        w: &[u8],
        w_scales: &[f32],
        w_mins: &[f32],
        a: &[i8],
        a_scales: &[f32],
        a_sums: &[i32],
    ) -> [f32; ROW_GROUP] {
        let low = _mm512_set1_epi8(0x0F);
        // Scaled integer sums in `acc[0]`, minimums in `acc[1]`.
        let mut acc = [_mm512_setzero_ps(); 2];
        for b in 0..a_scales.len() {
            if b % 4 == 0 {
                let ahead = w.as_ptr().wrapping_add(b * GROUP_BLOCK4 + PREFETCH_BYTES);
                for line in 0..4 * GROUP_BLOCK4 / 64 {
                    // Prefetching never faults, whatever the address.
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * line).cast());
                }
            }
            let mut sums = [_mm512_setzero_si512(); 2];
            for t in 0..4 {
                // SAFETY: run t of block b lies within `w`, and eight bytes at 32b + 8t within
                // `a` (caller); unaligned loads.
                unsafe {
                    let run = _mm512_loadu_si512(w.as_ptr().add(b * GROUP_BLOCK4 + t * 64).cast());
                    let q = a.as_ptr().add(BLOCK * b + int4::RUN * t) as *const i32;
                    let (first, last) = (q.read_unaligned(), q.add(1).read_unaligned());
                    let nibbles = _mm512_and_si512(run, low);
                    sums[0] = _mm512_dpbusd_epi32(sums[0], nibbles, _mm512_set1_epi32(first));
                    let nibbles = _mm512_and_si512(_mm512_srli_epi16::<4>(run), low);
                    sums[1] = _mm512_dpbusd_epi32(sums[1], nibbles, _mm512_set1_epi32(last));
                }
            }
            // SAFETY: block b's scales and minimums lie within the slices (caller).
            let (d, m) = unsafe {
                (
                    _mm512_loadu_ps(w_scales.as_ptr().add(b * ROW_GROUP)),
                    _mm512_loadu_ps(w_mins.as_ptr().add(b * ROW_GROUP)),
                )
            };
            let sum = _mm512_cvtepi32_ps(_mm512_add_epi32(sums[0], sums[1]));
            acc[0] = _mm512_fmadd_ps(sum, _mm512_mul_ps(d, _mm512_set1_ps(a_scales[b])), acc[0]);
            let offset = _mm512_set1_ps(a_scales[b] * a_sums[b] as f32);
            acc[1] = _mm512_fmadd_ps(m, offset, acc[1]);
        }
        let mut out = [0f32; ROW_GROUP];
        // SAFETY: `out` holds 16 floats.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), _mm512_add_ps(acc[0], acc[1])) };
        out
    }

    /// The caller guarantees AVX-VNNI, AVX2 and FMA and that `w`, `w_scales`, `w_mins`, `a`
    /// and `a_sums` hold `a_scales.len()` 4-bit blocks.
    #[target_feature(enable = "avx2,fma,avxvnni")]
    pub(super) unsafe fn group4_avxvnni(
        w: &[u8],
        w_scales: &[f32],
        w_mins: &[f32],
        a: &[i8],
        a_scales: &[f32],
        a_sums: &[i32],
    ) -> [f32; ROW_GROUP] {
        // SAFETY: as the caller guarantees.
        unsafe { group4_256::<true>(w, w_scales, w_mins, a, a_scales, a_sums) }
    }

    /// The caller guarantees AVX2 and FMA and that `w`, `w_scales`, `w_mins`, `a` and `a_sums`
    /// hold `a_scales.len()` 4-bit blocks.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn group4_avx2(
        w: &[u8],
        w_scales: &[f32],
        w_mins: &[f32],
        a: &[i8],
        a_scales: &[f32],
        a_sums: &[i32],
    ) -> [f32; ROW_GROUP] {
        // SAFETY: as the caller guarantees.
        unsafe { group4_256::<false>(w, w_scales, w_mins, a, a_scales, a_sums) }
    }

    /// The 4-bit kernel on 256 bits, inlined into a caller that enables its instructions:
    /// `vpdpbusd` with `VNNI`, else `vpmaddubsw` (nibble · i8 pairs ≤ 2 · 15 · 128 fit its i16
    /// lanes) and `vpmaddwd`.
    ///
    /// The caller guarantees AVX2 and FMA (and AVX-VNNI with `VNNI`) and that `w`, `w_scales`,
    /// `w_mins`, `a` and `a_sums` hold `a_scales.len()` 4-bit blocks.
    #[inline(always)]
    unsafe fn group4_256<const VNNI: bool>(
        w: &[u8],
        w_scales: &[f32],
        w_mins: &[f32],
        a: &[i8],
        a_scales: &[f32],
        a_sums: &[i32],
    ) -> [f32; ROW_GROUP] {
        // SAFETY (whole body): the CPU has the instructions (caller).
        unsafe {
            let low = _mm256_set1_epi8(0x0F);
            let ones = _mm256_set1_epi16(1);
            let dot = |sum: __m256i, nibbles: __m256i, q: __m256i| {
                if VNNI {
                    _mm256_dpbusd_avx_epi32(sum, nibbles, q)
                } else {
                    _mm256_add_epi32(
                        sum,
                        _mm256_madd_epi16(_mm256_maddubs_epi16(nibbles, q), ones),
                    )
                }
            };
            let mut acc = [_mm256_setzero_ps(); 2];
            for b in 0..a_scales.len() {
                // Rows 0–7 and 8–15.
                let mut sums = [_mm256_setzero_si256(); 2];
                for t in 0..4 {
                    // Run t of block b lies within `w`, and eight bytes at 32b + 8t within `a`
                    // (caller); unaligned loads.
                    let run = w.as_ptr().add(b * GROUP_BLOCK4 + t * 64);
                    let q = a.as_ptr().add(BLOCK * b + int4::RUN * t) as *const i32;
                    let first = _mm256_set1_epi32(q.read_unaligned());
                    let last = _mm256_set1_epi32(q.add(1).read_unaligned());
                    for (half, sum) in sums.iter_mut().enumerate() {
                        let bytes = _mm256_loadu_si256(run.add(32 * half).cast());
                        *sum = dot(*sum, _mm256_and_si256(bytes, low), first);
                        let high = _mm256_and_si256(_mm256_srli_epi16::<4>(bytes), low);
                        *sum = dot(*sum, high, last);
                    }
                }
                // Block b's scales and minimums lie within `w_scales` and `w_mins` (caller).
                add_scaled(&mut acc, sums, w_scales, b, a_scales[b]);
                let offset = _mm256_set1_ps(a_scales[b] * a_sums[b] as f32);
                for (half, acc) in acc.iter_mut().enumerate() {
                    let m = _mm256_loadu_ps(w_mins.as_ptr().add(b * ROW_GROUP + 8 * half));
                    *acc = _mm256_fmadd_ps(m, offset, *acc);
                }
            }
            store(acc)
        }
    }

    #[target_feature(enable = "avx")]
    fn store(acc: [__m256; 2]) -> [f32; ROW_GROUP] {
        let mut out = [0f32; ROW_GROUP];
        // SAFETY: `out` holds 16 floats.
        unsafe {
            _mm256_storeu_ps(out.as_mut_ptr(), acc[0]);
            _mm256_storeu_ps(out.as_mut_ptr().add(8), acc[1]);
        }
        out
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::{BLOCK, GROUP_BLOCK, GROUP_BLOCK4, ROW_GROUP, int4, int8};
    use std::arch::aarch64::*;

    /// Run `c` of block `b`: its four vectors (vector `i` holds the run's four columns of rows
    /// `4i..4i + 4`) as `u − 128`.
    ///
    /// The caller guarantees that block `b` lies within `w`.
    #[target_feature(enable = "neon")]
    #[inline]
    unsafe fn run(w: &[u8], b: usize, c: usize) -> [int8x16_t; 4] {
        let offset = vdupq_n_u8(0x80);
        // SAFETY: run c of block b lies within `w` (caller); `vld1q_u8` reads bytes.
        unsafe {
            let run = w.as_ptr().add(b * GROUP_BLOCK + c * 64);
            [0, 1, 2, 3].map(|i| vreinterpretq_s8_u8(veorq_u8(vld1q_u8(run.add(16 * i)), offset)))
        }
    }

    /// Adds block `b`'s integer sums (rows `4i..4i + 4` in `sums[i]`), scaled, to `acc`.
    ///
    /// The caller guarantees that block `b`'s 16 scales lie within `w_scales`.
    #[target_feature(enable = "neon")]
    #[inline]
    unsafe fn accumulate(
        acc: &mut [float32x4_t; 4],
        sums: [int32x4_t; 4],
        w_scales: &[f32],
        a_scale: f32,
        b: usize,
    ) {
        for i in 0..4 {
            // SAFETY: the block's 16 scales lie within `w_scales` (caller).
            let d = unsafe { vld1q_f32(w_scales.as_ptr().add(b * ROW_GROUP + 4 * i)) };
            acc[i] = vfmaq_f32(acc[i], vcvtq_f32_s32(sums[i]), vmulq_n_f32(d, a_scale));
        }
    }

    #[target_feature(enable = "neon")]
    #[inline]
    fn store(acc: [float32x4_t; 4]) -> [f32; ROW_GROUP] {
        let mut out = [0f32; ROW_GROUP];
        for (i, v) in acc.into_iter().enumerate() {
            // SAFETY: `out` holds 16 floats.
            unsafe { vst1q_f32(out.as_mut_ptr().add(4 * i), v) };
        }
        out
    }

    /// The activation bytes `4c..4c + 4` of block `b` of `a` in every 32-bit lane.
    ///
    /// The caller guarantees that block `b` lies within `a`.
    #[target_feature(enable = "neon")]
    #[inline]
    unsafe fn quad(a: &[i8], b: usize, c: usize) -> int8x16_t {
        // SAFETY: four bytes at 32b + 4c lie within `a` (caller); an unaligned read.
        let q =
            unsafe { (a.as_ptr().add(BLOCK * b + int8::RUN * c) as *const i32).read_unaligned() };
        vreinterpretq_s8_s32(vdupq_n_s32(q))
    }

    /// The group's dot products with `R` activation rows (quants, scales, sums) at once,
    /// sharing each load of the weights; each row's arithmetic is the same whatever `R` (one
    /// row: `Kernel::dot_group`).
    ///
    /// The caller guarantees the dot-product extension and that `w`, `w_scales` and every row
    /// hold its scales' number of blocks.
    #[target_feature(enable = "neon,dotprod")]
    pub(super) unsafe fn rows_sdot<const R: usize>(
        w: &[u8],
        w_scales: &[f32],
        rows: [(&[i8], &[f32], &[i32]); R],
    ) -> [[f32; ROW_GROUP]; R] {
        let blocks = rows[0].1.len();
        let mut acc = [[vdupq_n_f32(0.0); 4]; R];
        for b in 0..blocks {
            let mut sums = [[vdupq_n_s32(0); 4]; R];
            for c in 0..8 {
                // SAFETY: block b is in bounds (caller).
                let [w0, w1, w2, w3] = unsafe { run(w, b, c) };
                for (sums, (a, _, _)) in sums.iter_mut().zip(&rows) {
                    // SAFETY: block b is in bounds (caller).
                    let q = unsafe { quad(a, b, c) };
                    let [mut s0, mut s1, mut s2, mut s3] = *sums;
                    // `sdot` (FEAT_DotProd): each i32 lane (a row) += four i8 × i8 products.
                    // Its intrinsic is not stable in Rust yet, the instruction is.
                    // SAFETY: the caller guarantees FEAT_DotProd; registers only, no memory.
                    unsafe {
                        std::arch::asm!(
                            "sdot {s0:v}.4s, {w0:v}.16b, {q:v}.16b",
                            "sdot {s1:v}.4s, {w1:v}.16b, {q:v}.16b",
                            "sdot {s2:v}.4s, {w2:v}.16b, {q:v}.16b",
                            "sdot {s3:v}.4s, {w3:v}.16b, {q:v}.16b",
                            s0 = inout(vreg) s0,
                            s1 = inout(vreg) s1,
                            s2 = inout(vreg) s2,
                            s3 = inout(vreg) s3,
                            w0 = in(vreg) w0,
                            w1 = in(vreg) w1,
                            w2 = in(vreg) w2,
                            w3 = in(vreg) w3,
                            q = in(vreg) q,
                            options(pure, nomem, nostack, preserves_flags),
                        );
                    }
                    *sums = [s0, s1, s2, s3];
                }
            }
            for (acc, (sums, (_, a_scales, _))) in acc.iter_mut().zip(sums.iter().zip(&rows)) {
                // SAFETY: block b's scales are in bounds (caller).
                unsafe { accumulate(acc, *sums, w_scales, a_scales[b], b) };
            }
        }
        acc.map(|acc| store(acc))
    }

    /// The group's dot products with `R` activation rows (quants, scales, sums) at once with
    /// NEON `smull` + pairwise adds, sharing each load of the weights; each row's arithmetic is
    /// the same whatever `R` (one row: `Kernel::dot_group`).
    ///
    /// The caller guarantees that `w`, `w_scales` and every row hold its scales' number of
    /// blocks.
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn rows_neon<const R: usize>(
        w: &[u8],
        w_scales: &[f32],
        rows: [(&[i8], &[f32], &[i32]); R],
    ) -> [[f32; ROW_GROUP]; R] {
        let blocks = rows[0].1.len();
        let mut acc = [[vdupq_n_f32(0.0); 4]; R];
        for b in 0..blocks {
            // Rows 4i and 4i + 1 in `low[i]`, 4i + 2 and 4i + 3 in `high[i]`, two lanes each
            // holding sums of pairs of products.
            let mut low = [[vdupq_n_s32(0); 4]; R];
            let mut high = [[vdupq_n_s32(0); 4]; R];
            for c in 0..8 {
                // SAFETY: block b is in bounds (caller).
                let quads = unsafe { run(w, b, c) };
                for ((low, high), (a, _, _)) in low.iter_mut().zip(high.iter_mut()).zip(&rows) {
                    // SAFETY: block b is in bounds (caller).
                    let q = unsafe { quad(a, b, c) };
                    // |(u − 128) · q| ≤ 128 · 127 fits i16; pairs are summed into i32 lanes.
                    for i in 0..4 {
                        low[i] =
                            vpadalq_s16(low[i], vmull_s8(vget_low_s8(quads[i]), vget_low_s8(q)));
                        high[i] = vpadalq_s16(high[i], vmull_high_s8(quads[i], q));
                    }
                }
            }
            for (r, (_, a_scales, _)) in rows.iter().enumerate() {
                let mut sums = [vdupq_n_s32(0); 4];
                for i in 0..4 {
                    sums[i] = vpaddq_s32(low[r][i], high[r][i]);
                }
                // SAFETY: block b's scales are in bounds (caller).
                unsafe { accumulate(&mut acc[r], sums, w_scales, a_scales[b], b) };
            }
        }
        acc.map(|acc| store(acc))
    }

    /// Run `t` of 4-bit block `b`: the low and the high nibbles of its four vectors (vector `i`
    /// of the first array holds the run's first four columns of rows `4i..4i + 4`, of the
    /// second its last four, 0–15 as i8), and the run's first and last four activation bytes,
    /// each in every 32-bit lane.
    ///
    /// The caller guarantees that 4-bit block `b` lies within `w` and `a`.
    #[target_feature(enable = "neon")]
    #[inline]
    unsafe fn run4(
        w: &[u8],
        a: &[i8],
        b: usize,
        t: usize,
    ) -> ([int8x16_t; 4], [int8x16_t; 4], int8x16_t, int8x16_t) {
        let mask = vdupq_n_u8(0x0F);
        // SAFETY: run t of block b lies within `w`, and eight bytes at 32b + 8t within `a`
        // (caller); unaligned loads (`vld1q_u8` reads bytes, the i32s are read unaligned).
        unsafe {
            let run = w.as_ptr().add(b * GROUP_BLOCK4 + t * 64);
            let q = a.as_ptr().add(BLOCK * b + int4::RUN * t) as *const i32;
            let bytes = [0, 1, 2, 3].map(|i| vld1q_u8(run.add(16 * i)));
            (
                bytes.map(|v| vreinterpretq_s8_u8(vandq_u8(v, mask))),
                bytes.map(|v| vreinterpretq_s8_u8(vshrq_n_u8::<4>(v))),
                vreinterpretq_s8_s32(vdupq_n_s32(q.read_unaligned())),
                vreinterpretq_s8_s32(vdupq_n_s32(q.add(1).read_unaligned())),
            )
        }
    }

    /// Adds 4-bit block `b`'s integer sums (rows `4i..4i + 4` in `sums[i]`), scaled, and its
    /// minimums times `a_scale · a_sum` to `acc`.
    ///
    /// The caller guarantees that block `b`'s 16 scales and minimums lie within `w_scales` and
    /// `w_mins`.
    #[target_feature(enable = "neon")]
    #[inline]
    unsafe fn accumulate4(
        acc: &mut [float32x4_t; 4],
        sums: [int32x4_t; 4],
        w_scales: &[f32],
        w_mins: &[f32],
        a_scale: f32,
        a_sum: i32,
        b: usize,
    ) {
        // SAFETY: the block's 16 scales lie within `w_scales` (caller).
        unsafe { accumulate(acc, sums, w_scales, a_scale, b) };
        let offset = vdupq_n_f32(a_scale * a_sum as f32);
        for (i, acc) in acc.iter_mut().enumerate() {
            // SAFETY: the block's 16 minimums lie within `w_mins` (caller).
            let m = unsafe { vld1q_f32(w_mins.as_ptr().add(b * ROW_GROUP + 4 * i)) };
            *acc = vfmaq_f32(*acc, m, offset);
        }
    }

    /// The caller guarantees that `w`, `w_scales`, `w_mins`, `a` and `a_sums` hold
    /// `a_scales.len()` 4-bit blocks.
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn group4_neon(
        w: &[u8],
        w_scales: &[f32],
        w_mins: &[f32],
        a: &[i8],
        a_scales: &[f32],
        a_sums: &[i32],
    ) -> [f32; ROW_GROUP] {
        let mut acc = [vdupq_n_f32(0.0); 4];
        for (b, &a_scale) in a_scales.iter().enumerate() {
            // Rows 4i and 4i + 1 in `low[i]`, 4i + 2 and 4i + 3 in `high[i]`, four i16 lanes a
            // row: lane k adds up the products of byte k of the row's four in each run, both
            // nibbles of the block's four runs, |Σ| ≤ 8 · 15 · 128 < 2^15.
            let mut low = [vdupq_n_s16(0); 4];
            let mut high = [vdupq_n_s16(0); 4];
            for t in 0..4 {
                // SAFETY: block b is in bounds (caller).
                let (first, last, q_first, q_last) = unsafe { run4(w, a, b, t) };
                for i in 0..4 {
                    low[i] = vmlal_s8(low[i], vget_low_s8(first[i]), vget_low_s8(q_first));
                    low[i] = vmlal_s8(low[i], vget_low_s8(last[i]), vget_low_s8(q_last));
                    high[i] = vmlal_high_s8(high[i], first[i], q_first);
                    high[i] = vmlal_high_s8(high[i], last[i], q_last);
                }
            }
            let sums = [0, 1, 2, 3].map(|i| vpaddq_s32(vpaddlq_s16(low[i]), vpaddlq_s16(high[i])));
            // SAFETY: block b's scales and minimums are in bounds (caller).
            unsafe { accumulate4(&mut acc, sums, w_scales, w_mins, a_scale, a_sums[b], b) };
        }
        store(acc)
    }

    /// The caller guarantees the dot-product extension and that `w`, `w_scales`, `w_mins`, `a`
    /// and `a_sums` hold `a_scales.len()` 4-bit blocks.
    #[target_feature(enable = "neon,dotprod")]
    pub(super) unsafe fn group4_sdot(
        w: &[u8],
        w_scales: &[f32],
        w_mins: &[f32],
        a: &[i8],
        a_scales: &[f32],
        a_sums: &[i32],
    ) -> [f32; ROW_GROUP] {
        let mut acc = [vdupq_n_f32(0.0); 4];
        for (b, &a_scale) in a_scales.iter().enumerate() {
            // Rows 4i..4i + 4: low nibbles' products in `s[i]`, high nibbles' in `s[4 + i]`,
            // eight dependency chains.
            let mut s = [vdupq_n_s32(0); 8];
            for t in 0..4 {
                // SAFETY: block b is in bounds (caller).
                let (first, last, q_first, q_last) = unsafe { run4(w, a, b, t) };
                // `sdot` as in `rows_sdot`; nibbles 0–15 are valid i8 operands.
                // SAFETY: the caller guarantees FEAT_DotProd; registers only, no memory.
                unsafe {
                    std::arch::asm!(
                        "sdot {s0:v}.4s, {w0:v}.16b, {q0:v}.16b",
                        "sdot {s1:v}.4s, {w1:v}.16b, {q0:v}.16b",
                        "sdot {s2:v}.4s, {w2:v}.16b, {q0:v}.16b",
                        "sdot {s3:v}.4s, {w3:v}.16b, {q0:v}.16b",
                        "sdot {s4:v}.4s, {w4:v}.16b, {q1:v}.16b",
                        "sdot {s5:v}.4s, {w5:v}.16b, {q1:v}.16b",
                        "sdot {s6:v}.4s, {w6:v}.16b, {q1:v}.16b",
                        "sdot {s7:v}.4s, {w7:v}.16b, {q1:v}.16b",
                        s0 = inout(vreg) s[0],
                        s1 = inout(vreg) s[1],
                        s2 = inout(vreg) s[2],
                        s3 = inout(vreg) s[3],
                        s4 = inout(vreg) s[4],
                        s5 = inout(vreg) s[5],
                        s6 = inout(vreg) s[6],
                        s7 = inout(vreg) s[7],
                        w0 = in(vreg) first[0],
                        w1 = in(vreg) first[1],
                        w2 = in(vreg) first[2],
                        w3 = in(vreg) first[3],
                        w4 = in(vreg) last[0],
                        w5 = in(vreg) last[1],
                        w6 = in(vreg) last[2],
                        w7 = in(vreg) last[3],
                        q0 = in(vreg) q_first,
                        q1 = in(vreg) q_last,
                        options(pure, nomem, nostack, preserves_flags),
                    );
                }
            }
            let sums = [0, 1, 2, 3].map(|i| vaddq_s32(s[i], s[4 + i]));
            // SAFETY: block b's scales and minimums are in bounds (caller).
            unsafe { accumulate4(&mut acc, sums, w_scales, w_mins, a_scale, a_sums[b], b) };
        }
        store(acc)
    }
}

#[cfg(target_arch = "arm")]
mod armv7 {
    use super::{BLOCK, GROUP_BLOCK, GROUP_BLOCK4, ROW_GROUP};

    /// Whether the CPU has NEON (the kernel's `HWCAP_NEON` bit).
    pub(super) fn has_neon() -> bool {
        const HWCAP_NEON: std::ffi::c_ulong = 1 << 12;
        // SAFETY: getauxval only reads the auxiliary vector the kernel gave the process.
        unsafe { libc::getauxval(libc::AT_HWCAP) & HWCAP_NEON != 0 }
    }

    /// Instructions for run `c` of the rows of one quad: multiply its 16 weight bytes (loaded
    /// at `{w}`, which then moves on by `{stride}` to the next run) as `u − 128` by the run's
    /// four activation bytes (lane `$lane` of d0–d3) and add the pairs of products to q3 (rows
    /// 4i, 4i + 1) and q4 (rows 4i + 2, 4i + 3).
    macro_rules! run {
        ($lane:literal) => {
            concat!(
                "vld1.8 {{d10-d11}}, [{w}], {stride}\n",
                "veor q5, q5, q2\n",
                "vdup.32 d12, ",
                $lane,
                "\n",
                // |(u − 128) · q| ≤ 128 · 127 fits i16; pairs are summed into i32 lanes.
                "vmull.s8 q7, d10, d12\n",
                "vpadal.s16 q3, q7\n",
                "vmull.s8 q7, d11, d12\n",
                "vpadal.s16 q4, q7\n",
            )
        };
    }

    /// Instructions for run `t` of the rows of one quad of a 4-bit block: split its 16 weight
    /// bytes (loaded at `{w}`, which then moves on by `{stride}` to the next run) into low
    /// nibbles (q6) and high nibbles (q5), multiply them by the run's first and last four
    /// activation bytes (`$first`, `$last`: lanes of d0–d3) and add the products to the i16
    /// lanes of q3 (rows 4i, 4i + 1) and q4 (rows 4i + 2, 4i + 3).
    macro_rules! run4 {
        ($first:literal, $last:literal) => {
            concat!(
                "vld1.8 {{d10-d11}}, [{w}], {stride}\n",
                "vand q6, q5, q2\n",
                "vshr.u8 q5, q5, #4\n",
                "vdup.32 d14, ",
                $first,
                "\n",
                "vdup.32 d15, ",
                $last,
                "\n",
                "vmlal.s8 q3, d12, d14\n",
                "vmlal.s8 q4, d13, d14\n",
                "vmlal.s8 q3, d10, d15\n",
                "vmlal.s8 q4, d11, d15\n",
            )
        };
    }

    /// Adds block `b`'s 16 rows, scaled by their `w_scales` and `a_scale`, to `out`.
    ///
    /// The caller guarantees NEON and that block `b` lies within `w`, `w_scales` and `a`.
    #[inline(always)]
    unsafe fn block(
        out: &mut [f32; ROW_GROUP],
        w: &[u8],
        w_scales: &[f32],
        a: &[i8],
        a_scale: f32,
        b: usize,
    ) {
        // The armv7 target assumes no NEON and its intrinsics are not stable, so the block is
        // assembly, told that NEON exists (`.fpu neon`); only q0–q7 (the target has 16 d
        // registers below NEON's 32). q0–q1: the block's 32 activations; q2: 0x80 in every
        // byte; per quad of rows, q3–q4: pair sums, q5: weights, d12: four activations
        // broadcast, d13: `a_scale`, q7: products.
        // SAFETY: reads 512 bytes of weights at `w` + 512b, 32 activations at `a` + 32b and
        // 16 scales at `w_scales` + 16b (all in bounds, caller), reads and writes the 16 floats
        // of `out`; the CPU has NEON (caller); the registers it uses are declared clobbered,
        // as the VFP d registers they are made of (a build without NEON does not know the q
        // registers); `subs` sets the flags.
        unsafe {
            std::arch::asm!(
                ".fpu neon",
                "vld1.8 {{d0-d3}}, [{a}]",
                // u − 128 as i8 is u with its top bit flipped.
                "vmov.i8 q2, #0x80",
                "vdup.32 d13, {a_scale}",
                "mov {quads}, #4",
                // One quad of rows 4i..4i + 4 per pass: the four rows' columns 4c..4c + 4 lie
                // 16i bytes into run c.
                "2:",
                "vmov.i32 q3, #0",
                "vmov.i32 q4, #0",
                run!("d0[0]"),
                run!("d0[1]"),
                run!("d1[0]"),
                run!("d1[1]"),
                run!("d2[0]"),
                run!("d2[1]"),
                run!("d3[0]"),
                run!("d3[1]"),
                // Back from the end of the block to the next quad's first 16 bytes.
                "sub {w}, {w}, #496",
                // The four rows' sums, in f32 (exact: |sum| ≤ 32 · 128 · 127 < 2^24).
                "vpadd.i32 d6, d6, d7",
                "vpadd.i32 d7, d8, d9",
                "vcvt.f32.s32 q3, q3",
                "vld1.32 {{d8-d9}}, [{w_scales}]!",
                "vmul.f32 q4, q4, d13[0]",
                "vld1.32 {{d10-d11}}, [{out}]",
                "vmla.f32 q5, q3, q4",
                "vst1.32 {{d10-d11}}, [{out}]!",
                "subs {quads}, {quads}, #1",
                "bne 2b",
                w = inout(reg) w.as_ptr().add(b * GROUP_BLOCK) => _,
                a = in(reg) a.as_ptr().add(BLOCK * b),
                w_scales = inout(reg) w_scales.as_ptr().add(b * ROW_GROUP) => _,
                out = inout(reg) out.as_mut_ptr() => _,
                a_scale = in(reg) a_scale.to_bits(),
                stride = in(reg) 64u32,
                quads = out(reg) _,
                out("d0") _,
                out("d1") _,
                out("d2") _,
                out("d3") _,
                out("d4") _,
                out("d5") _,
                out("d6") _,
                out("d7") _,
                out("d8") _,
                out("d9") _,
                out("d10") _,
                out("d11") _,
                out("d12") _,
                out("d13") _,
                out("d14") _,
                out("d15") _,
                options(nostack),
            );
        }
    }

    /// The caller guarantees NEON and that `w`, `w_scales` and `a` hold `a_scales.len()`
    /// blocks.
    pub(super) unsafe fn group_neon(
        w: &[u8],
        w_scales: &[f32],
        a: &[i8],
        a_scales: &[f32],
    ) -> [f32; ROW_GROUP] {
        let mut out = [0f32; ROW_GROUP];
        for (b, &a_scale) in a_scales.iter().enumerate() {
            // SAFETY: block b lies within the slices; the CPU has NEON (caller).
            unsafe { block(&mut out, w, w_scales, a, a_scale, b) };
        }
        out
    }

    /// The caller guarantees NEON and that `w`, `w_scales`, `w_mins`, `a` and `a_sums` hold
    /// `a_scales.len()` 4-bit blocks.
    pub(super) unsafe fn group4_neon(
        w: &[u8],
        w_scales: &[f32],
        w_mins: &[f32],
        a: &[i8],
        a_scales: &[f32],
        a_sums: &[i32],
    ) -> [f32; ROW_GROUP] {
        let mut out = [0f32; ROW_GROUP];
        for (b, &a_scale) in a_scales.iter().enumerate() {
            let offset = a_scale * a_sums[b] as f32;
            // Assembly for the reasons given in `block`, adding block b's 16 rows, scaled by
            // their `w_scales` and `a_scale`, and their `w_mins` times `offset` to `out`.
            // q0–q1: the block's 32 activations; q2: 0x0F in every byte; per quad of rows,
            // q3–q4: i16 sums, four lanes a row (lane k adds up the products of byte k of the
            // row's four in each run, both nibbles of four runs, |Σ| ≤ 8 · 15 · 128 < 2^15),
            // q5–q6: nibbles, d14–d15: activations broadcast, then d14: `a_scale` and `offset`.
            // SAFETY: reads 256 bytes of weights at `w` + 256b, 32 activations at `a` + 32b and
            // 16 scales and 16 minimums at `w_scales` + 16b and `w_mins` + 16b (all in bounds,
            // caller), reads and writes the 16 floats of `out`; the CPU has NEON (caller); the
            // registers it uses are declared clobbered, as in `block`; `subs` sets the flags.
            unsafe {
                std::arch::asm!(
                    ".fpu neon",
                    "vld1.8 {{d0-d3}}, [{a}]",
                    "vmov.i8 q2, #0x0F",
                    "mov {quads}, #4",
                    // One quad of rows 4i..4i + 4 per pass: the four rows' eight columns
                    // 8t..8t + 8 lie 16i bytes into run t.
                    "2:",
                    "vmov.i32 q3, #0",
                    "vmov.i32 q4, #0",
                    run4!("d0[0]", "d0[1]"),
                    run4!("d1[0]", "d1[1]"),
                    run4!("d2[0]", "d2[1]"),
                    run4!("d3[0]", "d3[1]"),
                    // Back from the end of the block to the next quad's first 16 bytes.
                    "sub {w}, {w}, #240",
                    // The four rows' sums, in f32 (exact: |sum| ≤ 32 · 15 · 128 < 2^24).
                    "vpaddl.s16 q3, q3",
                    "vpaddl.s16 q4, q4",
                    "vpadd.i32 d6, d6, d7",
                    "vpadd.i32 d7, d8, d9",
                    "vcvt.f32.s32 q3, q3",
                    "vmov d14, {a_scale}, {offset}",
                    "vld1.32 {{d8-d9}}, [{w_scales}]!",
                    "vmul.f32 q4, q4, d14[0]",
                    "vld1.32 {{d10-d11}}, [{w_mins}]!",
                    "vld1.32 {{d12-d13}}, [{out}]",
                    "vmla.f32 q6, q3, q4",
                    "vmla.f32 q6, q5, d14[1]",
                    "vst1.32 {{d12-d13}}, [{out}]!",
                    "subs {quads}, {quads}, #1",
                    "bne 2b",
                    w = inout(reg) w.as_ptr().add(b * GROUP_BLOCK4) => _,
                    a = in(reg) a.as_ptr().add(BLOCK * b),
                    w_scales = inout(reg) w_scales.as_ptr().add(b * ROW_GROUP) => _,
                    w_mins = inout(reg) w_mins.as_ptr().add(b * ROW_GROUP) => _,
                    out = inout(reg) out.as_mut_ptr() => _,
                    a_scale = in(reg) a_scale.to_bits(),
                    offset = in(reg) offset.to_bits(),
                    stride = in(reg) 64u32,
                    quads = out(reg) _,
                    out("d0") _,
                    out("d1") _,
                    out("d2") _,
                    out("d3") _,
                    out("d4") _,
                    out("d5") _,
                    out("d6") _,
                    out("d7") _,
                    out("d8") _,
                    out("d9") _,
                    out("d10") _,
                    out("d11") _,
                    out("d12") _,
                    out("d13") _,
                    out("d14") _,
                    out("d15") _,
                    options(nostack),
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember_core::blocks::{int4::nibble_index, int8::quant_index, scale_index};
    use quickcheck::quickcheck;

    /// The exact dot product of row-major row `w` with `a`, and the magnitude of the terms a
    /// kernel adds up on the way (the VNNI kernels multiply the raw u8 weights and subtract
    /// 128·Σq afterwards).
    fn exact(w: &[u8], w_scales: &[f32], a: &QuantizedRows) -> (f64, f64) {
        let mut total = 0.0;
        let mut magnitude = 0.0;
        for (b, (w, q)) in w
            .chunks_exact(32)
            .zip(a.quants.chunks_exact(32))
            .enumerate()
        {
            let scale = w_scales[b] as f64 * a.scales[b] as f64;
            let sum: i64 = w
                .iter()
                .zip(q)
                .map(|(&u, &q)| (u as i64 - 128) * q as i64)
                .sum();
            let size: i64 = w
                .iter()
                .zip(q)
                .map(|(&u, &q)| (u as i64 + 128) * (q as i64).abs())
                .sum();
            total += scale * sum as f64;
            magnitude += scale * size as f64;
        }
        (total, magnitude)
    }

    quickcheck! {
        fn every_kernel_computes_each_rows_exact_integer_sums(w: Vec<u8>, x: Vec<f32>, scale: u8) -> bool {
            let blocks = (w.len().min(x.len()) / 32).clamp(1, 8);
            let cols = blocks * 32;
            let rows: Vec<Vec<u8>> = (0..ROW_GROUP)
                .map(|r| (0..cols).map(|j| w.get((r * 7 + j) % w.len().max(1)).copied().unwrap_or(7) ^ (r as u8 * 37)).collect())
                .collect();
            let row_scales: Vec<Vec<f32>> = (0..ROW_GROUP)
                .map(|r| (0..blocks).map(|b| (b as f32 + 1.0) * (scale as f32 + 1.0) * (r as f32 + 1.0) / 2048.0).collect())
                .collect();
            let mut group = vec![0u8; ROW_GROUP * cols];
            let mut group_scales = vec![0f32; ROW_GROUP * blocks];
            for r in 0..ROW_GROUP {
                for j in 0..cols {
                    group[quant_index(cols, r, j)] = rows[r][j];
                }
                for b in 0..blocks {
                    group_scales[scale_index(cols, r, b)] = row_scales[r][b];
                }
            }
            let x: Vec<f32> = x.into_iter().map(|v| if v.is_finite() { v % 1e3 } else { 0.0 })
                .chain(std::iter::repeat(0.5)).take(cols).collect();
            let a = QuantizedRows::new(&x, cols);
            // f32 rounding scales with the terms, not with their sum (which can cancel to 0).
            Kernel::available().into_iter().all(|k| {
                let got = k.dot_group(&group, &group_scales, &a, 0);
                (0..ROW_GROUP).all(|r| {
                    let (want, magnitude) = exact(&rows[r], &row_scales[r], &a);
                    (got[r] as f64 - want).abs() <= 1e-6 * magnitude.max(1.0)
                })
            })
        }
    }

    /// The exact dot product of row-major 4-bit row `q` (value = d · q + m per block) with `a`,
    /// and the magnitude of the terms.
    fn exact4(q: &[u8], d: &[f32], m: &[f32], a: &QuantizedRows) -> (f64, f64) {
        let (mut total, mut magnitude) = (0.0, 0.0);
        for (b, (w, x)) in q
            .chunks_exact(32)
            .zip(a.quants.chunks_exact(32))
            .enumerate()
        {
            let a_scale = a.scales[b] as f64;
            let sum: i64 = w.iter().zip(x).map(|(&w, &x)| w as i64 * x as i64).sum();
            let size: i64 = w
                .iter()
                .zip(x)
                .map(|(&w, &x)| w as i64 * (x as i64).abs())
                .sum();
            let x_sum: i64 = x.iter().map(|&x| x as i64).sum();
            let x_size: i64 = x.iter().map(|&x| (x as i64).abs()).sum();
            total += a_scale * (d[b] as f64 * sum as f64 + m[b] as f64 * x_sum as f64);
            magnitude +=
                a_scale * ((d[b] as f64 * size as f64).abs() + (m[b] as f64 * x_size as f64).abs());
        }
        (total, magnitude)
    }

    quickcheck! {
        fn every_kernel_computes_each_4bit_rows_exact_sums(w: Vec<u8>, x: Vec<f32>, scale: u8, min: i8) -> bool {
            let blocks = (w.len().min(x.len()) / 32).clamp(1, 8);
            let cols = blocks * 32;
            let rows: Vec<Vec<u8>> = (0..ROW_GROUP)
                .map(|r| (0..cols).map(|j| (w.get((r * 7 + j) % w.len().max(1)).copied().unwrap_or(7) ^ (r as u8 * 37)) & 0x0F).collect())
                .collect();
            let row_scales: Vec<Vec<f32>> = (0..ROW_GROUP)
                .map(|r| (0..blocks).map(|b| (b as f32 + 1.0) * (scale as f32 + 1.0) * (r as f32 + 1.0) / 2048.0).collect())
                .collect();
            let row_mins: Vec<Vec<f32>> = (0..ROW_GROUP)
                .map(|r| (0..blocks).map(|b| (min as f32 - b as f32) * (r as f32 + 1.0) / 512.0).collect())
                .collect();
            let mut group = vec![0u8; ROW_GROUP * cols / 2];
            let (mut group_scales, mut group_mins) = (vec![0f32; ROW_GROUP * blocks], vec![0f32; ROW_GROUP * blocks]);
            for r in 0..ROW_GROUP {
                for (j, &q) in rows[r].iter().enumerate() {
                    let (at, high) = nibble_index(cols, r, j);
                    group[at] |= q << if high { 4 } else { 0 };
                }
                for b in 0..blocks {
                    group_scales[scale_index(cols, r, b)] = row_scales[r][b];
                    group_mins[scale_index(cols, r, b)] = row_mins[r][b];
                }
            }
            let x: Vec<f32> = x.into_iter().map(|v| if v.is_finite() { v % 1e3 } else { 0.0 })
                .chain(std::iter::repeat(0.5)).take(cols).collect();
            let a = QuantizedRows::new(&x, cols);
            Kernel::available().into_iter().all(|k| {
                let got = k.dot_group4(&group, &group_scales, &group_mins, &a, 0);
                (0..ROW_GROUP).all(|r| {
                    let (want, magnitude) = exact4(&rows[r], &row_scales[r], &row_mins[r], &a);
                    (got[r] as f64 - want).abs() <= 1e-6 * magnitude.max(1.0)
                })
            })
        }
    }

    #[test]
    fn a_batch_of_rows_gives_each_row_bit_for_bit_what_it_gives_alone() {
        let cols = 96;
        let group: Vec<u8> = (0..ROW_GROUP * cols)
            .map(|i| (i * 7919 % 251) as u8)
            .collect();
        let scales: Vec<f32> = (0..ROW_GROUP * cols / 32)
            .map(|i| 0.001 * (1 + i % 13) as f32)
            .collect();
        for rows in [1, 4, 7, 9] {
            let x: Vec<f32> = (0..rows * cols)
                .map(|i| ((i * 31 % 97) as f32 - 48.0) / 17.0)
                .collect();
            let a = QuantizedRows::new(&x, cols);
            for kernel in Kernel::available() {
                let mut batch = vec![0f32; rows * ROW_GROUP];
                kernel.dot_group_rows(&group, &scales, &a, &mut batch);
                for r in 0..rows {
                    assert_eq!(
                        batch[r * ROW_GROUP..][..ROW_GROUP],
                        kernel.dot_group(&group, &scales, &a, r),
                        "{} rows {rows} row {r}",
                        kernel.name()
                    );
                }
            }
        }
    }

    #[test]
    fn activations_round_half_to_even() {
        let mut x = vec![0f32; 32];
        x[..6].copy_from_slice(&[127.0, 0.5, 1.5, 2.5, -0.5, -1.5]);
        let a = QuantizedRows::new(&x, 32);
        assert_eq!(a.scales, [1.0]);
        assert_eq!(&a.quants[..6], &[127, 0, 2, 2, 0, -2]);
        assert_eq!(a.sums, [129]);
    }

    #[test]
    fn quantized_activations_reconstruct_within_half_a_step() {
        let x: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let a = QuantizedRows::new(&x, 64);
        assert_eq!(a.rows(), 1);
        for (i, v) in x.iter().enumerate() {
            let back = a.scales[i / 32] * a.quants[i] as f32;
            assert!(
                (back - v).abs() <= a.scales[i / 32] * 0.5 + 1e-6,
                "{i}: {back} vs {v}"
            );
        }
        let sums: Vec<i32> = a
            .quants
            .chunks(32)
            .map(|c| c.iter().map(|&q| q as i32).sum())
            .collect();
        assert_eq!(a.sums, sums);
    }
}
