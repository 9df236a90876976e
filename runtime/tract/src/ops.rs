//! Ember's own tract ops for the graph's contrib nodes: `MatMulNBits` (bits 8 and 4) and
//! `GatherBlockQuantized` (bits 8) that read their weights in place from the image's mapping
//! instead of copying them into tract tensors; and the load-time rewrites that give one
//! matmul node more of a layer's work ([`fuse_matmuls`], [`fuse_gated_units`],
//! [`fuse_residual_adds`], [`fuse_rms_norms`]), each computing what the nodes it replaces
//! computed, bit for bit.
//!
//! tract's ONNX parser calls a plain `fn` per node, so the mapping reaches the builders through
//! [`MappedTensors::install`], a thread-local set for the duration of one parse.

use crate::graph::{float_attr, int_attr, ints_attr};
use crate::kernels::{Kernel, QuantizedRows};
use crate::workers::Workers;
use ember_core::blocks::{BLOCK, ROW_GROUP, group_scales, int4, int8, scale_bytes};
use memmap2::Mmap;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use tract_onnx::model::ParsingContext;
use tract_onnx::pb::{GraphProto, NodeProto};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::tract_core::tract_linalg::routines::{self, Func};

/// Initializers whose bytes stay in the mapping, by name, with what the ops need to run.
#[derive(Debug, Clone)]
pub struct MappedTensors {
    /// The image's mapping.
    pub map: Arc<Mmap>,
    /// Byte range and dimensions of each mapped initializer within `map`.
    pub tensors: HashMap<String, (Range<usize>, Vec<usize>)>,
    /// Threads the matmuls and attention split their work over.
    pub workers: Arc<Workers>,
    /// Dot-product kernel.
    pub kernel: Kernel,
}

thread_local! {
    static MAPPED: RefCell<Option<MappedTensors>> = const { RefCell::new(None) };
}

impl MappedTensors {
    /// Makes `self` visible to the op builders on this thread while `parse` runs.
    pub fn install<T>(self, parse: impl FnOnce() -> T) -> T {
        MAPPED.with(|m| *m.borrow_mut() = Some(self));
        let result = parse();
        MAPPED.with(|m| *m.borrow_mut() = None);
        result
    }

    pub(crate) fn with<T>(f: impl FnOnce(&MappedTensors) -> TractResult<T>) -> TractResult<T> {
        MAPPED.with(|m| match &*m.borrow() {
            Some(mapped) => f(mapped),
            None => bail!("Ember's int8 ops can only be built while an image is being loaded"),
        })
    }

    /// The mapped bytes and dimensions of initializer `name`.
    fn tensor(&self, name: &str) -> TractResult<&(Range<usize>, Vec<usize>)> {
        self.tensors
            .get(name)
            .with_context(|| format!("initializer {name:?} is not in the image's weights"))
    }

    /// The mapped bytes of initializer `name`, checked to be `len` long.
    fn range(&self, name: &str, len: usize) -> TractResult<Range<usize>> {
        let (range, _) = self.tensor(name)?;
        ensure!(
            range.len() == len,
            "initializer {name:?} has {} bytes, the op needs {len}",
            range.len()
        );
        Ok(range.clone())
    }
}

/// Reads a 4-byte-aligned little-endian f32 array in place.
fn f32s(bytes: &[u8]) -> &[f32] {
    #[cfg(not(target_endian = "little"))]
    compile_error!("Ember images store little-endian f32 scales");
    // SAFETY: every bit pattern is a valid f32; `align_to` only yields the aligned middle,
    // and callers pass ranges checked to be 4-byte aligned (`MappedMatrix::new`), so it is all
    // of it.
    let (head, values, _) = unsafe { bytes.align_to::<f32>() };
    debug_assert!(head.is_empty());
    values
}

/// A `rows × cols` matrix read in place from the mapping, in one of the block formats of
/// [`ember_core::blocks`]: [`int8`] or [`int4`] (with its minimums), the rows in interleaved
/// groups of 16, the last group padded.
#[derive(Debug, Clone)]
pub struct MappedMatrix {
    map: Arc<Mmap>,
    quants: Range<usize>,
    scales: Range<usize>,
    /// The minimums of a 4-bit matrix.
    mins: Option<Range<usize>>,
    rows: usize,
    cols: usize,
}

// Equality must identify the weights: tract merges sibling nodes whose ops compare equal.
impl PartialEq for MappedMatrix {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.map, &other.map)
            && self.quants == other.quants
            && self.scales == other.scales
            && self.mins == other.mins
            && (self.rows, self.cols) == (other.rows, other.cols)
    }
}
impl Eq for MappedMatrix {}

impl MappedMatrix {
    /// The initializers `quants`, `scales` and, for a 4-bit matrix, `mins` of a `rows × cols`
    /// matrix (the graph gives their standard lengths; the image stores whole groups of rows),
    /// checked for length, for lying within the mapping and for 4-byte alignment.
    fn new(
        m: &MappedTensors,
        quants: &str,
        scales: &str,
        mins: Option<&str>,
        rows: usize,
        cols: usize,
    ) -> TractResult<Self> {
        // The image stores whole groups of rows: padded arrays.
        let (c, r) = (cols as u64, rows as u64);
        let stored_quants = match mins {
            Some(_) => int4::quant_bytes(c, r),
            None => int8::quant_bytes(c, r),
        } as usize;
        let stored_scales = scale_bytes(c, r) as usize;
        let per_value = if mins.is_some() { 2 } else { 1 };
        let quants = m.range(quants, rows * cols / per_value)?;
        let quants = quants.start..quants.start + stored_quants;
        let blocks = |name: &str| -> TractResult<Range<usize>> {
            let range = m.range(name, rows * cols / BLOCK * 4)?;
            let range = range.start..range.start + stored_scales;
            ensure!(
                quants.end <= range.start && range.end <= m.map.len(),
                "the groups of rows at {quants:?} and their blocks' values at {range:?} do not fit the image"
            );
            ensure!(
                range.start.is_multiple_of(4) && (m.map.as_ptr() as usize).is_multiple_of(4),
                "f32 values at offset {} are not 4-byte aligned",
                range.start
            );
            Ok(range)
        };
        Ok(MappedMatrix {
            map: Arc::clone(&m.map),
            scales: blocks(scales)?,
            mins: mins.map(blocks).transpose()?,
            quants,
            rows,
            cols,
        })
    }

    /// The 16 dot products of group `group` with each activation row of `a`, row after row.
    fn dot_group(&self, kernel: Kernel, group: usize, a: &QuantizedRows, out: &mut [f32]) {
        let blocks = group_scales(self.cols);
        let scales = &f32s(&self.map[self.scales.clone()])[group * blocks..][..blocks];
        match &self.mins {
            None => {
                let bytes = int8::group_bytes(self.cols);
                let quants = &self.map[self.quants.clone()][group * bytes..][..bytes];
                kernel.dot_group_rows(quants, scales, a, out);
            }
            Some(mins) => {
                let bytes = int4::group_bytes(self.cols);
                let quants = &self.map[self.quants.clone()][group * bytes..][..bytes];
                let mins = &f32s(&self.map[mins.clone()])[group * blocks..][..blocks];
                for (r, out) in out.chunks_exact_mut(ROW_GROUP).enumerate() {
                    out.copy_from_slice(&kernel.dot_group4(quants, scales, mins, a, r));
                }
            }
        }
    }

    /// Row `row` of an int8 matrix, dequantized.
    fn dequantized_row(&self, row: usize) -> impl Iterator<Item = f32> + '_ {
        int8::row(
            &self.map[self.quants.clone()],
            f32s(&self.map[self.scales.clone()]),
            self.cols,
            row,
        )
    }
}

/// `y_i = x · W_iᵀ` for int8 or 4-bit matrices `W_i` (`n_i` rows of `k`) held in the mapping,
/// with `x` quantized to int8: one output per matrix. Several matrices over the same input (a
/// layer's query, key and value projections; its gate and up projections) share one
/// quantization of the input and one split of their rows across the threads. A gated pair
/// (gate `G`, up `U`, of one shape) gives one output instead, `SiLU(x · Gᵀ) ⊙ (x · Uᵀ)`, made
/// where each thread computed its rows.
#[derive(Debug, Clone)]
pub struct Int8MatMul {
    weights: Vec<MappedMatrix>,
    /// The two matrices are a gate and an up projection, combined as above.
    gated: bool,
    /// A second input of the output's shape is added to the one output (a residual
    /// connection: `r + x · Wᵀ`).
    residual: bool,
    /// With this epsilon, `x` is first RMS-normalized row by row and scaled by a last input,
    /// the norm's weights (as tract's `RmsNorm` and a `Mul` would: the same routine).
    rms_norm: Option<f32>,
    workers: Arc<Workers>,
    kernel: Kernel,
}

impl PartialEq for Int8MatMul {
    fn eq(&self, other: &Self) -> bool {
        let epsilon = |op: &Self| op.rms_norm.map(f32::to_bits);
        (&self.weights, self.gated, self.residual, epsilon(self))
            == (&other.weights, other.gated, other.residual, epsilon(other))
    }
}
impl Eq for Int8MatMul {}

/// The node type [`fuse_matmuls`] writes (domain `ai.ember`): inputs `x`, then each matrix's
/// quants and scales (and, with `bits` 4, minimums), then with `residual` the tensor added to
/// the one output ([`fuse_residual_adds`]), then with `epsilon` the weights of the RMSNorm
/// applied to `x` first ([`fuse_rms_norms`]); attributes `K`, `bits`, `N` (one per matrix),
/// `gated` (two matrices, one output: [`fuse_gated_units`]), `residual` and `epsilon`; one
/// output per matrix otherwise.
pub const FUSED_MATMULS: &str = "EmberInt8MatMuls";

/// A chunk's share of one output: its groups of 16 columns from `first_group`, as a slice of
/// every activation row; for a gated output, room for the up projection's values there.
struct Share<'a> {
    output: usize,
    first_group: usize,
    groups: usize,
    rows: Vec<&'a mut [f32]>,
    up: Vec<f32>,
}

impl Int8MatMul {
    /// Values per input row.
    fn cols(&self) -> usize {
        self.weights.first().map_or(0, |w| w.cols)
    }

    /// The outputs: each one's columns and the matrices whose rows make them (the gate and up
    /// matrices of a gated op, each matrix alone otherwise).
    fn outputs(&self) -> Vec<(usize, &[MappedMatrix])> {
        if self.gated {
            vec![(self.weights[0].rows, &self.weights[..])]
        } else {
            self.weights
                .iter()
                .map(|w| (w.rows, std::slice::from_ref(w)))
                .collect()
        }
    }

    /// `x` quantized (RMS-normalized first with `norm`'s weights and epsilon), its rows split
    /// across the threads when there are several.
    fn quantize(&self, x: &[f32], norm: Option<(&[f32], f32)>) -> TractResult<QuantizedRows> {
        let cols = self.cols();
        let rms_norm = norm.map(|_| routines::rms_norm_f32()).transpose()?;
        // Rows normalized into `y` (as long as `x`), when there is a norm.
        let normalize = |x: &[f32], y: &mut [f32]| {
            if let (Some(rms_norm), Some((weights, epsilon))) = (rms_norm, norm) {
                y.copy_from_slice(x);
                for row in y.chunks_exact_mut(cols.max(1)) {
                    rms_norm(row, epsilon);
                    for (y, w) in row.iter_mut().zip(weights) {
                        *y *= w;
                    }
                }
            }
        };
        // Buffers are allocated here, on the calling thread: memory a worker allocates and
        // frees stays in its own allocator arena (RssAnon).
        let mut normal = vec![0f32; if norm.is_some() { x.len() } else { 0 }];
        let rows = x.len() / cols.max(1);
        if rows < 2 {
            normalize(x, &mut normal);
            let x = if norm.is_some() { &normal[..] } else { x };
            return Ok(QuantizedRows::new(x, cols));
        }
        let mut a = QuantizedRows::zeroed(rows, cols);
        let (per_chunk, blocks) = (self.workers.chunk_size(rows), cols / BLOCK);
        let mut normals = normal.chunks_mut(per_chunk * cols);
        let parts: Vec<_> = x
            .chunks(per_chunk * cols)
            .zip(a.quants.chunks_mut(per_chunk * cols))
            .zip(a.scales.chunks_mut(per_chunk * blocks))
            .zip(a.sums.chunks_mut(per_chunk * blocks))
            .map(|(((x, quants), scales), sums)| {
                let normal = normals.next().unwrap_or_default();
                Mutex::new((x, normal, quants, scales, sums))
            })
            .collect();
        self.workers.run(parts.len(), &|chunk| {
            let mut part = parts[chunk].lock().unwrap_or_else(|e| e.into_inner());
            let (x, normal, quants, scales, sums) = &mut *part;
            normalize(x, normal);
            let x = if norm.is_some() { &normal[..] } else { x };
            QuantizedRows::quantize_blocks(x, quants, scales, sums);
        });
        drop(parts);
        Ok(a)
    }

    /// For `rows × k` inputs, each output's `rows × n` values; `base`, when given, holds the
    /// first output's starting values (a residual), to which its products are added; `norm`,
    /// when given, the weights of the RMSNorm applied to `x` first.
    pub fn compute(
        &self,
        x: &[f32],
        base: Option<Vec<f32>>,
        norm: Option<&[f32]>,
    ) -> TractResult<Vec<Vec<f32>>> {
        let norm = match (norm, self.rms_norm) {
            (Some(weights), Some(epsilon)) => {
                ensure!(
                    weights.len() == self.cols(),
                    "int8 matmul: {} norm weights for rows of {}",
                    weights.len(),
                    self.cols()
                );
                Some((weights, epsilon))
            }
            (None, None) => None,
            _ => bail!("int8 matmul: norm weights and epsilon must come together"),
        };
        let a = self.quantize(x, norm)?;
        let rows = a.rows();
        let outputs = self.outputs();
        let silu = if self.gated {
            Some(Func::Silu.ew_f32()?)
        } else {
            None
        };
        // Work items: every output's groups of 16 columns, output after output; a chunk is a
        // run of them, each group's weights read once for all activation rows. Each chunk
        // writes its columns of the outputs in place: its share of every row.
        let groups: Vec<usize> = outputs.iter().map(|(n, _)| n.div_ceil(ROW_GROUP)).collect();
        let items: usize = groups.iter().sum();
        let per_chunk = self.workers.chunk_size(items);
        let chunks = items.div_ceil(per_chunk);
        let adding = base.is_some();
        let mut ys: Vec<Vec<f32>> = outputs.iter().map(|&(n, _)| vec![0f32; rows * n]).collect();
        if let (Some(base), Some(first)) = (base, ys.first_mut()) {
            ensure!(
                base.len() == first.len(),
                "int8 matmul: {} values to add to an output of {}",
                base.len(),
                first.len()
            );
            *first = base;
        }
        let mut shares: Vec<Vec<Share>> = (0..chunks).map(|_| Vec::new()).collect();
        let mut first_item = 0;
        for (output, (y, &groups)) in ys.iter_mut().zip(&groups).enumerate() {
            let n = outputs[output].0;
            let mut rests: Vec<&mut [f32]> = y.chunks_mut(n.max(1)).collect();
            for (chunk, share) in shares.iter_mut().enumerate() {
                let first = (chunk * per_chunk).max(first_item);
                let end = ((chunk + 1) * per_chunk).min(first_item + groups);
                if first >= end {
                    continue;
                }
                let (first, end) = (first - first_item, end - first_item);
                let width = (end * ROW_GROUP).min(n) - first * ROW_GROUP;
                let rows = rests
                    .iter_mut()
                    .map(|rest| {
                        let (piece, others) = std::mem::take(rest).split_at_mut(width);
                        *rest = others;
                        piece
                    })
                    .collect();
                share.push(Share {
                    output,
                    first_group: first,
                    groups: end - first,
                    rows,
                    up: vec![0.0; if self.gated { a.rows() * width } else { 0 }],
                });
            }
            first_item += groups;
        }
        // Buffers are allocated here, on the calling thread (see `quantize`).
        let shares: Vec<Mutex<(Vec<Share>, Vec<f32>)>> = shares
            .into_iter()
            .map(|shares| Mutex::new((shares, vec![0f32; ROW_GROUP * rows])))
            .collect();
        let failed = Mutex::new(None);
        self.workers.run(chunks, &|chunk| {
            let mut guard = shares[chunk].lock().unwrap_or_else(|e| e.into_inner());
            let (shares, sums) = &mut *guard;
            for share in shares.iter_mut() {
                let (n, matrices) = outputs[share.output];
                let width = share.rows.first().map_or(0, |r| r.len());
                let up = &mut share.up;
                for local in 0..share.groups {
                    let group = share.first_group + local;
                    let count = ROW_GROUP.min(n - group * ROW_GROUP);
                    matrices[0].dot_group(self.kernel, group, &a, sums);
                    for (row, sums) in share.rows.iter_mut().zip(sums.chunks_exact(ROW_GROUP)) {
                        let row = &mut row[local * ROW_GROUP..][..count];
                        if adding {
                            for (y, s) in row.iter_mut().zip(sums) {
                                *y += s;
                            }
                        } else {
                            row.copy_from_slice(&sums[..count]);
                        }
                    }
                    if let [_, up_matrix] = matrices {
                        up_matrix.dot_group(self.kernel, group, &a, sums);
                        for (row, sums) in
                            up.chunks_exact_mut(width).zip(sums.chunks_exact(ROW_GROUP))
                        {
                            row[local * ROW_GROUP..][..count].copy_from_slice(&sums[..count]);
                        }
                    }
                }
                if let Some(silu) = &silu {
                    for (gate, up) in share.rows.iter_mut().zip(up.chunks_exact(width)) {
                        if let Err(e) = silu.run(gate) {
                            failed
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .get_or_insert(e);
                        }
                        for (g, u) in gate.iter_mut().zip(up) {
                            *g *= u;
                        }
                    }
                }
            }
        });
        drop(shares);
        match failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(e) => Err(e.context("SiLU of the gate projection")),
            None => Ok(ys),
        }
    }
}

impl Op for Int8MatMul {
    fn name(&self) -> StaticName {
        "EmberInt8MatMul".into()
    }
    op_as_typed_op!();
}

impl EvalOp for Int8MatMul {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = inputs[0].cast_to::<f32>()?;
        let shape = x.shape();
        ensure!(
            shape.last() == Some(&self.cols()),
            "int8 matmul: input {shape:?} does not end in {}",
            self.cols()
        );
        ensure!(
            inputs.len() == 1 + usize::from(self.residual) + usize::from(self.rms_norm.is_some()),
            "int8 matmul: {} inputs",
            inputs.len()
        );
        let base = match inputs.get(1) {
            Some(base) if self.residual => Some(
                base.cast_to::<f32>()?
                    .try_as_plain_ram()?
                    .as_slice::<f32>()?
                    .to_vec(),
            ),
            _ => None,
        };
        let norm = match inputs.last() {
            Some(weights) if self.rms_norm.is_some() => Some(weights.cast_to::<f32>()?),
            _ => None,
        };
        let norm = match &norm {
            Some(weights) => Some(weights.try_as_plain_ram()?.as_slice::<f32>()?),
            None => None,
        };
        let outputs = self.compute(x.try_as_plain_ram()?.as_slice::<f32>()?, base, norm)?;
        outputs
            .into_iter()
            .zip(self.outputs())
            .map(|(y, (n, _))| {
                let mut out_shape: TVec<usize> = shape.into();
                *out_shape.last_mut().unwrap_or(&mut 0) = n;
                // Moved into the tensor, not copied.
                let y = tract_ndarray::ArrayD::from_shape_vec(&*out_shape, y)?;
                Ok(y.into_tensor().into_tvalue())
            })
            .collect()
    }
}

impl TypedOp for Int8MatMul {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            !inputs[0].shape.is_empty(),
            "int8 matmul needs an input of rank ≥ 1"
        );
        Ok(self
            .outputs()
            .iter()
            .map(|&(n, _)| {
                let mut shape: TVec<TDim> = inputs[0].shape.to_tvec();
                let last = shape.len() - 1;
                shape[last] = n.to_dim();
                f32::fact(&shape)
            })
            .collect())
    }
    as_op!();
}

impl Expansion for Int8MatMul {
    fn name(&self) -> StaticName {
        "EmberInt8MatMul".into()
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(self.outputs().len())
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_output_arity(outputs, self.outputs().len())?;
        for (output, (n, _)) in outputs.iter().zip(self.outputs()) {
            s.equals(&output.datum_type, f32::datum_type())?;
            let n = n.to_dim();
            s.given(&inputs[0].rank, move |s, rank| {
                let rank = rank as usize;
                s.equals(&output.rank, rank as i64)?;
                for axis in 0..rank.saturating_sub(1) {
                    s.equals(&output.shape[axis], &inputs[0].shape[axis])?;
                }
                s.equals(&output.shape[rank.saturating_sub(1)], n.clone())
            })?;
        }
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        // The matrices' initializers are read from the mapping, not wired.
        let extras = usize::from(self.residual) + usize::from(self.rms_norm.is_some());
        let mut used = vec![inputs[0]];
        used.extend_from_slice(&inputs[inputs.len() - extras..]);
        model.wire_node(prefix, self.clone(), &used)
    }
}

/// Builds [`Int8MatMul`] for a `com.microsoft.MatMulNBits` node with block 32 and weights in
/// the mapping: bits 8 without zero points, or bits 4 whose fourth input is, in an image, the
/// blocks' minimums (value = scale · q + min; `ember export-onnx` turns them into zero points);
/// no `g_idx` or bias.
pub fn build_matmul(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let k: usize = node.get_attr("K")?;
    let n: usize = node.get_attr("N")?;
    let bits: usize = node.get_attr_opt("bits")?.unwrap_or(4);
    let block_size: usize = node.get_attr("block_size")?;
    ensure!(
        (bits == 8 || bits == 4) && block_size == BLOCK && k.is_multiple_of(BLOCK),
        "MatMulNBits {:?}: Ember runs bits=8 or 4, block_size=32 (got bits={bits}, block_size={block_size}, K={k})",
        node.name
    );
    let inputs = if bits == 8 { 3 } else { 4 };
    ensure!(
        node.input.len() == inputs,
        "MatMulNBits {:?}: Ember runs bits=8 without zero points and bits=4 with an image's minimums; g_idx and bias are not supported",
        node.name
    );
    MappedTensors::with(|m| {
        let mins = node.input.get(3).map(String::as_str);
        let op = Int8MatMul {
            weights: vec![MappedMatrix::new(
                m,
                &node.input[1],
                &node.input[2],
                mins,
                n,
                k,
            )?],
            gated: false,
            residual: false,
            rms_norm: None,
            workers: Arc::clone(&m.workers),
            kernel: m.kernel,
        };
        Ok((expand(op), vec![]))
    })
}

/// Builds [`Int8MatMul`] for a [`FUSED_MATMULS`] node.
pub fn build_fused_matmuls(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let k: usize = node.get_attr("K")?;
    let bits: usize = node.get_attr("bits")?;
    let gated = node.get_attr_opt::<i64>("gated")?.unwrap_or(0) == 1;
    let residual = node.get_attr_opt::<i64>("residual")?.unwrap_or(0) == 1;
    let rms_norm: Option<f32> = node.get_attr_opt("epsilon")?;
    let ns: Vec<usize> = node.get_attr_tvec("N")?.into_vec();
    let per_matrix = if bits == 4 { 3 } else { 2 };
    let outputs = if gated { 1 } else { ns.len() };
    ensure!(
        (bits == 8 || bits == 4)
            && !ns.is_empty()
            && (!gated || (ns.len() == 2 && ns[0] == ns[1]))
            && (!residual || outputs == 1)
            && node.input.len()
                == 1 + per_matrix * ns.len()
                    + usize::from(residual)
                    + usize::from(rms_norm.is_some())
            && node.output.len() == outputs,
        "{FUSED_MATMULS} {:?}: bits, gated, residual, epsilon, inputs, outputs and N do not agree",
        node.name
    );
    MappedTensors::with(|m| {
        let weights = ns
            .iter()
            .zip(node.input[1..1 + per_matrix * ns.len()].chunks(per_matrix))
            .map(|(&n, inputs)| {
                let mins = inputs.get(2).map(String::as_str);
                MappedMatrix::new(m, &inputs[0], &inputs[1], mins, n, k)
            })
            .collect::<TractResult<_>>()?;
        let op = Int8MatMul {
            weights,
            gated,
            residual,
            rms_norm,
            workers: Arc::clone(&m.workers),
            kernel: m.kernel,
        };
        Ok((expand(op), vec![]))
    })
}

/// Rewrites `graph` so that `MatMulNBits` nodes reading the same input become one
/// [`FUSED_MATMULS`] node: one quantization of the input and one split of the work for a
/// layer's query, key and value projections, and for its gate and up projections.
pub fn fuse_matmuls(graph: &mut GraphProto) {
    let mut index = 0;
    while index < graph.node.len() {
        let first = &graph.node[index];
        if !mapped_matmul(first) {
            index += 1;
            continue;
        }
        let (input, k, bits) = (
            first.input[0].clone(),
            attr(first, "K"),
            attr(first, "bits"),
        );
        let siblings: Vec<usize> = (index..graph.node.len())
            .filter(|&i| {
                let n = &graph.node[i];
                mapped_matmul(n)
                    && n.input[0] == input
                    && attr(n, "K") == k
                    && attr(n, "bits") == bits
            })
            .collect();
        if siblings.len() < 2 {
            index += 1;
            continue;
        }
        let mut inputs = vec![input];
        let (mut outputs, mut ns) = (Vec::new(), Vec::new());
        for &i in &siblings {
            let n = &graph.node[i];
            inputs.extend_from_slice(&n.input[1..]);
            outputs.extend_from_slice(&n.output);
            ns.push(attr(n, "N").unwrap_or(0));
        }
        let fused = NodeProto {
            name: format!("{}.fused", graph.node[index].name),
            op_type: FUSED_MATMULS.into(),
            domain: "ai.ember".into(),
            input: inputs,
            output: outputs,
            attribute: vec![
                int_attr("K", k.unwrap_or(0)),
                int_attr("bits", bits.unwrap_or(0)),
                ints_attr("N", &ns),
            ],
            ..Default::default()
        };
        for &i in siblings.iter().skip(1).rev() {
            graph.node.remove(i);
        }
        graph.node[index] = fused;
        index += 1;
    }
}

/// Rewrites `graph` (after [`fuse_matmuls`]) so that each feed-forward unit's
/// `Mul(Mul(gate, Sigmoid(gate)), up)` is made by the node that computes `gate` and `up`: a
/// [`FUSED_MATMULS`] node of two matrices whose outputs feed only that pattern becomes
/// `gated`, with the product as its one output, and the three element-wise nodes go.
pub fn fuse_gated_units(graph: &mut GraphProto) {
    let is = |n: &NodeProto, op: &str, a: &str, b: &str| {
        n.op_type == op && n.output.len() == 1 && (n.input == [a, b] || n.input == [b, a])
    };
    let mut index = 0;
    while index < graph.node.len() {
        let node = &graph.node[index];
        let pair = node.op_type == FUSED_MATMULS
            && node.output.len() == 2
            && attr(node, "gated").is_none()
            && node
                .attribute
                .iter()
                .find(|a| a.name == "N")
                .is_some_and(|a| a.ints.len() == 2 && a.ints[0] == a.ints[1]);
        if !pair {
            index += 1;
            continue;
        }
        let (gate, up) = (node.output[0].clone(), node.output[1].clone());
        let found = (|| {
            let [sigmoid, silu] = readers(graph, &gate)[..] else {
                return None;
            };
            let (sigmoid, silu) = if graph.node[sigmoid].op_type == "Sigmoid" {
                (sigmoid, silu)
            } else {
                (silu, sigmoid)
            };
            let sigmoid_node = &graph.node[sigmoid];
            if sigmoid_node.op_type != "Sigmoid" || sigmoid_node.output.len() != 1 {
                return None;
            }
            let sigmoid_out = sigmoid_node.output[0].clone();
            if !is(&graph.node[silu], "Mul", &gate, &sigmoid_out)
                || readers(graph, &sigmoid_out) != [silu]
            {
                return None;
            }
            let silu_out = graph.node[silu].output[0].clone();
            let [product] = readers(graph, &silu_out)[..] else {
                return None;
            };
            (is(&graph.node[product], "Mul", &silu_out, &up) && readers(graph, &up) == [product])
                .then_some([sigmoid, silu, product])
        })();
        let Some(elementwise) = found else {
            index += 1;
            continue;
        };
        let product = graph.node[elementwise[2]].output[0].clone();
        let node = &mut graph.node[index];
        node.output = vec![product];
        node.attribute.push(int_attr("gated", 1));
        let mut doomed = elementwise;
        doomed.sort_unstable();
        for i in doomed.into_iter().rev() {
            graph.node.remove(i);
        }
        index += 1;
    }
}

/// Rewrites `graph` so that each `Add` of a residual and a single `MatMulNBits` output (a
/// layer's attention output and feed-forward down projections; not a bias, an initializer) is
/// made by the matmul: a
/// [`FUSED_MATMULS`] node of one matrix with the residual as its last input (`residual`), in the
/// `Add`'s place, writing the sum as its output.
pub fn fuse_residual_adds(graph: &mut GraphProto) {
    let mut index = 0;
    while index < graph.node.len() {
        let node = &graph.node[index];
        let single = mapped_matmul(node) && node.output.len() == 1;
        let product = node.output.first().cloned().unwrap_or_default();
        let add = match readers(graph, &product)[..] {
            [add]
                if single
                    && graph.node[add].op_type == "Add"
                    && graph.node[add].input.len() == 2
                    && graph.node[add].output.len() == 1
                    && graph.node[add]
                        .input
                        .iter()
                        .filter(|i| **i == product)
                        .count()
                        == 1 =>
            {
                add
            }
            _ => {
                index += 1;
                continue;
            }
        };
        let residual = graph.node[add]
            .input
            .iter()
            .find(|i| **i != product)
            .cloned()
            .unwrap_or_default();
        // A bias (Qwen2's) is an initializer of one row, not a residual of the product's shape.
        if graph.initializer.iter().any(|t| t.name == residual) {
            index += 1;
            continue;
        }
        let node = &graph.node[index];
        let mut inputs = node.input.clone();
        inputs.push(residual);
        let fused = NodeProto {
            name: format!("{}.residual", node.name),
            op_type: FUSED_MATMULS.into(),
            domain: "ai.ember".into(),
            input: inputs,
            output: graph.node[add].output.clone(),
            attribute: vec![
                int_attr("K", attr(node, "K").unwrap_or(0)),
                int_attr("bits", attr(node, "bits").unwrap_or(0)),
                ints_attr("N", &[attr(node, "N").unwrap_or(0)]),
                int_attr("residual", 1),
            ],
            ..Default::default()
        };
        // The Add comes later (it reads the product), and everything the matmul reads comes
        // earlier: the fused node takes the Add's place.
        graph.node[add] = fused;
        graph.node.remove(index);
    }
}

/// Rewrites `graph` (after the other fusions) so that the RMSNorm before each
/// [`FUSED_MATMULS`] node is applied by that node as it quantizes its input: the norm's
/// `Mul(x, x)`, `ReduceMean`, `Add` of epsilon, `Sqrt`, `Reciprocal`, `Mul` by `x` and `Mul` by
/// the weights (as [`crate::graph`] writes them), read by nothing else, go; the node reads `x`,
/// takes the weights as its last input and the epsilon as its `epsilon` attribute.
pub fn fuse_rms_norms(graph: &mut GraphProto) {
    let mut index = 0;
    while index < graph.node.len() {
        let node = &graph.node[index];
        let chain = if node.op_type == FUSED_MATMULS && attr(node, "epsilon").is_none() {
            rms_norm_before(graph, index)
        } else {
            None
        };
        let Some((doomed, x, weights, epsilon)) = chain else {
            index += 1;
            continue;
        };
        let node = &mut graph.node[index];
        node.input[0] = x;
        node.input.push(weights);
        node.attribute.push(float_attr("epsilon", epsilon));
        let removed = doomed.iter().filter(|&&i| i < index).count();
        let mut position = 0;
        graph.node.retain(|_| {
            position += 1;
            !doomed.contains(&(position - 1))
        });
        index = index - removed + 1;
    }
}

/// The RMSNorm whose output is the input of node `index` and nothing else's: its nodes, its
/// input, its weights' initializer and its epsilon.
fn rms_norm_before(graph: &GraphProto, index: usize) -> Option<(Vec<usize>, String, String, f32)> {
    let producer = |name: &str| {
        graph
            .node
            .iter()
            .position(|n| n.output.iter().any(|o| o == name))
    };
    let initializer = |name: &str| graph.initializer.iter().find(|t| t.name == name);
    // The node producing `name`, read by nothing else, if it is an `op` of two inputs.
    let only = |name: &str, op: &str, inputs: usize| {
        let at = producer(name)?;
        let node = &graph.node[at];
        (node.op_type == op && node.input.len() == inputs && readers(graph, name).len() == 1)
            .then_some(at)
    };
    let other = |node: usize, one: &str| {
        let inputs = &graph.node[node].input;
        inputs.iter().find(|i| *i != one).cloned()
    };
    let h = graph.node[index].input.first()?;
    let weighted = only(h, "Mul", 2)?;
    let weights = graph.node[weighted]
        .input
        .iter()
        .find(|i| initializer(i).is_some_and(|t| t.dims.len() == 1))?
        .clone();
    let scaled = other(weighted, &weights)?;
    let normalized = only(&scaled, "Mul", 2)?;
    let inverse = graph.node[normalized]
        .input
        .iter()
        .find(|i| producer(i).is_some_and(|p| graph.node[p].op_type == "Reciprocal"))?
        .clone();
    let x = other(normalized, &inverse)?;
    let reciprocal = only(&inverse, "Reciprocal", 1)?;
    let sqrt = only(&graph.node[reciprocal].input[0], "Sqrt", 1)?;
    let shifted = only(&graph.node[sqrt].input[0], "Add", 2)?;
    let eps = graph.node[shifted]
        .input
        .iter()
        .find(|i| initializer(i).is_some_and(|t| t.dims.is_empty()))?
        .clone();
    let mean = only(&other(shifted, &eps)?, "ReduceMean", 1)?;
    let axes = graph.node[mean]
        .attribute
        .iter()
        .find(|a| a.name == "axes")?;
    if axes.ints != [-1] || attr(&graph.node[mean], "keepdims") != Some(1) {
        return None;
    }
    let square = only(&graph.node[mean].input[0], "Mul", 2)?;
    if graph.node[square].input != [x.clone(), x.clone()] {
        return None;
    }
    let eps = initializer(&eps)?;
    let epsilon = match (&eps.raw_data[..], &eps.float_data[..]) {
        (&[a, b, c, d], _) => f32::from_le_bytes([a, b, c, d]),
        ([], &[value]) => value,
        _ => return None,
    };
    let doomed = vec![
        weighted, normalized, reciprocal, sqrt, shifted, mean, square,
    ];
    Some((doomed, x, weights, epsilon))
}

/// Whether `node` is a `MatMulNBits` that [`Int8MatMul`] runs from the mapping: block 32, bits 8
/// without zero points or bits 4 with an image's minimums.
fn mapped_matmul(node: &NodeProto) -> bool {
    node.op_type == "MatMulNBits"
        && attr(node, "block_size") == Some(32)
        && match attr(node, "bits") {
            Some(8) => node.input.len() == 3,
            Some(4) => node.input.len() == 4,
            _ => false,
        }
}

/// The nodes of `graph` that read `name`, in order.
fn readers(graph: &GraphProto, name: &str) -> Vec<usize> {
    (0..graph.node.len())
        .filter(|&i| graph.node[i].input.iter().any(|input| input == name))
        .collect()
}

/// Integer attribute `name` of `node`.
fn attr(node: &NodeProto, name: &str) -> Option<i64> {
    node.attribute.iter().find(|a| a.name == name).map(|a| a.i)
}

/// Rows of an int8 `rows × cols` table held in the mapping, dequantized: the token embedding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Int8Gather {
    table: MappedMatrix,
}

impl Op for Int8Gather {
    fn name(&self) -> StaticName {
        "EmberInt8Gather".into()
    }
    op_as_typed_op!();
}

impl EvalOp for Int8Gather {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let ids = args_1!(inputs);
        let ids = ids.cast_to::<i64>()?;
        let (rows, cols) = (self.table.rows, self.table.cols);
        let mut out = Vec::with_capacity(ids.len() * cols);
        for &id in ids.try_as_plain_ram()?.as_slice::<i64>()? {
            let row = usize::try_from(id)
                .ok()
                .filter(|&r| r < rows)
                .with_context(|| format!("token id {id} is outside the vocabulary of {rows}"))?;
            out.extend(self.table.dequantized_row(row));
        }
        let mut shape: TVec<usize> = ids.shape().into();
        shape.push(cols);
        Ok(tvec!(Tensor::from_shape(&shape, &out)?.into_tvalue()))
    }
}

impl TypedOp for Int8Gather {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut shape: TVec<TDim> = inputs[0].shape.to_tvec();
        shape.push(self.table.cols.to_dim());
        Ok(tvec!(f32::fact(&shape)))
    }
    as_op!();
}

impl Expansion for Int8Gather {
    fn name(&self) -> StaticName {
        "EmberInt8Gather".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 3)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, f32::datum_type())?;
        let cols = self.table.cols.to_dim();
        s.given(&inputs[1].rank, move |s, rank| {
            let rank = rank as usize;
            s.equals(&outputs[0].rank, rank as i64 + 1)?;
            for axis in 0..rank {
                s.equals(&outputs[0].shape[axis], &inputs[1].shape[axis])?;
            }
            s.equals(&outputs[0].shape[rank], cols.clone())
        })
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.clone(), &inputs[1..2])
    }
}

/// Builds [`Int8Gather`] for a `com.microsoft.GatherBlockQuantized` node with bits = 8,
/// block 32, gathering rows of a table quantized along its rows.
pub fn build_gather(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let bits: i64 = node.get_attr_opt("bits")?.unwrap_or(4);
    let block_size: i64 = node.get_attr_opt("block_size")?.unwrap_or(128);
    let gather_axis: i64 = node.get_attr_opt("gather_axis")?.unwrap_or(0);
    let quantize_axis: i64 = node.get_attr_opt("quantize_axis")?.unwrap_or(1);
    ensure!(
        bits == 8
            && block_size == BLOCK as i64
            && gather_axis == 0
            && quantize_axis == 1
            && node.input.len() == 3,
        "GatherBlockQuantized {:?}: Ember runs bits=8, block_size=32, gather_axis=0, quantize_axis=1 without zero points",
        node.name
    );
    MappedTensors::with(|m| {
        let (_, dims) = m.tensor(&node.input[0])?;
        let [rows, cols] = dims[..] else {
            bail!(
                "GatherBlockQuantized {:?}: the table is not 2-D ({dims:?})",
                node.name
            )
        };
        ensure!(
            cols.is_multiple_of(BLOCK),
            "GatherBlockQuantized {:?}: rows of {cols} values are not blocks of 32",
            node.name
        );
        let op = Int8Gather {
            table: MappedMatrix::new(m, &node.input[0], &node.input[2], None, rows, cols)?,
        };
        Ok((expand(op), vec![]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember_core::image::{TensorEncoding, TensorEntry};
    use ember_image::EncodedTensor;

    /// Row-major quants and scales of an `n × k` matrix.
    fn weights(n: usize, k: usize) -> (Vec<u8>, Vec<f32>) {
        let quants = (0..n * k).map(|i| (i * 7919 % 251) as u8).collect();
        let scales = (0..n * k / 32)
            .map(|i| 0.001 * (1 + i % 13) as f32)
            .collect();
        (quants, scales)
    }

    /// A mapped `n × k` int8 matrix, stored as images store it.
    fn matmul(n: usize, k: usize, threads: usize) -> Int8MatMul {
        matmul_encoded(n, k, threads, TensorEncoding::Int8Block32)
    }

    /// A mapped `n × k` matrix ([`weights`] or [`weights4`]), stored as images store it.
    fn matmul_encoded(n: usize, k: usize, threads: usize, encoding: TensorEncoding) -> Int8MatMul {
        let dims = [k as u64, n as u64];
        let tensor = if encoding == TensorEncoding::Int4Block32 {
            let (quants, scales, mins) = weights4(n, k);
            EncodedTensor::int4("w", &dims, &quants, &scales, &mins)
        } else {
            let (quants, scales) = weights(n, k);
            EncodedTensor::new("w", &dims, encoding, &quants, &scales)
        };
        let layout = TensorEntry::layout(encoding, k as u64, n as u64);
        static MADE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let made = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("ember-ops-{}-{made}", std::process::id()));
        std::fs::write(&path, &tensor.bytes).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: a private temporary file nobody modifies while it is mapped.
        let map = Arc::new(unsafe { Mmap::map(&file) }.unwrap());
        let _ = std::fs::remove_file(&path);
        let range = |(offset, length): (u64, u64)| offset as usize..(offset + length) as usize;
        Int8MatMul {
            weights: vec![MappedMatrix {
                map,
                quants: range(layout.quants),
                scales: range(layout.scales),
                mins: (encoding == TensorEncoding::Int4Block32).then(|| range(layout.mins)),
                rows: n,
                cols: k,
            }],
            gated: false,
            residual: false,
            rms_norm: None,
            workers: Arc::new(Workers::new(threads).unwrap()),
            kernel: Kernel::detect(),
        }
    }

    /// Row-major 4-bit quants, scales and minimums of an `n × k` matrix.
    fn weights4(n: usize, k: usize) -> (Vec<u8>, Vec<f32>, Vec<f32>) {
        let (quants, scales) = weights(n, k);
        let mins = (0..n * k / 32)
            .map(|i| 0.003 * (i % 7) as f32 - 0.01)
            .collect();
        (quants.iter().map(|q| q % 16).collect(), scales, mins)
    }

    #[test]
    fn a_4bit_matrix_gives_its_rows_exact_sums() {
        for (n, k, threads) in [(96, 64, 1), (50, 1536, 2), (300, 96, 3)] {
            let op = matmul_encoded(n, k, threads, TensorEncoding::Int4Block32);
            let (quants, scales, mins) = weights4(n, k);
            let x: Vec<f32> = (0..2 * k)
                .map(|i| ((i * 31 % 97) as f32 - 48.0) / 17.0)
                .collect();
            let a = QuantizedRows::new(&x, k);
            let y = op.compute(&x, None, None).unwrap().remove(0);
            assert_eq!(y.len(), 2 * n);
            for s in 0..2 {
                for (row, got) in y[s * n..][..n].iter().enumerate() {
                    let (mut want, mut size) = (0f64, 0f64);
                    for col in 0..k {
                        let b = col / 32;
                        let block = row * k / 32 + b;
                        let value = scales[block] as f64 * quants[row * k + col] as f64
                            + mins[block] as f64;
                        let term =
                            value * a.scales[s * k / 32 + b] as f64 * a.quants[s * k + col] as f64;
                        want += term;
                        size += term.abs();
                    }
                    assert!(
                        (*got as f64 - want).abs() <= 1e-5 * size.max(1.0),
                        "n {n} k {k} activation row {s} row {row}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn each_output_is_its_rows_dot_product_with_the_quantized_input() {
        for (n, k, threads) in [(96, 64, 1), (50, 1536, 2), (300, 96, 3)] {
            let op = matmul(n, k, threads);
            let (quants, scales) = weights(n, k);
            let x: Vec<f32> = (0..k)
                .map(|i| ((i * 31 % 97) as f32 - 48.0) / 17.0)
                .collect();
            let a = QuantizedRows::new(&x, k);
            let y = op.compute(&x, None, None).unwrap().remove(0);
            assert_eq!(y.len(), n);
            for (row, got) in y.iter().enumerate() {
                let mut want = 0f64;
                let mut size = 0f64;
                for col in 0..k {
                    let (b, u) = (col / 32, quants[row * k + col] as f64 - 128.0);
                    let term = scales[row * k / 32 + b] as f64
                        * a.scales[b] as f64
                        * u
                        * a.quants[col] as f64;
                    want += term;
                    size += term.abs();
                }
                assert!(
                    (*got as f64 - want).abs() <= 1e-5 * size.max(1.0),
                    "n {n} k {k} row {row}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn fused_matrices_give_what_each_gives_alone() {
        // (The graph only fuses matrices of one kind; the op computes any mix.)
        let k = 96;
        let parts = [
            matmul(48, k, 2),
            matmul_encoded(20, k, 2, TensorEncoding::Int4Block32),
            matmul(300, k, 2),
        ];
        let fused = Int8MatMul {
            weights: parts.iter().flat_map(|p| p.weights.clone()).collect(),
            gated: false,
            residual: false,
            rms_norm: None,
            workers: Arc::new(Workers::new(2).unwrap()),
            kernel: Kernel::detect(),
        };
        for rows in [1, 3] {
            let x: Vec<f32> = (0..rows * k)
                .map(|i| ((i * 13 % 41) as f32 - 20.0) / 9.0)
                .collect();
            let together = fused.compute(&x, None, None).unwrap();
            for (alone, together) in parts.iter().zip(&together) {
                assert_eq!(&alone.compute(&x, None, None).unwrap().remove(0), together);
            }
        }
    }

    #[test]
    fn a_batch_of_rows_gives_each_row_its_own_result() {
        for (n, k, threads) in [(96, 64, 1), (576, 576, 2), (50, 1536, 2)] {
            let op = matmul(n, k, threads);
            let rows = 5;
            let x: Vec<f32> = (0..rows * k)
                .map(|i| ((i * 31 % 97) as f32 - 48.0) / 17.0)
                .collect();
            let batch = op.compute(&x, None, None).unwrap().remove(0);
            for r in 0..rows {
                let single = op.compute(&x[r * k..][..k], None, None).unwrap().remove(0);
                assert_eq!(&batch[r * n..][..n], &single[..], "n {n} k {k} row {r}");
            }
        }
    }

    #[test]
    fn a_gated_pair_gives_silu_of_the_gate_times_up() {
        for (n, k, threads) in [(50, 96, 2), (1536, 64, 2), (40, 64, 3)] {
            let (gate, up) = (matmul(n, k, threads), matmul(n, k, threads));
            let gated = Int8MatMul {
                weights: vec![gate.weights[0].clone(), up.weights[0].clone()],
                gated: true,
                residual: false,
                rms_norm: None,
                workers: Arc::new(Workers::new(threads).unwrap()),
                kernel: Kernel::detect(),
            };
            for rows in [1, 4] {
                let x: Vec<f32> = (0..rows * k)
                    .map(|i| ((i * 13 % 41) as f32 - 20.0) / 9.0)
                    .collect();
                let got = gated.compute(&x, None, None).unwrap();
                assert_eq!(got.len(), 1);
                let (g, u) = (
                    gate.compute(&x, None, None).unwrap().remove(0),
                    up.compute(&x, None, None).unwrap().remove(0),
                );
                for (i, ((got, g), u)) in got[0].iter().zip(&g).zip(&u).enumerate() {
                    let (g, u) = (f64::from(*g), f64::from(*u));
                    let want = g / (1.0 + (-g).exp()) * u;
                    assert!(
                        (f64::from(*got) - want).abs() <= 1e-5 * want.abs().max(1.0),
                        "n {n} k {k} rows {rows} value {i}: {got} vs {want}"
                    );
                }
            }
        }
    }

    /// A node without attributes.
    fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
        NodeProto {
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    /// A graph of one fused gate/up node and the element-wise SwiGLU after it, and a node
    /// reading each of `gate_readers`.
    fn swiglu_graph(gate_readers: &[&str]) -> GraphProto {
        let mut fused = node(
            FUSED_MATMULS,
            &["h", "gq", "gs", "uq", "us"],
            &["gate", "up"],
        );
        fused.attribute = vec![
            int_attr("K", 64),
            int_attr("bits", 8),
            ints_attr("N", &[32, 32]),
        ];
        let mut nodes = vec![
            fused,
            node("Sigmoid", &["gate"], &["sig"]),
            node("Mul", &["gate", "sig"], &["silu"]),
            node("Mul", &["silu", "up"], &["product"]),
            node("Add", &["x", "product"], &["y"]),
        ];
        for (i, reader) in gate_readers.iter().enumerate() {
            nodes.push(node("Neg", &[reader], &[&format!("extra{i}")]));
        }
        GraphProto {
            node: nodes,
            ..Default::default()
        }
    }

    #[test]
    fn the_gate_and_up_node_takes_in_the_swiglu_after_it() {
        let mut graph = swiglu_graph(&[]);
        fuse_gated_units(&mut graph);
        let ops: Vec<&str> = graph.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, [FUSED_MATMULS, "Add"]);
        assert_eq!(graph.node[0].output, ["product"]);
        assert_eq!(attr(&graph.node[0], "gated"), Some(1));
        // Any other reader of the gate, its sigmoid, its SiLU or the up projection keeps the
        // graph as it is.
        for reader in ["gate", "sig", "silu", "up"] {
            let mut graph = swiglu_graph(&[reader]);
            let before = graph.clone();
            fuse_gated_units(&mut graph);
            assert_eq!(graph, before, "{reader}");
        }
    }

    #[test]
    fn a_residual_is_added_to_the_product() {
        let (n, k) = (50, 96);
        let plain = matmul(n, k, 2);
        let op = Int8MatMul {
            residual: true,
            ..plain.clone()
        };
        for rows in [1, 3] {
            let x: Vec<f32> = (0..rows * k).map(|i| (i % 17) as f32 / 7.0 - 1.0).collect();
            let r: Vec<f32> = (0..rows * n).map(|i| (i % 23) as f32 / 3.0 - 4.0).collect();
            let product = plain.compute(&x, None, None).unwrap().remove(0);
            let got = op.compute(&x, Some(r.clone()), None).unwrap().remove(0);
            let want: Vec<f32> = r.iter().zip(&product).map(|(r, p)| r + p).collect();
            assert_eq!(got, want);
        }
        assert!(op.compute(&[0.0; 96], Some(vec![0.0; 3]), None).is_err());
    }

    #[test]
    fn an_add_after_a_single_matmul_becomes_its_residual() {
        let graph = |extra: bool| {
            let mut matmul = node("MatMulNBits", &["h", "q", "s"], &["down"]);
            matmul.attribute = vec![
                int_attr("K", 64),
                int_attr("N", 64),
                int_attr("bits", 8),
                int_attr("block_size", 32),
            ];
            let mut nodes = vec![
                node("Neg", &["input"], &["x"]),
                matmul,
                node("Add", &["x", "down"], &["y"]),
            ];
            if extra {
                nodes.push(node("Neg", &["down"], &["other"]));
            }
            GraphProto {
                node: nodes,
                ..Default::default()
            }
        };
        let mut fused = graph(false);
        fuse_residual_adds(&mut fused);
        let ops: Vec<&str> = fused.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, ["Neg", FUSED_MATMULS]);
        assert_eq!(fused.node[1].input, ["h", "q", "s", "x"]);
        assert_eq!(fused.node[1].output, ["y"]);
        assert_eq!(attr(&fused.node[1], "residual"), Some(1));
        // A product read elsewhere too stays as it is.
        let mut kept = graph(true);
        let before = kept.clone();
        fuse_residual_adds(&mut kept);
        assert_eq!(kept, before);
    }

    #[test]
    fn a_norm_before_the_matmul_is_applied_to_its_input() {
        let (n, k, epsilon) = (40, 64, 1e-5);
        let plain = matmul(n, k, 2);
        let op = Int8MatMul {
            rms_norm: Some(epsilon),
            ..plain.clone()
        };
        let weights: Vec<f32> = (0..k).map(|i| 0.5 + (i % 5) as f32 / 4.0).collect();
        for rows in [1, 3] {
            let x: Vec<f32> = (0..rows * k).map(|i| (i % 19) as f32 / 5.0 - 2.0).collect();
            // The norm from its definition, in f64.
            let normalized: Vec<f32> = x
                .chunks(k)
                .flat_map(|row| {
                    let mean = row.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / k as f64;
                    let scale = 1.0 / (mean + f64::from(epsilon)).sqrt();
                    row.iter()
                        .zip(&weights)
                        .map(move |(&v, &w)| (f64::from(v) * scale * f64::from(w)) as f32)
                        .collect::<Vec<_>>()
                })
                .collect();
            let got = op.compute(&x, None, Some(&weights)).unwrap().remove(0);
            let want = plain.compute(&normalized, None, None).unwrap().remove(0);
            for (i, (got, want)) in got.iter().zip(&want).enumerate() {
                // (A rounding of the f64 norm can move an activation by one quantization step.)
                assert!(
                    (got - want).abs() <= 1e-2 * want.abs().max(1.0),
                    "rows {rows} value {i}: {got} vs {want}"
                );
            }
        }
        assert!(op.compute(&[0.0; 64], None, Some(&[1.0; 3])).is_err());
        assert!(op.compute(&[0.0; 64], None, None).is_err());
    }

    /// `graph::build`'s RMSNorm of `x` (weights `w`, epsilon `eps`) feeding a fused node, and
    /// a node reading `extra` if given.
    fn norm_graph(extra: Option<&str>) -> GraphProto {
        let mut mean = node("ReduceMean", &["square"], &["mean"]);
        mean.attribute = vec![ints_attr("axes", &[-1]), int_attr("keepdims", 1)];
        let mut fused = node(FUSED_MATMULS, &["h", "q", "s"], &["y"]);
        fused.attribute = vec![
            int_attr("K", 64),
            int_attr("bits", 8),
            ints_attr("N", &[64]),
        ];
        let mut nodes = vec![
            node("Neg", &["input"], &["x"]),
            node("Mul", &["x", "x"], &["square"]),
            mean,
            node("Add", &["mean", "eps"], &["shifted"]),
            node("Sqrt", &["shifted"], &["root"]),
            node("Reciprocal", &["root"], &["inverse"]),
            node("Mul", &["x", "inverse"], &["scaled"]),
            node("Mul", &["scaled", "w"], &["h"]),
            fused,
        ];
        nodes.extend(extra.map(|name| node("Neg", &[name], &["other"])));
        let tensor = |name: &str, dims: Vec<i64>, raw_data: Vec<u8>| tract_onnx::pb::TensorProto {
            name: name.into(),
            dims,
            raw_data,
            ..Default::default()
        };
        GraphProto {
            node: nodes,
            initializer: vec![
                tensor("eps", vec![], 1e-5f32.to_le_bytes().to_vec()),
                tensor("w", vec![64], vec![0; 256]),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn the_norm_before_a_fused_matmul_moves_into_it() {
        let mut graph = norm_graph(None);
        fuse_rms_norms(&mut graph);
        let ops: Vec<&str> = graph.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, ["Neg", FUSED_MATMULS]);
        assert_eq!(graph.node[1].input, ["x", "q", "s", "w"]);
        let epsilon = graph.node[1].attribute.iter().find(|a| a.name == "epsilon");
        assert_eq!(epsilon.map(|a| a.f), Some(1e-5));
        for name in [
            "square", "mean", "shifted", "root", "inverse", "scaled", "h",
        ] {
            let mut graph = norm_graph(Some(name));
            let before = graph.clone();
            fuse_rms_norms(&mut graph);
            assert_eq!(graph, before, "{name}");
        }
    }
}
