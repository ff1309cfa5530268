//! Q8 weights and the integer matmul kernels of the forward pass.
//!
//! A [`Q8Matrix`] holds `rows × cols` weights in blocks of 32 signed bytes
//! with one `f32` scale per block: GGML's Q8_0 with the scale widened from
//! `f16` (two bytes more per block, no conversion in the inner loop).
//! Activations are quantized the same way per row ([`Q8Rows`]), so one output
//! element is `Σ_blocks d_w · d_x · Σ_32 w·x`, the integer part done with AVX2
//! (`vpmaddubsw`/`vpmaddwd`, the sign trick ggml uses) where the build enables
//! it and in plain Rust elsewhere.
//!
//! Work is split over output rows with rayon, so the caller's pool bounds the
//! threads (the engine runs every forward inside its own pool).

use rayon::prelude::*;

/// Values per quantization block.
pub(crate) const QK: usize = 32;

/// One block of 32 quantized values.
pub(crate) type Block = [i8; QK];

/// Weights quantized to 8 bits in blocks of 32, row-major (`rows` outputs of
/// `cols` inputs each).
pub(crate) struct Q8Matrix {
    rows: usize,
    cols: usize,
    qs: Vec<Block>,
    d: Vec<f32>,
}

impl std::fmt::Debug for Q8Matrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Q8Matrix[{}x{}]", self.rows, self.cols)
    }
}

impl Q8Matrix {
    /// Quantizes `rows × cols` floats (row-major); `cols` must be a multiple of 32.
    pub(crate) fn quantize(data: &[f32], rows: usize, cols: usize) -> Self {
        debug_assert_eq!(data.len(), rows * cols);
        let blocks = rows * cols / QK;
        let mut qs = vec![[0i8; QK]; blocks];
        let mut d = vec![0f32; blocks];
        qs.par_iter_mut()
            .zip(d.par_iter_mut())
            .zip(data.par_chunks_exact(QK))
            .for_each(|((q, d), x)| *d = quantize_block(x, q));
        Self { rows, cols, qs, d }
    }

    /// Reads GGML Q8_0 blocks (`f16` scale, 32 × `i8`) without loss.
    pub(crate) fn from_ggml_q8_0(raw: &[u8], rows: usize, cols: usize) -> Option<Self> {
        const BLOCK_BYTES: usize = 2 + QK;
        let blocks = rows * cols / QK;
        if !cols.is_multiple_of(QK) || raw.len() != blocks * BLOCK_BYTES {
            return None;
        }
        let mut qs = Vec::with_capacity(blocks);
        let mut d = Vec::with_capacity(blocks);
        for block in raw.chunks_exact(BLOCK_BYTES) {
            d.push(f16_to_f32(u16::from_le_bytes([block[0], block[1]])));
            let mut q = [0i8; QK];
            for (q, &b) in q.iter_mut().zip(&block[2..]) {
                *q = b as i8;
            }
            qs.push(q);
        }
        Some(Self { rows, cols, qs, d })
    }

    /// Stacks matrices with the same `cols` (fused projections: one matmul
    /// produces all their outputs side by side).
    pub(crate) fn concat(parts: Vec<Q8Matrix>) -> Option<Self> {
        let cols = parts.first()?.cols;
        if parts.iter().any(|p| p.cols != cols) {
            return None;
        }
        let rows = parts.iter().map(|p| p.rows).sum();
        let mut qs = Vec::with_capacity(rows * cols / QK);
        let mut d = Vec::with_capacity(rows * cols / QK);
        for part in parts {
            qs.extend_from_slice(&part.qs);
            d.extend_from_slice(&part.d);
        }
        Some(Self { rows, cols, qs, d })
    }

    /// Output size.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// Bytes held.
    pub(crate) fn size_in_bytes(&self) -> usize {
        self.qs.len() * (QK + 4)
    }

    /// Dequantizes row `row` into `out` (embedding lookup).
    pub(crate) fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        let per_row = self.cols / QK;
        let range = row * per_row..(row + 1) * per_row;
        for ((q, &d), out) in self.qs[range.clone()]
            .iter()
            .zip(&self.d[range])
            .zip(out.chunks_exact_mut(QK))
        {
            for (o, &q) in out.iter_mut().zip(q) {
                *o = f32::from(q) * d;
            }
        }
    }

    fn row(&self, r: usize) -> (&[Block], &[f32]) {
        let per_row = self.cols / QK;
        let range = r * per_row..(r + 1) * per_row;
        (&self.qs[range.clone()], &self.d[range])
    }
}

impl Kernel for Q8Matrix {
    fn rows(&self) -> usize {
        self.rows
    }

    fn dot1(&self, r: usize, x: &Q8Rows, j: usize) -> f32 {
        let (w, wd) = self.row(r);
        kernel::dot1(w, wd, x.row(j), x.scales(j))
    }

    fn rows4(&self, r: usize, x: &Q8Rows) -> [f32; 4] {
        let rows: [(&[Block], &[f32]); 4] = std::array::from_fn(|i| self.row(r + i));
        kernel::rows4(rows.map(|r| r.0), rows.map(|r| r.1), x.row(0), x.scales(0))
    }

    fn dot4(&self, r: usize, x: &Q8Rows, j: usize) -> [f32; 4] {
        let (w, wd) = self.row(r);
        let xs = std::array::from_fn(|i| x.row(j + i));
        let xd = std::array::from_fn(|i| x.scales(j + i));
        kernel::dot4(w, wd, xs, xd)
    }
}

/// A weight format our matmul can run: dot products of its rows with
/// quantized activation rows.
pub(crate) trait Kernel: Sync {
    /// Output size.
    fn rows(&self) -> usize;
    /// Weight row `r` against activation row `j`.
    fn dot1(&self, r: usize, x: &Q8Rows, j: usize) -> f32;
    /// Weight rows `r..r + 4` against activation row 0.
    fn rows4(&self, r: usize, x: &Q8Rows) -> [f32; 4];
    /// Weight row `r` against activation rows `j..j + 4`.
    fn dot4(&self, r: usize, x: &Q8Rows, j: usize) -> [f32; 4];
}

/// `out[i][r] = Σ_c x[i][c] · w[r][c]` for every row `i` of `x`; `out` is
/// `x.rows() × w.rows()`, row-major.
pub(crate) fn matmul<K: Kernel>(w: &K, x: &Q8Rows, out: &mut [f32], scratch: &mut Vec<f32>) {
    let (m, n) = (x.rows, w.rows());
    debug_assert_eq!(out.len(), m * n);
    // Rows of W per rayon task: enough tasks for the pool to balance, few
    // enough that scheduling stays small next to the work.
    let threads = rayon::current_num_threads().max(1);
    let chunk = n.div_ceil(threads * 4).max(16).min(n.max(1));
    if m == 1 {
        // Four weight rows at a time: four independent accumulators, and
        // each activation block loaded once for all four.
        let chunk = chunk.next_multiple_of(4);
        out.par_chunks_mut(chunk).enumerate().for_each(|(c, out)| {
            let first = c * chunk;
            let (quads, rest) = out.as_chunks_mut::<4>();
            for (i, o) in quads.iter_mut().enumerate() {
                *o = w.rows4(first + 4 * i, x);
            }
            let first = first + 4 * quads.len();
            for (i, o) in rest.iter_mut().enumerate() {
                *o = w.dot1(first + i, x, 0);
            }
        });
        return;
    }
    // Several rows: each task owns a run of W rows and computes them for
    // every x row (W stays in L1, x is reused from L2); the transposed
    // result is then laid out row-major.
    scratch.clear();
    scratch.resize(m * n, 0.0);
    scratch
        .par_chunks_mut(chunk * m)
        .enumerate()
        .for_each(|(c, out_t)| {
            for (i, col) in out_t.chunks_exact_mut(m).enumerate() {
                let r = c * chunk + i;
                let (quads, rest) = col.as_chunks_mut::<4>();
                for (q, o) in quads.iter_mut().enumerate() {
                    *o = w.dot4(r, x, 4 * q);
                }
                let first = 4 * quads.len();
                for (j, o) in rest.iter_mut().enumerate() {
                    *o = w.dot1(r, x, first + j);
                }
            }
        });
    for (r, col) in scratch.chunks_exact(m).enumerate() {
        for (j, &v) in col.iter().enumerate() {
            out[j * n + r] = v;
        }
    }
}

/// Activation rows quantized like [`Q8Matrix`]; reused between calls.
#[derive(Debug, Default)]
pub(crate) struct Q8Rows {
    rows: usize,
    cols: usize,
    qs: Vec<Block>,
    d: Vec<f32>,
    /// `d · Σ q` per block (ggml's Q8_1 `s`): the term that weight offsets
    /// (Q4's minimum) multiply.
    sums: Vec<f32>,
}

impl Q8Rows {
    /// Quantizes `x` (`rows × cols`, row-major) into `self`, reusing its buffers.
    pub(crate) fn quantize(&mut self, x: &[f32], cols: usize) {
        let rows = x.len() / cols;
        let blocks = x.len() / QK;
        self.rows = rows;
        self.cols = cols;
        self.qs.resize(blocks, [0; QK]);
        self.d.resize(blocks, 0.0);
        self.sums.resize(blocks, 0.0);
        // As ggml quantizes activations for Q8_0 weights: the scale kept is
        // rounded to f16 (the quants come from the exact one), so results
        // match llama.cpp's and candle's to the last bit where weights agree.
        let work = |(((q, d), s), x): (((&mut Block, &mut f32), &mut f32), &[f32])| {
            *d = round_to_f16(quantize_block(x, q));
            *s = *d * q.iter().map(|&v| i32::from(v)).sum::<i32>() as f32;
        };
        if rows >= 16 {
            self.qs
                .par_iter_mut()
                .zip(self.d.par_iter_mut())
                .zip(self.sums.par_iter_mut())
                .zip(x.par_chunks_exact(QK))
                .for_each(work);
        } else {
            self.qs
                .iter_mut()
                .zip(self.d.iter_mut())
                .zip(self.sums.iter_mut())
                .zip(x.chunks_exact(QK))
                .for_each(work);
        }
    }

    pub(crate) fn row(&self, i: usize) -> &[Block] {
        let per_row = self.cols / QK;
        &self.qs[i * per_row..(i + 1) * per_row]
    }

    pub(crate) fn scales(&self, i: usize) -> &[f32] {
        let per_row = self.cols / QK;
        &self.d[i * per_row..(i + 1) * per_row]
    }

    pub(crate) fn sums(&self, i: usize) -> &[f32] {
        let per_row = self.cols / QK;
        &self.sums[i * per_row..(i + 1) * per_row]
    }
}

/// Quantizes 32 floats to `q`, returning the scale (`max |x| / 127`).
pub(crate) fn quantize_block(x: &[f32], q: &mut Block) -> f32 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    for (q, &v) in q.iter_mut().zip(x) {
        *q = (v * id).round() as i8;
    }
    d
}

/// `x` rounded to the nearest `f16` value (ties to even), kept as `f32`.
pub(crate) fn round_to_f16(x: f32) -> f32 {
    let bits = x.to_bits();
    let exp = (bits >> 23) & 0xff;
    // Normal f16 range only (2^-14 ..= 65504): activation scales live there;
    // outside it the value is kept as is.
    if !(127 - 14..=127 + 15).contains(&exp) {
        return x;
    }
    let rounded = bits.wrapping_add(0x0fff + ((bits >> 13) & 1)) & !0x1fff;
    f32::from_bits(rounded)
}

/// IEEE half to single precision (GGUF stores Q8_0 scales as `f16`).
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: normalise the mantissa.
            let shift = man.leading_zeros() - 21;
            let man = (man << shift) & 0x3ff;
            let exp = 127 - 15 + 1 - shift;
            sign | (exp << 23) | (man << 13)
        }
        (0x1f, _) => sign | 0x7f80_0000 | (man << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

/// The Q8 dot-product kernels: AVX2 where the CPU has it (checked once, at run
/// time, through `pulp`, which makes the intrinsics safe to call), portable
/// Rust elsewhere.
mod kernel {
    use super::Block;

    /// One weight row against one activation row.
    #[inline(always)]
    pub(super) fn dot1(w: &[Block], wd: &[f32], x: &[Block], xd: &[f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if let Some(simd) = pulp::x86::V3::try_new() {
            return simd.vectorize(|| avx2::dot1(simd, w, wd, x, xd));
        }
        portable::dot1(w, wd, x, xd)
    }

    /// One weight row against four activation rows.
    #[inline(always)]
    pub(super) fn dot4(w: &[Block], wd: &[f32], x: [&[Block]; 4], xd: [&[f32]; 4]) -> [f32; 4] {
        #[cfg(target_arch = "x86_64")]
        if let Some(simd) = pulp::x86::V3::try_new() {
            return simd.vectorize(|| avx2::dot4(simd, w, wd, x, xd));
        }
        std::array::from_fn(|j| portable::dot1(w, wd, x[j], xd[j]))
    }

    /// Four weight rows against one activation row.
    #[inline(always)]
    pub(super) fn rows4(w: [&[Block]; 4], wd: [&[f32]; 4], x: &[Block], xd: &[f32]) -> [f32; 4] {
        #[cfg(target_arch = "x86_64")]
        if let Some(simd) = pulp::x86::V3::try_new() {
            return simd.vectorize(|| avx2::rows4(simd, w, wd, x, xd));
        }
        std::array::from_fn(|j| portable::dot1(w[j], wd[j], x, xd))
    }

    #[cfg(target_arch = "x86_64")]
    mod avx2 {
        //! `|w|` times `x` with `w`'s sign (`vpsignb`), pairs summed to `i16`
        //! (`vpmaddubsw`; no overflow since `|w| ≤ 127`), then to `i32`
        //! (`vpmaddwd`), scaled in `f32`. Blocks load as `bytemuck` casts of
        //! `[i8; 32]` (unaligned loads).
        use super::Block;
        use pulp::x86::V3;
        use std::arch::x86_64::{__m256, __m256i};

        #[inline(always)]
        fn load(b: &Block) -> __m256i {
            bytemuck::cast(*b)
        }

        #[inline(always)]
        fn hsum(simd: V3, v: __m256) -> f32 {
            let lo = simd.avx._mm256_castps256_ps128(v);
            let hi = simd.avx._mm256_extractf128_ps::<1>(v);
            let s = simd.sse._mm_add_ps(lo, hi);
            let s = simd.sse._mm_add_ps(s, simd.sse._mm_movehl_ps(s, s));
            let s = simd.sse._mm_add_ss(s, simd.sse3._mm_movehdup_ps(s));
            simd.sse._mm_cvtss_f32(s)
        }

        #[inline(always)]
        fn block_dot(simd: V3, aw: __m256i, w: __m256i, x: __m256i) -> __m256 {
            let sx = simd.avx2._mm256_sign_epi8(x, w);
            let p16 = simd.avx2._mm256_maddubs_epi16(aw, sx);
            let p32 = simd
                .avx2
                ._mm256_madd_epi16(p16, simd.avx._mm256_set1_epi16(1));
            simd.avx._mm256_cvtepi32_ps(p32)
        }

        #[inline(always)]
        pub(super) fn dot1(simd: V3, w: &[Block], wd: &[f32], x: &[Block], xd: &[f32]) -> f32 {
            let mut acc = simd.avx._mm256_setzero_ps();
            for (((w, &wd), x), &xd) in w.iter().zip(wd).zip(x).zip(xd) {
                let wv = load(w);
                let aw = simd.avx2._mm256_sign_epi8(wv, wv);
                let p = block_dot(simd, aw, wv, load(x));
                acc = simd
                    .fma
                    ._mm256_fmadd_ps(p, simd.avx._mm256_set1_ps(wd * xd), acc);
            }
            hsum(simd, acc)
        }

        #[inline(always)]
        pub(super) fn rows4(
            simd: V3,
            w: [&[Block]; 4],
            wd: [&[f32]; 4],
            x: &[Block],
            xd: &[f32],
        ) -> [f32; 4] {
            let mut acc = [simd.avx._mm256_setzero_ps(); 4];
            for (b, (x, &xd)) in x.iter().zip(xd).enumerate() {
                let xv = load(x);
                for j in 0..4 {
                    let wv = load(&w[j][b]);
                    let aw = simd.avx2._mm256_sign_epi8(wv, wv);
                    let p = block_dot(simd, aw, wv, xv);
                    let scale = simd.avx._mm256_set1_ps(wd[j][b] * xd);
                    acc[j] = simd.fma._mm256_fmadd_ps(p, scale, acc[j]);
                }
            }
            acc.map(|a| hsum(simd, a))
        }

        #[inline(always)]
        pub(super) fn dot4(
            simd: V3,
            w: &[Block],
            wd: &[f32],
            x: [&[Block]; 4],
            xd: [&[f32]; 4],
        ) -> [f32; 4] {
            let mut acc = [simd.avx._mm256_setzero_ps(); 4];
            for (b, (w, &wd)) in w.iter().zip(wd).enumerate() {
                let wv = load(w);
                let aw = simd.avx2._mm256_sign_epi8(wv, wv);
                for j in 0..4 {
                    let p = block_dot(simd, aw, wv, load(&x[j][b]));
                    let scale = simd.avx._mm256_set1_ps(wd * xd[j][b]);
                    acc[j] = simd.fma._mm256_fmadd_ps(p, scale, acc[j]);
                }
            }
            acc.map(|a| hsum(simd, a))
        }
    }

    mod portable {
        use super::Block;

        #[inline(always)]
        fn block_dot(w: &Block, x: &Block) -> i32 {
            w.iter()
                .zip(x)
                .map(|(&w, &x)| i32::from(w) * i32::from(x))
                .sum()
        }

        #[inline]
        pub(super) fn dot1(w: &[Block], wd: &[f32], x: &[Block], xd: &[f32]) -> f32 {
            let mut acc = 0f32;
            for (((w, &wd), x), &xd) in w.iter().zip(wd).zip(x).zip(xd) {
                acc += block_dot(w, x) as f32 * wd * xd;
            }
            acc
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    #[test]
    fn matmul_matches_float_reference() {
        let mut seed = 7;
        let (m, k, n) = (6, 96, 40);
        let w: Vec<f32> = (0..n * k).map(|_| lcg(&mut seed)).collect();
        let x: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed)).collect();
        let wq = Q8Matrix::quantize(&w, n, k);
        let mut xq = Q8Rows::default();
        xq.quantize(&x, k);
        let mut out = vec![0f32; m * n];
        matmul(&wq, &xq, &mut out, &mut Vec::new());
        for i in 0..m {
            for r in 0..n {
                let exact: f32 = (0..k).map(|c| x[i * k + c] * w[r * k + c]).sum();
                let got = out[i * n + r];
                assert!((exact - got).abs() < 0.02, "({i},{r}): {exact} vs {got}");
            }
        }
        // One row goes through the single-row path: same numbers.
        let mut x1 = Q8Rows::default();
        x1.quantize(&x[..k], k);
        let mut out1 = vec![0f32; n];
        matmul(&wq, &x1, &mut out1, &mut Vec::new());
        for (a, b) in out1.iter().zip(&out[..n]) {
            assert!((a - b).abs() < 1e-5);
        }
    }

    #[test]
    fn f16_rounding() {
        assert_eq!(round_to_f16(1.0), 1.0);
        assert_eq!(round_to_f16(1.0 + 2f32.powi(-11)), 1.0); // tie to even
        assert_eq!(
            round_to_f16(1.0 + 3.0 * 2f32.powi(-11)),
            1.0 + 2f32.powi(-9)
        );
        assert_eq!(round_to_f16(0.1), f16_to_f32(0x2e66));
    }

    #[test]
    fn f16_conversion() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0000), 0.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert!(f16_to_f32(0x7c00).is_infinite());
    }
}
