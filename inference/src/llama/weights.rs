//! The weights, read from a GGUF file: which tensors, in which form.
//!
//! Every projection becomes a [`Linear`]: our Q8 or Q4 kernels when the file
//! has Q8_0, Q4_0 or Q4_1 (or re-quantization to Q8 is on for its type), else
//! candle's own quantized matmul for that type. Projections that read the same input are
//! fused (`q|k|v`, `gate|up`) so one matmul produces them all.

use std::io::{Read, Seek};

use candle_core::quantized::{GgmlDType, QMatMul, QTensor, gguf_file};
use candle_core::{Device, Module, Tensor};

use super::q4::Q4Matrix;
use super::quant::{Kernel, Q8Matrix, Q8Rows, QK, matmul};
use crate::InferenceError;

/// Which weight types become Q8 at load.
///
/// Q8_0, Q4_0 and Q4_1 have kernels of ours and run as stored unless asked
/// otherwise; other types run on candle's kernels unless re-quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Requantize {
    /// Keep every weight as stored.
    Never,
    /// Q5_0 and Q5_1, which have no fast kernel here or in candle.
    #[default]
    Missing,
    /// All the legacy block types (Q4_0, Q4_1, Q5_0, Q5_1): 8 bits hold 4 or
    /// 5 with room to spare (nearly lossless), at 36 bytes a block.
    Legacy,
    /// Every quantized or half-precision weight (K-quants, F16, BF16 too).
    Always,
}

impl Requantize {
    fn applies(self, dtype: GgmlDType) -> bool {
        use GgmlDType as D;
        match self {
            Requantize::Never => false,
            Requantize::Missing => matches!(dtype, D::Q5_0 | D::Q5_1),
            Requantize::Legacy => matches!(dtype, D::Q4_0 | D::Q4_1 | D::Q5_0 | D::Q5_1),
            Requantize::Always => !matches!(dtype, D::F32 | D::Q8_0),
        }
    }
}

/// One projection: `rows` outputs from `cols` inputs.
pub(crate) enum Linear {
    /// Our Q8 kernels.
    Q8(Q8Matrix),
    /// Our Q4 kernels (Q4_0, Q4_1 as stored).
    Q4(Q4Matrix),
    /// candle's kernels for the stored type.
    Candle {
        weight: QMatMul,
        rows: usize,
        cols: usize,
    },
}

impl std::fmt::Debug for Linear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Linear::Q8(m) => m.fmt(f),
            Linear::Q4(m) => m.fmt(f),
            Linear::Candle { rows, cols, .. } => write!(f, "Candle[{rows}x{cols}]"),
        }
    }
}

impl Linear {
    pub(crate) fn rows(&self) -> usize {
        match self {
            Linear::Q8(m) => m.rows(),
            Linear::Q4(m) => m.rows(),
            Linear::Candle { rows, .. } => *rows,
        }
    }

    fn size_in_bytes(&self) -> usize {
        match self {
            Linear::Q8(m) => m.size_in_bytes(),
            Linear::Q4(m) => m.size_in_bytes(),
            Linear::Candle { .. } => 0,
        }
    }
}

/// Projections that share their input, outputs side by side (`[q | k | v]`).
#[derive(Debug)]
pub(crate) struct Projection {
    parts: Vec<Linear>,
    rows: usize,
}

impl Projection {
    fn new(parts: Vec<Linear>) -> Self {
        // Parts of one format stack into one matrix: one matmul, one pass
        // over the input.
        let parts = if parts.len() > 1 && parts.iter().all(|p| matches!(p, Linear::Q8(_))) {
            let matrices = parts.into_iter().filter_map(|p| match p {
                Linear::Q8(m) => Some(m),
                _ => None,
            });
            Q8Matrix::concat(matrices.collect()).map_or_else(Vec::new, |m| vec![Linear::Q8(m)])
        } else if parts.len() > 1 && parts.iter().all(|p| matches!(p, Linear::Q4(_))) {
            let matrices = parts.into_iter().filter_map(|p| match p {
                Linear::Q4(m) => Some(m),
                _ => None,
            });
            Q4Matrix::concat(matrices.collect()).map_or_else(Vec::new, |m| vec![Linear::Q4(m)])
        } else {
            parts
        };
        let rows = parts.iter().map(Linear::rows).sum();
        Self { parts, rows }
    }

    /// Output width.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    pub(crate) fn size_in_bytes(&self) -> usize {
        self.parts.iter().map(Linear::size_in_bytes).sum()
    }

    /// `out = x · Wᵀ` for `m` rows of `cols` inputs; `xq` is a scratch for the
    /// quantized input, `scratch` for the kernels.
    pub(crate) fn forward(
        &self,
        x: &[f32],
        cols: usize,
        out: &mut [f32],
        xq: &mut Q8Rows,
        scratch: &mut Vec<f32>,
    ) -> Result<(), InferenceError> {
        let m = x.len() / cols;
        match self.parts.as_slice() {
            [Linear::Q8(w)] => {
                xq.quantize(x, cols);
                matmul(w, xq, out, scratch);
                return Ok(());
            }
            [Linear::Q4(w)] => {
                xq.quantize(x, cols);
                matmul(w, xq, out, scratch);
                return Ok(());
            }
            _ => {}
        }
        let mut first = 0;
        for part in &self.parts {
            let n = part.rows();
            let part_out = match part {
                Linear::Q8(w) => {
                    xq.quantize(x, cols);
                    let mut y = vec![0f32; m * n];
                    matmul(w, xq, &mut y, scratch);
                    y
                }
                Linear::Q4(w) => {
                    xq.quantize(x, cols);
                    let mut y = vec![0f32; m * n];
                    matmul(w, xq, &mut y, scratch);
                    y
                }
                Linear::Candle { weight, .. } => {
                    let xt = Tensor::from_slice(x, (m, cols), &Device::Cpu)?;
                    weight.forward(&xt)?.flatten_all()?.to_vec1::<f32>()?
                }
            };
            for (out, y) in out
                .chunks_exact_mut(self.rows)
                .zip(part_out.chunks_exact(n))
            {
                out[first..first + n].copy_from_slice(y);
            }
            first += n;
        }
        Ok(())
    }
}

/// One transformer block.
#[derive(Debug)]
pub(crate) struct Layer {
    pub(crate) attn_norm: Vec<f32>,
    pub(crate) qkv: Projection,
    pub(crate) wo: Projection,
    pub(crate) ffn_norm: Vec<f32>,
    pub(crate) gate_up: Projection,
    pub(crate) down: Projection,
}

/// All the weights of the model.
#[derive(Debug)]
pub(crate) struct Weights {
    pub(crate) embed: Q8Matrix,
    pub(crate) layers: Vec<Layer>,
    pub(crate) norm: Vec<f32>,
    pub(crate) output: Projection,
}

impl Weights {
    pub(crate) fn size_in_bytes(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                l.qkv.size_in_bytes()
                    + l.wo.size_in_bytes()
                    + l.gate_up.size_in_bytes()
                    + l.down.size_in_bytes()
            })
            .sum();
        layers + self.embed.size_in_bytes() + self.output.size_in_bytes()
    }
}

/// Reads tensors from one open GGUF file.
pub(crate) struct Reader<'a, R> {
    pub(crate) content: &'a gguf_file::Content,
    pub(crate) file: &'a mut R,
    pub(crate) path: &'a str,
    pub(crate) requantize: Requantize,
}

impl<R: Read + Seek> Reader<'_, R> {
    fn tensor(&mut self, name: &str) -> Result<QTensor, InferenceError> {
        self.content
            .tensor(self.file, name, &Device::Cpu)
            .map_err(|e| InferenceError::File {
                path: self.path.to_string(),
                reason: format!("tensor {name}: {e}"),
            })
    }

    pub(crate) fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// A vector (norm weights), as `f32`.
    pub(crate) fn vector(&mut self, name: &str, len: usize) -> Result<Vec<f32>, InferenceError> {
        let t = self.tensor(name)?;
        let v = t
            .dequantize(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        if v.len() != len {
            return Err(self.shape_error(name, len, v.len()));
        }
        Ok(v)
    }

    fn shape_error(&self, name: &str, want: usize, got: usize) -> InferenceError {
        InferenceError::File {
            path: self.path.to_string(),
            reason: format!("tensor {name}: expected {want} values, found {got}"),
        }
    }

    /// A `rows × cols` matrix as Q8, whatever its stored type.
    pub(crate) fn q8(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Q8Matrix, InferenceError> {
        let t = self.tensor(name)?;
        self.check_shape(name, &t, rows, cols)?;
        to_q8(&t, rows, cols)
    }

    fn check_shape(
        &self,
        name: &str,
        t: &QTensor,
        rows: usize,
        cols: usize,
    ) -> Result<(), InferenceError> {
        match t.shape().dims2() {
            Ok((r, c)) if r == rows && c == cols => Ok(()),
            _ => Err(InferenceError::File {
                path: self.path.to_string(),
                reason: format!(
                    "tensor {name}: expected {rows}x{cols}, found {:?}",
                    t.shape()
                ),
            }),
        }
    }

    /// A projection weight: Q8 when stored as Q8_0 or re-quantized, else candle's.
    pub(crate) fn linear(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Linear, InferenceError> {
        let t = self.tensor(name)?;
        self.check_shape(name, &t, rows, cols)?;
        let dtype = t.dtype();
        if cols.is_multiple_of(QK) && (dtype == GgmlDType::Q8_0 || self.requantize.applies(dtype)) {
            return Ok(Linear::Q8(to_q8(&t, rows, cols)?));
        }
        if matches!(dtype, GgmlDType::Q4_0 | GgmlDType::Q4_1)
            && let Some(m) = Q4Matrix::from_ggml(dtype, &t.data()?, rows, cols)
        {
            return Ok(Linear::Q4(m));
        }
        Ok(Linear::Candle {
            weight: QMatMul::from_qtensor(t)?,
            rows,
            cols,
        })
    }

    /// Fuses projections that read the same input.
    pub(crate) fn projection(
        &mut self,
        parts: &[(&str, usize)],
        cols: usize,
    ) -> Result<Projection, InferenceError> {
        let mut linears = Vec::with_capacity(parts.len());
        for &(name, rows) in parts {
            linears.push(self.linear(name, rows, cols)?);
        }
        Ok(Projection::new(linears))
    }
}

/// Q8_0 is copied as is (scales widened); any other type is dequantized and
/// quantized again.
fn to_q8(t: &QTensor, rows: usize, cols: usize) -> Result<Q8Matrix, InferenceError> {
    if t.dtype() == GgmlDType::Q8_0
        && let Some(m) = Q8Matrix::from_ggml_q8_0(&t.data()?, rows, cols)
    {
        return Ok(m);
    }
    let data = t
        .dequantize(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok(Q8Matrix::quantize(&data, rows, cols))
}
