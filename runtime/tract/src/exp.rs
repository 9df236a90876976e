//! `exp` of eight f32 numbers at a time on x86-64 with AVX2 and FMA, bit for bit the results
//! of `f32::exp` there.
//!
//! `f32::exp` calls the C library's `expf`; glibc (2.27 on) picks its FMA build on such a CPU,
//! which computes in f64: `x·32/ln 2 = k + r` (k rounded to an integer, |r| ≤ ½), `2^(k/32)`
//! from a table of 32 powers `2^(i/32)` with the rest of k in the exponent bits, `2^(r/32)` from
//! a cubic, and one rounding to f32. The same operations in the same order, four f64 lanes at a
//! time, give the same bits: attention's softmax takes 3,600 exponentials per layer at a
//! 400-token context, and one call at a time they were a third of its time. Inputs outside
//! the C routine's main path (|x| ≥ 88, infinities, NaN) are left to `f32::exp` itself.
//! Checked against `f32::exp` on every 97th f32 (all of them by hand: see the tests).

use std::arch::x86_64::*;

/// 32 / ln 2, rounded to f64.
const INV_LN2_N: f64 = f64::from_bits(0x4047_1547_652b_82fe);
/// 1.5 · 2^52: adding it rounds a number below 2^51 to an integer in the low mantissa bits.
const SHIFT: f64 = f64::from_bits(0x4338_0000_0000_0000);
/// The cubic for `2^(r/32)` (r in [−½, ½]): `C0·r³ + C1·r² + C2·r + 1`.
const C0: f64 = f64::from_bits(0x3ebc_6af8_4b91_2394);
const C1: f64 = f64::from_bits(0x3f2e_bfce_50fa_c4f3);
const C2: f64 = f64::from_bits(0x3f96_2e42_ff0c_52d6);
/// `2^(i/32)` rounded to f64, less `i · 2^47` in its bits (the part of k that the exponent
/// adds back), for i in 0..32.
const TABLE: [u64; 32] = [
    0x3ff0000000000000,
    0x3fefd9b0d3158574,
    0x3fefb5586cf9890f,
    0x3fef9301d0125b51,
    0x3fef72b83c7d517b,
    0x3fef54873168b9aa,
    0x3fef387a6e756238,
    0x3fef1e9df51fdee1,
    0x3fef06fe0a31b715,
    0x3feef1a7373aa9cb,
    0x3feedea64c123422,
    0x3feece086061892d,
    0x3feebfdad5362a27,
    0x3feeb42b569d4f82,
    0x3feeab07dd485429,
    0x3feea47eb03a5585,
    0x3feea09e667f3bcd,
    0x3fee9f75e8ec5f74,
    0x3feea11473eb0187,
    0x3feea589994cce13,
    0x3feeace5422aa0db,
    0x3feeb737b0cdc5e5,
    0x3feec49182a3f090,
    0x3feed503b23e255d,
    0x3feee89f995ad3ad,
    0x3feeff76f2fb5e47,
    0x3fef199bdd85529c,
    0x3fef3720dcef9069,
    0x3fef5818dcfba487,
    0x3fef7c97337b9b5f,
    0x3fefa4afa2a490da,
    0x3fefd0765b6e4540,
];
/// The largest biased exponent field (its top 11 bits past the sign, as the C routine reads
/// them) of an f32 whose exponential takes the main path: |x| < 88 or so.
const MAIN_PATH_TOP: i32 = 0x42a;

/// `exp` of four f64 lanes (each an f32 widened), before the rounding to f32.
#[target_feature(enable = "avx2,fma")]
fn exp4(x: __m256d) -> __m256d {
    let shifted = _mm256_fmadd_pd(_mm256_set1_pd(INV_LN2_N), x, _mm256_set1_pd(SHIFT));
    let k_bits = _mm256_castpd_si256(shifted);
    let k = _mm256_sub_pd(shifted, _mm256_set1_pd(SHIFT));
    let r = _mm256_fmsub_pd(_mm256_set1_pd(INV_LN2_N), x, k);
    let index = _mm256_and_si256(k_bits, _mm256_set1_epi64x(31));
    // SAFETY: every index is in 0..32, within the table (AVX2, enabled here).
    let power = unsafe { _mm256_i64gather_epi64::<8>(TABLE.as_ptr().cast(), index) };
    let scale = _mm256_castsi256_pd(_mm256_add_epi64(power, _mm256_slli_epi64::<47>(k_bits)));
    let high = _mm256_fmadd_pd(_mm256_set1_pd(C0), r, _mm256_set1_pd(C1));
    let low = _mm256_fmadd_pd(r, _mm256_set1_pd(C2), _mm256_set1_pd(1.0));
    let y = _mm256_fmadd_pd(high, _mm256_mul_pd(r, r), low);
    _mm256_mul_pd(y, scale)
}

/// Replaces each `x` of `row` with `exp(x − max)` (the difference rounded to f32 first), as
/// `(x - max).exp()` would.
#[target_feature(enable = "avx2,fma")]
pub fn exp_shifted(row: &mut [f32], max: f32) {
    let (eights, rest) = row.as_chunks_mut::<8>();
    for eight in eights {
        let x: [f32; 8] = std::array::from_fn(|l| eight[l] - max);
        // SAFETY: `x` holds eight f32 (AVX, enabled here).
        let v = unsafe { _mm256_loadu_ps(x.as_ptr()) };
        let low = exp4(_mm256_cvtps_pd(_mm256_castps256_ps128(v)));
        let high = exp4(_mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v)));
        let y = _mm256_set_m128(_mm256_cvtpd_ps(high), _mm256_cvtpd_ps(low));
        // SAFETY: `eight` holds eight f32 (AVX, enabled here).
        unsafe { _mm256_storeu_ps(eight.as_mut_ptr(), y) };
        let top = _mm256_and_si256(
            _mm256_srli_epi32::<20>(_mm256_castps_si256(v)),
            _mm256_set1_epi32(0x7ff),
        );
        let outside = _mm256_cmpgt_epi32(top, _mm256_set1_epi32(MAIN_PATH_TOP));
        if _mm256_movemask_ps(_mm256_castsi256_ps(outside)) != 0 {
            for (y, x) in eight.iter_mut().zip(x) {
                if (x.to_bits() >> 20) as i32 & 0x7ff > MAIN_PATH_TOP {
                    *y = x.exp();
                }
            }
        }
    }
    for x in rest {
        *x = (*x - max).exp();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks `exp_shifted` against `f32::exp` on every `step`-th f32 bit pattern (both signs),
    /// eight at a time, and on the edges of the main path.
    fn agrees_with_libm(step: usize) {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            return;
        }
        let edges = [
            0.0,
            -0.0,
            88.0,
            -88.0,
            88.72,
            -103.2,
            -103.5,
            -104.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MIN_POSITIVE,
            f32::MAX,
        ];
        let patterns = (0..=u32::MAX as usize).step_by(step).map(|b| b as u32);
        let mut batch = Vec::with_capacity(1 << 20);
        let mut patterns = patterns.peekable();
        let mut first = true;
        while patterns.peek().is_some() || first {
            batch.clear();
            if std::mem::take(&mut first) {
                batch.extend(edges);
            }
            batch.extend(patterns.by_ref().take(1 << 20).map(f32::from_bits));
            // Some lanes left to the scalar tail.
            batch.extend([1.5, -2.5, 3.0]);
            for max in [0.0, 1.25] {
                let mut got = batch.clone();
                // SAFETY: the CPU has AVX2 and FMA (checked above).
                unsafe { exp_shifted(&mut got, max) };
                for (&x, got) in batch.iter().zip(got) {
                    let want = (x - max).exp();
                    assert!(
                        got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                        "exp({x:e} − {max}): {got:e} vs {want:e}"
                    );
                }
            }
        }
    }

    #[test]
    fn gives_f32_exp_bit_for_bit() {
        agrees_with_libm(97);
    }

    /// Every f32, ~4 × 10⁹ numbers: `cargo test --release -p ember-tract exp -- --ignored`.
    #[test]
    #[ignore]
    fn gives_f32_exp_bit_for_bit_on_every_f32() {
        agrees_with_libm(1);
    }
}
