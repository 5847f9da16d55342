use super::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8K,
    BlockQ8_0, BlockQ8_1, PreparedQ8, RowsPrep, QK5_0, QK5_1, QK8_0, QK_K,
};
use byteorder::{ByteOrder, LittleEndian};
use half::f16;

#[cfg(target_arch = "x86")]
use core::arch::x86::*;
#[cfg(target_arch = "x86_64")]
use core::arch::x86_64::*;

// With AVX-512 VNNI only `vnni_tests` use it, as the reference.
#[cfg_attr(all(target_feature = "avx512vnni", target_feature = "avx512vl"), allow(dead_code))]
#[inline(always)]
pub(crate) unsafe fn sum_i16_pairs_float(x: __m256i) -> __m256 {
    let ones = _mm256_set1_epi16(1);
    let summed_pairs = _mm256_madd_epi16(ones, x);
    _mm256_cvtepi32_ps(summed_pairs)
}

/// The products of the unsigned bytes `ax` and the signed bytes `sy`, summed
/// in fours into eight f32 lanes. Where the build target has AVX-512 VNNI,
/// one `vpdpbusd` does the work of `maddubs` + `madd`. The sums are the same
/// integers, because every caller's bytes keep `maddubs`' pair sums inside
/// i16, where it would otherwise saturate: the sign trick gives |x| <= 128
/// and y in -128..=127 (pairs within -32768..=32512), and Q5_1's weights are
/// 0..=31.
#[inline(always)]
pub(crate) unsafe fn mul_sum_us8_pairs_float(ax: __m256i, sy: __m256i) -> __m256 {
    #[cfg(all(target_feature = "avx512vnni", target_feature = "avx512vl"))]
    return _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), ax, sy));

    #[cfg(not(all(target_feature = "avx512vnni", target_feature = "avx512vl")))]
    {
        let dot = _mm256_maddubs_epi16(ax, sy);
        sum_i16_pairs_float(dot)
    }
}

/// A weight block's f16 scale as f32, converted in a register whose other
/// lanes are zeroed first (`vmovd`, then `vcvtph2ps`). `f16::to_f32` compiles
/// to a `vpinsrw` that merges the scale into whatever register LLVM picks,
/// and in the kernels' loops it picked an accumulator: every block's scale
/// then waited for the previous block's sum, one chain of conversion,
/// multiply, broadcast and FMA latencies per block. The same two intrinsics
/// written out are folded back into that `vpinsrw` (only the low lane is
/// read), hence the two instructions in `asm!`. The value is the same
/// (`scale_is_f16_to_f32` checks all 65,536).
#[inline(always)]
pub(crate) unsafe fn scale_f32(d: f16) -> f32 {
    #[cfg(target_feature = "f16c")]
    {
        let x: __m128;
        std::arch::asm!(
            "vmovd {x}, {bits:e}",
            "vcvtph2ps {x}, {x}",
            bits = in(reg) d.to_bits() as u32,
            x = out(xmm_reg) x,
            options(pure, nomem, nostack, preserves_flags),
        );
        _mm_cvtss_f32(x)
    }
    #[cfg(not(target_feature = "f16c"))]
    d.to_f32()
}

#[inline(always)]
pub(crate) unsafe fn hsum_float_8(x: __m256) -> f32 {
    let res = _mm256_extractf128_ps(x, 1);
    let res = _mm_add_ps(res, _mm256_castps256_ps128(x));
    let res = _mm_add_ps(res, _mm_movehl_ps(res, res));
    let res = _mm_add_ss(res, _mm_movehdup_ps(res));
    _mm_cvtss_f32(res)
}

#[inline(always)]
pub(crate) unsafe fn bytes_from_nibbles_32(rsi: *const u8) -> __m256i {
    // The 16 bytes in both halves (one broadcast load, where inserting a
    // shifted copy into the high half took a shuffle), the high half shifted
    // down by a nibble; the mask drops what the shift brought in from the
    // next byte.
    let both = _mm256_broadcastsi128_si256(_mm_loadu_si128(rsi as *const __m128i));
    let bytes = _mm256_srlv_epi64(both, _mm256_set_epi64x(4, 4, 0, 0));
    let low_mask = _mm256_set1_epi8(0xF);
    _mm256_and_si256(low_mask, bytes)
}

#[inline(always)]
pub(crate) unsafe fn mul_sum_i8_pairs_float(x: __m256i, y: __m256i) -> __m256 {
    let ax = _mm256_sign_epi8(x, x);
    let sy = _mm256_sign_epi8(y, x);
    mul_sum_us8_pairs_float(ax, sy)
}

#[inline(always)]
pub(crate) fn vec_dot_q4_0_q8_0(n: usize, xs: &[BlockQ4_0], ys: &[BlockQ8_0]) -> f32 {
    debug_assert!(
        n.is_multiple_of(QK8_0),
        "vec_dot_q4_0_q8_0: {n} is not divisible by {QK8_0}"
    );
    unsafe {
        let mut acc = _mm256_setzero_ps();
        for (x, y) in xs.iter().zip(ys.iter()) {
            let d = _mm256_set1_ps(scale_f32(x.d) * scale_f32(y.d));
            let bx = bytes_from_nibbles_32(x.qs.as_ptr());
            let off = _mm256_set1_epi8(8);
            let bx = _mm256_sub_epi8(bx, off);
            let by = _mm256_loadu_si256(y.qs.as_ptr() as *const __m256i);
            let q = mul_sum_i8_pairs_float(bx, by);
            acc = _mm256_fmadd_ps(d, q, acc);
        }
        hsum_float_8(acc)
    }
}

/// Where the build target has AVX-512 VNNI, the Q5_0 and Q8_0 kernels
/// multiply their weights as unsigned bytes (`vpdpbusd` takes unsigned times
/// signed): Q5_0's `w + 16` (0..=31) and Q8_0's `w + 128` (0..=255, one XOR
/// with 0x80). `vpdpbusd` then sums `(w + bias) * y`, which is `sum w * y +
/// bias * sum y`, so each block's sum starts from `-bias * sum y`
/// (`PreparedQ8::start`) instead of zero and ends at `sum w * y`: the same
/// integer as the sign trick (`|w|` times `y` with `w`'s sign, then
/// `maddubs` + `madd`; exact because Q8_0's quantization never gives an
/// activation byte of -128), without its `vpsignb`s.
#[cfg(all(target_feature = "avx512vnni", target_feature = "avx512vl"))]
const UNSIGNED_WEIGHTS: bool = true;
#[cfg(not(all(target_feature = "avx512vnni", target_feature = "avx512vl")))]
const UNSIGNED_WEIGHTS: bool = false;

/// Q8_0 activation rows as the Q5_0 and Q8_0 kernels read them for every
/// weight row (`PreparedQ8`), computed once per matmul rather than once per
/// weight row: each block's bytes, its scale as f32 and, with unsigned
/// weights, `-bias` times the sum of its bytes.
pub(crate) fn prepare_q8_0_rows(ys: &[BlockQ8_0], bias: i32) -> RowsPrep {
    let mut prep = RowsPrep::default();
    prepare_q8_0_rows_into(ys, bias, &mut prep);
    prep
}

/// `prepare_q8_0_rows` into `prep`, reusing its allocation.
fn prepare_q8_0_rows_into(ys: &[BlockQ8_0], bias: i32, prep: &mut RowsPrep) {
    prep.blocks.clear();
    prep.blocks.extend(ys.iter().map(|y| PreparedQ8 {
        qs: y.qs,
        start: -bias * y.qs.iter().map(|&q| q as i32).sum::<i32>(),
        d: f16::to_f32(y.d),
    }));
}

/// One row of Q8_0 activations, as `prepare_q8_0_rows` prepared them.
#[derive(Clone, Copy)]
pub(crate) struct Q8Row<'a> {
    pub(crate) blocks: &'a [PreparedQ8],
}

impl Q8Row<'_> {
    /// The first `len` blocks, with bounds checked once here rather than in
    /// the kernels' loops.
    #[inline(always)]
    fn first(self, len: usize) -> Self {
        Q8Row { blocks: &self.blocks[..len] }
    }

    /// Block `i`.
    ///
    /// Safety: `i` is below the length `first` gave. The kernels' loops run
    /// over exactly that many blocks; left to the compiler, the checks stayed
    /// in the loops.
    #[inline(always)]
    unsafe fn block(&self, i: usize) -> &PreparedQ8 {
        debug_assert!(i < self.blocks.len());
        self.blocks.get_unchecked(i)
    }
}

/// The one-row kernel's activations: one row, prepared for itself in a
/// buffer each thread keeps, so that a `vec_dot` call (e.g. from
/// `matmul_f16`, once per output) allocates nothing.
fn with_one_q8_row<T>(ys: &[BlockQ8_0], bias: i32, kernel: impl FnOnce(Q8Row<'_>) -> T) -> T {
    thread_local! {
        static ONE_ROW: std::cell::RefCell<RowsPrep> = std::cell::RefCell::default();
    }
    ONE_ROW.with(|prep| {
        let mut prep = prep.borrow_mut();
        prepare_q8_0_rows_into(ys, bias, &mut prep);
        kernel(Q8Row { blocks: &prep.blocks })
    })
}

/// The offsets of the weights as the kernels multiply them (`Q8Weights::bytes`),
/// which each block's sum starts from times `-sum y` (`PreparedQ8::start`):
/// Q8_0's `w + 128` with `UNSIGNED_WEIGHTS` (its signed bytes otherwise),
/// and Q5_0's `w + 16` (0..=31) always (`maddubs` takes them unsigned too).
pub(crate) const Q8_0_BIAS: i32 = if UNSIGNED_WEIGHTS { 128 } else { 0 };
pub(crate) const Q5_0_BIAS: i32 = 16;

#[inline(always)]
pub(crate) fn vec_dot_q8_0_q8_0(n: usize, xs: &[BlockQ8_0], ys: &[BlockQ8_0]) -> f32 {
    debug_assert!(
        n.is_multiple_of(QK8_0),
        "vec_dot_q8_0_q8_0: {n} is not divisible by {QK8_0}"
    );
    with_one_q8_row(ys, Q8_0_BIAS, |y| vec_dot_q8_one(xs, y))
}

/// How far ahead the Q5_0 and Q8_0 kernels ask for weights, in tiles of
/// eight weight rows (a matmul's next tiles are the next weight rows in
/// memory). A weight row is 600 to 1,000 bytes and its blocks take a few
/// cycles each, too short a stream for the hardware prefetcher to run ahead
/// of. Measured with `cargo bench --bench kernels` (patch 0011, one or two
/// plain weight rows per tile then), against no prefetch in the same
/// process: one activation row 0.89-0.93 of the time, four 0.61-0.85.
const PREFETCH_TILES: usize = 2;

/// Asks for the weights `ahead` bytes past each of `x` to be brought into
/// L1. A prefetch never faults, so past the end of the weights it is
/// harmless.
#[inline(always)]
unsafe fn prefetch_ahead<B, const W: usize>(x: [&B; W], ahead: usize) {
    for x in x {
        _mm_prefetch::<_MM_HINT_T0>((x as *const B as *const i8).wrapping_add(ahead));
    }
}

/// Weight blocks the Q8_0-activation kernels multiply (Q5_0, Q8_0): a
/// scale, and 32 weight bytes plus the type's offset (`Q8_0_BIAS`,
/// `Q5_0_BIAS`).
pub(crate) trait Q8Weights: Sized {
    fn scale(&self) -> f16;
    /// The block's weights as bytes (for Q5_0, its nibbles merged with its
    /// fifth bits).
    unsafe fn bytes(&self) -> __m256i;
}

impl Q8Weights for BlockQ8_0 {
    #[inline(always)]
    fn scale(&self) -> f16 {
        self.d
    }

    #[inline(always)]
    unsafe fn bytes(&self) -> __m256i {
        let bx = _mm256_loadu_si256(self.qs.as_ptr() as *const __m256i);
        if UNSIGNED_WEIGHTS { _mm256_xor_si256(bx, _mm256_set1_epi8(0x80u8 as i8)) } else { bx }
    }
}

impl Q8Weights for BlockQ5_0 {
    #[inline(always)]
    fn scale(&self) -> f16 {
        self.d
    }

    #[inline(always)]
    unsafe fn bytes(&self) -> __m256i {
        q5_unsigned_bytes(self.qs.as_ptr(), LittleEndian::read_u32(&self.qh))
    }
}

/// The products of four weight bytes `w` (as `Q8Weights::bytes` gives them)
/// with four activation bytes `y` in each lane, summed into `acc`'s lane:
/// exactly `sum w * y`. With AVX-512 VNNI one `vpdpbusd` (`w` unsigned);
/// otherwise the sign trick, `|w|` times `y` with `w`'s sign through
/// `maddubs` + `madd`, which is right for signed and unsigned weights alike.
#[inline(always)]
unsafe fn add_products_of_fours(acc: __m256i, w: __m256i, y: __m256i) -> __m256i {
    #[cfg(all(target_feature = "avx512vnni", target_feature = "avx512vl"))]
    return _mm256_dpbusd_epi32(acc, w, y);
    #[cfg(not(all(target_feature = "avx512vnni", target_feature = "avx512vl")))]
    {
        let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(y, w));
        _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
    }
}

/// The eight lanes of `v` summed (exact: the kernels' sums fit in i32).
#[inline(always)]
unsafe fn hsum_i32_8(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

/// Eight weight rows (Q5_0 or Q8_0) interleaved block by block (`X8Weights`,
/// see `interleaved`) against `R` Q8_0 activation rows: `out[r][w]` is
/// weight row `w` times activation row `r`.
///
/// Lane `w` of every vector belongs to weight row `w`, so each activation
/// row takes eight `vpdpbusd`s per block (its bytes four at a time,
/// broadcast; two chains of four, for latency), one conversion, one
/// multiply and one FMA for all eight weight rows, where one weight row at a
/// time took the conversion, multiply and FMA for every row, and a
/// horizontal sum at the end. The eight rows' block `i` is one contiguous
/// record, so the weights stream from memory as one sequence.
///
/// Every block's integer sum is exact, so every result is, bit for bit,
/// `acc = fma(block sum as f32, d_w * d_y, acc)` over the blocks in order,
/// from 0: the same for every `R`, every lane, and `vec_dot_q8_one` (which
/// `vec_dot` and weights that are not interleaved use). A sequence's answers
/// in a batch are then those it gets alone.
#[inline(always)]
pub(crate) fn vec_dot_x8<X: X8Weights, const R: usize>(
    xs: &[X],
    ys: [Q8Row<'_>; R],
) -> [[f32; 8]; R] {
    let n = xs.len();
    let ys = ys.map(|y| y.first(n));
    let ahead = PREFETCH_TILES * std::mem::size_of_val(xs);
    unsafe {
        let mut acc = [_mm256_setzero_ps(); R];
        for (i, x) in xs.iter().enumerate() {
            // Two cache lines of the record two tiles ahead (a record is
            // 176 or 272 bytes); kept from the earlier kernels, which took
            // 0.61-0.93 of the time with it (`PREFETCH_TILES`), and not
            // re-measured for this layout, whose eight rows are one stream.
            prefetch_ahead([x], ahead);
            prefetch_ahead([x], ahead + 64);
            let t = x.bytes();
            let dx = x.scales();
            for (r, y) in ys.iter().enumerate() {
                let y = y.block(i);
                let four = |g: usize| {
                    _mm256_set1_epi32(std::ptr::read_unaligned(y.qs.as_ptr().add(4 * g) as *const i32))
                };
                let mut lo = _mm256_set1_epi32(y.start);
                let mut hi = _mm256_setzero_si256();
                for g in 0..4 {
                    lo = add_products_of_fours(lo, t[g], four(g));
                    hi = add_products_of_fours(hi, t[g + 4], four(g + 4));
                }
                let sums = _mm256_add_epi32(lo, hi);
                let d = _mm256_mul_ps(dx, _mm256_set1_ps(y.d));
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), d, acc[r]);
            }
        }
        // Loops rather than `acc.map(..)`: closures in the kernels were
        // compiled to a separate function (`array::try_map`).
        let mut out = [[0f32; 8]; R];
        for r in 0..R {
            _mm256_storeu_ps(out[r].as_mut_ptr(), acc[r]);
        }
        out
    }
}

/// Eight weight rows' block, interleaved (`interleaved::BlockQ5_0x8`,
/// `BlockQ8_0x8`), as `vec_dot_x8` reads it.
pub(crate) trait X8Weights {
    /// Lane `w` of vector `g` holds weight row `w`'s weights `4g..4g + 4` as
    /// bytes, unsigned or signed as `Q8Weights::bytes` gives them.
    unsafe fn bytes(&self) -> [__m256i; 8];
    /// Lane `w` holds weight row `w`'s scale.
    unsafe fn scales(&self) -> __m256;
}

/// Eight f16 scales as f32.
#[inline(always)]
unsafe fn scales_f16x8(d: &[f16; 8]) -> __m256 {
    #[cfg(target_feature = "f16c")]
    return _mm256_cvtph_ps(_mm_loadu_si128(d.as_ptr() as *const __m128i));
    #[cfg(not(target_feature = "f16c"))]
    {
        let d = d.map(f16::to_f32);
        _mm256_loadu_ps(d.as_ptr())
    }
}

impl X8Weights for super::interleaved::BlockQ8_0x8 {
    #[inline(always)]
    unsafe fn bytes(&self) -> [__m256i; 8] {
        std::array::from_fn(|g| {
            let bx = _mm256_loadu_si256(self.qs.as_ptr().add(32 * g) as *const __m256i);
            if UNSIGNED_WEIGHTS { _mm256_xor_si256(bx, _mm256_set1_epi8(0x80u8 as i8)) } else { bx }
        })
    }

    #[inline(always)]
    unsafe fn scales(&self) -> __m256 {
        scales_f16x8(&self.d)
    }
}

impl X8Weights for super::interleaved::BlockQ5_0x8 {
    /// Weights `4g..4g + 4` are the low nibbles of `qs` vector `g` for
    /// `g < 4` and its high nibbles as weights `16 + 4(g - 4)..` for
    /// `g >= 4`; their fifth bits are bit `g` of each byte of `qh`, moved to
    /// bit 4 by one shift of the 32-bit lanes (a bit shifted in from the
    /// next byte is masked off).
    #[inline(always)]
    unsafe fn bytes(&self) -> [__m256i; 8] {
        let qh = _mm256_loadu_si256(self.qh.as_ptr() as *const __m256i);
        let low = _mm256_set1_epi8(0x0F);
        let bit4 = _mm256_set1_epi8(0x10);
        let fifth = |g: usize| -> __m256i {
            match g {
                0 => _mm256_slli_epi32(qh, 4),
                1 => _mm256_slli_epi32(qh, 3),
                2 => _mm256_slli_epi32(qh, 2),
                3 => _mm256_slli_epi32(qh, 1),
                4 => qh,
                5 => _mm256_srli_epi32(qh, 1),
                6 => _mm256_srli_epi32(qh, 2),
                _ => _mm256_srli_epi32(qh, 3),
            }
        };
        // nibbles | (fifth & 0x10): one `vpternlogd` with AVX-512.
        let merge = |nibbles: __m256i, fifth: __m256i| -> __m256i {
            #[cfg(all(target_feature = "avx512f", target_feature = "avx512vl"))]
            return _mm256_ternarylogic_epi32::<0xF8>(nibbles, fifth, bit4);
            #[cfg(not(all(target_feature = "avx512f", target_feature = "avx512vl")))]
            _mm256_or_si256(nibbles, _mm256_and_si256(fifth, bit4))
        };
        let mut t = [_mm256_setzero_si256(); 8];
        for k in 0..4 {
            let q = _mm256_loadu_si256(self.qs.as_ptr().add(32 * k) as *const __m256i);
            t[k] = merge(_mm256_and_si256(q, low), fifth(k));
            t[k + 4] = merge(_mm256_and_si256(_mm256_srli_epi16(q, 4), low), fifth(k + 4));
        }
        t
    }

    #[inline(always)]
    unsafe fn scales(&self) -> __m256 {
        scales_f16x8(&self.d)
    }
}

/// One weight row (Q5_0 or Q8_0) against one prepared Q8_0 row, block by
/// block as `vec_dot_q8_x8` computes it: its results bit for bit, with the
/// block's sum reduced across lanes each block. For `vec_dot` and the weight
/// rows left over after a matmul's eights.
#[inline(always)]
pub(crate) fn vec_dot_q8_one<B: Q8Weights>(xs: &[B], y: Q8Row<'_>) -> f32 {
    let y = y.first(xs.len());
    unsafe {
        let mut acc = 0f32;
        for (i, x) in xs.iter().enumerate() {
            let y = y.block(i);
            let by = _mm256_loadu_si256(y.qs.as_ptr() as *const __m256i);
            let lanes = add_products_of_fours(_mm256_setzero_si256(), x.bytes(), by);
            let sum = hsum_i32_8(lanes) + y.start;
            acc = (sum as f32).mul_add(scale_f32(x.scale()) * y.d, acc);
        }
        acc
    }
}

/// Spreads the 32 bits of `bits` over 32 bytes: byte `i` is 0xFF where bit
/// `i` is set and 0x00 where it is clear (the mask Q5 blocks need for their
/// fifth bit without AVX-512).
#[cfg_attr(all(target_feature = "avx512bw", target_feature = "avx512vl"), allow(dead_code))]
#[inline(always)]
pub(crate) unsafe fn bytes_from_bits_32(bits: u32) -> __m256i {
    // Byte i of the result first takes byte i / 8 of `bits` (shuffles work
    // within each 128-bit half, which holds the 4 bytes of `bits` repeated)...
    let which_byte = _mm256_set_epi64x(
        0x0303_0303_0303_0303,
        0x0202_0202_0202_0202,
        0x0101_0101_0101_0101,
        0x0000_0000_0000_0000,
    );
    let spread = _mm256_shuffle_epi8(_mm256_set1_epi32(bits as i32), which_byte);
    // ...then keeps only bit i % 8 of it and compares.
    let which_bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    _mm256_cmpeq_epi8(_mm256_and_si256(spread, which_bit), which_bit)
}

/// A Q5 block's 32 weights as unsigned bytes, `nibble | fifth bit << 4`
/// (0..=31). With AVX-512 BW, `qh` is the byte mask of one masked add; without
/// it, `bytes_from_bits_32` spreads the bits first (four operations more).
#[inline(always)]
pub(crate) unsafe fn q5_unsigned_bytes(qs: *const u8, qh: u32) -> __m256i {
    let low = bytes_from_nibbles_32(qs);
    #[cfg(all(target_feature = "avx512bw", target_feature = "avx512vl"))]
    return _mm256_mask_add_epi8(low, qh, low, _mm256_set1_epi8(0x10));
    #[cfg(not(all(target_feature = "avx512bw", target_feature = "avx512vl")))]
    _mm256_or_si256(low, _mm256_and_si256(bytes_from_bits_32(qh), _mm256_set1_epi8(0x10)))
}

/// Q5_0 x Q8_0: each weight is (4 low bits | fifth bit << 4) - 16, multiplied
/// as `w + 16` (`q5_unsigned_bytes`, `Q5_0_BIAS`).
#[inline(always)]
pub(crate) fn vec_dot_q5_0_q8_0(n: usize, xs: &[BlockQ5_0], ys: &[BlockQ8_0]) -> f32 {
    debug_assert!(
        n.is_multiple_of(QK5_0),
        "vec_dot_q5_0_q8_0: {n} is not divisible by {QK5_0}"
    );
    with_one_q8_row(ys, Q5_0_BIAS, |y| vec_dot_q8_one(xs, y))
}

/// Q5_1 x Q8_1: each weight is d * (4 low bits | fifth bit << 4) + m, unsigned
/// 0..=31, so the bytes multiply directly (unsigned x signed) and the offset
/// adds m * (d_y * sum of the activations), which Q8_1 carries as `s`.
#[inline(always)]
pub(crate) fn vec_dot_q5_1_q8_1(n: usize, xs: &[BlockQ5_1], ys: &[BlockQ8_1]) -> f32 {
    debug_assert!(
        n.is_multiple_of(QK5_1),
        "vec_dot_q5_1_q8_1: {n} is not divisible by {QK5_1}"
    );
    unsafe {
        let mut acc = _mm256_setzero_ps();
        let mut offsets = 0f32;
        for (x, y) in xs.iter().zip(ys.iter()) {
            offsets += scale_f32(x.m) * scale_f32(y.s);
            let d = _mm256_set1_ps(scale_f32(x.d) * scale_f32(y.d));
            let bx = q5_unsigned_bytes(x.qs.as_ptr(), LittleEndian::read_u32(&x.qh));
            let by = _mm256_loadu_si256(y.qs.as_ptr() as *const __m256i);
            let q = mul_sum_us8_pairs_float(bx, by);
            acc = _mm256_fmadd_ps(d, q, acc);
        }
        hsum_float_8(acc) + offsets
    }
}

#[inline(always)]
unsafe fn get_scale_shuffle(i: usize) -> __m128i {
    const K_SHUFFLE: [u8; 128] = [
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3,
        3, 3, 4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7,
        7, 7, 7, 7, 8, 8, 8, 8, 8, 8, 8, 8, 9, 9, 9, 9, 9, 9, 9, 9, 10, 10, 10, 10, 10, 10, 10, 10,
        11, 11, 11, 11, 11, 11, 11, 11, 12, 12, 12, 12, 12, 12, 12, 12, 13, 13, 13, 13, 13, 13, 13,
        13, 14, 14, 14, 14, 14, 14, 14, 14, 15, 15, 15, 15, 15, 15, 15, 15,
    ];
    _mm_loadu_si128((K_SHUFFLE.as_ptr() as *const __m128i).add(i))
}

#[inline(always)]
unsafe fn get_scale_shuffle_k4(i: usize) -> __m256i {
    const K_SHUFFLE: [u8; 256] = [
        0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1,
        0, 1, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3,
        2, 3, 2, 3, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5,
        4, 5, 4, 5, 4, 5, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7,
        6, 7, 6, 7, 6, 7, 6, 7, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9,
        8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 10, 11, 10, 11, 10, 11, 10, 11, 10, 11, 10, 11, 10, 11, 10,
        11, 10, 11, 10, 11, 10, 11, 10, 11, 10, 11, 10, 11, 10, 11, 10, 11, 12, 13, 12, 13, 12, 13,
        12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12,
        13, 12, 13, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15,
        14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15,
    ];
    _mm256_loadu_si256((K_SHUFFLE.as_ptr() as *const __m256i).add(i))
}

#[inline(always)]
unsafe fn get_scale_shuffle_q3k(i: usize) -> __m256i {
    const K_SHUFFLE: [u8; 128] = [
        0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3,
        2, 3, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7,
        6, 7, 6, 7, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 10, 11, 10, 11, 10, 11, 10, 11,
        10, 11, 10, 11, 10, 11, 10, 11, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12,
        13, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15,
    ];
    _mm256_loadu_si256((K_SHUFFLE.as_ptr() as *const __m256i).add(i))
}

#[inline(always)]
pub(crate) fn vec_dot_q6k_q8k(n: usize, xs: &[BlockQ6K], ys: &[BlockQ8K]) -> f32 {
    debug_assert!(
        n.is_multiple_of(QK_K),
        "vec_dot_q6k_8k: {n} is not divisible by {QK_K}"
    );
    let [dot] = vec_dot_q6k_q8k_rows(xs, [ys]);
    dot
}

/// One Q6_K weight row against `R` Q8_K activation rows: each half
/// super-block's 128 six-bit weights (four vectors of bytes) and their
/// sixteen-weight scales are unpacked once and multiplied with the `R` rows.
/// `vec_dot_q6k_q8k` is this kernel with one row. Within a super-block a row
/// sums exact integers; its f32 steps (one multiply-add per super-block,
/// then the horizontal sum) are those of one row alone, so every result
/// equals it exactly.
#[inline(always)]
pub(crate) fn vec_dot_q6k_q8k_rows<const R: usize>(
    xs: &[BlockQ6K],
    ys: [&[BlockQ8K]; R],
) -> [f32; R] {
    let ys = ys.map(|y| &y[..xs.len()]);
    unsafe {
        let m4 = _mm256_set1_epi8(0xF);
        let m2 = _mm256_set1_epi8(3);
        let m32s = _mm256_set1_epi8(32);
        let mut acc = [_mm256_setzero_ps(); R];
        for (i, x) in xs.iter().enumerate() {
            let xd = scale_f32(x.d);
            let scales = _mm_loadu_si128(x.scales.as_ptr() as *const __m128i);
            let mut sumi = [_mm256_setzero_si256(); R];

            for j in 0..QK_K / 128 {
                let is = j * 4;
                let scale = [0, 1, 2, 3].map(|s| {
                    _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, get_scale_shuffle(is + s)))
                });

                let q4 = x.ql.as_ptr().add(64 * j);
                let q4bits1 = _mm256_loadu_si256(q4 as *const __m256i);
                let q4bits2 = _mm256_loadu_si256(q4.add(32) as *const __m256i);
                let q4bits_h = _mm256_loadu_si256(x.qh.as_ptr().add(32 * j) as *const __m256i);

                let q4h_0 = _mm256_slli_epi16(_mm256_and_si256(q4bits_h, m2), 4);
                let q4h_1 =
                    _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(q4bits_h, 2), m2), 4);
                let q4h_2 =
                    _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(q4bits_h, 4), m2), 4);
                let q4h_3 =
                    _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(q4bits_h, 6), m2), 4);

                let q4_ = [
                    _mm256_or_si256(_mm256_and_si256(q4bits1, m4), q4h_0),
                    _mm256_or_si256(_mm256_and_si256(q4bits2, m4), q4h_1),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q4bits1, 4), m4), q4h_2),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q4bits2, 4), m4), q4h_3),
                ];

                for (sumi, ys) in sumi.iter_mut().zip(ys) {
                    let q8 = ys[i].qs.as_ptr().add(128 * j);
                    for k in 0..4 {
                        let q8_k = _mm256_loadu_si256(q8.add(32 * k) as *const __m256i);
                        // (w + 32) * a - 32 * a: the weights are stored
                        // unsigned, 0..=63, for maddubs.
                        let q8s = _mm256_maddubs_epi16(m32s, q8_k);
                        let p16 = _mm256_sub_epi16(_mm256_maddubs_epi16(q4_[k], q8_k), q8s);
                        *sumi = _mm256_add_epi32(*sumi, _mm256_madd_epi16(scale[k], p16));
                    }
                }
            }
            for ((acc, sumi), ys) in acc.iter_mut().zip(sumi).zip(ys) {
                let d = ys[i].d * xd;
                *acc = _mm256_fmadd_ps(_mm256_broadcast_ss(&d), _mm256_cvtepi32_ps(sumi), *acc);
            }
        }
        // A loop rather than `acc.map(..)`, which was compiled to a function
        // of its own (`array::try_map`), as in the Q5_0/Q8_0 kernels (0012).
        let mut sums = [0f32; R];
        for (sum, acc) in sums.iter_mut().zip(acc) {
            *sum = hsum_float_8(acc);
        }
        sums
    }
}

#[inline(always)]
unsafe fn mm256_set_m128i(a: __m128i, b: __m128i) -> __m256i {
    _mm256_insertf128_si256(_mm256_castsi128_si256(b), a, 1)
}

#[inline(always)]
pub(crate) fn vec_dot_q2k_q8k(n: usize, xs: &[BlockQ2K], ys: &[BlockQ8K]) -> f32 {
    debug_assert!(
        n.is_multiple_of(QK_K),
        "vec_dot_q2k_q8k: {n} is not divisible by {QK_K}"
    );

    unsafe {
        let m3 = _mm256_set1_epi8(3);
        let m4 = _mm_set1_epi8(0xF);

        let mut acc = _mm256_setzero_ps();

        for (x, y) in xs.iter().zip(ys.iter()) {
            let d = y.d * scale_f32(x.d);
            let dmin = -y.d * scale_f32(x.dmin);

            let mut q2 = x.qs.as_ptr();
            let mut q8 = y.qs.as_ptr();

            let mins_and_scales = _mm_loadu_si128(x.scales.as_ptr() as *const __m128i);
            let scales8 = _mm_and_si128(mins_and_scales, m4);
            let mins8 = _mm_and_si128(_mm_srli_epi16(mins_and_scales, 4), m4);
            let mins = _mm256_cvtepi8_epi16(mins8);
            let prod =
                _mm256_madd_epi16(mins, _mm256_loadu_si256(y.bsums.as_ptr() as *const __m256i));

            acc = _mm256_fmadd_ps(_mm256_broadcast_ss(&dmin), _mm256_cvtepi32_ps(prod), acc);

            let all_scales = _mm256_cvtepi8_epi16(scales8);
            let l_scales = _mm256_extracti128_si256(all_scales, 0);
            let h_scales = _mm256_extracti128_si256(all_scales, 1);
            let scales = [
                mm256_set_m128i(l_scales, l_scales),
                mm256_set_m128i(h_scales, h_scales),
            ];

            let mut sumi = _mm256_setzero_si256();

            for scale in scales {
                let q2bits = _mm256_loadu_si256(q2 as *const __m256i);
                q2 = q2.add(32);

                let q8_0 = _mm256_loadu_si256(q8 as *const __m256i);
                q8 = q8.add(32);
                let q8_1 = _mm256_loadu_si256(q8 as *const __m256i);
                q8 = q8.add(32);
                let q8_2 = _mm256_loadu_si256(q8 as *const __m256i);
                q8 = q8.add(32);
                let q8_3 = _mm256_loadu_si256(q8 as *const __m256i);
                q8 = q8.add(32);

                let q2_0 = _mm256_and_si256(q2bits, m3);
                let q2_1 = _mm256_and_si256(_mm256_srli_epi16(q2bits, 2), m3);
                let q2_2 = _mm256_and_si256(_mm256_srli_epi16(q2bits, 4), m3);
                let q2_3 = _mm256_and_si256(_mm256_srli_epi16(q2bits, 6), m3);

                let p0 = _mm256_maddubs_epi16(q2_0, q8_0);
                let p1 = _mm256_maddubs_epi16(q2_1, q8_1);
                let p2 = _mm256_maddubs_epi16(q2_2, q8_2);
                let p3 = _mm256_maddubs_epi16(q2_3, q8_3);

                let p0 =
                    _mm256_madd_epi16(_mm256_shuffle_epi8(scale, get_scale_shuffle_q3k(0)), p0);
                let p1 =
                    _mm256_madd_epi16(_mm256_shuffle_epi8(scale, get_scale_shuffle_q3k(1)), p1);
                let p2 =
                    _mm256_madd_epi16(_mm256_shuffle_epi8(scale, get_scale_shuffle_q3k(2)), p2);
                let p3 =
                    _mm256_madd_epi16(_mm256_shuffle_epi8(scale, get_scale_shuffle_q3k(3)), p3);

                let p0 = _mm256_add_epi32(p0, p1);
                let p2 = _mm256_add_epi32(p2, p3);

                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p0, p2));
            }
            acc = _mm256_fmadd_ps(_mm256_broadcast_ss(&d), _mm256_cvtepi32_ps(sumi), acc);
        }

        hsum_float_8(acc)
    }
}

#[inline(always)]
pub(crate) fn vec_dot_q3k_q8k(n: usize, xs: &[BlockQ3K], ys: &[BlockQ8K]) -> f32 {
    debug_assert!(
        n.is_multiple_of(QK_K),
        "vec_dot_q3k_q8k: {n} is not divisible by {QK_K}"
    );

    const KMASK1: u32 = 0x03030303;
    const KMASK2: u32 = 0x0f0f0f0f;

    let mut aux = [0u32; 3];

    unsafe {
        let m3 = _mm256_set1_epi8(3);
        let mone = _mm256_set1_epi8(1);
        let m32 = _mm_set1_epi8(32);

        let mut acc = _mm256_setzero_ps();
        for (x, y) in xs.iter().zip(ys.iter()) {
            let d = y.d * scale_f32(x.d);

            let mut q3 = x.qs.as_ptr();
            let mut q8 = y.qs.as_ptr();

            LittleEndian::read_u32_into(&x.scales, &mut aux);
            let scales128 = _mm_set_epi32(
                (((aux[1] >> 4) & KMASK2) | (((aux[2] >> 6) & KMASK1) << 4)) as i32,
                (((aux[0] >> 4) & KMASK2) | (((aux[2] >> 4) & KMASK1) << 4)) as i32,
                ((aux[1] & KMASK2) | (((aux[2] >> 2) & KMASK1) << 4)) as i32,
                ((aux[0] & KMASK2) | (((aux[2]) & KMASK1) << 4)) as i32,
            );
            let scales128 = _mm_sub_epi8(scales128, m32);
            let all_scales = _mm256_cvtepi8_epi16(scales128);
            let l_scales = _mm256_extracti128_si256(all_scales, 0);
            let h_scales = _mm256_extracti128_si256(all_scales, 1);
            let scales = [
                mm256_set_m128i(l_scales, l_scales),
                mm256_set_m128i(h_scales, h_scales),
            ];

            // high bit
            let hbits = _mm256_loadu_si256(x.hmask.as_ptr() as *const __m256i);

            let mut sumi = _mm256_setzero_si256();

            for (j, scale) in scales.iter().enumerate() {
                // load low 2 bits
                let q3bits = _mm256_loadu_si256(q3 as *const __m256i);
                q3 = q3.add(32);

                // Prepare low and high bits
                // We hardcode the shifts here to avoid loading them into a separate register
                let q3l_0 = _mm256_and_si256(q3bits, m3);
                let q3h_0 = if j == 0 {
                    _mm256_srli_epi16(_mm256_andnot_si256(hbits, _mm256_slli_epi16(mone, 0)), 0)
                } else {
                    _mm256_srli_epi16(_mm256_andnot_si256(hbits, _mm256_slli_epi16(mone, 4)), 4)
                };
                let q3h_0 = _mm256_slli_epi16(q3h_0, 2);

                let q3l_1 = _mm256_and_si256(_mm256_srli_epi16(q3bits, 2), m3);
                let q3h_1 = if j == 0 {
                    _mm256_srli_epi16(_mm256_andnot_si256(hbits, _mm256_slli_epi16(mone, 1)), 1)
                } else {
                    _mm256_srli_epi16(_mm256_andnot_si256(hbits, _mm256_slli_epi16(mone, 5)), 5)
                };
                let q3h_1 = _mm256_slli_epi16(q3h_1, 2);

                let q3l_2 = _mm256_and_si256(_mm256_srli_epi16(q3bits, 4), m3);
                let q3h_2 = if j == 0 {
                    _mm256_srli_epi16(_mm256_andnot_si256(hbits, _mm256_slli_epi16(mone, 2)), 2)
                } else {
                    _mm256_srli_epi16(_mm256_andnot_si256(hbits, _mm256_slli_epi16(mone, 6)), 6)
                };
                let q3h_2 = _mm256_slli_epi16(q3h_2, 2);

                let q3l_3 = _mm256_and_si256(_mm256_srli_epi16(q3bits, 6), m3);
                let q3h_3 = if j == 0 {
                    _mm256_srli_epi16(_mm256_andnot_si256(hbits, _mm256_slli_epi16(mone, 3)), 3)
                } else {
                    _mm256_srli_epi16(_mm256_andnot_si256(hbits, _mm256_slli_epi16(mone, 7)), 7)
                };
                let q3h_3 = _mm256_slli_epi16(q3h_3, 2);

                // load Q8 quants
                let q8_0 = _mm256_loadu_si256(q8 as *const __m256i);
                q8 = q8.add(32);
                let q8_1 = _mm256_loadu_si256(q8 as *const __m256i);
                q8 = q8.add(32);
                let q8_2 = _mm256_loadu_si256(q8 as *const __m256i);
                q8 = q8.add(32);
                let q8_3 = _mm256_loadu_si256(q8 as *const __m256i);
                q8 = q8.add(32);

                // Dot product: we multiply the 2 low bits and 1 high bit part separately, so we
                // can use _mm256_maddubs_epi16, and then subtract. The high bit part has the 2
                // already subtracted (and so, it is zero if the high bit was not set, and 2 if the
                // high bit was set)
                let q8s_0 = _mm256_maddubs_epi16(q3h_0, q8_0);
                let q8s_1 = _mm256_maddubs_epi16(q3h_1, q8_1);
                let q8s_2 = _mm256_maddubs_epi16(q3h_2, q8_2);
                let q8s_3 = _mm256_maddubs_epi16(q3h_3, q8_3);

                let p16_0 = _mm256_maddubs_epi16(q3l_0, q8_0);
                let p16_1 = _mm256_maddubs_epi16(q3l_1, q8_1);
                let p16_2 = _mm256_maddubs_epi16(q3l_2, q8_2);
                let p16_3 = _mm256_maddubs_epi16(q3l_3, q8_3);

                let p16_0 = _mm256_sub_epi16(p16_0, q8s_0);
                let p16_1 = _mm256_sub_epi16(p16_1, q8s_1);
                let p16_2 = _mm256_sub_epi16(p16_2, q8s_2);
                let p16_3 = _mm256_sub_epi16(p16_3, q8s_3);

                // multiply with scales
                let p16_0 =
                    _mm256_madd_epi16(_mm256_shuffle_epi8(*scale, get_scale_shuffle_q3k(0)), p16_0);
                let p16_1 =
                    _mm256_madd_epi16(_mm256_shuffle_epi8(*scale, get_scale_shuffle_q3k(1)), p16_1);
                let p16_2 =
                    _mm256_madd_epi16(_mm256_shuffle_epi8(*scale, get_scale_shuffle_q3k(2)), p16_2);
                let p16_3 =
                    _mm256_madd_epi16(_mm256_shuffle_epi8(*scale, get_scale_shuffle_q3k(3)), p16_3);

                // accumulate
                let p16_0 = _mm256_add_epi32(p16_0, p16_1);
                let p16_2 = _mm256_add_epi32(p16_2, p16_3);
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p16_0, p16_2));
            }

            // multiply with block scale and accumulate
            acc = _mm256_fmadd_ps(_mm256_broadcast_ss(&d), _mm256_cvtepi32_ps(sumi), acc);
        }
        hsum_float_8(acc)
    }
}

#[inline(always)]
pub(crate) fn vec_dot_q4k_q8k(n: usize, xs: &[BlockQ4K], ys: &[BlockQ8K]) -> f32 {
    debug_assert!(
        n.is_multiple_of(QK_K),
        "vec_dot_q4k_q8k: {n} is not divisible by {QK_K}"
    );
    let [dot] = vec_dot_q4k_q8k_rows(xs, [ys]);
    dot
}

/// One Q4_K weight row against `R` Q8_K activation rows: each super-block's
/// six-bit scales and mins are unpacked once, and each 64 weights' nibbles
/// once, for the `R` rows. `vec_dot_q4k_q8k` is this kernel with one row.
/// Within a super-block a row sums exact integers; its f32 steps (two
/// multiply-adds per super-block, then the horizontal sums) are those of one
/// row alone, so every result equals it exactly.
#[inline(always)]
pub(crate) fn vec_dot_q4k_q8k_rows<const R: usize>(
    xs: &[BlockQ4K],
    ys: [&[BlockQ8K]; R],
) -> [f32; R] {
    let ys = ys.map(|y| &y[..xs.len()]);
    let mut utmp = [0u32; 4];
    const KMASK1: u32 = 0x3f3f3f3f;
    const KMASK2: u32 = 0x0f0f0f0f;
    const KMASK3: u32 = 0x03030303;

    unsafe {
        let m4 = _mm256_set1_epi8(0xF);

        let mut acc = [_mm256_setzero_ps(); R];
        let mut acc_m = [_mm_setzero_ps(); R];

        for (i, x) in xs.iter().enumerate() {
            let xd = scale_f32(x.d);
            let xdmin = scale_f32(x.dmin);

            LittleEndian::read_u32_into(&x.scales, &mut utmp[0..3]);

            utmp[3] = ((utmp[2] >> 4) & KMASK2) | (((utmp[1] >> 6) & KMASK3) << 4);
            let uaux = utmp[1] & KMASK1;
            utmp[1] = (utmp[2] & KMASK2) | (((utmp[0] >> 6) & KMASK3) << 4);
            utmp[2] = uaux;
            utmp[0] &= KMASK1;

            let mins_and_scales = _mm256_cvtepu8_epi16(_mm_set_epi32(
                utmp[3] as i32,
                utmp[2] as i32,
                utmp[1] as i32,
                utmp[0] as i32,
            ));
            let mins = _mm256_extracti128_si256(mins_and_scales, 1);

            // The mins times each row's 32-weight sums of its activations.
            for (acc_m, ys) in acc_m.iter_mut().zip(ys) {
                let y = &ys[i];
                let dmin = -y.d * xdmin;
                let q8sums = _mm256_loadu_si256(y.bsums.as_ptr() as *const __m256i);
                let q8s = _mm_hadd_epi16(
                    _mm256_extracti128_si256(q8sums, 0),
                    _mm256_extracti128_si256(q8sums, 1),
                );
                let prod = _mm_madd_epi16(mins, q8s);
                *acc_m = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod), *acc_m);
            }

            let sc128 = _mm256_extracti128_si256(mins_and_scales, 0);
            let scales = mm256_set_m128i(sc128, sc128);

            let mut sumi = [_mm256_setzero_si256(); R];

            for j in 0..QK_K / 64 {
                let scale_l = _mm256_shuffle_epi8(scales, get_scale_shuffle_k4(2 * j));
                let scale_h = _mm256_shuffle_epi8(scales, get_scale_shuffle_k4(2 * j + 1));

                let q4bits = _mm256_loadu_si256(x.qs.as_ptr().add(32 * j) as *const __m256i);
                let q4l = _mm256_and_si256(q4bits, m4);
                let q4h = _mm256_and_si256(_mm256_srli_epi16(q4bits, 4), m4);

                for (sumi, ys) in sumi.iter_mut().zip(ys) {
                    let q8 = ys[i].qs.as_ptr().add(64 * j);
                    let q8l = _mm256_loadu_si256(q8 as *const __m256i);
                    let p16l = _mm256_maddubs_epi16(q4l, q8l);
                    let p16l = _mm256_madd_epi16(scale_l, p16l);
                    *sumi = _mm256_add_epi32(*sumi, p16l);

                    let q8h = _mm256_loadu_si256(q8.add(32) as *const __m256i);
                    let p16h = _mm256_maddubs_epi16(q4h, q8h);
                    let p16h = _mm256_madd_epi16(scale_h, p16h);
                    *sumi = _mm256_add_epi32(*sumi, p16h);
                }
            }

            for ((acc, sumi), ys) in acc.iter_mut().zip(sumi).zip(ys) {
                let vd = _mm256_set1_ps(ys[i].d * xd);
                *acc = _mm256_fmadd_ps(vd, _mm256_cvtepi32_ps(sumi), *acc);
            }
        }

        let mut out = [0f32; R];
        for ((out, acc), acc_m) in out.iter_mut().zip(acc).zip(acc_m) {
            let acc_m = _mm_add_ps(acc_m, _mm_movehl_ps(acc_m, acc_m));
            let acc_m = _mm_add_ss(acc_m, _mm_movehdup_ps(acc_m));
            *out = hsum_float_8(acc) + _mm_cvtss_f32(acc_m);
        }
        out
    }
}

#[inline(always)]
pub(crate) fn vec_dot_q5k_q8k(n: usize, xs: &[BlockQ5K], ys: &[BlockQ8K]) -> f32 {
    debug_assert!(
        n.is_multiple_of(QK_K),
        "vec_dot_q5k_q8k: {n} is not divisible by {QK_K}"
    );
    let mut utmp = [0u32; 4];
    const KMASK1: u32 = 0x3f3f3f3f;
    const KMASK2: u32 = 0x0f0f0f0f;
    const KMASK3: u32 = 0x03030303;

    unsafe {
        let m4 = _mm256_set1_epi8(0xF);
        let mzero = _mm_setzero_si128();
        let mone = _mm256_set1_epi8(1);

        let mut acc = _mm256_setzero_ps();
        let mut summs = 0.0;

        for (x, y) in xs.iter().zip(ys.iter()) {
            let d = y.d * scale_f32(x.d);
            let dmin = -y.d * scale_f32(x.dmin);

            LittleEndian::read_u32_into(&x.scales, &mut utmp[0..3]);

            utmp[3] = ((utmp[2] >> 4) & KMASK2) | (((utmp[1] >> 6) & KMASK3) << 4);
            let uaux = utmp[1] & KMASK1;
            utmp[1] = (utmp[2] & KMASK2) | (((utmp[0] >> 6) & KMASK3) << 4);
            utmp[2] = uaux;
            utmp[0] &= KMASK1;

            let mut q5 = x.qs.as_ptr();
            let mut q8 = y.qs.as_ptr();

            let mins_and_scales = _mm256_cvtepu8_epi16(_mm_set_epi32(
                utmp[3] as i32,
                utmp[2] as i32,
                utmp[1] as i32,
                utmp[0] as i32,
            ));

            let q8sums = _mm256_loadu_si256(y.bsums.as_ptr() as *const __m256i);
            let q8s = _mm_hadd_epi16(
                _mm256_extracti128_si256(q8sums, 0),
                _mm256_extracti128_si256(q8sums, 1),
            );
            let prod = _mm_madd_epi16(_mm256_extracti128_si256(mins_and_scales, 1), q8s);
            let hsum = _mm_hadd_epi32(_mm_hadd_epi32(prod, mzero), mzero);
            summs += dmin * _mm_extract_epi32(hsum, 0) as f32;

            let sc128 = _mm256_extracti128_si256(mins_and_scales, 0);
            let scales = mm256_set_m128i(sc128, sc128);

            let hbits = _mm256_loadu_si256(x.qh.as_ptr() as *const __m256i);
            let mut hmask = mone;

            let mut sumi = _mm256_setzero_si256();

            for j in 0..QK_K / 64 {
                let scale_0 = _mm256_shuffle_epi8(scales, get_scale_shuffle_k4(2 * j));
                let scale_1 = _mm256_shuffle_epi8(scales, get_scale_shuffle_k4(2 * j + 1));

                let q5bits = _mm256_loadu_si256(q5 as *const __m256i);
                q5 = q5.add(32);

                //Similar to q3k we hardcode the shifts here to avoid loading them into a separate register
                let q5l_0 = _mm256_and_si256(q5bits, m4);
                let q5l_0_shift_input = _mm256_and_si256(hbits, hmask);
                let q5l_0_right_shift = match j {
                    0 => _mm256_srli_epi16(q5l_0_shift_input, 0),
                    1 => _mm256_srli_epi16(q5l_0_shift_input, 2),
                    2 => _mm256_srli_epi16(q5l_0_shift_input, 4),
                    3 => _mm256_srli_epi16(q5l_0_shift_input, 6),
                    _ => unreachable!(),
                };
                let q5h_0 = _mm256_slli_epi16(q5l_0_right_shift, 4);
                let q5_0 = _mm256_add_epi8(q5l_0, q5h_0);
                hmask = _mm256_slli_epi16(hmask, 1);

                let q5l_1 = _mm256_and_si256(_mm256_srli_epi16(q5bits, 4), m4);
                let q5l_1_shift_input = _mm256_and_si256(hbits, hmask);
                let q5l_1_right_shift = match j {
                    0 => _mm256_srli_epi16(q5l_1_shift_input, 1),
                    1 => _mm256_srli_epi16(q5l_1_shift_input, 3),
                    2 => _mm256_srli_epi16(q5l_1_shift_input, 5),
                    3 => _mm256_srli_epi16(q5l_1_shift_input, 7),
                    _ => unreachable!(),
                };

                let q5h_1 = _mm256_slli_epi16(q5l_1_right_shift, 4);
                let q5_1 = _mm256_add_epi8(q5l_1, q5h_1);
                hmask = _mm256_slli_epi16(hmask, 1);

                let q8_0 = _mm256_loadu_si256(q8 as *const __m256i);
                q8 = q8.add(32);
                let q8_1 = _mm256_loadu_si256(q8 as *const __m256i);
                q8 = q8.add(32);

                let p16_0 = _mm256_maddubs_epi16(q5_0, q8_0);
                let p16_1 = _mm256_maddubs_epi16(q5_1, q8_1);

                let p16_0 = _mm256_madd_epi16(scale_0, p16_0);
                let p16_1 = _mm256_madd_epi16(scale_1, p16_1);

                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p16_0, p16_1));
            }
            let vd = _mm256_set1_ps(d);
            acc = _mm256_fmadd_ps(vd, _mm256_cvtepi32_ps(sumi), acc);
        }
        hsum_float_8(acc) + summs
    }
}

#[inline(always)]
pub(crate) fn vec_dot_q8k_q8k(n: usize, xs: &[BlockQ8K], ys: &[BlockQ8K]) -> f32 {
    debug_assert!(
        n.is_multiple_of(QK_K),
        "vec_dot_q8k_8k: {n} is not divisible by {QK_K}"
    );
    unsafe {
        let mut acc = _mm256_setzero_ps();
        for (xs, ys) in xs.iter().zip(ys.iter()) {
            let mut sumi = _mm256_setzero_si256();
            let x_qs = xs.qs.as_ptr();
            let y_qs = ys.qs.as_ptr();
            for j in (0..QK_K).step_by(32) {
                let xs = _mm256_loadu_si256(x_qs.add(j) as *const __m256i);
                let ys = _mm256_loadu_si256(y_qs.add(j) as *const __m256i);

                let xs0 = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(xs, 0));
                let ys0 = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(ys, 0));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(xs0, ys0));

                let xs1 = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(xs, 1));
                let ys1 = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(ys, 1));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(xs1, ys1));
            }
            let d = _mm256_set1_ps(xs.d * ys.d);
            acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
        }
        hsum_float_8(acc)
    }
}

#[cfg(test)]
mod q5_tests {
    use super::super::k_quants::GgmlType;
    use super::*;

    /// A small deterministic generator (xorshift), so failures reproduce.
    struct Rng(u64);
    impl Rng {
        fn next_f32(&mut self) -> f32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        }
        fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
            (0..n).map(|_| self.next_f32() * scale).collect()
        }
    }

    // Both sides sum the same integer products per block; only the order of
    // the f32 additions differs (8 lanes, then a horizontal sum).
    fn close(simd: f32, scalar: f32, magnitude: f32) -> bool {
        (simd - scalar).abs() <= 1e-5 * magnitude.max(1.0)
    }

    fn check<T: GgmlType>(simd: fn(usize, &[T], &[T::VecDotType]) -> f32, set_qh: fn(&mut T, u32)) {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        // Even block counts: the scalar Q5 paths assert an even count.
        for (case, &blocks) in [2usize, 4, 28, 152].iter().enumerate() {
            let n = blocks * 32;
            for scale in [1e-3f32, 1.0, 37.0] {
                let w = rng.vec(n, scale);
                // Activations with an offset, so Q8_1's sum term matters.
                let a: Vec<f32> = rng.vec(n, scale).iter().map(|v| v + 0.3 * scale).collect();
                let mut xs = vec![T::zeros(); blocks];
                let mut ys = vec![T::VecDotType::zeros(); blocks];
                T::from_float(&w, &mut xs);
                T::VecDotType::from_float(&a, &mut ys);
                let scalar = T::vec_dot_unopt(n, &xs, &ys);
                let fast = simd(n, &xs, &ys);
                let magnitude: f32 = w.iter().zip(&a).map(|(x, y)| (x * y).abs()).sum();
                assert!(
                    close(fast, scalar, magnitude),
                    "case {case} ({blocks} blocks, scale {scale}): simd {fast} scalar {scalar}"
                );
            }
        }
        // Every fifth-bit pattern: all set, none set, alternating.
        for bits in [u32::MAX, 0, 0xAAAA_AAAA, 0x0000_FFFF] {
            let w = rng.vec(64, 1.0);
            let a = rng.vec(64, 1.0);
            let mut xs = vec![T::zeros(); 2];
            let mut ys = vec![T::VecDotType::zeros(); 2];
            T::from_float(&w, &mut xs);
            T::VecDotType::from_float(&a, &mut ys);
            for x in xs.iter_mut() {
                set_qh(x, bits);
            }
            let scalar = T::vec_dot_unopt(64, &xs, &ys);
            let fast = simd(64, &xs, &ys);
            assert!(close(fast, scalar, 128.0), "qh {bits:#x}: simd {fast} scalar {scalar}");
        }
    }

    #[test]
    fn scale_is_f16_to_f32() {
        for bits in 0..=u16::MAX {
            let (d, expected) = (f16::from_bits(bits), f16::from_bits(bits).to_f32());
            let got = unsafe { scale_f32(d) };
            // NaNs keep their class (any NaN scale makes the block's sum NaN
            // either way); every other value, and the sign of zero, is exact.
            if expected.is_nan() {
                assert!(got.is_nan(), "{bits:#06x}");
            } else {
                assert_eq!(got.to_bits(), expected.to_bits(), "{bits:#06x}");
            }
        }
    }

    #[test]
    fn bytes_from_nibbles_matches_each_nibble() {
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..100 {
            let mut qs = [0u8; 16];
            for b in qs.iter_mut() {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                *b = rng as u8;
            }
            let mut out = [0u8; 32];
            unsafe { _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, bytes_from_nibbles_32(qs.as_ptr())) };
            for (i, byte) in out.iter().enumerate() {
                let want = if i < 16 { qs[i] & 0xF } else { qs[i - 16] >> 4 };
                assert_eq!(*byte, want, "byte {i} of {qs:x?}");
            }
        }
    }

    #[test]
    fn q5_bytes_match_each_weight() {
        for (qs_byte, qh) in [(0x00u8, 0u32), (0xFF, u32::MAX), (0x5A, 0xDEAD_BEEF), (0xC3, 0x8000_0001)] {
            let qs = [qs_byte; 16];
            let mut unsigned = [0u8; 32];
            unsafe {
                _mm256_storeu_si256(unsigned.as_mut_ptr() as *mut __m256i, q5_unsigned_bytes(qs.as_ptr(), qh));
            }
            for i in 0..32 {
                let nibble = if i < 16 { qs_byte & 0xF } else { qs_byte >> 4 };
                let w = nibble | ((qh >> i & 1) as u8) << 4;
                assert_eq!(unsigned[i], w, "unsigned byte {i}, qh {qh:#x}");
            }
        }
    }

    #[test]
    fn bytes_from_bits_matches_each_bit() {
        for bits in [0u32, 1, 0x8000_0001, 0xDEAD_BEEF, u32::MAX] {
            let mut out = [0u8; 32];
            unsafe { _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, bytes_from_bits_32(bits)) };
            for (i, byte) in out.iter().enumerate() {
                let want = if bits >> i & 1 == 1 { 0xFF } else { 0 };
                assert_eq!(*byte, want, "bit {i} of {bits:#x}");
            }
        }
    }

    #[test]
    fn q5_0_simd_matches_scalar() {
        check::<BlockQ5_0>(vec_dot_q5_0_q8_0, |b, bits| b.qh = bits.to_le_bytes());
    }

    #[test]
    fn q5_1_simd_matches_scalar() {
        check::<BlockQ5_1>(vec_dot_q5_1_q8_1, |b, bits| b.qh = bits.to_le_bytes());
    }

    #[test]
    fn q5_types_dispatch_to_simd() {
        let w: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut x0 = vec![BlockQ5_0::zeros(); 2];
        let mut y0 = vec![BlockQ8_0::zeros(); 2];
        BlockQ5_0::from_float(&w, &mut x0);
        BlockQ8_0::from_float(&w, &mut y0);
        assert_eq!(BlockQ5_0::vec_dot(64, &x0, &y0), vec_dot_q5_0_q8_0(64, &x0, &y0));
        let mut x1 = vec![BlockQ5_1::zeros(); 2];
        let mut y1 = vec![BlockQ8_1::zeros(); 2];
        BlockQ5_1::from_float(&w, &mut x1);
        BlockQ8_1::from_float(&w, &mut y1);
        assert_eq!(BlockQ5_1::vec_dot(64, &x1, &y1), vec_dot_q5_1_q8_1(64, &x1, &y1));
    }
}

#[cfg(all(test, target_feature = "avx512vnni", target_feature = "avx512vl"))]
mod vnni_tests {
    use super::*;

    fn lanes(v: __m256) -> [f32; 8] {
        let mut out = [0f32; 8];
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
        out
    }

    /// `vpdpbusd` (what `mul_sum_us8_pairs_float` uses with AVX-512 VNNI)
    /// gives the same sums as `maddubs` + `madd` for every pair of bytes its
    /// callers can pass: every signed x and y under the sign trick (the
    /// Q4_0, Q5_0 and Q8_0 kernels), and weights 0..=31 against every signed
    /// y (Q5_1). With steps 7 and 13 each lane meets every (x, y) pair as
    /// the offsets go round; with step 0 both bytes of a pair are equal,
    /// which gives the extreme pair sums (x = y = -128: -32768).
    #[test]
    fn dpbusd_equals_maddubs_then_madd_for_every_byte_pair_the_kernels_pass() {
        let bytes = |start: usize, step: usize| -> [u8; 32] {
            std::array::from_fn(|lane| (start + step * lane) as u8)
        };
        unsafe {
            for (xstep, ystep) in [(7, 13), (0, 0)] {
                for xa in 0..256 {
                    let x = _mm256_loadu_si256(bytes(xa, xstep).as_ptr() as *const __m256i);
                    for yb in 0..256 {
                        let y = _mm256_loadu_si256(bytes(yb, ystep).as_ptr() as *const __m256i);
                        // The sign trick: |x| (as unsigned) times y with x's sign.
                        let (ax, sy) = (_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
                        let want = sum_i16_pairs_float(_mm256_maddubs_epi16(ax, sy));
                        let got = mul_sum_us8_pairs_float(ax, sy);
                        assert_eq!(lanes(got), lanes(want), "x {xa} step {xstep}, y {yb} step {ystep}");
                        // Q5_1: unsigned weights 0..=31.
                        let w = _mm256_and_si256(x, _mm256_set1_epi8(0x1F));
                        let want = sum_i16_pairs_float(_mm256_maddubs_epi16(w, y));
                        let got = mul_sum_us8_pairs_float(w, y);
                        assert_eq!(lanes(got), lanes(want), "w {xa} step {xstep}, y {yb} step {ystep}");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod block_sum_tests {
    use super::super::interleaved::Interleave;
    use super::*;

    /// What the Q5_0 and Q8_0 kernels compute, in plain scalar code: each
    /// block's integer sum of weight times activation, then
    /// `acc = fma(sum, d_w * d_y, acc)` over the blocks in order.
    fn reference(weights: &[[i32; 32]], scales: &[f16], ys: &[BlockQ8_0]) -> f32 {
        let mut acc = 0f32;
        for ((w, dw), y) in weights.iter().zip(scales).zip(ys) {
            let sum: i32 = w.iter().zip(&y.qs).map(|(w, y)| w * *y as i32).sum();
            acc = (sum as f32).mul_add(dw.to_f32() * y.d.to_f32(), acc);
        }
        acc
    }

    /// Q5_0's weights: (nibble | fifth bit << 4) - 16, the low nibbles
    /// first.
    fn q5_0_weights(x: &BlockQ5_0) -> [i32; 32] {
        let qh = u32::from_le_bytes(x.qh);
        std::array::from_fn(|j| {
            let nibble = if j < 16 { x.qs[j] & 0xF } else { x.qs[j - 16] >> 4 };
            (nibble as i32 | ((qh >> j & 1) as i32) << 4) - 16
        })
    }

    /// xorshift, so failures reproduce.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn scale(&mut self) -> f16 {
            f16::from_f32((self.next() % 2000) as f32 / 1000.0 - 1.0)
        }
        /// Activation bytes as Q8_0's quantization makes them: -127..=127,
        /// or only the extremes.
        fn activations(&mut self, blocks: usize, extreme: bool) -> Vec<BlockQ8_0> {
            (0..blocks)
                .map(|_| BlockQ8_0 {
                    d: self.scale(),
                    qs: std::array::from_fn(|_| match extreme {
                        true => [-127, 127][(self.next() % 2) as usize],
                        false => ((self.next() % 255) as i16 - 127) as i8,
                    }),
                })
                .collect()
        }
    }

    /// Q8_0 weight rows: random bytes, or only the extremes -128 and 127.
    fn q8_0_rows(rng: &mut Rng, len: usize, extreme: bool) -> Vec<BlockQ8_0> {
        (0..len)
            .map(|_| BlockQ8_0 {
                d: rng.scale(),
                qs: std::array::from_fn(|_| match extreme {
                    true => [-128i8, 127][(rng.next() % 2) as usize],
                    false => rng.next() as i8,
                }),
            })
            .collect()
    }

    /// Q5_0 rows: random, or with the fifth bits all set or all clear.
    fn q5_0_rows(rng: &mut Rng, len: usize, extreme: bool) -> Vec<BlockQ5_0> {
        (0..len)
            .map(|_| BlockQ5_0 {
                d: rng.scale(),
                qh: match extreme {
                    true => [[0xFF; 4], [0; 4]][(rng.next() % 2) as usize],
                    false => (rng.next() as u32).to_le_bytes(),
                },
                qs: std::array::from_fn(|_| rng.next() as u8),
            })
            .collect()
    }

    /// Eight weight rows (`blocks` each) against four activation rows, as
    /// `vec_dot_x8` takes them interleaved four, three, two or one at a time,
    /// through `vec_dot_q8_one`, and through the type's `vec_dot`: every
    /// result equals the scalar definition bit for bit.
    fn check<B: Q8Weights + Interleave>(
        name: &str,
        case: usize,
        bias: i32,
        xs: &[B],
        weights: impl Fn(&B) -> [i32; 32],
        vec_dot: fn(usize, &[B], &[BlockQ8_0]) -> f32,
        rows: &[Vec<BlockQ8_0>],
    ) {
        let blocks = xs.len() / 8;
        let tile: Vec<B::X8> =
            (0..blocks).map(|i| B::interleave(std::array::from_fn(|w| &xs[w * blocks + i]))).collect();
        let all: Vec<BlockQ8_0> = rows.concat();
        let prep = prepare_q8_0_rows(&all, bias);
        let row = |r: usize| Q8Row { blocks: &prep.blocks[r * blocks..(r + 1) * blocks] };
        let four = vec_dot_x8(&tile, [row(0), row(1), row(2), row(3)]);
        let three = vec_dot_x8(&tile, [row(1), row(2), row(3)]);
        let two = vec_dot_x8(&tile, [row(2), row(3)]);
        let one = vec_dot_x8(&tile, [row(3)]);
        for w in 0..8 {
            let x = &xs[w * blocks..(w + 1) * blocks];
            let ws: Vec<[i32; 32]> = x.iter().map(&weights).collect();
            let scales: Vec<f16> = x.iter().map(|x| x.scale()).collect();
            for (r, y) in rows.iter().enumerate() {
                let want = reference(&ws, &scales, y).to_bits();
                let at = |got: f32, how: &str| {
                    assert_eq!(got.to_bits(), want, "{name} case {case}: weight row {w}, activation row {r}, {how}")
                };
                at(four[r][w], "four rows");
                if r >= 1 {
                    at(three[r - 1][w], "three rows");
                }
                if r >= 2 {
                    at(two[r - 2][w], "two rows");
                }
                if r == 3 {
                    at(one[0][w], "one row of eight");
                }
                at(vec_dot_q8_one(x, row(r)), "one by one");
                at(vec_dot(blocks * 32, x, y), "vec_dot");
            }
        }
    }

    /// On random blocks and on the extremes (Q8_0 weights -128 and 127,
    /// Q5_0's fifth bits all set or all clear, activations at -127 and 127),
    /// with 1, 2, 28 and 152 blocks per row.
    #[test]
    fn kernels_equal_the_exact_block_sums_bit_for_bit() {
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        for case in 0..200 {
            let blocks = [1usize, 2, 28, 152][case % 4];
            let extreme = case % 5 == 0;
            let q8 = q8_0_rows(&mut rng, 8 * blocks, extreme);
            let q5 = q5_0_rows(&mut rng, 8 * blocks, extreme);
            let rows: Vec<Vec<BlockQ8_0>> = (0..4).map(|_| rng.activations(blocks, extreme)).collect();
            let q8_weights = |x: &BlockQ8_0| x.qs.map(|q| q as i32);
            check("Q8_0", case, Q8_0_BIAS, &q8, q8_weights, vec_dot_q8_0_q8_0, &rows);
            check("Q5_0", case, Q5_0_BIAS, &q5, q5_0_weights, vec_dot_q5_0_q8_0, &rows);
        }
    }
}
