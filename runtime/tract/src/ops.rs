//! Ember's own tract ops for the graph's contrib nodes: `MatMulNBits` (bits 8 and 4) and
//! `GatherBlockQuantized` (bits 8) that read their weights in place from the image's mapping
//! instead of copying them into tract tensors.
//!
//! tract's ONNX parser calls a plain `fn` per node, so the mapping reaches the builders through
//! [`MappedTensors::install`], a thread-local set for the duration of one parse.

use crate::kernels::{Kernel, QuantizedRows};
use crate::workers::Workers;
use ember_core::image::{ROW_GROUP, padded_rows, quant_index, scale_index};
use memmap2::Mmap;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

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

/// A `rows × cols` matrix read in place from the mapping, with the rows in interleaved groups
/// of 16, the last group padded: int8 (u8 quants, value = scale · (u − 128),
/// `ember_core::image::quant_index`) or 4-bit (nibbles, value = scale · q + min,
/// `ember_core::image::nibble_index`), with one little-endian f32 scale (and minimum) per block
/// of 32.
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
        let stored = padded_rows(rows as u64) as usize * cols;
        let per_value = if mins.is_some() { 2 } else { 1 };
        let quants = m.range(quants, rows * cols / per_value)?;
        let quants = quants.start..quants.start + stored / per_value;
        let blocks = |name: &str| -> TractResult<Range<usize>> {
            let range = m.range(name, rows * cols / 32 * 4)?;
            let range = range.start..range.start + stored / 32 * 4;
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

    /// Groups of rows stored.
    fn groups(&self) -> usize {
        self.rows.div_ceil(ROW_GROUP)
    }

    /// The 16 dot products of group `group` with each activation row of `a`, row after row.
    fn dot_group(&self, kernel: Kernel, group: usize, a: &QuantizedRows, out: &mut [f32]) {
        let blocks = ROW_GROUP * self.cols / 32;
        let scales = &f32s(&self.map[self.scales.clone()])[group * blocks..][..blocks];
        match &self.mins {
            None => {
                let bytes = ROW_GROUP * self.cols;
                let quants = &self.map[self.quants.clone()][group * bytes..][..bytes];
                kernel.dot_group_rows(quants, scales, a, out);
            }
            Some(mins) => {
                let bytes = ROW_GROUP * self.cols / 2;
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
        let quants = &self.map[self.quants.clone()];
        let scales = f32s(&self.map[self.scales.clone()]);
        (0..self.cols).map(move |col| {
            let u = quants[quant_index(self.cols, row, col)];
            scales[scale_index(self.cols, row, col / 32)] * (u as i32 - 128) as f32
        })
    }
}

/// `y_i = x · W_iᵀ` for int8 or 4-bit matrices `W_i` (`n_i` rows of `k`) held in the mapping,
/// with `x` quantized to int8: one output per matrix. Several matrices over the same input (a layer's query, key and value
/// projections; its gate and up projections) share one quantization of the input and one
/// split of their rows across the threads.
#[derive(Debug, Clone)]
pub struct Int8MatMul {
    weights: Vec<MappedMatrix>,
    workers: Arc<Workers>,
    kernel: Kernel,
}

impl PartialEq for Int8MatMul {
    fn eq(&self, other: &Self) -> bool {
        self.weights == other.weights
    }
}
impl Eq for Int8MatMul {}

/// The node type [`fuse_matmuls`] writes (domain `ai.ember`): inputs `x`, then each matrix's
/// quants and scales (and, with `bits` 4, minimums); attributes `K`, `bits` and `N` (one per
/// matrix); one output per matrix.
pub const FUSED_MATMULS: &str = "EmberInt8MatMuls";

impl Int8MatMul {
    /// Values per input row.
    fn cols(&self) -> usize {
        self.weights.first().map_or(0, |w| w.cols)
    }

    /// Group `index` of all the matrices' groups in a row: its matrix and its index there.
    fn group(&self, mut index: usize) -> (&MappedMatrix, usize) {
        for weights in &self.weights[..self.weights.len() - 1] {
            if index < weights.groups() {
                return (weights, index);
            }
            index -= weights.groups();
        }
        (&self.weights[self.weights.len() - 1], index)
    }

    /// `x` quantized, its rows split across the threads when there are several.
    fn quantize(&self, x: &[f32]) -> QuantizedRows {
        let cols = self.cols();
        let rows = x.len() / cols.max(1);
        if rows < 2 {
            return QuantizedRows::new(x, cols);
        }
        let mut a = QuantizedRows::zeroed(rows, cols);
        let (per_chunk, blocks) = (self.workers.chunk_size(rows), cols / 32);
        let parts: Vec<_> = x
            .chunks(per_chunk * cols)
            .zip(a.quants.chunks_mut(per_chunk * cols))
            .zip(a.scales.chunks_mut(per_chunk * blocks))
            .zip(a.sums.chunks_mut(per_chunk * blocks))
            .map(|(((x, quants), scales), sums)| Mutex::new((x, quants, scales, sums)))
            .collect();
        self.workers.run(parts.len(), &|chunk| {
            let mut part = parts[chunk].lock().unwrap_or_else(|e| e.into_inner());
            let (x, quants, scales, sums) = &mut *part;
            QuantizedRows::quantize_blocks(x, quants, scales, sums);
        });
        drop(parts);
        a
    }

    /// For `rows × k` inputs, each matrix's `rows × n_i` outputs.
    pub fn compute(&self, x: &[f32]) -> Vec<Vec<f32>> {
        let a = self.quantize(x);
        let rows = a.rows();
        // Every matrix's groups in a row; each chunk is a run of whole groups, read once for all
        // activation rows; per group the results are `rows × 16`.
        let groups: usize = self.weights.iter().map(MappedMatrix::groups).sum();
        let per_chunk = self.workers.chunk_size(groups);
        let mut grouped = vec![0f32; groups * ROW_GROUP * rows];
        let chunks: Vec<Mutex<&mut [f32]>> = grouped
            .chunks_mut(per_chunk * ROW_GROUP * rows)
            .map(Mutex::new)
            .collect();
        self.workers.run(chunks.len(), &|chunk| {
            let mut out = chunks[chunk].lock().unwrap_or_else(|e| e.into_inner());
            for (i, out) in out.chunks_mut(ROW_GROUP * rows).enumerate() {
                let (weights, group) = self.group(chunk * per_chunk + i);
                weights.dot_group(self.kernel, group, &a, out);
            }
        });
        drop(chunks);
        let mut rest = &grouped[..];
        let mut outputs = Vec::with_capacity(self.weights.len());
        for weights in &self.weights {
            let n = weights.rows;
            let (mine, others) = rest.split_at(weights.groups() * ROW_GROUP * rows);
            rest = others;
            let mut y = vec![0f32; rows * n];
            for (g, group) in mine.chunks(ROW_GROUP * rows).enumerate() {
                for (s, values) in group.chunks(ROW_GROUP).enumerate() {
                    let first = g * ROW_GROUP;
                    let count = ROW_GROUP.min(n - first);
                    y[s * n + first..][..count].copy_from_slice(&values[..count]);
                }
            }
            outputs.push(y);
        }
        outputs
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
        let x = args_1!(inputs);
        let x = x.cast_to::<f32>()?;
        let shape = x.shape();
        ensure!(
            shape.last() == Some(&self.cols()),
            "int8 matmul: input {shape:?} does not end in {}",
            self.cols()
        );
        let outputs = self.compute(x.try_as_plain_ram()?.as_slice::<f32>()?);
        outputs
            .into_iter()
            .zip(&self.weights)
            .map(|(y, weights)| {
                let mut out_shape: TVec<usize> = shape.into();
                *out_shape.last_mut().unwrap_or(&mut 0) = weights.rows;
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
            .weights
            .iter()
            .map(|weights| {
                let mut shape: TVec<TDim> = inputs[0].shape.to_tvec();
                let last = shape.len() - 1;
                shape[last] = weights.rows.to_dim();
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
        Ok(self.weights.len())
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_output_arity(outputs, self.weights.len())?;
        for (output, weights) in outputs.iter().zip(&self.weights) {
            s.equals(&output.datum_type, f32::datum_type())?;
            let n = weights.rows.to_dim();
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
        model.wire_node(prefix, self.clone(), &inputs[..1])
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
        (bits == 8 || bits == 4) && block_size == 32 && k.is_multiple_of(32),
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
    let ns: Vec<usize> = node.get_attr_tvec("N")?.into_vec();
    let per_matrix = if bits == 4 { 3 } else { 2 };
    ensure!(
        (bits == 8 || bits == 4)
            && !ns.is_empty()
            && node.input.len() == 1 + per_matrix * ns.len()
            && node.output.len() == ns.len(),
        "{FUSED_MATMULS} {:?}: bits, inputs, outputs and N do not agree",
        node.name
    );
    MappedTensors::with(|m| {
        let weights = ns
            .iter()
            .zip(node.input[1..].chunks(per_matrix))
            .map(|(&n, inputs)| {
                let mins = inputs.get(2).map(String::as_str);
                MappedMatrix::new(m, &inputs[0], &inputs[1], mins, n, k)
            })
            .collect::<TractResult<_>>()?;
        let op = Int8MatMul {
            weights,
            workers: Arc::clone(&m.workers),
            kernel: m.kernel,
        };
        Ok((expand(op), vec![]))
    })
}

/// Rewrites `graph` so that `MatMulNBits` nodes reading the same input become one
/// [`FUSED_MATMULS`] node: one quantization of the input and one split of the work for a
/// layer's query, key and value projections, and for its gate and up projections.
pub fn fuse_matmuls(graph: &mut tract_onnx::pb::GraphProto) {
    use crate::graph::{int_attr, ints_attr};
    let attr = |n: &NodeProto, name: &str| n.attribute.iter().find(|a| a.name == name).map(|a| a.i);
    let fusable = |n: &NodeProto| {
        n.op_type == "MatMulNBits"
            && attr(n, "block_size") == Some(32)
            && match attr(n, "bits") {
                Some(8) => n.input.len() == 3,
                Some(4) => n.input.len() == 4,
                _ => false,
            }
    };
    let mut index = 0;
    while index < graph.node.len() {
        let first = &graph.node[index];
        if !fusable(first) {
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
                fusable(n) && n.input[0] == input && attr(n, "K") == k && attr(n, "bits") == bits
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
            && block_size == 32
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
            cols.is_multiple_of(32),
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
            let y = op.compute(&x).remove(0);
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
            let y = op.compute(&x).remove(0);
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
            workers: Arc::new(Workers::new(2).unwrap()),
            kernel: Kernel::detect(),
        };
        for rows in [1, 3] {
            let x: Vec<f32> = (0..rows * k)
                .map(|i| ((i * 13 % 41) as f32 - 20.0) / 9.0)
                .collect();
            let together = fused.compute(&x);
            for (alone, together) in parts.iter().zip(&together) {
                assert_eq!(&alone.compute(&x).remove(0), together);
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
            let batch = op.compute(&x).remove(0);
            for r in 0..rows {
                let single = op.compute(&x[r * k..][..k]).remove(0);
                assert_eq!(&batch[r * n..][..n], &single[..], "n {n} k {k} row {r}");
            }
        }
    }
}
