//! Ember's own tract ops for the graph's contrib nodes: `MatMulNBits` (bits 8) and
//! `GatherBlockQuantized` (bits 8) that read their weights in place from the image's mapping
//! instead of copying them into tract tensors.
//!
//! tract's ONNX parser calls a plain `fn` per node, so the mapping reaches the builders through
//! [`MappedTensors::install`], a thread-local set for the duration of one parse.

use crate::kernels::{Kernel, QuantizedRows};
use memmap2::Mmap;
use rayon::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
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
    /// Threads the matmuls split their rows over.
    pub pool: Arc<rayon::ThreadPool>,
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

    fn with<T>(f: impl FnOnce(&MappedTensors) -> TractResult<T>) -> TractResult<T> {
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

/// An int8 `rows × cols` matrix read in place from the mapping: `rows · cols` u8 quants
/// (value = scale · (u − 128)) and one little-endian f32 scale per block of 32.
#[derive(Debug, Clone)]
pub struct MappedMatrix {
    map: Arc<Mmap>,
    quants: Range<usize>,
    scales: Range<usize>,
    rows: usize,
    cols: usize,
}

// Equality must identify the weights: tract merges sibling nodes whose ops compare equal.
impl PartialEq for MappedMatrix {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.map, &other.map)
            && self.quants == other.quants
            && self.scales == other.scales
            && (self.rows, self.cols) == (other.rows, other.cols)
    }
}
impl Eq for MappedMatrix {}

impl MappedMatrix {
    /// The initializers `quants` and `scales` of a `rows × cols` matrix, checked for length and
    /// for the scales' 4-byte alignment.
    fn new(
        m: &MappedTensors,
        quants: &str,
        scales: &str,
        rows: usize,
        cols: usize,
    ) -> TractResult<Self> {
        let quants = m.range(quants, rows * cols)?;
        let scales = m.range(scales, rows * cols / 32 * 4)?;
        ensure!(
            scales.start.is_multiple_of(4) && (m.map.as_ptr() as usize).is_multiple_of(4),
            "scales at offset {} are not 4-byte aligned",
            scales.start
        );
        Ok(MappedMatrix {
            map: Arc::clone(&m.map),
            quants,
            scales,
            rows,
            cols,
        })
    }

    /// Row `row`: its quants and its block scales.
    fn row(&self, row: usize) -> (&[u8], &[f32]) {
        let blocks = self.cols / 32;
        let quants = &self.map[self.quants.start + row * self.cols..][..self.cols];
        let scales = &f32s(&self.map[self.scales.clone()])[row * blocks..][..blocks];
        (quants, scales)
    }
}

/// `y = x · Wᵀ` for an int8 `n × k` matrix `W` held in the mapping (`n` rows of `k`).
#[derive(Debug, Clone)]
pub struct Int8MatMul {
    weights: MappedMatrix,
    pool: Arc<rayon::ThreadPool>,
    kernel: Kernel,
}

impl PartialEq for Int8MatMul {
    fn eq(&self, other: &Self) -> bool {
        self.weights == other.weights
    }
}
impl Eq for Int8MatMul {}

/// Output rows each task computes (a few cache lines of weights).
const ROWS_PER_TASK: usize = 16;

impl Int8MatMul {
    /// `rows × n` outputs for `rows × k` inputs.
    pub fn compute(&self, x: &[f32]) -> Vec<f32> {
        let (n, k) = (self.weights.rows, self.weights.cols);
        let a = QuantizedRows::new(x, k);
        let rows = a.rows();
        // Transposed: each task owns whole weight rows, read once for all activation rows.
        let mut transposed = vec![0f32; n * rows];
        self.pool.install(|| {
            transposed
                .par_chunks_mut(ROWS_PER_TASK * rows)
                .enumerate()
                .for_each(|(task, out)| {
                    for (i, column) in out.chunks_mut(rows).enumerate() {
                        let (w, ws) = self.weights.row(task * ROWS_PER_TASK + i);
                        for (s, y) in column.iter_mut().enumerate() {
                            *y = self.kernel.dot(w, ws, &a, s);
                        }
                    }
                })
        });
        if rows == 1 {
            return transposed;
        }
        let mut y = vec![0f32; rows * n];
        for (row, column) in transposed.chunks(rows).enumerate() {
            for (s, v) in column.iter().enumerate() {
                y[s * n + row] = *v;
            }
        }
        y
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
            shape.last() == Some(&self.weights.cols),
            "int8 matmul: input {shape:?} does not end in {}",
            self.weights.cols
        );
        let y = self.compute(x.try_as_plain_ram()?.as_slice::<f32>()?);
        let mut out_shape: TVec<usize> = shape.into();
        *out_shape.last_mut().unwrap_or(&mut 0) = self.weights.rows;
        Ok(tvec!(Tensor::from_shape(&out_shape, &y)?.into_tvalue()))
    }
}

impl TypedOp for Int8MatMul {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut shape: TVec<TDim> = inputs[0].shape.to_tvec();
        ensure!(!shape.is_empty(), "int8 matmul needs an input of rank ≥ 1");
        let last = shape.len() - 1;
        shape[last] = self.weights.rows.to_dim();
        Ok(tvec!(f32::fact(&shape)))
    }
    as_op!();
}

impl Expansion for Int8MatMul {
    fn name(&self) -> StaticName {
        "EmberInt8MatMul".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, f32::datum_type())?;
        let n = self.weights.rows.to_dim();
        s.given(&inputs[0].rank, move |s, rank| {
            let rank = rank as usize;
            s.equals(&outputs[0].rank, rank as i64)?;
            for axis in 0..rank.saturating_sub(1) {
                s.equals(&outputs[0].shape[axis], &inputs[0].shape[axis])?;
            }
            s.equals(&outputs[0].shape[rank.saturating_sub(1)], n.clone())
        })
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

/// Builds [`Int8MatMul`] for a `com.microsoft.MatMulNBits` node with bits = 8, block 32,
/// no zero points or bias, and weights in the mapping.
pub fn build_matmul(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let k: usize = node.get_attr("K")?;
    let n: usize = node.get_attr("N")?;
    let bits: usize = node.get_attr_opt("bits")?.unwrap_or(4);
    let block_size: usize = node.get_attr("block_size")?;
    ensure!(
        bits == 8 && block_size == 32 && k.is_multiple_of(32),
        "MatMulNBits {:?}: Ember runs bits=8, block_size=32 (got bits={bits}, block_size={block_size}, K={k})",
        node.name
    );
    ensure!(
        node.input.len() == 3,
        "MatMulNBits {:?}: zero points, g_idx and bias are not supported",
        node.name
    );
    MappedTensors::with(|m| {
        let op = Int8MatMul {
            weights: MappedMatrix::new(m, &node.input[1], &node.input[2], n, k)?,
            pool: Arc::clone(&m.pool),
            kernel: m.kernel,
        };
        Ok((expand(op), vec![]))
    })
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
            let (quants, scales) = self.table.row(row);
            for (block, d) in quants.chunks_exact(32).zip(scales) {
                out.extend(block.iter().map(|&u| d * (u as i32 - 128) as f32));
            }
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
            table: MappedMatrix::new(m, &node.input[0], &node.input[2], rows, cols)?,
        };
        Ok((expand(op), vec![]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mapped `n × k` int8 matrix with pseudo-random quants and scales.
    fn matmul(n: usize, k: usize, threads: usize) -> Int8MatMul {
        let quants: Vec<u8> = (0..n * k).map(|i| (i * 7919 % 251) as u8).collect();
        let scales: Vec<u8> = (0..n * k / 32)
            .flat_map(|i| (0.001 * (1 + i % 13) as f32).to_le_bytes())
            .collect();
        let path = std::env::temp_dir().join(format!("ember-ops-{}-{n}-{k}", std::process::id()));
        std::fs::write(&path, [quants.as_slice(), &scales].concat()).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: a private temporary file nobody modifies while it is mapped.
        let map = Arc::new(unsafe { Mmap::map(&file) }.unwrap());
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        Int8MatMul {
            weights: MappedMatrix {
                map,
                quants: 0..n * k,
                scales: n * k..n * k + n * k / 32 * 4,
                rows: n,
                cols: k,
            },
            pool: Arc::new(pool),
            kernel: Kernel::detect(),
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
            let batch = op.compute(&x);
            for r in 0..rows {
                let single = op.compute(&x[r * k..][..k]);
                assert_eq!(&batch[r * n..][..n], &single[..], "n {n} k {k} row {r}");
            }
        }
    }
}
