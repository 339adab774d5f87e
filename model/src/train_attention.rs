//! Multi-head self-attention with a fused backward pass, for training on the CPU.
//!
//! Composed of candle ops, training attention took a dozen graph nodes per layer: three
//! projections, three head splits (copies), one small product per (text, head) and per
//! direction, the probabilities, a transpose and a reshape back — each node a full pass over
//! memory forward, and another (plus candle's zero-initialised gradient sum) backward; the
//! `(batch, heads, seq, seq)` scores were kept for the backward pass. This op takes the fused
//! projection `qkv` and returns the context, one parallel task per (text, head) over its real
//! tokens only. The backward pass recomputes the probabilities (as flash attention does) and the
//! dropout mask (a function of the element index), so neither is stored. An additive position
//! bias per head (MPNet's) is an optional second input with its own gradient.
//!
//! Dropout masks are indexed like the composite path's `(batch, heads, seq, seq)` probabilities,
//! so both paths draw the same mask from the same key; the tests hold the op to that path.
//!
//! The rows come in one of two layouts ([`Rows`]): right-padded `(batch, seq, ·)`, or packed
//! `(Σ lengths, ·)` — the real tokens of each text one after another, so that the layers
//! around attention (projections, layer norms, feed-forward) skip the padding too.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use crate::kernels::{contiguous, softmax_in_place};
use crate::layers::DropoutMask;

/// How the texts' rows lie in `qkv` and in the context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rows {
    /// `(batch, seq, ·)`: each text right-padded to the longest.
    Padded,
    /// `(Σ lengths, ·)`: the real tokens of each text, texts one after another. `seq` is the
    /// padded length the position bias `(heads, seq, seq)` and the dropout masks are laid out
    /// for (at least the longest text).
    Packed {
        /// Padded length, in tokens.
        seq: usize,
    },
}

/// The forward op: `qkv` `(batch, seq, 3·hidden)` or packed `(Σ lengths, 3·hidden)` (and, as
/// [`CustomOp2`], a position bias `(heads, seq, seq)`) → context `(batch, seq, hidden)` or
/// `(Σ lengths, hidden)`.
#[derive(Clone)]
struct SelfAttention {
    /// Real tokens of each text; padding rows of a padded context are zero.
    lengths: Arc<Vec<usize>>,
    /// First row of each text in `qkv`, for packed rows (empty for padded ones).
    starts: Arc<Vec<usize>>,
    rows: Rows,
    heads: usize,
    /// Applied to the scores `q·kᵀ` (not to the bias).
    scale: f32,
    dropout: Option<DropoutMask>,
}

/// Raw output pointer shared by the parallel tasks.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: each task writes only blocks no other task writes (see the callers).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// A strided matrix operand or destination: element `(r, c)` at `ptr + r·rs + c·cs`.
#[derive(Clone, Copy)]
struct View {
    ptr: *const f32,
    rs: usize,
    cs: usize,
}

impl View {
    fn rows(ptr: *const f32, rs: usize) -> Self {
        View { ptr, rs, cs: 1 }
    }

    /// The transpose of a row-major matrix whose rows are `rs` apart.
    fn transposed(ptr: *const f32, rs: usize) -> Self {
        View { ptr, rs: 1, cs: rs }
    }
}

/// `dst = beta · lhs · rhs` (`m × k` by `k × n`), or `dst += …` when `accumulate`;
/// single-threaded: the tasks are the parallelism.
///
/// # Safety
/// Every view must cover its matrix; `dst` must be writable and not alias the operands.
#[allow(clippy::too_many_arguments)]
unsafe fn product(
    (m, n, k): (usize, usize, usize),
    dst: View,
    lhs: View,
    rhs: View,
    beta: f32,
    accumulate: bool,
) {
    gemm(
        m,
        n,
        k,
        dst.ptr as *mut f32,
        dst.cs as isize,
        dst.rs as isize,
        accumulate,
        lhs.ptr,
        lhs.cs as isize,
        lhs.rs as isize,
        rhs.ptr,
        rhs.cs as isize,
        rhs.rs as isize,
        if accumulate { 1.0 } else { 0.0 },
        beta,
        false,
        false,
        false,
        Parallelism::None,
    );
}

/// The shape facts of one call, checked once.
#[derive(Clone, Copy)]
struct Dims {
    batch: usize,
    seq: usize,
    /// Rows of `qkv` (and of the context).
    rows: usize,
    hidden: usize,
    head_size: usize,
}

/// One (text, head) block of the inputs: where its Q, K and V rows start in `qkv`.
#[derive(Clone, Copy)]
struct Block {
    text: usize,
    head: usize,
    len: usize,
    /// Offset of the text's first row plus the head's column offset, in `qkv`.
    base: usize,
}

impl SelfAttention {
    fn dims(&self, layout: &Layout) -> Result<Dims> {
        let (batch, seq, rows, three_h) = match self.rows {
            Rows::Padded => {
                let (batch, seq, three_h) = layout.shape().dims3()?;
                (batch, seq, batch * seq, three_h)
            }
            Rows::Packed { seq } => {
                let (rows, three_h) = layout.shape().dims2()?;
                (self.lengths.len(), seq, rows, three_h)
            }
        };
        let hidden = three_h / 3;
        let packed_rows = self.lengths.iter().sum::<usize>();
        if three_h % 3 != 0
            || hidden % self.heads != 0
            || self.lengths.len() != batch
            || self.lengths.iter().any(|&l| l > seq)
            || (matches!(self.rows, Rows::Packed { .. }) && rows != packed_rows)
        {
            candle_core::bail!(
                "training attention: qkv {:?}, {} heads, {} lengths",
                layout.shape(),
                self.heads,
                self.lengths.len()
            );
        }
        Ok(Dims {
            batch,
            seq,
            rows,
            hidden,
            head_size: hidden / self.heads,
        })
    }

    fn check_bias(&self, d: Dims, layout: &Layout) -> Result<()> {
        if layout.shape().dims() != [self.heads, d.seq, d.seq] {
            candle_core::bail!(
                "training attention: position bias {:?}, want ({}, {}, {})",
                layout.shape(),
                self.heads,
                d.seq,
                d.seq
            );
        }
        Ok(())
    }

    /// The row of `qkv` (and of the context) where `text` starts.
    fn first_row(&self, d: Dims, text: usize) -> usize {
        match self.rows {
            Rows::Padded => text * d.seq,
            Rows::Packed { .. } => self.starts[text],
        }
    }

    /// The shape of the context.
    fn out_shape(&self, d: Dims) -> Shape {
        match self.rows {
            Rows::Padded => Shape::from_dims(&[d.batch, d.seq, d.hidden]),
            Rows::Packed { .. } => Shape::from_dims(&[d.rows, d.hidden]),
        }
    }

    fn block(&self, d: Dims, text: usize, head: usize) -> Block {
        Block {
            text,
            head,
            len: self.lengths[text],
            base: self.first_row(d, text) * 3 * d.hidden + head * d.head_size,
        }
    }

    /// `probs ← softmax(bias + scale · q·kᵀ)` of one block (`len × len`), before dropout.
    ///
    /// # Safety
    /// `qkv` holds the whole input (every row), `bias` the whole `(heads, seq, seq)` one.
    unsafe fn probabilities(
        &self,
        qkv: &[f32],
        bias: Option<&[f32]>,
        d: Dims,
        b: Block,
        probs: &mut Vec<f32>,
    ) {
        let len = b.len;
        let three_h = 3 * d.hidden;
        probs.resize(len * len, 0.0);
        if let Some(bias) = bias {
            let block = &bias[b.head * d.seq * d.seq..];
            for (i, row) in probs.chunks_exact_mut(len).enumerate() {
                row.copy_from_slice(&block[i * d.seq..i * d.seq + len]);
            }
        }
        let q = View::rows(qkv.as_ptr().add(b.base), three_h);
        let k_t = View::transposed(qkv.as_ptr().add(b.base + d.hidden), three_h);
        let dst = View::rows(probs.as_mut_ptr(), len);
        product(
            (len, len, d.head_size),
            dst,
            q,
            k_t,
            self.scale,
            bias.is_some(),
        );
        for row in probs.chunks_exact_mut(len) {
            softmax_in_place(row);
        }
    }

    /// Applies the dropout mask to a block's `len × len` matrix (probabilities or their
    /// gradient); element `(i, j)` is element `((text·heads + head)·seq + i)·seq + j` of the mask.
    fn drop_out(&self, d: Dims, b: Block, values: &mut [f32]) {
        if let Some(mask) = &self.dropout {
            let task = b.text * self.heads + b.head;
            for (i, row) in values.chunks_exact_mut(b.len).enumerate() {
                mask.apply((task * d.seq + i) * d.seq, row);
            }
        }
    }

    fn forward(&self, qkv: &[f32], bias: Option<&[f32]>, d: Dims) -> Vec<f32> {
        let mut out = vec![0f32; d.rows * d.hidden];
        let out_ptr = SendPtr(out.as_mut_ptr());
        (0..d.batch * self.heads)
            .into_par_iter()
            .for_each_init(Vec::new, |probs, task| {
                let b = self.block(d, task / self.heads, task % self.heads);
                if b.len > 0 {
                    // SAFETY: the views stay inside this text's rows of qkv and of the output,
                    // whose d-wide column block at head·d belongs to this task alone.
                    unsafe { self.forward_block(qkv, bias, d, b, probs, out_ptr) };
                }
            });
        out
    }

    /// # Safety
    /// As [`Self::probabilities`]; `out` holds the whole output.
    unsafe fn forward_block(
        &self,
        qkv: &[f32],
        bias: Option<&[f32]>,
        d: Dims,
        b: Block,
        probs: &mut Vec<f32>,
        out: SendPtr,
    ) {
        let len = b.len;
        self.probabilities(qkv, bias, d, b, probs);
        self.drop_out(d, b, probs);
        let v = View::rows(qkv.as_ptr().add(b.base + 2 * d.hidden), 3 * d.hidden);
        let p = View::rows(probs.as_ptr(), len);
        let row0 = self.first_row(d, b.text) * d.hidden + b.head * d.head_size;
        let dst = View::rows(out.0.add(row0), d.hidden);
        product((len, d.head_size, len), dst, p, v, 1.0, false);
    }
}

impl CustomOp1 for SelfAttention {
    fn name(&self) -> &'static str {
        "attune-train-attention"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = contiguous(storage, layout, "training attention")?;
        let d = self.dims(layout)?;
        let out = self.forward(qkv, None, d);
        Ok((CpuStorage::F32(out), self.out_shape(d)))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let backward = Backward { op: self.clone() };
        Ok(Some(arg.apply_op2_no_bwd(&grad.contiguous()?, &backward)?))
    }
}

impl CustomOp2 for SelfAttention {
    fn name(&self) -> &'static str {
        "attune-train-attention-with-bias"
    }

    fn cpu_fwd(
        &self,
        qkv: &CpuStorage,
        qkv_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let qkv = contiguous(qkv, qkv_layout, "training attention")?;
        let bias_values = contiguous(bias, bias_layout, "training attention bias")?;
        let d = self.dims(qkv_layout)?;
        self.check_bias(d, bias_layout)?;
        let out = self.forward(qkv, Some(bias_values), d);
        Ok((CpuStorage::F32(out), self.out_shape(d)))
    }

    fn bwd(
        &self,
        qkv: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let backward = Backward { op: self.clone() };
        // One output holds both gradients: d qkv, then d bias.
        let both = Tensor::apply_op3_no_bwd(qkv, bias, &grad.contiguous()?, &backward)?;
        let n = qkv.elem_count();
        let d_qkv = both.narrow(0, 0, n)?.reshape(qkv.shape())?;
        let d_bias = both
            .narrow(0, n, bias.elem_count())?
            .reshape(bias.shape())?;
        Ok((Some(d_qkv), Some(d_bias)))
    }
}

/// The backward pass of [`SelfAttention`]. Per block, with `P` the probabilities, `M` the
/// dropout factors and `O = (P∘M)·V`: `dV = (P∘M)ᵀ·dO`, `dP = (dO·Vᵀ)∘M`,
/// `dS = P∘(dP − rowsum(P∘dP))`, `dQ = scale·dS·K`, `dK = scale·dSᵀ·Q`, and the bias gradient
/// is `dS` summed over the texts.
struct Backward {
    op: SelfAttention,
}

/// Per-task scratch of the backward pass.
#[derive(Default)]
struct Scratch {
    probs: Vec<f32>,
    dropped: Vec<f32>,
    grad: Vec<f32>,
}

impl Backward {
    /// `d qkv` (and `d bias` after it, flat, when there is a bias).
    fn run(&self, qkv: &[f32], bias: Option<&[f32]>, g: &[f32], d: Dims) -> Result<Vec<f32>> {
        let op = &self.op;
        if g.len() != d.rows * d.hidden {
            candle_core::bail!(
                "training attention backward: gradient of {} values",
                g.len()
            );
        }
        let bias_len = bias.map_or(0, |_| op.heads * d.seq * d.seq);
        let mut out = vec![0f32; qkv.len() + bias_len];
        let out_ptr = SendPtr(out.as_mut_ptr());
        // SAFETY (both branches): a task writes only its head's columns of d qkv (of its text,
        // or of every text) and only its head's block of d bias.
        match bias {
            None => (0..d.batch * op.heads).into_par_iter().for_each_init(
                Scratch::default,
                |s, task| {
                    let b = op.block(d, task / op.heads, task % op.heads);
                    if b.len > 0 {
                        unsafe { self.block(qkv, None, g, d, b, s, out_ptr) };
                    }
                },
            ),
            // Heads in parallel, texts in turn: each head's bias gradient has one writer.
            Some(bias_values) => (0..op.heads)
                .into_par_iter()
                .for_each_init(Scratch::default, |s, head| unsafe {
                    self.head_with_bias(qkv, bias_values, g, d, head, s, out_ptr)
                }),
        }
        Ok(out)
    }

    /// Every text's block of `head`, and the head's bias gradient: `dS` summed over the texts.
    ///
    /// # Safety
    /// As [`Self::block`]; `out` holds d qkv followed by d bias, and no other task writes this
    /// head's columns or bias block.
    #[allow(clippy::too_many_arguments)]
    unsafe fn head_with_bias(
        &self,
        qkv: &[f32],
        bias: &[f32],
        g: &[f32],
        d: Dims,
        head: usize,
        s: &mut Scratch,
        out: SendPtr,
    ) {
        let d_bias = out.0.add(qkv.len() + head * d.seq * d.seq);
        for text in 0..d.batch {
            let b = self.op.block(d, text, head);
            if b.len == 0 {
                continue;
            }
            self.block(qkv, Some(bias), g, d, b, s, out);
            for (i, row) in s.grad.chunks_exact(b.len).enumerate() {
                let dst = std::slice::from_raw_parts_mut(d_bias.add(i * d.seq), b.len);
                for (x, ds) in dst.iter_mut().zip(row) {
                    *x += ds;
                }
            }
        }
    }

    /// The gradient of one block into `out`; leaves `dS` in `s.grad`.
    ///
    /// # Safety
    /// `qkv`, `bias`, `g` and `out` hold whole inputs and output; no other task writes this
    /// block's columns.
    #[allow(clippy::too_many_arguments)]
    unsafe fn block(
        &self,
        qkv: &[f32],
        bias: Option<&[f32]>,
        g: &[f32],
        d: Dims,
        b: Block,
        s: &mut Scratch,
        out: SendPtr,
    ) {
        let op = &self.op;
        let len = b.len;
        let (h, three_h, hs) = (d.hidden, 3 * d.hidden, d.head_size);
        op.probabilities(qkv, bias, d, b, &mut s.probs);
        let dropped: &[f32] = if op.dropout.is_some() {
            s.dropped.clear();
            s.dropped.extend_from_slice(&s.probs);
            op.drop_out(d, b, &mut s.dropped);
            &s.dropped
        } else {
            &s.probs
        };
        let at = |offset: usize| qkv.as_ptr().add(b.base + offset);
        let out_at = |offset: usize| out.0.add(b.base + offset) as *const f32;
        let d_out = View::rows(g.as_ptr().add(op.first_row(d, b.text) * h + b.head * hs), h);
        // dV = (P∘M)ᵀ · dO
        let p_t = View::transposed(dropped.as_ptr(), len);
        product(
            (len, hs, len),
            View::rows(out_at(2 * h), three_h),
            p_t,
            d_out,
            1.0,
            false,
        );
        // dP = (dO · Vᵀ) ∘ M
        s.grad.resize(len * len, 0.0);
        let dp = View::rows(s.grad.as_mut_ptr(), len);
        product(
            (len, len, hs),
            dp,
            d_out,
            View::transposed(at(2 * h), three_h),
            1.0,
            false,
        );
        // dS = P ∘ (dP − rowsum(P ∘ dP)), in place of dP.
        op.drop_out(d, b, &mut s.grad);
        for (dp, p) in s.grad.chunks_exact_mut(len).zip(s.probs.chunks_exact(len)) {
            let dot: f32 = dp.iter().zip(p).map(|(a, b)| a * b).sum();
            for (x, p) in dp.iter_mut().zip(p) {
                *x = p * (*x - dot);
            }
        }
        // dQ = scale · dS · K;  dK = scale · dSᵀ · Q
        let ds = View::rows(s.grad.as_ptr(), len);
        let ds_t = View::transposed(s.grad.as_ptr(), len);
        let k = View::rows(at(h), three_h);
        let q = View::rows(at(0), three_h);
        product(
            (len, hs, len),
            View::rows(out_at(0), three_h),
            ds,
            k,
            op.scale,
            false,
        );
        product(
            (len, hs, len),
            View::rows(out_at(h), three_h),
            ds_t,
            q,
            op.scale,
            false,
        );
    }
}

impl CustomOp2 for Backward {
    fn name(&self) -> &'static str {
        "attune-train-attention-backward"
    }

    fn cpu_fwd(
        &self,
        qkv: &CpuStorage,
        qkv_layout: &Layout,
        g: &CpuStorage,
        g_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let qkv = contiguous(qkv, qkv_layout, "training attention backward")?;
        let g = contiguous(g, g_layout, "training attention backward gradient")?;
        let d = self.op.dims(qkv_layout)?;
        let out = self.run(qkv, None, g, d)?;
        Ok((CpuStorage::F32(out), qkv_layout.shape().clone()))
    }
}

impl candle_core::CustomOp3 for Backward {
    fn name(&self) -> &'static str {
        "attune-train-attention-backward-with-bias"
    }

    fn cpu_fwd(
        &self,
        qkv: &CpuStorage,
        qkv_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
        g: &CpuStorage,
        g_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let qkv = contiguous(qkv, qkv_layout, "training attention backward")?;
        let bias_values = contiguous(bias, bias_layout, "training attention backward bias")?;
        let g = contiguous(g, g_layout, "training attention backward gradient")?;
        let d = self.op.dims(qkv_layout)?;
        self.op.check_bias(d, bias_layout)?;
        let out = self.run(qkv, Some(bias_values), g, d)?;
        let n = out.len();
        Ok((CpuStorage::F32(out), Shape::from_dims(&[n])))
    }
}

/// Multi-head self-attention over a fused projection `qkv` (Q, K, V side by side; f32 on the
/// CPU) of texts with `lengths` real tokens laid out as `rows` says (`(batch, seq, 3·hidden)`
/// right-padded, or `(Σ lengths, 3·hidden)` packed), with an optional additive position bias
/// `(heads, seq, seq)`, `dropout` on the probabilities (drawn from the pass's context when
/// training) and a fused backward pass (to `qkv` and the bias). Returns the context in the same
/// layout, `hidden` wide (zero at padding rows). `scale` multiplies the scores `q·kᵀ`, not the
/// bias.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    qkv: &Tensor,
    position_bias: Option<&Tensor>,
    lengths: &[usize],
    rows: Rows,
    heads: usize,
    scale: f32,
    dropout: crate::layers::Dropout,
    mode: crate::layers::Mode<'_>,
) -> Result<Tensor> {
    let mask = dropout.train_mask(mode);
    self_attention(qkv, position_bias, lengths, rows, heads, scale, mask)
}

/// [`attention`] with the dropout mask given.
pub(crate) fn self_attention(
    qkv: &Tensor,
    position_bias: Option<&Tensor>,
    lengths: &[usize],
    rows: Rows,
    heads: usize,
    scale: f32,
    dropout: Option<DropoutMask>,
) -> Result<Tensor> {
    let starts = match rows {
        Rows::Padded => Vec::new(),
        Rows::Packed { .. } => lengths
            .iter()
            .scan(0, |next, &len| {
                let start = *next;
                *next += len;
                Some(start)
            })
            .collect(),
    };
    let op = SelfAttention {
        lengths: Arc::new(lengths.to_vec()),
        starts: Arc::new(starts),
        rows,
        heads,
        scale,
        dropout,
    };
    let qkv = qkv.contiguous()?;
    match position_bias {
        None => qkv.apply_op1(op),
        Some(bias) => qkv.apply_op2(&bias.contiguous()?, op),
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Var, D};

    use super::*;
    use crate::kernels::tests::max_abs_diff;

    /// The composite path's attention over `qkv`, as `BertLayer::forward` computes it.
    fn composite(
        qkv: &Tensor,
        bias: Option<&Tensor>,
        lengths: &[usize],
        heads: usize,
        scale: f32,
        dropout: Option<DropoutMask>,
    ) -> Tensor {
        let (b, s, three_h) = qkv.dims3().unwrap();
        let h = three_h / 3;
        let split = |t: Tensor| {
            t.reshape((b, s, heads, h / heads))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let q = split((qkv.narrow(2, 0, h).unwrap() * scale as f64).unwrap());
        let k = split(qkv.narrow(2, h, h).unwrap());
        let v = split(qkv.narrow(2, 2 * h, h).unwrap());
        let mask: Vec<f32> = lengths
            .iter()
            .flat_map(|&l| (0..s).map(move |j| if j < l { 0.0 } else { f32::MIN }))
            .collect();
        let mask = Tensor::from_vec(mask, (b, 1, 1, s), qkv.device()).unwrap();
        let mut scores = q.matmul(&k.t().unwrap()).unwrap();
        if let Some(bias) = bias {
            scores = scores.broadcast_add(&bias.unsqueeze(0).unwrap()).unwrap();
        }
        let probs = crate::train_kernels::attention_probs(&scores, &mask, dropout).unwrap();
        probs
            .matmul(&v)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b, s, h))
            .unwrap()
    }

    /// 1 at real rows, 0 at padding rows, shaped `(b, s, 1)`.
    fn real_rows(lengths: &[usize], s: usize) -> Tensor {
        let rows: Vec<f32> = lengths
            .iter()
            .flat_map(|&l| (0..s).map(move |i| if i < l { 1.0 } else { 0.0 }))
            .collect();
        Tensor::from_vec(rows, (lengths.len(), s, 1), &Device::Cpu).unwrap()
    }

    #[test]
    fn fused_attention_matches_the_composite_path_in_values_and_gradients() {
        let dev = Device::Cpu;
        let (heads, s, h) = (3, 9, 12);
        let lengths = [9, 4, 0, 1];
        let b = lengths.len();
        let scale = 1.0 / ((h / heads) as f32).sqrt();
        let qkv =
            Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, s, 3 * h), &dev).unwrap()).unwrap();
        let bias =
            Var::from_tensor(&Tensor::randn(0f32, 1.0, (heads, s, s), &dev).unwrap()).unwrap();
        let weights = Tensor::randn(0f32, 1.0, (b, s, h), &dev).unwrap();
        let rows = real_rows(&lengths, s);
        for with_bias in [false, true] {
            for dropout in [None, Some(DropoutMask::new(0x5eed, 0.3))] {
                let case = format!("bias {with_bias}, dropout {}", dropout.is_some());
                let bias_arg = with_bias.then_some(bias.as_tensor());
                let fused = self_attention(
                    qkv.as_tensor(),
                    bias_arg,
                    &lengths,
                    Rows::Padded,
                    heads,
                    scale,
                    dropout,
                )
                .unwrap();
                let want = composite(qkv.as_tensor(), bias_arg, &lengths, heads, scale, dropout)
                    .broadcast_mul(&rows)
                    .unwrap();
                assert!(max_abs_diff(&fused, &want) < 1e-5, "values, {case}");

                let grads = |out: &Tensor| {
                    let loss = (out * &weights).unwrap().broadcast_mul(&rows).unwrap();
                    loss.sum_all().unwrap().backward().unwrap()
                };
                let (got, want) = (grads(&fused), grads(&want));
                let mut vars = vec![qkv.as_tensor()];
                if with_bias {
                    vars.push(bias.as_tensor());
                }
                for var in vars {
                    let (got, want) = (got.get(var).unwrap(), want.get(var).unwrap());
                    let size = crate::kernels::tests::max_abs(want);
                    assert!(size > 0.1, "the test exercises real gradients ({case})");
                    let diff = max_abs_diff(got, want);
                    assert!(diff < 1e-5 * size.max(1.0), "gradients, {case}: {diff}");
                }
            }
        }
    }

    /// The rows of each text's real tokens, one text after another (the packed layout).
    fn real_row_ids(lengths: &[usize], s: usize) -> Tensor {
        let ids: Vec<u32> = lengths
            .iter()
            .enumerate()
            .flat_map(|(t, &l)| (0..l).map(move |i| (t * s + i) as u32))
            .collect();
        Tensor::new(ids, &Device::Cpu).unwrap()
    }

    #[test]
    fn packed_rows_give_the_padded_rows_values_and_gradients() {
        let dev = Device::Cpu;
        let (heads, s, h) = (2, 7, 8);
        let lengths = [7, 3, 0, 5];
        let b = lengths.len();
        let ids = real_row_ids(&lengths, s);
        let qkv =
            Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, s, 3 * h), &dev).unwrap()).unwrap();
        let bias =
            Var::from_tensor(&Tensor::randn(0f32, 1.0, (heads, s, s), &dev).unwrap()).unwrap();
        let weights = Tensor::randn(0f32, 1.0, (b * s, h), &dev).unwrap();
        let packed_weights = weights.index_select(&ids, 0).unwrap();
        for dropout in [None, Some(DropoutMask::new(11, 0.25))] {
            let padded = self_attention(
                qkv.as_tensor(),
                Some(bias.as_tensor()),
                &lengths,
                Rows::Padded,
                heads,
                0.5,
                dropout,
            )
            .unwrap()
            .reshape((b * s, h))
            .unwrap();
            let packed_qkv = qkv
                .as_tensor()
                .reshape((b * s, 3 * h))
                .unwrap()
                .index_select(&ids, 0)
                .unwrap();
            let packed = self_attention(
                &packed_qkv,
                Some(bias.as_tensor()),
                &lengths,
                Rows::Packed { seq: s },
                heads,
                0.5,
                dropout,
            )
            .unwrap();
            assert_eq!(packed.dims(), [15, h]);
            let want = padded.index_select(&ids, 0).unwrap();
            assert!(max_abs_diff(&packed, &want) < 1e-6, "values");
            let grads = |loss: Tensor| loss.sum_all().unwrap().backward().unwrap();
            let got = grads((&packed * &packed_weights).unwrap());
            let want = grads((&want * &packed_weights).unwrap());
            for var in [qkv.as_tensor(), bias.as_tensor()] {
                let diff = max_abs_diff(got.get(var).unwrap(), want.get(var).unwrap());
                assert!(diff < 1e-5, "gradients: {diff}");
            }
        }
        let short = Tensor::zeros((14, 3 * h), DType::F32, &dev).unwrap();
        let refused = self_attention(
            &short,
            None,
            &lengths,
            Rows::Packed { seq: s },
            heads,
            1.0,
            None,
        );
        assert!(refused.is_err(), "rows must add up to the lengths");
    }

    #[test]
    fn dropout_drops_probabilities_not_whole_rows() {
        let dev = Device::Cpu;
        let qkv = Tensor::randn(0f32, 1.0, (1, 16, 3 * 8), &dev).unwrap();
        let plain = self_attention(&qkv, None, &[16], Rows::Padded, 2, 0.5, None).unwrap();
        let dropped = self_attention(
            &qkv,
            None,
            &[16],
            Rows::Padded,
            2,
            0.5,
            Some(DropoutMask::new(7, 0.5)),
        )
        .unwrap();
        let differs = (plain - &dropped).unwrap().abs().unwrap().gt(1e-6).unwrap();
        let share = differs
            .to_dtype(DType::F32)
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(share > 0.9, "dropout changed {share} of the context");
        assert!(dropped.max_keepdim(D::Minus1).is_ok());
    }

    #[test]
    fn mismatched_lengths_are_refused() {
        let qkv = Tensor::zeros((2, 4, 12), DType::F32, &Device::Cpu).unwrap();
        assert!(self_attention(&qkv, None, &[4], Rows::Padded, 2, 1.0, None).is_err());
        assert!(self_attention(&qkv, None, &[4, 5], Rows::Padded, 2, 1.0, None).is_err());
        assert!(self_attention(&qkv, None, &[4, 4], Rows::Padded, 3, 1.0, None).is_err());
        let bias = Tensor::zeros((2, 4, 5), DType::F32, &Device::Cpu).unwrap();
        assert!(self_attention(&qkv, Some(&bias), &[4, 4], Rows::Padded, 2, 1.0, None).is_err());
    }
}
