#![allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]

use candle_core::{Context, Device, Result, Storage, Tensor, WithDType};

use half::bf16;
use half::f16;
use rayon::prelude::*;
#[cfg(target_os = "macos")]
use rayon::ThreadPool;

#[cfg(target_os = "macos")]
use std::sync::LazyLock;
use std::{f32, iter::Sum};

// Optional hardware prefetch for ping‑pong style scheduling.
#[cfg(target_arch = "x86_64")]
use core::arch::x86_64::_mm_prefetch;

// --- portable wrapper around architecture‑specific prefetch -------------
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn prefetch(addr: *const u8) {
    _mm_prefetch(addr as *const i8, core::arch::x86_64::_MM_HINT_T0);
}

#[cfg(target_arch = "aarch64")]
#[inline(always)]
unsafe fn prefetch(addr: *const u8) {
    core::arch::asm!(
        "prfm pldl1keep, [{0}]",
        in(reg) addr,
        options(readonly, nostack, preserves_flags)
    );
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
#[inline(always)]
unsafe fn prefetch(_addr: *const u8) {}
// -----------------------------------------------------------------------

use crate::attention::SdpaParams;

#[cfg(target_os = "macos")]
/// Elevate the thread QoS so macOS prefers running it on Performance (P) cores.
unsafe fn set_thread_affinity() {
    // USER_INTERACTIVE has the highest scheduling priority that user code
    // can request and is most likely to be scheduled on P‑cores.
    use libc::{pthread_set_qos_class_self_np, qos_class_t::QOS_CLASS_USER_INTERACTIVE};
    // The second argument is a relative priority within the QoS class (0 = default).
    pthread_set_qos_class_self_np(QOS_CLASS_USER_INTERACTIVE, 0);
}

/// Rayon pool used by the flash‑attention CPU kernels on macOS, with a
/// per‑thread start handler that applies our affinity hint exactly once.
#[cfg(target_os = "macos")]
static FLASH_ATTN_POOL: LazyLock<ThreadPool> = LazyLock::new(|| {
    rayon::ThreadPoolBuilder::new()
        .start_handler(|_| unsafe {
            set_thread_affinity();
        })
        .build()
        .expect("Failed to build custom Rayon thread‑pool for flash‑attention")
});

/// Runs an attention kernel's parallel loops: on macOS in the pool above
/// (its threads ask for performance cores); elsewhere in rayon's global
/// pool, the one candle's matmuls use. A second pool with a thread per core
/// beside the global one oversubscribes the cores: each layer alternates
/// between attention and matmuls, and the threads of the pool that just
/// finished spin while the other pool's threads work.
#[inline]
fn attention_install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    #[cfg(target_os = "macos")]
    {
        FLASH_ATTN_POOL.install(f)
    }
    #[cfg(not(target_os = "macos"))]
    {
        f()
    }
}

/// Size (in KV positions) processed by each inner‑tile job.
const TILE_KV: usize = 16;

/// Dot product in `f32` with eight independent partial sums, which the
/// compiler keeps in one vector register (a single running sum is a serial
/// chain of additions it may not reorder, so it stays scalar).
#[inline]
fn vec_dot_f32<T: UpcastF32 + Copy>(a: &[T], b: &[T]) -> f32 {
    const LANES: usize = 8;
    let mut acc = [0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (a_rest, b_rest) = (a_chunks.remainder(), b_chunks.remainder());
    for (ca, cb) in a_chunks.zip(b_chunks) {
        for j in 0..LANES {
            acc[j] += ca[j].to_f32() * cb[j].to_f32();
        }
    }
    let mut sum = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in a_rest.iter().zip(b_rest) {
        sum += x.to_f32() * y.to_f32();
    }
    sum
}

/// One position's step of a tile's online softmax: its logit `s_val` and
/// value row `v_row` join the tile's weighted value sum `vkq`, denominator
/// `s` and running maximum `m`. Both CPU kernels call it, so a query's
/// attention is the same whichever kernel computes it.
#[inline]
fn online_softmax_add(
    (vkq, s, m): (&mut [f32], &mut f32, &mut f32),
    s_val: f32,
    v_row: impl Iterator<Item = f32>,
) {
    let m_old = *m;
    let mut ms = 1.0;
    let mut vs = 1.0;
    if s_val > *m {
        *m = s_val;
        ms = (m_old - *m).exp();
        for v in vkq.iter_mut() {
            *v *= ms;
        }
    } else {
        vs = (s_val - *m).exp();
    }
    for (acc, v) in vkq.iter_mut().zip(v_row) {
        *acc += v * vs;
    }
    *s = *s * ms + vs;
}

/// Merges a tile's partial result (`vkq_b`, `s_b`, `m_b`) into the running
/// one of the tiles before it; a tile whose every position was masked
/// (`m_b` is -inf) adds nothing. The running result may start empty
/// (zeros and -inf): the first tile merged then becomes it.
#[inline]
fn merge_tile(
    (vkq, s, m): (&mut [f32], &mut f32, &mut f32),
    vkq_b: &[f32],
    s_b: f32,
    m_b: f32,
) {
    if m_b == f32::NEG_INFINITY {
        return;
    }
    if *m >= m_b {
        let factor = (m_b - *m).exp();
        for (v, v_b) in vkq.iter_mut().zip(vkq_b) {
            *v += v_b * factor;
        }
        *s += s_b * factor;
    } else {
        let factor = (*m - m_b).exp();
        for (v, v_a) in vkq.iter_mut().zip(vkq_b) {
            *v = v_a + *v * factor;
        }
        *s = s_b + *s * factor;
        *m = m_b;
    }
}

#[inline]
fn clamp_index(idx: usize, dim: usize) -> usize {
    if dim == 0 {
        0
    } else if idx >= dim {
        dim - 1
    } else {
        idx
    }
}

#[inline]
fn mask_offset(
    dims: &[usize],
    b: usize,
    h: usize,
    b_i: usize,
    h_i: usize,
    q_pos: usize,
    kv_pos: usize,
) -> Option<usize> {
    if dims.is_empty() {
        return Some(0);
    }

    match dims.len() {
        1 => {
            let kv_dim = dims[0];
            if kv_dim == 0 {
                None
            } else {
                Some(clamp_index(kv_pos, kv_dim))
            }
        }
        2 => {
            let q_dim = dims[0];
            let kv_dim = dims[1];
            if q_dim == 0 || kv_dim == 0 {
                None
            } else {
                let q_idx = clamp_index(q_pos, q_dim);
                let kv_idx = clamp_index(kv_pos, kv_dim);
                Some(q_idx * kv_dim + kv_idx)
            }
        }
        3 => {
            let d0 = dims[0];
            let d1 = dims[1];
            let d2 = dims[2];
            if d0 == 0 || d1 == 0 || d2 == 0 {
                return None;
            }
            let q_idx = clamp_index(q_pos, d1);
            let kv_idx = clamp_index(kv_pos, d2);
            if d0 == b || d0 == 1 {
                let b_idx = if d0 == 1 { 0 } else { clamp_index(b_i, d0) };
                Some((b_idx * d1 + q_idx) * d2 + kv_idx)
            } else if d0 == h || d0 == 1 {
                let h_idx = if d0 == 1 { 0 } else { clamp_index(h_i, d0) };
                Some((h_idx * d1 + q_idx) * d2 + kv_idx)
            } else if d0 == b.saturating_mul(h) {
                let combined_idx = clamp_index(b_i * h + h_i, d0);
                Some((combined_idx * d1 + q_idx) * d2 + kv_idx)
            } else {
                Some(q_idx * d2 + kv_idx)
            }
        }
        4 => {
            let d0 = dims[0];
            let d1 = dims[1];
            let d2 = dims[2];
            let d3 = dims[3];
            if d0 == 0 || d1 == 0 || d2 == 0 || d3 == 0 {
                return None;
            }
            let b_idx = if d0 == 1 {
                0
            } else if d0 == b {
                clamp_index(b_i, d0)
            } else if d0 == b.saturating_mul(h) {
                clamp_index(b_i * h + h_i, d0)
            } else {
                clamp_index(b_i, d0)
            };
            let h_idx = if d1 == 1 {
                0
            } else if d1 == h {
                clamp_index(h_i, d1)
            } else if d1 == b {
                clamp_index(b_i, d1)
            } else {
                clamp_index(h_i, d1)
            };
            let q_idx = clamp_index(q_pos, d2);
            let kv_idx = clamp_index(kv_pos, d3);
            Some(((b_idx * d1 + h_idx) * d2 + q_idx) * d3 + kv_idx)
        }
        _ => {
            let q_dim = *dims.get(dims.len().saturating_sub(2))?;
            let kv_dim = *dims.last()?;
            if q_dim == 0 || kv_dim == 0 {
                return None;
            }
            let q_idx = clamp_index(q_pos, q_dim);
            let kv_idx = clamp_index(kv_pos, kv_dim);
            let mut prefix_dim = 1usize;
            for &dim in &dims[..dims.len() - 2] {
                if dim == 0 {
                    return None;
                }
                prefix_dim = prefix_dim.saturating_mul(dim);
            }
            let combined_idx = if prefix_dim == 0 {
                0
            } else {
                let idx_val = b_i * h + h_i;
                idx_val.min(prefix_dim - 1)
            };
            Some((combined_idx * q_dim + q_idx) * kv_dim + kv_idx)
        }
    }
}

struct MaskInfo<'a> {
    data: &'a [f32],
    dims: &'a [usize],
    b: usize,
    h: usize,
}

impl<'a> MaskInfo<'a> {
    #[inline]
    fn value(&self, b_i: usize, h_i: usize, q_pos: usize, kv_pos: usize) -> f32 {
        if let Some(idx) = mask_offset(self.dims, self.b, self.h, b_i, h_i, q_pos, kv_pos) {
            *self.data.get(idx).unwrap_or(&0.0)
        } else {
            0.0
        }
    }

    /// One query's mask over positions `0..kv_len`, where it lies in one
    /// contiguous run: the mask's last dimension covers `kv_len`, so
    /// `mask_offset` steps by one per position (every model's causal mask
    /// here). `row[t]` is then `value(.., t)`. `None` where the mask
    /// broadcasts along the positions or is shorter; callers then read
    /// `value` one position at a time.
    fn row(&self, b_i: usize, h_i: usize, q_pos: usize, kv_len: usize) -> Option<&'a [f32]> {
        if !self.dims.last().is_some_and(|&last| last >= kv_len) {
            return None;
        }
        let start = mask_offset(self.dims, self.b, self.h, b_i, h_i, q_pos, 0)?;
        self.data.get(start..start + kv_len)
    }
}

pub(crate) trait DowncastF32 {
    fn cast(x: f32) -> Self;
}

impl DowncastF32 for f32 {
    fn cast(x: f32) -> Self {
        x
    }
}

impl DowncastF32 for f16 {
    fn cast(x: f32) -> Self {
        f16::from_f32(x)
    }
}

impl DowncastF32 for bf16 {
    fn cast(x: f32) -> Self {
        bf16::from_f32(x)
    }
}

/// Up‑cast helper: convert any supported element type to `f32` once so that the
/// hot kernels can run entirely in `f32` and only down‑cast when writing out.
pub trait UpcastF32 {
    fn to_f32(self) -> f32;
}

impl UpcastF32 for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

impl UpcastF32 for f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self.to_f32()
    }
}

impl UpcastF32 for bf16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self.to_f32()
    }
}

pub fn run_flash_attn_cpu<T>(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    sdpa_params: &SdpaParams,
) -> Result<Tensor>
where
    T: WithDType + Sum + num_traits::real::Real + DowncastF32 + UpcastF32 + Copy,
{
    // Inline CPU slice extraction for q, k, v, and optional mask
    let (q_guard, q_layout) = q.storage_and_layout();
    let q_data: &[T] = if let Storage::Cpu(cpu) = &*q_guard {
        let data = cpu.as_slice::<T>().context("Expected CPU storage for q")?;
        &data[q_layout.start_offset()..]
    } else {
        return Err(candle_core::Error::Msg("Expected CPU storage for q".into()));
    };
    let (k_guard, k_layout) = k.storage_and_layout();
    let k_data: &[T] = if let Storage::Cpu(cpu) = &*k_guard {
        let data = cpu.as_slice::<T>().context("Expected CPU storage for k")?;
        &data[k_layout.start_offset()..]
    } else {
        return Err(candle_core::Error::Msg("Expected CPU storage for k".into()));
    };
    let (v_guard, v_layout) = v.storage_and_layout();
    let v_data: &[T] = if let Storage::Cpu(cpu) = &*v_guard {
        let data = cpu.as_slice::<T>().context("Expected CPU storage for v")?;
        &data[v_layout.start_offset()..]
    } else {
        return Err(candle_core::Error::Msg("Expected CPU storage for v".into()));
    };
    let mut mask_buffer: Option<Vec<f32>> = None;
    let mut mask_dims: Option<Vec<usize>> = None;
    if let Some(mask_tensor) = mask {
        mask_dims = Some(mask_tensor.shape().dims().to_vec());
        let buffer = {
            let (guard, layout) = mask_tensor.storage_and_layout();
            if let Storage::Cpu(cpu) = &*guard {
                let data = cpu
                    .as_slice::<T>()
                    .context("Expected CPU storage for mask")?;
                data[layout.start_offset()..]
                    .iter()
                    .map(|v| (*v).to_f32())
                    .collect::<Vec<f32>>()
            } else {
                return Err(candle_core::Error::Msg(
                    "Expected CPU storage for mask".into(),
                ));
            }
        };
        mask_buffer = Some(buffer);
    }
    // q_guard, k_guard, v_guard, and m_guard (if any) are kept in scope to hold storage alive

    let q_stride = q.stride();
    let k_stride = k.stride();
    let v_stride = v.stride();

    // Fast path for decode: q_len == 1
    let mask_dims_ref = mask_dims.as_deref();
    let mask_slice = mask_buffer.as_deref();

    if q.shape().dims()[1] == 1 {
        return flash_attn_cpu_single_q(
            q_data,
            k_data,
            v_data,
            mask_slice,
            mask_dims_ref,
            q.shape().dims(),
            k.shape().dims(),
            v.shape().dims(),
            q_stride,
            k_stride,
            v_stride,
            sdpa_params.softmax_scale,
            0.0,
            sdpa_params.softcap.unwrap_or(0.0),
        );
    }

    flash_attn_cpu(
        q_data,
        k_data,
        v_data,
        mask_slice,
        mask_dims_ref,
        q.shape().dims(),
        k.shape().dims(),
        v.shape().dims(),
        q_stride,
        k_stride,
        v_stride,
        sdpa_params.softmax_scale,
        0.0,
        sdpa_params.softcap.unwrap_or(0.0),
    )
}

/// Optimised path for the common decode case: q_len == 1 but kv_len ≫ 1.
/// All intermediate maths is done in `f32`; we down‑cast to `T` exactly once
/// when writing the output buffer.
#[allow(clippy::too_many_arguments)]
fn flash_attn_cpu_single_q<T>(
    q_data: &[T],
    k_data: &[T],
    v_data: &[T],
    mask_vec: Option<&[f32]>,
    mask_dims: Option<&[usize]>,
    qshape: &[usize],
    kshape: &[usize],
    vshape: &[usize],
    qstride: &[usize],
    kstride: &[usize],
    vstride: &[usize],
    scale: f32,
    max_bias: f32,
    logit_softcap: f32,
) -> Result<Tensor>
where
    T: WithDType + Copy + UpcastF32 + DowncastF32,
{
    let (b, _q_len, h, d) = (qshape[0], qshape[1], qshape[2], qshape[3]);
    let kv_len = kshape[1];
    let kv_tiles = kv_len.div_ceil(TILE_KV);
    let dv = d;

    // --- head tiling factors and softmax helper -----------------------
    let k_h = kshape[2];
    let v_h = vshape[2];
    let rk2 = h / k_h;
    let rv2 = h / v_h;
    let n2 = 2_usize.pow((h as f32).log2().ceil() as u32);

    let mask_info = match (mask_vec, mask_dims) {
        (Some(data), Some(dims)) => Some(MaskInfo { data, dims, b, h }),
        _ => None,
    };

    // One partial result per (sequence, head, KV tile): the tile's weighted
    // V sum, its softmax denominator and its running max. Each partial has
    // its own slot, so sequences batched together never share scratch.
    let parts = b * h * kv_tiles;
    let mut part_vkq = vec![0f32; parts * dv];
    let mut part_s = vec![0f32; parts];
    let mut part_m = vec![f32::NEG_INFINITY; parts];

    attention_install(|| {
        part_vkq
            .par_chunks_mut(dv)
            .zip(part_s.par_iter_mut())
            .zip(part_m.par_iter_mut())
            .enumerate()
            .with_min_len(4)
            .for_each(|(part, ((vkq, s_out), m_out))| {
                let tile_idx = part % kv_tiles;
                let h_i = (part / kv_tiles) % h;
                let b_i = part / (kv_tiles * h);
                let start = tile_idx * TILE_KV;
                let end = (start + TILE_KV).min(kv_len);

                // Per‑head slope for ALiBi / NTK bias.
                let slope = if max_bias > 0.0 {
                    2.0f32.powf(-max_bias * ((h_i + 1) as f32) / n2 as f32)
                } else {
                    1.0
                };
                let k_head = h_i / rk2;
                let v_head = h_i / rv2;

                let q_base = b_i * qstride[0] + h_i * qstride[2];
                let q_row = &q_data[q_base..q_base + d];

                let mut s = 0f32;
                let mut m = f32::NEG_INFINITY;

                for kv_pos in start..end {
                    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
                    {
                        // One‑step look‑ahead prefetch of the next K and V rows.
                        let next_pos = kv_pos + 1;
                        if next_pos < end {
                            let next_k_base =
                                b_i * kstride[0] + next_pos * kstride[1] + k_head * kstride[2];
                            let next_v_base =
                                b_i * vstride[0] + next_pos * vstride[1] + v_head * vstride[2];
                            unsafe {
                                prefetch(k_data.as_ptr().add(next_k_base) as *const u8);
                                prefetch(v_data.as_ptr().add(next_v_base) as *const u8);
                            }
                        }
                    }
                    // ---------- dot(Q,K) ----------
                    let k_base = b_i * kstride[0] + kv_pos * kstride[1] + k_head * kstride[2];
                    let k_row = &k_data[k_base..k_base + d];

                    let mut s_val = vec_dot_f32(q_row, k_row) * scale;

                    if logit_softcap != 0.0 {
                        s_val = logit_softcap * (s_val / logit_softcap).tanh();
                    }
                    let mask_delta = mask_info
                        .as_ref()
                        .map(|mask| slope * mask.value(b_i, h_i, 0, kv_pos))
                        .unwrap_or(0.0);
                    // A masked position adds nothing (and exp(-inf - -inf)
                    // would make the whole row NaN when it comes first).
                    if mask_delta == f32::NEG_INFINITY {
                        continue;
                    }
                    s_val += mask_delta;

                    // -------- tile-local softmax, V added ----------
                    let v_base = b_i * vstride[0] + kv_pos * vstride[1] + v_head * vstride[2];
                    let v_row = v_data[v_base..v_base + dv].iter().map(|v| v.to_f32());
                    online_softmax_add((&mut *vkq, &mut s, &mut m), s_val, v_row);
                }

                *s_out = s;
                *m_out = m;
            });
    });

    // -------- reduction over tiles, per (sequence, head) --------
    let mut out = vec![T::cast(0.0); b * h * dv];
    attention_install(|| {
        out.par_chunks_mut(dv)
            .enumerate()
            .for_each(|(bh, out_row)| {
                let first = bh * kv_tiles;
                let mut vkq = part_vkq[first * dv..(first + 1) * dv].to_vec();
                let mut s = part_s[first];
                let mut m = part_m[first];

                for part in first + 1..first + kv_tiles {
                    let vkq_b = &part_vkq[part * dv..(part + 1) * dv];
                    merge_tile((&mut vkq[..], &mut s, &mut m), vkq_b, part_s[part], part_m[part]);
                }

                let inv_s = 1.0 / s;
                for (o, v) in out_row.iter_mut().zip(vkq.iter()) {
                    *o = T::cast(*v * inv_s);
                }
            });
    });

    Tensor::from_vec(out, (b, h, 1, dv), &Device::Cpu)
}

/// Positions a block of the prefill kernel's scores covers.
const BLOCK: usize = 16;

/// The scores of query `q` over the BLOCK positions from `start`, against
/// keys laid out by dimension (`k_t[j * k_stride + t]`), summed over the
/// first `whole` dimensions as `vec_dot_f32` sums them: eight partial sums,
/// dimension j into sum j % 8 in order, combined as a tree. Each score sees
/// the same multiplications and additions in the same order as in a dot
/// product of its own, so the scores are the same bits; the block's sums
/// stay in registers, and the loops over it are whole vectors. (Not
/// inlined: inside the kernel's closure the compiler kept the sums in
/// memory and multiplied one position at a time.)
#[inline(never)]
fn partial_scores(q: &[f32], k_t: &[f32], k_stride: usize, start: usize, whole: usize) -> [f32; BLOCK] {
    const LANES: usize = 8;
    assert!(whole % LANES == 0);
    let mut partial = [[0f32; BLOCK]; LANES];
    for j0 in (0..whole).step_by(LANES) {
        for (l, lane) in partial.iter_mut().enumerate() {
            let j = j0 + l;
            let k = &k_t[j * k_stride + start..j * k_stride + start + BLOCK];
            for (s, k) in lane.iter_mut().zip(k) {
                *s += q[j] * k;
            }
        }
    }
    std::array::from_fn(|t| {
        let a = |l: usize| partial[l][t];
        ((a(0) + a(4)) + (a(1) + a(5))) + ((a(2) + a(6)) + (a(3) + a(7)))
    })
}

/// Main forward flash-attention CPU routine.
/// Shapes follow Candle convention: (B, S, H, D)
#[allow(clippy::too_many_arguments)]
fn flash_attn_cpu<T>(
    q_data: &[T],
    k_data: &[T],
    v_data: &[T],
    mask_vec: Option<&[f32]>,
    mask_dims: Option<&[usize]>,
    qshape: &[usize],
    kshape: &[usize],
    vshape: &[usize],
    qstride: &[usize],
    kstride: &[usize],
    vstride: &[usize],
    scale: f32,
    max_bias: f32,
    logit_softcap: f32,
) -> Result<Tensor>
where
    T: WithDType + Copy + UpcastF32 + DowncastF32,
{
    let (b, q_len, h, d) = (qshape[0], qshape[1], qshape[2], qshape[3]);
    let kv_len = kshape[1];
    let k_h = kshape[2];
    let v_h = vshape[2];
    let rk2 = h / k_h;
    let rv2 = h / v_h;
    let dv = d;

    let n2 = 2_usize.pow((h as f32).log2().ceil() as u32);

    let mut out = vec![T::cast(0.0); b * q_len * h * dv];

    assert_eq!(qstride[3], 1, "q must have contiguous rows");
    assert_eq!(kstride[3], 1, "k must have contiguous rows");
    assert_eq!(vstride[3], 1, "v must have contiguous rows");

    let mask_info = match (mask_vec, mask_dims) {
        (Some(data), Some(dims)) => Some(MaskInfo { data, dims, b, h }),
        _ => None,
    };

    // Each (sequence, KV head)'s keys transposed to (d, kv_len) and values
    // gathered to (kv_len, dv), in f32 and contiguous: a query's scores are
    // then passes of `partial[j % 8][t] += q[j] * k[j][t]` over consecutive
    // positions, which the compiler vectorises across positions, where one
    // dot product per (query, position) ended in a horizontal sum each time.
    // Each dimension's row has BLOCK zeros after its kv_len positions, so a
    // query's last block of scores is a whole one too (its extra scores,
    // past the open span, are not used).
    let k_stride = kv_len + BLOCK;
    let keys_t: Vec<Vec<f32>> = (0..b * k_h)
        .into_par_iter()
        .map(|bk| {
            let (b_i, k_head) = (bk / k_h, bk % k_h);
            let mut t = vec![0f32; d * k_stride];
            for kv_pos in 0..kv_len {
                let base = b_i * kstride[0] + kv_pos * kstride[1] + k_head * kstride[2];
                for (j, x) in k_data[base..base + d].iter().enumerate() {
                    t[j * k_stride + kv_pos] = x.to_f32();
                }
            }
            t
        })
        .collect();
    let values: Vec<Vec<f32>> = (0..b * v_h)
        .into_par_iter()
        .map(|bv| {
            let (b_i, v_head) = (bv / v_h, bv % v_h);
            let mut t = Vec::with_capacity(kv_len * dv);
            for kv_pos in 0..kv_len {
                let base = b_i * vstride[0] + kv_pos * vstride[1] + v_head * vstride[2];
                t.extend(v_data[base..base + dv].iter().map(|x| x.to_f32()));
            }
            t
        })
        .collect();

    // vec_dot_f32's partial sums.
    const LANES: usize = 8;

    attention_install(|| {
        out.par_chunks_mut(dv)
            .with_min_len(16)
            .enumerate()
            .for_each_init(
                || (Vec::<f32>::new(), Vec::<f32>::new(), vec![0f32; dv], vec![0f32; dv]),
                |(q_f32, scores, acc, tile_acc), (row_idx, out_chunk)| {
                    // Decode flat index back to (batch, head, q_pos)
                    let rows_per_batch = h * q_len;
                    let b_i = row_idx / rows_per_batch;
                    let rem = row_idx % rows_per_batch;
                    let h_i = rem / q_len;
                    let q_pos = rem % q_len;

                    let slope = if max_bias > 0.0 {
                        2.0f32.powf(-max_bias * ((h_i + 1) as f32) / n2 as f32)
                    } else {
                        1.0
                    };
                    // The query's mask row read directly where it is
                    // contiguous: the searches below and the scores read
                    // it at every position.
                    let mask_row = mask_info.as_ref().and_then(|mask| mask.row(b_i, h_i, q_pos, kv_len));
                    let mask_at = |kv_pos: usize| match (mask_row, &mask_info) {
                        (Some(row), _) => slope * row[kv_pos],
                        (None, Some(mask)) => slope * mask.value(b_i, h_i, q_pos, kv_pos),
                        (None, None) => 0.0,
                    };

                    // The span of positions the mask leaves open (under a
                    // causal mask, up to the query's own position); nothing
                    // outside it is computed.
                    let (lo, hi) = if mask_info.is_some() {
                        let lo = (0..kv_len)
                            .find(|&t| mask_at(t) != f32::NEG_INFINITY)
                            .unwrap_or(kv_len);
                        let hi = (lo..kv_len)
                            .rev()
                            .find(|&t| mask_at(t) != f32::NEG_INFINITY)
                            .map_or(lo, |t| t + 1);
                        (lo, hi)
                    } else {
                        (0, kv_len)
                    };
                    if lo == hi {
                        // Every position masked: no weights to normalise.
                        out_chunk.fill(T::cast(0.0));
                        return;
                    }

                    // Scores, each summed exactly as `vec_dot_f32` sums it
                    // (eight partial sums over the dimensions, combined as a
                    // tree, then the tail), so they equal the single-query
                    // kernel's bit for bit. Positions go in blocks of
                    // BLOCK, whose eight partial sums stay in registers
                    // across the dimensions.
                    let q_base = b_i * qstride[0] + q_pos * qstride[1] + h_i * qstride[2];
                    let q_row = &q_data[q_base..q_base + d];
                    q_f32.clear();
                    q_f32.extend(q_row.iter().map(|q| q.to_f32()));
                    let k_t = &keys_t[b_i * k_h + h_i / rk2];
                    let n = hi - lo;
                    let whole = d - d % LANES;
                    scores.clear();
                    scores.resize(n, 0.0);
                    for (b0, block) in scores.chunks_mut(BLOCK).enumerate() {
                        let all = partial_scores(q_f32, k_t, k_stride, lo + b0 * BLOCK, whole);
                        block.copy_from_slice(&all[..block.len()]);
                    }
                    for (j, &q) in q_f32.iter().enumerate().skip(whole) {
                        let k_row = &k_t[j * k_stride + lo..j * k_stride + hi];
                        for (s, k) in scores.iter_mut().zip(k_row) {
                            *s += q * k;
                        }
                    }
                    for (t, s) in scores.iter_mut().enumerate() {
                        *s *= scale;
                        if logit_softcap != 0.0 {
                            *s = logit_softcap * (*s / logit_softcap).tanh();
                        }
                        if mask_info.is_some() {
                            *s += mask_at(lo + t);
                        }
                    }

                    // Softmax and the weighted sum of value rows, in the
                    // single-query kernel's order and through its helpers:
                    // an online softmax within
                    // each tile of TILE_KV positions (counted from position
                    // 0), then the tiles merged first to last. A query's
                    // output is then the same whether its prompt ran here
                    // or its last token ran after a prefix-cache hit.
                    let v = &values[b_i * v_h + h_i / rv2];
                    acc.fill(0.0);
                    let (mut total, mut max) = (0f32, f32::NEG_INFINITY);
                    for tile in lo / TILE_KV..hi.div_ceil(TILE_KV) {
                        let (start, end) = ((tile * TILE_KV).max(lo), ((tile + 1) * TILE_KV).min(hi));
                        tile_acc.fill(0.0);
                        let (mut s, mut m) = (0f32, f32::NEG_INFINITY);
                        for kv_pos in start..end {
                            let s_val = scores[kv_pos - lo];
                            if s_val == f32::NEG_INFINITY {
                                continue;
                            }
                            let v_row = v[kv_pos * dv..(kv_pos + 1) * dv].iter().copied();
                            online_softmax_add((&mut *tile_acc, &mut s, &mut m), s_val, v_row);
                        }
                        merge_tile((&mut *acc, &mut total, &mut max), tile_acc, s, m);
                    }
                    if max == f32::NEG_INFINITY {
                        out_chunk.fill(T::cast(0.0));
                        return;
                    }
                    let inv_total = 1.0 / total;
                    for (o, a) in out_chunk.iter_mut().zip(acc.iter()) {
                        *o = T::cast(*a * inv_total);
                    }
                },
            );
    });

    let out_shape = (b, h, q_len, dv);
    Tensor::from_vec(out, out_shape, &Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::SdpaParams;
    use candle_core::{DType, Device, Tensor, D};
    use candle_nn::ops::softmax;

    use candle_core::Result as CandleResult;

    const EPS: f32 = 1e-4;

    #[test]
    fn test_flash_attn_cpu_single_q() -> CandleResult<()> {
        // Test for q_len == 1 (single Q)
        let b = 1;
        let h = 2;
        let d = 4;
        let kv_len = 2;

        // Create q with shape (b, 1, h, d) filled with ones
        let q_vec = vec![1.0f32; b * h * d];
        let q = Tensor::from_vec(q_vec.clone(), (b, 1, h, d), &Device::Cpu)?;

        // Create k and v with shape (b, kv_len, h, d) filled with ones
        let k_vec = vec![1.0f32; b * kv_len * h * d];
        let v_vec = vec![1.0f32; b * kv_len * h * d];
        let k = Tensor::from_vec(k_vec.clone(), (b, kv_len, h, d), &Device::Cpu)?;
        let v = Tensor::from_vec(v_vec.clone(), (b, kv_len, h, d), &Device::Cpu)?;

        // SDPA parameters: scale = 1.0, no softcap
        let sdpa = SdpaParams {
            softmax_scale: 1.0,
            softcap: None,
            n_kv_groups: 1,
            sliding_window: None,
            sinks: None,
        };
        let scale = sdpa.softmax_scale;

        // Run the flash attention CPU function
        let out = run_flash_attn_cpu::<f32>(&q, &k, &v, None, &sdpa)?;
        // Expect output shape (b, h, 1, d)
        assert_eq!(out.shape().dims(), &[b, h, 1, d]);

        // Naive attention
        let q_perm = q.clone().permute((0, 2, 1, 3))?;
        let k_perm = k.clone().permute((0, 2, 1, 3))?;
        let v_perm = v.clone().permute((0, 2, 1, 3))?;

        let q_resh = q_perm.reshape(&[b * h, 1, d])?;
        let k_resh = k_perm.reshape(&[b * h, kv_len, d])?;
        let v_resh = v_perm.reshape(&[b * h, kv_len, d])?;

        let logits = (q_resh.matmul(&k_resh.transpose(1, 2)?)? * scale as f64)?;
        let weights = softmax(&logits, D::Minus1)?;

        let attn_out = weights.matmul(&v_resh)?;

        let naive_out = attn_out.reshape(&[b, h, 1, d])?;

        let flash_data = out.flatten_all()?.to_vec1::<f32>()?;
        let naive_data = naive_out.flatten_all()?.to_vec1::<f32>()?;
        for (f_val, n_val) in flash_data.iter().zip(naive_data.iter()) {
            assert!((f_val - n_val).abs() < EPS);
        }

        Ok(())
    }

    /// Plain softmax(q k^T * scale + mask) v for one (sequence, head, query),
    /// in f64 loops: the reference the kernels are checked against. `mask`
    /// gives the value added at (sequence, query position, KV position);
    /// `softcap` (if not 0) caps the scaled logits as the kernels do.
    #[allow(clippy::too_many_arguments)]
    fn naive_head(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        mask: &dyn Fn(usize, usize, usize) -> f32,
        (b_i, h_i, q_pos): (usize, usize, usize),
        (q_len, kv_len, h, k_h, d): (usize, usize, usize, usize, usize),
        scale: f32,
        softcap: f32,
    ) -> Vec<f32> {
        let kv_head = h_i / (h / k_h);
        let q_row = &q[((b_i * q_len + q_pos) * h + h_i) * d..][..d];
        let logits: Vec<f64> = (0..kv_len)
            .map(|t| {
                let k_row = &k[((b_i * kv_len + t) * k_h + kv_head) * d..][..d];
                let dot: f64 = q_row.iter().zip(k_row).map(|(a, b)| *a as f64 * *b as f64).sum();
                let logit = if softcap != 0.0 {
                    softcap as f64 * (dot * scale as f64 / softcap as f64).tanh()
                } else {
                    dot * scale as f64
                };
                logit + mask(b_i, q_pos, t) as f64
            })
            .collect();
        let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let weights: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
        let total: f64 = weights.iter().sum();
        (0..d)
            .map(|j| {
                (0..kv_len)
                    .map(|t| weights[t] * v[((b_i * kv_len + t) * k_h + kv_head) * d + j] as f64)
                    .sum::<f64>()
                    / total
            })
            .map(|x| x as f32)
            .collect()
    }

    /// Decoding several sequences at once (one query token each): every
    /// sequence must get its own attention, whatever else is in the batch.
    /// Batch 3, 4 query heads over 2 KV heads, 37 KV positions (three tiles,
    /// the last partial), different contents per sequence, with and without
    /// a per-sequence mask.
    #[test]
    fn single_q_batched_matches_naive_per_sequence() -> CandleResult<()> {
        let (b, h, k_h, d, kv_len) = (3, 4, 2, 8, 37);
        let gen = |n: usize, seed: usize| -> Vec<f32> {
            (0..n)
                .map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.5 - 1.0) * 1.7)
                .collect()
        };
        let q = gen(b * h * d, 1);
        let k = gen(b * kv_len * k_h * d, 2);
        let v = gen(b * kv_len * k_h * d, 3);
        // Sequence 1 masks its first 5 positions, sequence 2 its last 3.
        let mut mask = vec![0f32; b * kv_len];
        for t in 0..5 {
            mask[kv_len + t] = f32::NEG_INFINITY;
        }
        for t in kv_len - 3..kv_len {
            mask[2 * kv_len + t] = f32::NEG_INFINITY;
        }
        let sdpa = SdpaParams {
            softmax_scale: 0.35,
            softcap: None,
            n_kv_groups: h / k_h,
            sliding_window: None,
            sinks: None,
        };
        let qt = Tensor::from_vec(q.clone(), (b, 1, h, d), &Device::Cpu)?;
        let kt = Tensor::from_vec(k.clone(), (b, kv_len, k_h, d), &Device::Cpu)?;
        let vt = Tensor::from_vec(v.clone(), (b, kv_len, k_h, d), &Device::Cpu)?;
        let mt = Tensor::from_vec(mask.clone(), (b, 1, 1, kv_len), &Device::Cpu)?;
        for masked in [false, true] {
            let out = run_flash_attn_cpu::<f32>(&qt, &kt, &vt, masked.then_some(&mt), &sdpa)?;
            assert_eq!(out.shape().dims(), &[b, h, 1, d]);
            let got = out.flatten_all()?.to_vec1::<f32>()?;
            for b_i in 0..b {
                for h_i in 0..h {
                    let want = naive_head(
                        &q,
                        &k,
                        &v,
                        &|b_i, _, t| if masked { mask[b_i * kv_len + t] } else { 0.0 },
                        (b_i, h_i, 0),
                        (1, kv_len, h, k_h, d),
                        sdpa.softmax_scale,
                        0.0,
                    );
                    let row = &got[(b_i * h + h_i) * d..][..d];
                    for (j, (g, w)) in row.iter().zip(&want).enumerate() {
                        assert!(
                            (g - w).abs() < EPS,
                            "masked {masked}, sequence {b_i}, head {h_i}, dim {j}: {g} vs {w}"
                        );
                    }
                }
            }
            // Each sequence alone gives the same answer as in the batch.
            for b_i in 0..b {
                let one = |t: &Tensor| t.narrow(0, b_i, 1).and_then(|t| t.contiguous());
                let m1 = one(&mt)?;
                let alone = run_flash_attn_cpu::<f32>(
                    &one(&qt)?,
                    &one(&kt)?,
                    &one(&vt)?,
                    masked.then_some(&m1),
                    &sdpa,
                )?
                .flatten_all()?
                .to_vec1::<f32>()?;
                assert_eq!(alone.as_slice(), &got[b_i * h * d..(b_i + 1) * h * d], "sequence {b_i}");
            }
        }
        Ok(())
    }

    /// Decoding sequences of different lengths in one step: the batch's
    /// cache holds each at its own positions with stale data past its end,
    /// which `ragged_decode_mask` hides. Each sequence's attention must be
    /// the one it gets alone over its own positions, bit for bit (the
    /// tiles start where they start alone; masked ones add nothing), so a
    /// greedy answer does not depend on what it was batched with.
    #[test]
    fn a_ragged_batch_row_equals_the_sequence_alone_bit_for_bit() -> CandleResult<()> {
        let (h, k_h, d) = (4, 2, 8);
        let lens = [37usize, 16, 5, 1];
        let (b, kv_len) = (lens.len(), 37);
        let gen = |n: usize, seed: usize| -> Vec<f32> {
            (0..n)
                .map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.5 - 1.0) * 1.7)
                .collect()
        };
        let sdpa = SdpaParams {
            softmax_scale: 0.35,
            softcap: None,
            n_kv_groups: h / k_h,
            sliding_window: None,
            sinks: None,
        };
        let qt = Tensor::from_vec(gen(b * h * d, 4), (b, 1, h, d), &Device::Cpu)?;
        // Past each row's length: large stale values, which would dominate
        // any softmax they got into.
        let stale = |seed: usize| -> CandleResult<Tensor> {
            let mut x = gen(b * kv_len * k_h * d, seed);
            for (row, &len) in lens.iter().enumerate() {
                for x in &mut x[(row * kv_len + len) * k_h * d..(row + 1) * kv_len * k_h * d] {
                    *x = 50.0;
                }
            }
            Tensor::from_vec(x, (b, kv_len, k_h, d), &Device::Cpu)
        };
        let (kt, vt) = (stale(5)?, stale(6)?);
        let mask = crate::kv_cache::ragged_decode_mask(&lens, kv_len, DType::F32, &Device::Cpu)?;
        let got = run_flash_attn_cpu::<f32>(&qt, &kt, &vt, Some(&mask), &sdpa)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        for (b_i, &len) in lens.iter().enumerate() {
            let own = |t: &Tensor, n: usize| t.narrow(0, b_i, 1)?.narrow(1, 0, n)?.contiguous();
            let alone = run_flash_attn_cpu::<f32>(&own(&qt, 1)?, &own(&kt, len)?, &own(&vt, len)?, None, &sdpa)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let row = &got[b_i * h * d..(b_i + 1) * h * d];
            let same = alone.iter().zip(row).all(|(a, g)| a.to_bits() == g.to_bits());
            assert!(same, "sequence {b_i} (length {len}): {row:?} vs alone {alone:?}");
        }
        Ok(())
    }

    /// Prefill (several query tokens): a prompt of 13 new tokens after 16
    /// cached ones, batch 2, 4 query heads over 2 KV heads, under a causal
    /// mask, a sliding-window one (which opens late) and none, with and
    /// without a logit softcap, against the f64 reference; each query equal
    /// bit for bit to the single-query kernel over the keys up to it; a
    /// query whose every position is masked gets zeros.
    #[test]
    fn full_q_matches_naive_and_the_single_query_kernel() -> CandleResult<()> {
        // 20 dimensions: two groups of eight and a tail; up to 29 positions:
        // a full block of scores and a partial one.
        let (b, q_len, h, k_h, d, cached) = (2, 13, 4, 2, 20, 16);
        let kv_len = cached + q_len;
        let gen = |n: usize, seed: usize| -> Vec<f32> {
            (0..n)
                .map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.5 - 1.0) * 1.7)
                .collect()
        };
        let q = gen(b * q_len * h * d, 4);
        let k = gen(b * kv_len * k_h * d, 5);
        let v = gen(b * kv_len * k_h * d, 6);
        let causal = |q_pos: usize, t: usize| t <= cached + q_pos;
        let window = |q_pos: usize, t: usize| causal(q_pos, t) && t + 6 > cached + q_pos;
        let qt = Tensor::from_vec(q.clone(), (b, q_len, h, d), &Device::Cpu)?;
        let kt = Tensor::from_vec(k.clone(), (b, kv_len, k_h, d), &Device::Cpu)?;
        let vt = Tensor::from_vec(v.clone(), (b, kv_len, k_h, d), &Device::Cpu)?;
        type Open<'a> = &'a dyn Fn(usize, usize) -> bool;
        let masks: [(&str, Option<Open>); 3] =
            [("causal", Some(&causal)), ("window", Some(&window)), ("none", None)];
        for (name, open) in masks {
            let mask_of = |q_pos: usize, t: usize| match open {
                Some(open) if !open(q_pos, t) => f32::NEG_INFINITY,
                _ => 0.0,
            };
            let mask: Vec<f32> = (0..q_len * kv_len).map(|i| mask_of(i / kv_len, i % kv_len)).collect();
            let mt = Tensor::from_vec(mask, (q_len, kv_len), &Device::Cpu)?;
            for softcap in [0.0f32, 2.5] {
                let sdpa = SdpaParams {
                    softmax_scale: 0.35,
                    softcap: (softcap != 0.0).then_some(softcap),
                    n_kv_groups: h / k_h,
                    sliding_window: None,
                    sinks: None,
                };
                let out = run_flash_attn_cpu::<f32>(&qt, &kt, &vt, open.map(|_| &mt), &sdpa)?;
                assert_eq!(out.shape().dims(), &[b, h, q_len, d]);
                let got = out.flatten_all()?.to_vec1::<f32>()?;
                for b_i in 0..b {
                    for h_i in 0..h {
                        for q_pos in 0..q_len {
                            let want = naive_head(
                                &q,
                                &k,
                                &v,
                                &|_, q_pos, t| mask_of(q_pos, t),
                                (b_i, h_i, q_pos),
                                (q_len, kv_len, h, k_h, d),
                                sdpa.softmax_scale,
                                softcap,
                            );
                            let row = &got[((b_i * h + h_i) * q_len + q_pos) * d..][..d];
                            for (j, (g, w)) in row.iter().zip(&want).enumerate() {
                                assert!(
                                    (g - w).abs() < EPS,
                                    "{name} mask, softcap {softcap}, sequence {b_i}, head {h_i}, query {q_pos}, dim {j}: {g} vs {w}"
                                );
                            }
                        }
                    }
                }
            }
        }

        // Each query's output equals, bit for bit, what the single-query
        // kernel gives for it with the keys up to its own position (its last
        // token run after a prefix-cache hit on the rest of its prompt).
        let mask: Vec<f32> = (0..q_len * kv_len)
            .map(|i| if causal(i / kv_len, i % kv_len) { 0.0 } else { f32::NEG_INFINITY })
            .collect();
        let mt = Tensor::from_vec(mask, (q_len, kv_len), &Device::Cpu)?;
        for softcap in [None, Some(2.5f32)] {
            let sdpa = SdpaParams {
                softmax_scale: 0.35,
                softcap,
                n_kv_groups: h / k_h,
                sliding_window: None,
                sinks: None,
            };
            let full = run_flash_attn_cpu::<f32>(&qt, &kt, &vt, Some(&mt), &sdpa)?;
            for q_pos in 0..q_len {
                let one = run_flash_attn_cpu::<f32>(
                    &qt.narrow(1, q_pos, 1)?.contiguous()?,
                    &kt.narrow(1, 0, cached + q_pos + 1)?.contiguous()?,
                    &vt.narrow(1, 0, cached + q_pos + 1)?.contiguous()?,
                    None,
                    &sdpa,
                )?;
                let want = one.flatten_all()?.to_vec1::<f32>()?;
                let got = full.narrow(2, q_pos, 1)?.flatten_all()?.to_vec1::<f32>()?;
                assert_eq!(got, want, "query {q_pos}, softcap {softcap:?}");
            }
        }

        // A query with nothing open (a padding row) gets zeros, not NaN.
        let mut mask = vec![0f32; q_len * kv_len];
        mask[..kv_len].fill(f32::NEG_INFINITY);
        let mt = Tensor::from_vec(mask, (q_len, kv_len), &Device::Cpu)?;
        let sdpa = SdpaParams {
            softmax_scale: 0.35,
            softcap: None,
            n_kv_groups: h / k_h,
            sliding_window: None,
            sinks: None,
        };
        let got = run_flash_attn_cpu::<f32>(&qt, &kt, &vt, Some(&mt), &sdpa)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert!(got.iter().all(|x| x.is_finite()));
        assert!(got[..d].iter().all(|x| *x == 0.0), "query 0 of sequence 0, head 0");
        Ok(())
    }

    #[test]
    fn test_flash_attn_cpu_full_q() -> CandleResult<()> {
        // Test for q_len > 1 (full Q)
        let b = 1;
        let q_len = 2;
        let h = 2;
        let d = 4;
        let kv_len = 2;

        // Create q with shape (b, q_len, h, d) filled with ones
        let q_vec = vec![1.0f32; b * q_len * h * d];
        let q = Tensor::from_vec(q_vec.clone(), (b, q_len, h, d), &Device::Cpu)?;

        // Create k and v with shape (b, kv_len, h, d) filled with ones
        let k_vec = vec![1.0f32; b * kv_len * h * d];
        let v_vec = vec![1.0f32; b * kv_len * h * d];
        let k = Tensor::from_vec(k_vec.clone(), (b, kv_len, h, d), &Device::Cpu)?;
        let v = Tensor::from_vec(v_vec.clone(), (b, kv_len, h, d), &Device::Cpu)?;

        // SDPA parameters: scale = 1.0, no softcap
        let sdpa = SdpaParams {
            softmax_scale: 1.0,
            softcap: None,
            n_kv_groups: 1,
            sliding_window: None,
            sinks: None,
        };
        let scale = sdpa.softmax_scale;

        // Run the flash attention CPU function
        let out = run_flash_attn_cpu::<f32>(&q, &k, &v, None, &sdpa)?;
        // Expect output shape (b, h, q_len, d)
        assert_eq!(out.shape().dims(), &[b, h, q_len, d]);

        // Naive attention
        let q_perm = q.clone().permute((0, 2, 1, 3))?;
        let k_perm = k.clone().permute((0, 2, 1, 3))?;
        let v_perm = v.clone().permute((0, 2, 1, 3))?;

        let q_resh = q_perm.reshape(&[b * h, q_len, d])?;
        let k_resh = k_perm.reshape(&[b * h, kv_len, d])?;
        let v_resh = v_perm.reshape(&[b * h, kv_len, d])?;

        let logits = (q_resh.matmul(&k_resh.transpose(1, 2)?)? * scale as f64)?;
        let weights = softmax(&logits, D::Minus1)?;

        let attn_out = weights.matmul(&v_resh)?;

        let naive_out = attn_out.reshape(&[b, h, q_len, d])?;

        // 7) Compare element‐by‐element
        let flash_data = out.flatten_all()?.to_vec1::<f32>()?;
        let naive_data = naive_out.flatten_all()?.to_vec1::<f32>()?;
        for (f_val, n_val) in flash_data.iter().zip(naive_data.iter()) {
            assert!((f_val - n_val).abs() < EPS);
        }

        Ok(())
    }

    #[test]
    fn test_flash_attn_cpu_single_q_softcap() -> CandleResult<()> {
        // Test for q_len == 1 (single Q) with softcap
        let b = 1;
        let h = 2;
        let d = 4;
        let kv_len = 2;

        // Create q with shape (b, 1, h, d) filled with ones
        let q_vec = vec![1.0f32; b * h * d];
        let q = Tensor::from_vec(q_vec.clone(), (b, 1, h, d), &Device::Cpu)?;

        // Create k and v with shape (b, kv_len, h, d) filled with ones
        let k_vec = vec![1.0f32; b * kv_len * h * d];
        let v_vec = vec![1.0f32; b * kv_len * h * d];
        let k = Tensor::from_vec(k_vec.clone(), (b, kv_len, h, d), &Device::Cpu)?;
        let v = Tensor::from_vec(v_vec.clone(), (b, kv_len, h, d), &Device::Cpu)?;

        // SDPA parameters: scale = 1.0, softcap = Some(0.5)
        let sdpa = SdpaParams {
            softmax_scale: 1.0,
            softcap: Some(0.5),
            n_kv_groups: 1,
            sliding_window: None,
            sinks: None,
        };
        let scale = sdpa.softmax_scale;
        let sc = sdpa.softcap.unwrap();

        // Run the flash attention CPU function
        let out = run_flash_attn_cpu::<f32>(&q, &k, &v, None, &sdpa)?;
        // Expect output shape (b, h, 1, d)
        assert_eq!(out.shape().dims(), &[b, h, 1, d]);

        // Naive attention with softcap
        let q_perm = q.clone().permute((0, 2, 1, 3))?;
        let k_perm = k.clone().permute((0, 2, 1, 3))?;
        let v_perm = v.clone().permute((0, 2, 1, 3))?;

        let q_resh = q_perm.reshape(&[b * h, 1, d])?;
        let k_resh = k_perm.reshape(&[b * h, kv_len, d])?;
        let v_resh = v_perm.reshape(&[b * h, kv_len, d])?;

        let logits = (q_resh.matmul(&k_resh.transpose(1, 2)?)? * scale as f64)?;

        let logits = (logits / sc as f64)?;
        let logits = logits.tanh()?;
        let logits = (logits * sc as f64)?;

        let weights = softmax(&logits, D::Minus1)?;
        let attn_out = weights.matmul(&v_resh)?;
        let naive_out = attn_out.reshape(&[b, h, 1, d])?;

        let flash_data = out.flatten_all()?.to_vec1::<f32>()?;
        let naive_data = naive_out.flatten_all()?.to_vec1::<f32>()?;
        for (f_val, n_val) in flash_data.iter().zip(naive_data.iter()) {
            assert!((f_val - n_val).abs() < EPS);
        }
        Ok(())
    }

    #[test]
    fn test_flash_attn_cpu_full_q_softcap() -> CandleResult<()> {
        // Test for q_len > 1 (full Q) with softcap
        let b = 1;
        let q_len = 2;
        let h = 2;
        let d = 4;
        let kv_len = 2;

        // Create q with shape (b, q_len, h, d) filled with ones
        let q_vec = vec![1.0f32; b * q_len * h * d];
        let q = Tensor::from_vec(q_vec.clone(), (b, q_len, h, d), &Device::Cpu)?;

        // Create k and v with shape (b, kv_len, h, d) filled with ones
        let k_vec = vec![1.0f32; b * kv_len * h * d];
        let v_vec = vec![1.0f32; b * kv_len * h * d];
        let k = Tensor::from_vec(k_vec.clone(), (b, kv_len, h, d), &Device::Cpu)?;
        let v = Tensor::from_vec(v_vec.clone(), (b, kv_len, h, d), &Device::Cpu)?;

        // SDPA parameters: scale = 1.0, softcap = Some(0.5)
        let sdpa = SdpaParams {
            softmax_scale: 1.0,
            softcap: Some(0.5),
            n_kv_groups: 1,
            sliding_window: None,
            sinks: None,
        };
        let scale = sdpa.softmax_scale;
        let sc = sdpa.softcap.unwrap();

        // Run the flash attention CPU function
        let out = run_flash_attn_cpu::<f32>(&q, &k, &v, None, &sdpa)?;
        // Expect output shape (b, h, q_len, d)
        assert_eq!(out.shape().dims(), &[b, h, q_len, d]);

        // Naive attention with softcap
        let q_perm = q.clone().permute((0, 2, 1, 3))?;
        let k_perm = k.clone().permute((0, 2, 1, 3))?;
        let v_perm = v.clone().permute((0, 2, 1, 3))?;

        let q_resh = q_perm.reshape(&[b * h, q_len, d])?;
        let k_resh = k_perm.reshape(&[b * h, kv_len, d])?;
        let v_resh = v_perm.reshape(&[b * h, kv_len, d])?;

        let logits = (q_resh.matmul(&k_resh.transpose(1, 2)?)? * scale as f64)?;

        let logits = (logits / sc as f64)?;
        let logits = logits.tanh()?;
        let logits = (logits * sc as f64)?;

        let weights = softmax(&logits, D::Minus1)?;
        let attn_out = weights.matmul(&v_resh)?;
        let naive_out = attn_out.reshape(&[b, h, q_len, d])?;

        let flash_data = out.flatten_all()?.to_vec1::<f32>()?;
        let naive_data = naive_out.flatten_all()?.to_vec1::<f32>()?;
        for (f_val, n_val) in flash_data.iter().zip(naive_data.iter()) {
            assert!((f_val - n_val).abs() < EPS);
        }
        Ok(())
    }
}
