//! Q5_0 and Q8_0 weights stored eight rows at a time, block by block, for
//! the AVX2 kernel `avx::vec_dot_x8`.
//!
//! A plain Q5_0 or Q8_0 tensor keeps each weight row's blocks together. Here
//! block `i` of eight consecutive rows is one record (`BlockQ5_0x8`,
//! `BlockQ8_0x8`, the same bytes in another order), laid out so that the
//! kernel loads each of its registers whole, with lane `w` belonging to row
//! `w`: the eight rows then stream from memory as one sequence, and each
//! activation row needs one conversion, multiply and FMA per block for all
//! eight. `QTensor::new` stores every rank-2 Q5_0 and Q8_0 tensor on the CPU
//! whose row count is a multiple of eight this way (`for_cpu`); the others
//! stay plain. What the storage hands out (`data`, `dequantize`) is the
//! plain layout, so GGUF files written and tensors moved to a GPU are as
//! before.

use super::avx::{vec_dot_x8, Q8Row, X8Weights, Q5_0_BIAS};
use super::k_quants::{matmul_cols, matmul_f16, q8_row, BlockQ5_0, BlockQ8_0, GgmlType};
use super::{as_t_slice, GgmlDType, QStorage, QuantizedType};
use crate::{CpuStorage, Result, Shape};
use half::f16;
use std::borrow::Cow;

/// Block `i` of eight Q5_0 rows. `qs` is four vectors of 32 bytes; lane `w`
/// (4 bytes) of vector `k` holds row `w`'s `qs[4k..4k + 4]`: its weights
/// `4k..4k + 4` in the low nibbles and `16 + 4k..` in the high ones. Lane
/// `w` of `qh` holds row `w`'s 32 fifth bits, the bit of weight `4g + b` at
/// bit `g` of byte `b`, so that one shift brings the fifth bits of weights
/// `4g..4g + 4` to bit 4 of each byte.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ5_0x8 {
    pub(crate) d: [f16; 8],
    pub(crate) qh: [u32; 8],
    pub(crate) qs: [u8; 128],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_0x8>() == 8 * std::mem::size_of::<BlockQ5_0>());

/// Block `i` of eight Q8_0 rows. `qs` is eight vectors of 32 bytes; lane `w`
/// (4 bytes) of vector `g` holds row `w`'s weights `4g..4g + 4`.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ8_0x8 {
    pub(crate) d: [f16; 8],
    pub(crate) qs: [i8; 256],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_0x8>() == 8 * std::mem::size_of::<BlockQ8_0>());

/// A block type that has an interleaved form.
pub(crate) trait Interleave: GgmlType<VecDotType = BlockQ8_0> {
    type X8: X8Weights + Copy + Send + Sync + 'static;
    /// Block `i` of eight rows, as one record.
    fn interleave(rows: [&Self; 8]) -> Self::X8;
    /// The eight blocks back.
    fn deinterleave(x: &Self::X8) -> [Self; 8];
}

impl Interleave for BlockQ8_0 {
    type X8 = BlockQ8_0x8;

    fn interleave(rows: [&Self; 8]) -> BlockQ8_0x8 {
        let mut qs = [0i8; 256];
        for (w, row) in rows.iter().enumerate() {
            for g in 0..8 {
                qs[32 * g + 4 * w..32 * g + 4 * w + 4].copy_from_slice(&row.qs[4 * g..4 * g + 4]);
            }
        }
        BlockQ8_0x8 { d: rows.map(|r| r.d), qs }
    }

    fn deinterleave(x: &BlockQ8_0x8) -> [Self; 8] {
        std::array::from_fn(|w| BlockQ8_0 {
            d: x.d[w],
            qs: std::array::from_fn(|j| x.qs[32 * (j / 4) + 4 * w + j % 4]),
        })
    }
}

impl Interleave for BlockQ5_0 {
    type X8 = BlockQ5_0x8;

    fn interleave(rows: [&Self; 8]) -> BlockQ5_0x8 {
        let mut qs = [0u8; 128];
        let mut qh = [0u32; 8];
        for (w, row) in rows.iter().enumerate() {
            for k in 0..4 {
                qs[32 * k + 4 * w..32 * k + 4 * w + 4].copy_from_slice(&row.qs[4 * k..4 * k + 4]);
            }
            let bits = u32::from_le_bytes(row.qh);
            for j in 0..32 {
                qh[w] |= (bits >> j & 1) << (8 * (j % 4) + j / 4);
            }
        }
        BlockQ5_0x8 { d: rows.map(|r| r.d), qh, qs }
    }

    fn deinterleave(x: &BlockQ5_0x8) -> [Self; 8] {
        std::array::from_fn(|w| {
            let mut bits = 0u32;
            for j in 0..32 {
                bits |= (x.qh[w] >> (8 * (j % 4) + j / 4) & 1) << j;
            }
            BlockQ5_0 {
                d: x.d[w],
                qh: bits.to_le_bytes(),
                qs: std::array::from_fn(|j| x.qs[32 * (j / 4) + 4 * w + j % 4]),
            }
        })
    }
}

/// A rank-2 Q5_0 or Q8_0 tensor's storage, interleaved: rows `8t..8t + 8`
/// are `tiles[t * k_blocks..(t + 1) * k_blocks]`.
pub(crate) struct Interleaved<T: Interleave> {
    tiles: Vec<T::X8>,
    k_blocks: usize,
}

impl<T: Interleave> Interleaved<T> {
    /// `blocks`: whole rows of `k_blocks` blocks each, a multiple of eight
    /// of them.
    pub(crate) fn new(blocks: &[T], k_blocks: usize) -> Self {
        let row = |r: usize| &blocks[r * k_blocks..(r + 1) * k_blocks];
        debug_assert!(blocks.len().is_multiple_of(8 * k_blocks));
        let tiles = (0..blocks.len() / k_blocks / 8)
            .flat_map(|t| {
                let rows: [&[T]; 8] = std::array::from_fn(|w| row(8 * t + w));
                (0..k_blocks).map(move |i| T::interleave(rows.map(|r| &r[i])))
            })
            .collect();
        Self { tiles, k_blocks }
    }

    /// The plain layout: row after row.
    pub(crate) fn blocks(&self) -> Vec<T> {
        let mut blocks = vec![T::zeros(); self.tiles.len() * 8];
        for (t, tile) in self.tiles.chunks_exact(self.k_blocks).enumerate() {
            for (i, x) in tile.iter().enumerate() {
                for (w, block) in T::deinterleave(x).into_iter().enumerate() {
                    blocks[(8 * t + w) * self.k_blocks + i] = block;
                }
            }
        }
        blocks
    }

    fn rows(&self) -> usize {
        self.tiles.len() / self.k_blocks * 8
    }
}

/// Eight weight rows (one tile) against `count` activation rows, four at a
/// time, then the 3, 2 or 1 left: row `w` times activation row `r` into
/// `out[w * stride + r]`.
#[inline(always)]
fn tile_rows<'a, X: X8Weights>(
    tile: &[X],
    row: &impl Fn(usize) -> Q8Row<'a>,
    count: usize,
    out: &mut [f32],
    stride: usize,
) {
    #[inline(always)]
    fn step<'a, X: X8Weights, const R: usize>(
        tile: &[X],
        row: &impl Fn(usize) -> Q8Row<'a>,
        r: usize,
        out: &mut [f32],
        stride: usize,
    ) {
        let sums = vec_dot_x8::<X, R>(tile, std::array::from_fn(|i| row(r + i)));
        for (i, sums) in sums.iter().enumerate() {
            for (w, sum) in sums.iter().enumerate() {
                out[w * stride + r + i] = *sum;
            }
        }
    }
    let mut r = 0;
    while r + 4 <= count {
        step::<X, 4>(tile, row, r, out, stride);
        r += 4;
    }
    match count - r {
        3 => step::<X, 3>(tile, row, r, out, stride),
        2 => step::<X, 2>(tile, row, r, out, stride),
        1 => step::<X, 1>(tile, row, r, out, stride),
        _ => {}
    }
}

impl<T: Interleave> QuantizedType for Interleaved<T> {
    fn dtype(&self) -> GgmlDType {
        T::DTYPE
    }

    fn matmul_t(&self, (m, k, n): (usize, usize, usize), lhs: &[f32], dst: &mut [f32]) -> Result<()> {
        let k_blocks = self.k_blocks;
        if k != k_blocks * T::BLCK_SIZE || n != self.rows() {
            crate::bail!(
                "matmul of {:?} weights {} x {} with shape (m, k, n) = ({m}, {k}, {n})",
                T::DTYPE,
                self.rows(),
                k_blocks * T::BLCK_SIZE
            )
        }
        matmul_cols::<T>((m, k, n), lhs, dst, 8, |c, rows, prep, out, stride| {
            let tile = &self.tiles[c / 8 * k_blocks..(c / 8 + 1) * k_blocks];
            tile_rows(tile, &q8_row(prep, k_blocks), rows.len() / k_blocks, out, stride)
        })
    }

    fn matmul_t_f16(&self, mkn: (usize, usize, usize), lhs: &[f16], dst: &mut [f16]) -> Result<()> {
        matmul_f16(mkn, lhs, &self.blocks(), dst)
    }

    fn dequantize(&self, elem_count: usize) -> Result<CpuStorage> {
        let mut ys = vec![0.0f32; elem_count];
        T::to_float(&self.blocks(), &mut ys);
        Ok(CpuStorage::F32(ys))
    }

    fn storage_size_in_bytes(&self) -> usize {
        std::mem::size_of_val(self.tiles.as_slice())
    }

    fn as_ptr(&self) -> *const u8 {
        self.tiles.as_ptr() as *const u8
    }

    fn data(&self) -> Cow<'_, [u8]> {
        let blocks = self.blocks();
        let bytes = unsafe {
            std::slice::from_raw_parts(blocks.as_ptr() as *const u8, std::mem::size_of_val(blocks.as_slice()))
        };
        Cow::Owned(bytes.to_vec())
    }

    fn block_size(&self) -> usize {
        T::BLCK_SIZE
    }

    fn from_float(&mut self, xs: &[f32]) {
        let mut blocks = vec![T::zeros(); self.tiles.len() * 8];
        T::from_float(xs, &mut blocks);
        *self = Self::new(&blocks, self.k_blocks);
    }

    fn from_float_imatrix(&mut self, xs: &[f32], imatrix_weights: &[f32], n_per_row: usize) {
        let mut blocks = vec![T::zeros(); self.tiles.len() * 8];
        T::from_float_imatrix(xs, &mut blocks, imatrix_weights, n_per_row);
        *self = Self::new(&blocks, self.k_blocks);
    }

    fn size(&self) -> usize {
        self.storage_size_in_bytes()
    }
}

/// `storage` interleaved where it is a rank-2 Q5_0 or Q8_0 tensor on the CPU
/// with a multiple of eight rows; as it is otherwise.
pub(crate) fn for_cpu(storage: QStorage, shape: &Shape) -> QStorage {
    let QStorage::Cpu(plain) = storage else { return storage };
    let &[rows, cols] = shape.dims() else { return QStorage::Cpu(plain) };
    if rows == 0 || cols == 0 || !rows.is_multiple_of(8) {
        return QStorage::Cpu(plain);
    }
    fn interleave<T: Interleave + 'static>(plain: &dyn QuantizedType, cols: usize) -> Box<dyn QuantizedType> {
        let k_blocks = cols / T::BLCK_SIZE;
        match plain.data() {
            // A plain `Vec<T>`'s own bytes: whole, aligned `T`s.
            Cow::Borrowed(data) => Box::new(Interleaved::new(as_t_slice::<T>(Cow::Borrowed(data)), k_blocks)),
            Cow::Owned(data) => {
                let mut blocks = vec![T::zeros(); data.len() / std::mem::size_of::<T>()];
                // Safety: a tensor of `T` is whole `T`s (of plain bytes: f16
                // and integers), and `blocks` has room for them.
                unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), blocks.as_mut_ptr() as *mut u8, data.len()) };
                Box::new(Interleaved::new(&blocks, k_blocks))
            }
        }
    }
    QStorage::Cpu(match plain.dtype() {
        GgmlDType::Q5_0 => interleave::<BlockQ5_0>(plain.as_ref(), cols),
        GgmlDType::Q8_0 => interleave::<BlockQ8_0>(plain.as_ref(), cols),
        _ => plain,
    })
}

// `X8Weights::bytes` of `BlockQ5_0x8` gives the weights as `w + 16`
// (0..=31), which the prepared activations offset with `Q5_0_BIAS`.
const _: () = assert!(Q5_0_BIAS == 16);

#[cfg(test)]
mod tests {
    use super::super::k_quants::matmul;
    use super::super::QTensor;
    use super::*;
    use crate::Device;

    /// xorshift, so failures reproduce.
    fn rng(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    fn random_rows<T: GgmlType>(rows: usize, k: usize, seed: u64) -> Vec<T> {
        let mut state = seed;
        let weights: Vec<f32> = (0..rows * k).map(|_| (rng(&mut state) % 2001) as f32 / 1000.0 - 1.0).collect();
        let mut blocks = vec![T::zeros(); rows * k / T::BLCK_SIZE];
        T::from_float(&weights, &mut blocks);
        blocks
    }

    fn bytes<T>(blocks: &[T]) -> &[u8] {
        unsafe { std::slice::from_raw_parts(blocks.as_ptr() as *const u8, std::mem::size_of_val(blocks)) }
    }

    /// Interleaving and back gives the same bytes (every fifth-bit position
    /// of Q5_0 included: its `qh` are random here).
    fn round_trip<T: Interleave>() {
        let mut blocks = random_rows::<T>(24, 96, 7);
        if T::DTYPE == GgmlDType::Q5_0 {
            let mut state = 11u64;
            let raw = unsafe {
                std::slice::from_raw_parts_mut(blocks.as_mut_ptr() as *mut u8, std::mem::size_of_val(blocks.as_slice()))
            };
            for block in raw.chunks_exact_mut(22) {
                block[2..6].copy_from_slice(&(rng(&mut state) as u32).to_le_bytes());
            }
        }
        let x8 = Interleaved::new(&blocks, 3);
        assert_eq!(bytes(&x8.blocks()), bytes(&blocks), "{:?}", T::DTYPE);
        assert_eq!(x8.data().as_ref(), bytes(&blocks), "{:?}", T::DTYPE);
    }

    #[test]
    fn interleaving_round_trips() {
        round_trip::<BlockQ5_0>();
        round_trip::<BlockQ8_0>();
    }

    /// A matmul over interleaved weights gives the plain weights' results
    /// bit for bit: one activation row, a batch (4 and groups of four with
    /// 1, 2 or 3 left) and a prompt (150 rows: blocks of 64 and 22), with 296
    /// weight rows (37 tiles: tasks of two tiles and one left).
    fn same_products<T: Interleave>() {
        let (n, k) = (296, 256);
        let blocks = random_rows::<T>(n, k, 3);
        let x8 = Interleaved::new(&blocks, k / T::BLCK_SIZE);
        let mut state = 5u64;
        for m in [1usize, 2, 3, 4, 5, 6, 7, 17, 150] {
            let lhs: Vec<f32> = (0..m * k).map(|_| (rng(&mut state) % 1999) as f32 / 999.0 - 1.0).collect();
            let (mut want, mut got) = (vec![0f32; m * n], vec![0f32; m * n]);
            matmul((m, k, n), &lhs, &blocks, &mut want).unwrap();
            x8.matmul_t((m, k, n), &lhs, &mut got).unwrap();
            for (i, (w, g)) in want.iter().zip(&got).enumerate() {
                assert_eq!(w.to_bits(), g.to_bits(), "{:?} m {m}: row {} col {}", T::DTYPE, i / n, i % n);
            }
        }
        let mut dst = vec![0f32; 296];
        let err = x8.matmul_t((1, k, 288), &[0.0; 256], &mut dst[..288]).unwrap_err();
        assert!(err.to_string().contains("296 x 256"), "{err}");
    }

    #[test]
    fn interleaved_matmul_equals_the_plain_one_bit_for_bit() {
        same_products::<BlockQ5_0>();
        same_products::<BlockQ8_0>();
    }

    /// `QTensor::new` interleaves rank-2 Q5_0 and Q8_0 tensors with a
    /// multiple of eight rows, and only those; what it hands out is the
    /// plain layout either way.
    #[test]
    fn qtensor_new_interleaves_where_it_can() {
        let blocks = random_rows::<BlockQ5_0>(16, 64, 9);
        let plain = bytes(&blocks);
        let mut want = vec![0f32; 16 * 64];
        BlockQ5_0::to_float(&blocks, &mut want);
        for (shape, interleaved) in [(vec![16usize, 64], true), (vec![4, 256], false), (vec![2, 8, 64], false)] {
            let storage = QStorage::from_data(Cow::Borrowed(plain), &Device::Cpu, GgmlDType::Q5_0).unwrap();
            let t = QTensor::new(storage, shape.as_slice()).unwrap();
            let QStorage::Cpu(s) = &t.storage else { unreachable!() };
            let own = unsafe { std::slice::from_raw_parts(s.as_ptr(), s.storage_size_in_bytes()) };
            assert_eq!(own != plain, interleaved, "{shape:?}");
            assert_eq!(t.data().unwrap().as_ref(), plain, "{shape:?}");
            let got = t.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(got, want, "{shape:?}");
        }
    }

    /// `QTensor::quantize` (in-situ quantization) interleaves too, and its
    /// matmul equals the plain storage's bit for bit.
    #[test]
    fn quantize_interleaves() {
        let (n, k) = (16, 64);
        let mut state = 13u64;
        let w: Vec<f32> = (0..n * k).map(|_| (rng(&mut state) % 2001) as f32 / 1000.0 - 1.0).collect();
        let x: Vec<f32> = (0..4 * k).map(|_| (rng(&mut state) % 1999) as f32 / 999.0 - 1.0).collect();
        for dtype in [GgmlDType::Q5_0, GgmlDType::Q8_0] {
            let src = crate::Tensor::from_vec(w.clone(), (n, k), &Device::Cpu).unwrap();
            let t = QTensor::quantize(&src, dtype).unwrap();
            let QStorage::Cpu(s) = &t.storage else { unreachable!() };
            let own = unsafe { std::slice::from_raw_parts(s.as_ptr(), s.storage_size_in_bytes()) };
            let plain = t.data().unwrap().into_owned();
            assert_ne!(own, plain.as_slice(), "{dtype:?} not interleaved");
            let plain = QStorage::from_data(Cow::Borrowed(&plain), &Device::Cpu, dtype).unwrap();
            let QStorage::Cpu(plain) = &plain else { unreachable!() };
            let (mut want, mut got) = (vec![0f32; 4 * n], vec![0f32; 4 * n]);
            plain.matmul_t((4, k, n), &x, &mut want).unwrap();
            s.matmul_t((4, k, n), &x, &mut got).unwrap();
            let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&want), bits(&got), "{dtype:?}");
        }
    }
}
