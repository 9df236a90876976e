//! Int8 dot products between an image's weight rows and int8-quantized activations.
//!
//! Weights are blocks of 32 bytes `u` with an f32 scale `d_w` (value = `d_w · (u − 128)`).
//! Activations are quantized per block of 32 the same way llama.cpp quantizes them for its
//! 8-bit dot products (`q = round(x / d_a)`, `d_a = max|x| / 127`), so a block contributes
//! `d_w · d_a · Σ (u − 128) · q`, an exact integer sum scaled once.

/// Which dot-product implementation runs. Only detection makes one (`detect`, `available`), so
/// a kernel in hand is one this CPU can run and its safe `dot` cannot reach an instruction the
/// CPU lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernel(Isa);

/// The instruction sets behind the kernels; private, so that safe code cannot name one the CPU
/// lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isa {
    /// x86-64 AVX-VNNI: `vpdpbusd` multiplies the u8 weights by the i8 activations directly.
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
    /// 32-bit ARM with NEON (every armv7 Raspberry Pi, e.g. a Pi 3 on a 32-bit OS):
    /// `vmull.s8` + `vpadal.s16`.
    #[cfg(target_arch = "arm")]
    NeonArmv7,
    /// Plain Rust (auto-vectorized by the compiler for the target, e.g. NEON).
    Portable,
}

impl Kernel {
    /// The fastest kernel this CPU runs.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
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
            }
            if Kernel::detect() == Kernel(Isa::AvxVnni) {
                kernels.push(Kernel(Isa::AvxVnni));
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

    /// `Σ_b w_scales[b] · a.scales[b] · Σ_j (w[32b + j] − 128) · a.quants[32b + j]` over one
    /// weight row `w` and one activation row of `a` (`row`).
    #[inline]
    pub fn dot(self, w: &[u8], w_scales: &[f32], a: &QuantizedRows, row: usize) -> f32 {
        let blocks = a.cols / 32;
        let (quants, scales) = (
            &a.quants[row * a.cols..][..a.cols],
            &a.scales[row * blocks..][..blocks],
        );
        assert!(w.len() >= a.cols && w_scales.len() >= blocks);
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `detect`/`available` only return this kernel when the CPU has AVX-VNNI,
            // AVX2 and FMA; the slices hold `blocks` full blocks (asserted above).
            Kernel(Isa::AvxVnni) => unsafe {
                let sums = &a.sums[row * blocks..][..blocks];
                x86::dot_avxvnni(w, w_scales, quants, scales, sums)
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above, for AVX2 and FMA.
            Kernel(Isa::Avx2) => unsafe { x86::dot_avx2(w, w_scales, quants, scales) },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: `detect`/`available` only return this kernel when the CPU has the
            // dot-product extension; the slices hold `blocks` full blocks (asserted above).
            Kernel(Isa::NeonDot) => unsafe { arm::dot_sdot(w, w_scales, quants, scales) },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: NEON is part of every aarch64 CPU; slices as above.
            Kernel(Isa::Neon) => unsafe { arm::dot_neon(w, w_scales, quants, scales) },
            #[cfg(target_arch = "arm")]
            // SAFETY: `detect`/`available` only return this kernel when the CPU reports NEON; the
            // slices hold `blocks` full blocks (asserted above).
            Kernel(Isa::NeonArmv7) => unsafe { armv7::dot_neon(w, w_scales, quants, scales) },
            _ => dot_portable(w, w_scales, quants, scales),
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
    /// Quantizes `x` (rows of `cols` values, `cols` a multiple of 32).
    pub fn new(x: &[f32], cols: usize) -> Self {
        let blocks = x.len() / 32;
        let mut rows = QuantizedRows {
            cols,
            quants: Vec::with_capacity(x.len()),
            scales: Vec::with_capacity(blocks),
            sums: Vec::with_capacity(blocks),
        };
        for block in x.chunks_exact(32) {
            let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let scale = amax / 127.0;
            let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            let mut sum = 0i32;
            for v in block {
                let q = (v * inverse).round() as i8;
                sum += q as i32;
                rows.quants.push(q);
            }
            rows.scales.push(scale);
            rows.sums.push(sum);
        }
        rows
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.quants.len().checked_div(self.cols).unwrap_or(0)
    }
}

fn dot_portable(w: &[u8], w_scales: &[f32], a: &[i8], a_scales: &[f32]) -> f32 {
    w.chunks_exact(32)
        .zip(a.chunks_exact(32))
        .zip(w_scales.iter().zip(a_scales))
        .map(|((w, a), (dw, da))| {
            let sum: i32 = w
                .iter()
                .zip(a)
                .map(|(&u, &q)| (u as i32 - 128) * q as i32)
                .sum();
            dw * da * sum as f32
        })
        .sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    fn horizontal_sum(v: __m256) -> f32 {
        let pair = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let pair = _mm_add_ps(pair, _mm_movehl_ps(pair, pair));
        let one = _mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1));
        _mm_cvtss_f32(one)
    }

    /// The caller guarantees AVX-VNNI, AVX2 and FMA, and that every slice holds
    /// `a_scales.len()` blocks.
    #[target_feature(enable = "avx2,fma,avxvnni")]
    pub(super) unsafe fn dot_avxvnni(
        w: &[u8],
        w_scales: &[f32],
        a: &[i8],
        a_scales: &[f32],
        a_sums: &[i32],
    ) -> f32 {
        let mut acc = _mm256_setzero_ps();
        for b in 0..a_scales.len() {
            // SAFETY: block b lies within `w` and `a` (caller); unaligned loads.
            let (wv, av) = unsafe {
                (
                    _mm256_loadu_si256(w.as_ptr().add(32 * b) as *const __m256i),
                    _mm256_loadu_si256(a.as_ptr().add(32 * b) as *const __m256i),
                )
            };
            // Start the integer sum at −128·Σq so that it ends at Σ(u − 128)·q.
            let start = _mm256_zextsi128_si256(_mm_cvtsi32_si128(-128 * a_sums[b]));
            let sum = _mm256_dpbusd_avx_epi32(start, wv, av);
            let scale = _mm256_set1_ps(w_scales[b] * a_scales[b]);
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), scale, acc);
        }
        horizontal_sum(acc)
    }

    /// The caller guarantees AVX2 and FMA, and that every slice holds `a_scales.len()` blocks.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_avx2(w: &[u8], w_scales: &[f32], a: &[i8], a_scales: &[f32]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let offset = _mm256_set1_epi8(-128);
        let ones = _mm256_set1_epi16(1);
        for b in 0..a_scales.len() {
            // SAFETY: block b lies within `w` and `a` (caller); unaligned loads.
            let (wv, av) = unsafe {
                (
                    _mm256_loadu_si256(w.as_ptr().add(32 * b) as *const __m256i),
                    _mm256_loadu_si256(a.as_ptr().add(32 * b) as *const __m256i),
                )
            };
            // u − 128 as i8, then |w| · (q · sign w) so that vpmaddubsw sees an unsigned operand.
            let wq = _mm256_xor_si256(wv, offset);
            let products = _mm256_maddubs_epi16(_mm256_sign_epi8(wq, wq), _mm256_sign_epi8(av, wq));
            let sum = _mm256_madd_epi16(products, ones);
            let scale = _mm256_set1_ps(w_scales[b] * a_scales[b]);
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), scale, acc);
        }
        horizontal_sum(acc)
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use std::arch::aarch64::*;

    /// Loads block `b` of the weights as `u − 128` (two i8 vectors) and of the activations.
    ///
    /// The caller guarantees that block `b` lies within `w` and `a`.
    #[inline(always)]
    unsafe fn block(w: &[u8], a: &[i8], b: usize) -> [int8x16_t; 4] {
        // SAFETY: block b lies within both slices (caller); unaligned loads; NEON is baseline.
        unsafe {
            let offset = vdupq_n_u8(0x80);
            let w0 = vld1q_u8(w.as_ptr().add(32 * b));
            let w1 = vld1q_u8(w.as_ptr().add(32 * b + 16));
            [
                vreinterpretq_s8_u8(veorq_u8(w0, offset)),
                vreinterpretq_s8_u8(veorq_u8(w1, offset)),
                vld1q_s8(a.as_ptr().add(32 * b)),
                vld1q_s8(a.as_ptr().add(32 * b + 16)),
            ]
        }
    }

    /// The caller guarantees that every slice holds `a_scales.len()` blocks.
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn dot_neon(w: &[u8], w_scales: &[f32], a: &[i8], a_scales: &[f32]) -> f32 {
        let mut acc = vdupq_n_f32(0.0);
        for b in 0..a_scales.len() {
            // SAFETY: block b is in bounds (caller).
            let [w0, w1, a0, a1] = unsafe { block(w, a, b) };
            // |(u − 128) · q| ≤ 128 · 127 fits i16; pairs are summed into i32 lanes.
            let mut sum = vdupq_n_s32(0);
            sum = vpadalq_s16(sum, vmull_s8(vget_low_s8(w0), vget_low_s8(a0)));
            sum = vpadalq_s16(sum, vmull_high_s8(w0, a0));
            sum = vpadalq_s16(sum, vmull_s8(vget_low_s8(w1), vget_low_s8(a1)));
            sum = vpadalq_s16(sum, vmull_high_s8(w1, a1));
            acc = vfmaq_n_f32(acc, vcvtq_f32_s32(sum), w_scales[b] * a_scales[b]);
        }
        vaddvq_f32(acc)
    }

    /// The caller guarantees the dot-product extension and that every slice holds
    /// `a_scales.len()` blocks.
    #[target_feature(enable = "neon,dotprod")]
    pub(super) unsafe fn dot_sdot(w: &[u8], w_scales: &[f32], a: &[i8], a_scales: &[f32]) -> f32 {
        let mut acc = vdupq_n_f32(0.0);
        for b in 0..a_scales.len() {
            // SAFETY: block b is in bounds (caller).
            let [w0, w1, a0, a1] = unsafe { block(w, a, b) };
            let mut sum = vdupq_n_s32(0);
            // `sdot` (FEAT_DotProd): each i32 lane += four i8 × i8 products. Its intrinsic is
            // not stable in Rust yet, the instruction is.
            // SAFETY: the caller guarantees FEAT_DotProd; registers only, no memory.
            unsafe {
                std::arch::asm!(
                    "sdot {acc:v}.4s, {w0:v}.16b, {a0:v}.16b",
                    "sdot {acc:v}.4s, {w1:v}.16b, {a1:v}.16b",
                    acc = inout(vreg) sum,
                    w0 = in(vreg) w0,
                    a0 = in(vreg) a0,
                    w1 = in(vreg) w1,
                    a1 = in(vreg) a1,
                    options(pure, nomem, nostack),
                );
            }
            acc = vfmaq_n_f32(acc, vcvtq_f32_s32(sum), w_scales[b] * a_scales[b]);
        }
        vaddvq_f32(acc)
    }
}

#[cfg(target_arch = "arm")]
mod armv7 {
    /// Whether the CPU has NEON (the kernel's `HWCAP_NEON` bit).
    pub(super) fn has_neon() -> bool {
        const HWCAP_NEON: std::ffi::c_ulong = 1 << 12;
        // SAFETY: getauxval only reads the auxiliary vector the kernel gave the process.
        unsafe { libc::getauxval(libc::AT_HWCAP) & HWCAP_NEON != 0 }
    }

    /// `Σ_j (w[j] − 128) · a[j]` over the 32-byte blocks at `w` and `a`.
    ///
    /// The caller guarantees 32 readable bytes at each pointer and a CPU with NEON.
    #[inline(always)]
    unsafe fn block_sum(w: *const u8, a: *const i8) -> i32 {
        let sum: i32;
        // The armv7 target assumes no NEON and its intrinsics are not stable, so the block is
        // assembly, told that NEON exists (`.fpu neon`); only q0–q6 (the target has 16 d
        // registers below NEON's 32).
        // SAFETY: reads 32 bytes at `w` and at `a` (caller); the CPU has NEON (caller); the
        // registers it uses are declared clobbered, as the VFP d registers they are made of (a
        // build without NEON does not know the q registers).
        unsafe {
            std::arch::asm!(
                ".fpu neon",
                "vld1.8 {{d0-d3}}, [{w}]",
                "vld1.8 {{d4-d7}}, [{a}]",
                // u − 128 as i8 is u with its top bit flipped.
                "vmov.i8 q4, #0x80",
                "veor q0, q0, q4",
                "veor q1, q1, q4",
                // |(u − 128) · q| ≤ 128 · 127 fits i16; pairs are summed into i32 lanes.
                "vmull.s8 q4, d0, d4",
                "vmull.s8 q5, d1, d5",
                "vpaddl.s16 q6, q4",
                "vpadal.s16 q6, q5",
                "vmull.s8 q4, d2, d6",
                "vmull.s8 q5, d3, d7",
                "vpadal.s16 q6, q4",
                "vpadal.s16 q6, q5",
                "vpadd.i32 d12, d12, d13",
                "vpadd.i32 d12, d12, d12",
                "vmov.32 {sum}, d12[0]",
                w = in(reg) w,
                a = in(reg) a,
                sum = out(reg) sum,
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
                options(pure, readonly, nostack, preserves_flags),
            );
        }
        sum
    }

    /// The caller guarantees NEON and that every slice holds `a_scales.len()` blocks.
    pub(super) unsafe fn dot_neon(w: &[u8], w_scales: &[f32], a: &[i8], a_scales: &[f32]) -> f32 {
        let mut total = 0.0;
        for b in 0..a_scales.len() {
            // SAFETY: block b lies within both slices; the CPU has NEON (caller).
            let sum = unsafe { block_sum(w.as_ptr().add(32 * b), a.as_ptr().add(32 * b)) };
            total += w_scales[b] * a_scales[b] * sum as f32;
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::quickcheck;

    /// The exact dot product, and the magnitude of the terms a kernel adds up on the way (the
    /// AVX-VNNI kernel multiplies the raw u8 weights and subtracts 128·Σq afterwards, in f32).
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
        fn every_kernel_computes_the_same_integer_sums(w: Vec<u8>, x: Vec<f32>, scale: u8) -> bool {
            let blocks = (w.len().min(x.len()) / 32).max(1);
            let w: Vec<u8> = w.into_iter().chain(std::iter::repeat(7)).take(blocks * 32).collect();
            let x: Vec<f32> = x.into_iter().map(|v| if v.is_finite() { v % 1e3 } else { 0.0 })
                .chain(std::iter::repeat(0.5)).take(blocks * 32).collect();
            let w_scales: Vec<f32> = (0..blocks).map(|b| (b as f32 + 1.0) * (scale as f32 + 1.0) / 256.0).collect();
            let a = QuantizedRows::new(&x, blocks * 32);
            let (want, magnitude) = exact(&w, &w_scales, &a);
            // f32 rounding scales with the terms, not with their sum (which can cancel to 0).
            Kernel::available().into_iter().all(|k| {
                let got = k.dot(&w, &w_scales, &a, 0) as f64;
                (got - want).abs() <= 1e-6 * magnitude.max(1.0)
            })
        }
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
