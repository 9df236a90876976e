//! Attention over a KV cache that stays in place, with RoPE, in one op per layer.
//!
//! The image's graph carries the cache as explicit inputs and outputs (`past_*` → `Concat` →
//! `present_*`), which onnxruntime runs as it is. Run that way in tract, every step would copy
//! the whole cache into a new tensor and repack it for the two matrix products, so decoding
//! slows as the context grows; and the rotations and head reshapes around it are some thirty
//! small ops per layer. When tract loads the graph, [`keep_cache_in_place`] replaces everything
//! between each layer's query/key/value projections and its output projection with one
//! [`CachedAttention`] node: a stateful op that rotates the new queries and keys, appends keys
//! and values to its session's cache in place and attends over the cache where it lies.

use crate::graph::{attention_input, int_attr};
use crate::ops::MappedTensors;
use crate::workers::Workers;
use ember_core::image::Architecture;
use std::collections::HashSet;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use tract_onnx::model::ParsingContext;
use tract_onnx::pb::{GraphProto, NodeProto};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

/// The node type [`keep_cache_in_place`] writes (domain `ai.ember`).
pub const OP_TYPE: &str = "EmberCachedAttention";

/// Rewrites `graph` (built by [`crate::graph::build`] for `architecture`) so that each of its
/// layers attends over a cache held in place by the session: one [`OP_TYPE`] node per layer
/// takes the queries, keys and values (the projections' outputs, or the values named
/// [`attention_input`] where biases or head norms come between), the positions and the layer's
/// RoPE tables, and feeds the output projection; the `past_*` inputs, `present_*` outputs and
/// every node only they needed (rotations, reshapes, concatenations, the causal masks, the
/// score products) go.
pub fn keep_cache_in_place(
    graph: &mut GraphProto,
    architecture: &Architecture,
) -> Result<(), String> {
    let table = |hint: &str| {
        graph
            .initializer
            .iter()
            .find(|t| t.name.rsplit_once('_').map(|(name, _)| name) == Some(hint))
            .map(|t| t.name.clone())
            .ok_or_else(|| format!("the graph has no {hint} table"))
    };
    let global = (table("rope_cos")?, table("rope_sin")?);
    let local = (table("rope_cos_local"), table("rope_sin_local"));
    let group = architecture.n_head / architecture.n_head_kv.max(1);
    for layer in 0..architecture.n_layers {
        let window = architecture.window(layer);
        let (cos, sin) = match (window, &local) {
            (None, _) => global.clone(),
            (Some(_), (Ok(cos), Ok(sin))) => (cos.clone(), sin.clone()),
            (Some(_), (Err(e), _) | (_, Err(e))) => return Err(e.clone()),
        };
        let projection = |name: &str| {
            let prefix = format!("blk.{layer}.{name}.weight.");
            graph
                .node
                .iter()
                .position(|n| {
                    n.op_type == "MatMulNBits"
                        && n.input.get(1).is_some_and(|i| i.starts_with(&prefix))
                })
                .ok_or_else(|| format!("layer {layer}: the graph has no {name} projection"))
        };
        let output = |node: usize| {
            graph.node[node]
                .output
                .first()
                .cloned()
                .ok_or_else(|| format!("layer {layer}: node {node} has no output"))
        };
        let input = |kind: &str, projection_name: &str| {
            let named = attention_input(layer, kind);
            if graph.node.iter().any(|n| n.output.contains(&named)) {
                Ok(named)
            } else {
                output(projection(projection_name)?)
            }
        };
        let inputs = vec![
            input("q", "attn_q")?,
            input("k", "attn_k")?,
            input("v", "attn_v")?,
            "position_ids".to_string(),
            cos,
            sin,
        ];
        let attended = format!("attention.{layer}");
        let out_projection = projection("attn_output")?;
        let at = graph.node[out_projection]
            .input
            .first_mut()
            .ok_or_else(|| format!("layer {layer}: the output projection has no input"))?;
        *at = attended.clone();
        graph.node.insert(
            out_projection,
            NodeProto {
                name: attended.clone(),
                op_type: OP_TYPE.into(),
                domain: "ai.ember".into(),
                input: inputs,
                output: vec![attended],
                attribute: vec![
                    int_attr("layer", layer as i64),
                    int_attr("group", group as i64),
                    int_attr("head_dim", architecture.head_dim() as i64),
                    int_attr("window", window.unwrap_or(0) as i64),
                ],
                ..Default::default()
            },
        );
    }
    graph.input.retain(|i| !i.name.starts_with("past_"));
    graph.output.retain(|o| !o.name.starts_with("present_"));
    // Keep only what the remaining outputs need (ONNX nodes are in topological order).
    let mut needed: HashSet<String> = graph.output.iter().map(|o| o.name.clone()).collect();
    let mut keep = vec![false; graph.node.len()];
    for (i, node) in graph.node.iter().enumerate().rev() {
        if node.output.iter().any(|o| needed.contains(o)) {
            keep[i] = true;
            needed.extend(node.input.iter().cloned());
        }
    }
    let mut keep = keep.into_iter();
    graph.node.retain(|_| keep.next().unwrap_or(false));
    if let Some(dangling) = graph
        .node
        .iter()
        .flat_map(|n| &n.input)
        .find(|name| name.starts_with("past_") || name.starts_with("present_"))
    {
        return Err(format!("{dangling} is still read after the rewrite"));
    }
    Ok(())
}

/// One layer's attention over the session's cache of its keys and values.
///
/// Inputs: queries `[1, S, heads · head_dim]`, keys and values `[1, S, kv_heads · head_dim]` (as
/// the projections make them, before RoPE), positions `[1, S]` (consecutive, starting where the
/// cache ends), and RoPE's cosines and sines `[context, head_dim / 2]`. Query head `h` uses
/// key/value head `h / group`; each adjacent pair `(a, b)` of a query or key head at position `p`
/// becomes `(a·cos − b·sin, a·sin + b·cos)` with row `p` of the tables. Output: the attended
/// values, shaped like the queries. Query position `p` sees the cached positions `0..=p`, or
/// with a `window` the last `window` of them (`p + 1 − window..=p`): such a layer's cache drops
/// the positions no later query can see.
#[derive(Debug, Clone)]
pub struct CachedAttention {
    /// The layer: ops of different layers must never compare equal (tract merges equal ops).
    layer: usize,
    /// Query heads per key/value head.
    group: usize,
    /// Values per head.
    head_dim: usize,
    /// Positions a query sees, its own included (0: all of them).
    window: usize,
    /// Threads the query rows are split over.
    workers: Arc<Workers>,
}

impl PartialEq for CachedAttention {
    fn eq(&self, other: &Self) -> bool {
        (self.layer, self.group, self.head_dim, self.window)
            == (other.layer, other.group, other.head_dim, other.window)
    }
}
impl Eq for CachedAttention {}

/// A session's cache for one layer.
#[derive(Debug, Clone, Default)]
struct LayerCache {
    /// Per key/value head, its keys in tiles of eight positions, each tile transposed
    /// (`hd × 8`, zeros beyond the last position).
    keys: Vec<Vec<f32>>,
    /// Per key/value head, every position's value as `hd` consecutive numbers.
    values: Vec<Vec<f32>>,
    /// Positions seen so far.
    positions: usize,
    /// Positions dropped from the front of `keys` and `values` (a multiple of [`LANES`]):
    /// stored position `i` is position `dropped + i`.
    dropped: usize,
}

/// A sliding-window cache drops the positions out of sight once this many have gathered (a
/// multiple of [`LANES`]), so that moving the rest forward is rare.
const DROP_POSITIONS: usize = 64;

/// The most positions a sliding-window cache holds beyond its window and the positions being
/// fed: those gathered for the next drop.
pub(crate) const WINDOW_SLACK: usize = DROP_POSITIONS + LANES;

impl Op for CachedAttention {
    fn name(&self) -> StaticName {
        OP_TYPE.into()
    }
    op_as_typed_op!();
}

impl EvalOp for CachedAttention {
    not_out_of_plan!();

    fn state(&self, _ctx: &EvalContext) -> TractResult<Option<Box<dyn OpState>>> {
        Ok(Some(Box::<LayerCache>::default()))
    }
}

impl OpState for LayerCache {
    fn eval(
        &mut self,
        _ctx: &EvalContext,
        op: &dyn Op,
        inputs: TVec<TValue>,
    ) -> TractResult<TVec<TValue>> {
        let op = op
            .downcast_ref::<CachedAttention>()
            .context("cached attention state given another op")?;
        let (q, k, v, positions, cos, sin) = args_6!(inputs);
        op.attend(self, [&q, &k, &v], &positions, [&cos, &sin])
    }

    fn reset_lanes(&mut self, _lanes: &[LaneId]) -> TractResult<()> {
        bail!("Ember's cached attention holds one conversation, not one per lane")
    }
}

/// Rotates each adjacent pair of `head` by the angles whose cosines and sines are `cos`/`sin`,
/// with the same f32 operations as the graph's RoPE nodes.
fn rotate(head: &mut [f32], cos: &[f32], sin: &[f32]) {
    for ((pair, &c), &s) in head.chunks_exact_mut(2).zip(cos).zip(sin) {
        let (a, b) = (pair[0], pair[1]);
        pair[0] = a * c - b * s;
        pair[1] = a * s + b * c;
    }
}

impl CachedAttention {
    fn attend(
        &self,
        cache: &mut LayerCache,
        [q, k, v]: [&Tensor; 3],
        positions: &Tensor,
        [cos, sin]: [&Tensor; 2],
    ) -> TractResult<TVec<TValue>> {
        let (group, hd) = (self.group, self.head_dim);
        let &[1, steps, width] = q.shape() else {
            bail!("attention: queries of shape {:?}", q.shape());
        };
        let heads = width / hd;
        let kv_heads = heads / group;
        ensure!(
            hd.is_multiple_of(LANES)
                && heads * hd == width
                && kv_heads * group == heads
                && k.shape() == [1, steps, kv_heads * hd]
                && v.shape() == [1, steps, kv_heads * hd]
                && positions.len() == steps
                && cos.rank() == 2
                && cos.shape()[1] * 2 == hd
                && sin.shape() == cos.shape(),
            "attention: queries {:?}, keys {:?}, values {:?}, positions {:?}, RoPE tables {:?} do not agree",
            q.shape(),
            k.shape(),
            v.shape(),
            positions.shape(),
            cos.shape()
        );
        let positions = positions.cast_to::<i64>()?;
        let positions = positions.try_as_plain_ram()?.as_slice::<i64>()?;
        let start = cache.positions;
        ensure!(
            positions
                .iter()
                .enumerate()
                .all(|(s, &p)| usize::try_from(p) == Ok(start + s)),
            "attention: positions {positions:?} do not continue the cache of {start} positions"
        );
        let (cos, sin) = (
            cos.try_as_plain_ram()?.as_slice::<f32>()?,
            sin.try_as_plain_ram()?.as_slice::<f32>()?,
        );
        let half = hd / 2;
        ensure!(
            (start + steps) * half <= cos.len(),
            "attention: position {} is beyond the RoPE tables",
            start + steps - 1
        );
        let angles = |step: usize| {
            let at = (start + step) * half;
            (&cos[at..at + half], &sin[at..at + half])
        };
        if cache.keys.len() != kv_heads {
            cache.keys = vec![Vec::new(); kv_heads];
            cache.values = vec![Vec::new(); kv_heads];
        }
        // The first position any query of this call sees, with a window: those before it are
        // out of sight for good.
        if self.window > 0 {
            let first_seen = (start + 1).saturating_sub(self.window);
            let droppable = (first_seen - cache.dropped) / LANES * LANES;
            if droppable >= DROP_POSITIONS {
                for (keys, values) in cache.keys.iter_mut().zip(&mut cache.values) {
                    keys.drain(..droppable * hd);
                    values.drain(..droppable * hd);
                }
                cache.dropped += droppable;
            }
        }
        let dropped = cache.dropped;
        let (k, v) = (
            k.try_as_plain_ram()?.as_slice::<f32>()?,
            v.try_as_plain_ram()?.as_slice::<f32>()?,
        );
        let mut key = vec![0f32; hd];
        for step in 0..steps {
            let (cos, sin) = angles(step);
            for head in 0..kv_heads {
                let at = (step * kv_heads + head) * hd;
                key.copy_from_slice(&k[at..at + hd]);
                rotate(&mut key, cos, sin);
                let (position, keys) = (start + step - dropped, &mut cache.keys[head]);
                if position.is_multiple_of(LANES) {
                    keys.resize(keys.len() + hd * LANES, 0.0);
                }
                let tile = &mut keys[position / LANES * hd * LANES..][..hd * LANES];
                for (d, &x) in key.iter().enumerate() {
                    tile[d * LANES + position % LANES] = x;
                }
                cache.values[head].extend_from_slice(&v[at..at + hd]);
            }
        }
        cache.positions += steps;

        let mut queries = q.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
        for (step, row) in queries.chunks_exact_mut(width).enumerate() {
            let (cos, sin) = angles(step);
            for head in row.chunks_exact_mut(hd) {
                rotate(head, cos, sin);
            }
        }
        let scale = 1.0 / (hd as f32).sqrt();
        let cache = &*cache;
        // One item: a key/value head, up to BLOCK_STEPS positions (the `group` query heads
        // that share that head at each of them: every key and value is loaded once for all of
        // them) and a part of the cache. Decoding (one block) would leave fewer items than
        // threads, so the cache is then cut into parts, one per thread, whose partial softmaxes
        // are merged afterwards.
        let blocks = steps.div_ceil(BLOCK_STEPS);
        let stored = cache.positions - dropped;
        let tiles = stored.div_ceil(LANES);
        let parts = if blocks == 1 {
            self.workers.threads().min(tiles / MIN_PART_TILES).max(1)
        } else {
            1
        };
        let items = blocks * kv_heads * parts;
        let rows_of = |block: usize, kv: usize| {
            let first = block * BLOCK_STEPS;
            (first..steps.min(first + BLOCK_STEPS))
                .flat_map(move |step| (0..group).map(move |h| (step, kv * group + h)))
        };
        let results: Vec<Mutex<Partial>> = (0..items).map(|_| Mutex::default()).collect();
        // Later positions see more keys: chunks take every `chunks`-th item, not a run of
        // them, so that each gets its share of early and late ones. A split cache makes items
        // of one size: one chunk per thread, each taking a part of every head (more chunks
        // than threads would leave one thread a chunk more).
        let chunks = if parts > 1 {
            parts
        } else {
            items.div_ceil(self.workers.chunk_size(items))
        };
        self.workers.run(chunks, &|chunk| {
            let mut scratch = Scratch::default();
            for item in (chunk..items).step_by(chunks) {
                let (part, kv, block) = (
                    item % parts,
                    item / parts % kv_heads,
                    item / parts / kv_heads,
                );
                // Each query row and the stored positions it sees.
                let rows: Vec<(&[f32], Range<usize>)> = rows_of(block, kv)
                    .map(|(step, head)| {
                        let end = start + step + 1;
                        let first = match self.window {
                            0 => 0,
                            window => end.saturating_sub(window),
                        };
                        (
                            &queries[(step * heads + head) * hd..][..hd],
                            first.saturating_sub(dropped)..end - dropped,
                        )
                    })
                    .collect();
                let first = part * tiles / parts * LANES;
                let end = ((part + 1) * tiles / parts * LANES).min(stored);
                let mut partial = Partial::default();
                attend_part(
                    &rows,
                    (&cache.keys[kv], &cache.values[kv]),
                    first..end,
                    scale,
                    &mut scratch,
                    &mut partial,
                );
                *results[item].lock().unwrap_or_else(|e| e.into_inner()) = partial;
            }
        });
        let results: Vec<Partial> = results
            .into_iter()
            .map(|r| r.into_inner().unwrap_or_else(|e| e.into_inner()))
            .collect();
        let mut out = vec![0f32; queries.len()];
        for (index, partials) in results.chunks_exact(parts).enumerate() {
            let (block, kv) = (index / kv_heads, index % kv_heads);
            for (r, (step, head)) in rows_of(block, kv).enumerate() {
                let row = &mut out[(step * heads + head) * hd..][..hd];
                let max = partials
                    .iter()
                    .map(|p| p.maxima[r])
                    .fold(f32::NEG_INFINITY, f32::max);
                let mut total = 0.0;
                for partial in partials {
                    let weight = (partial.maxima[r] - max).exp();
                    total += weight * partial.totals[r];
                    for (o, &x) in row.iter_mut().zip(&partial.sums[r * hd..][..hd]) {
                        *o += weight * x;
                    }
                }
                for o in row.iter_mut() {
                    *o /= total;
                }
            }
        }
        Ok(tvec!(
            tract_ndarray::Array3::from_shape_vec((1, steps, width), out)?
                .into_tensor()
                .into_tvalue()
        ))
    }
}

/// Positions whose queries one work item of attention takes together.
const BLOCK_STEPS: usize = 4;
/// Keys (and query rows) an inner loop of [`attend_part`] takes at once: one 256-bit vector.
const LANES: usize = 8;
/// Positions whose values [`attend_part`] weighs for every dimension before it reads on.
const VALUE_BLOCK: usize = 16;
/// How far ahead of the position it reads attention asks for keys and values to be fetched
/// (into the level-2 cache). Measured on a cache too large for the level-3 cache (2 threads,
/// 400 positions): 32 took a layer 30–33 µs, 64 took 38–40, 128 took 44; fetched into the
/// level-1 cache 38, 44 and 48.
const PREFETCH_POSITIONS: usize = 32;
/// The fewest tiles of keys a part of the cache is given when decoding splits it.
const MIN_PART_TILES: usize = 2;

/// Attention of some query rows over a part of the cache, before the parts are merged: per
/// row, the largest score in the part, the sum of `exp(score − largest)` and those weights'
/// sum of values (`rows × hd`, row after row).
#[derive(Default)]
struct Partial {
    maxima: Vec<f32>,
    totals: Vec<f32>,
    sums: Vec<f32>,
}

/// [`attend_part`]'s working memory, kept across the items a thread takes. It takes the rows
/// in groups of `R` (see [`attend_part_generic`]).
#[derive(Default)]
struct Scratch {
    /// Each row's scores, then its weights (`rows × longest`).
    weights: Vec<f32>,
    /// The queries, `R` rows side by side.
    queries: Vec<f32>,
    /// `R` rows' weights side by side.
    columns: Vec<f32>,
    /// `R` rows' running sums of weighted values, eight dimensions at a time.
    sums: Vec<f32>,
}

/// The arithmetic [`attend_part`]'s build for a CPU can do beyond plain f32 operations.
trait Arith: Copy {
    /// `a · b + c`, fused into one rounding where the CPU has an instruction for it.
    #[inline(always)]
    fn mul_add(self, a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }

    /// Asks for the cache's bytes from `data` on (any address: a prefetch never faults) to be
    /// brought into the cache: the cache is read once per token, and waiting on each line
    /// as it is reached leaves most of the memory bandwidth unused.
    #[inline(always)]
    fn prefetch(self, _data: *const f32, _bytes: usize) {}

    /// Replaces each `x` of `row` with `exp(x − max)`, as `(x - max).exp()` would.
    #[inline(always)]
    fn exp_shifted(self, row: &mut [f32], max: f32) {
        for x in row {
            *x = (*x - max).exp();
        }
    }
}

/// Plain f32 operations, for any CPU.
#[derive(Clone, Copy)]
struct Portable;

impl Arith for Portable {}

/// x86-64's FMA, AVX2 and prefetch instructions; a value exists only where the CPU has FMA and
/// AVX2.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Fma(());

#[cfg(target_arch = "x86_64")]
impl Fma {
    fn detect() -> Option<Self> {
        (std::arch::is_x86_feature_detected!("fma") && std::arch::is_x86_feature_detected!("avx2"))
            .then_some(Fma(()))
    }
}

#[cfg(target_arch = "x86_64")]
impl Arith for Fma {
    /// One `vfmadd` where inlined into a build with FMA enabled ([`attend_part`]'s), else the
    /// library call (as exact, slower).
    #[inline(always)]
    fn mul_add(self, a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }

    #[inline(always)]
    fn prefetch(self, data: *const f32, bytes: usize) {
        use std::arch::x86_64::{_MM_HINT_T1, _mm_prefetch};
        for line in (0..bytes).step_by(64) {
            // SAFETY: a prefetch is a hint that reads nothing and never faults, whatever the
            // address (SSE, which every x86-64 CPU has).
            unsafe { _mm_prefetch::<_MM_HINT_T1>(data.cast::<i8>().wrapping_add(line)) };
        }
    }

    /// Eight at a time, the same bits (see [`crate::exp`]).
    #[inline(always)]
    fn exp_shifted(self, row: &mut [f32], max: f32) {
        // SAFETY: a `Fma` exists only where the CPU has AVX2 and FMA.
        unsafe { crate::exp::exp_shifted(row, max) }
    }
}

/// Attention of several query rows that share one key/value head over the cached positions
/// `range` (its start a multiple of [`LANES`]): `rows` holds each query and the positions it
/// sees (of the cache, given as the head's keys, in transposed tiles of eight, and values,
/// whole vectors of `hd` numbers). Scores come from a tile of eight keys at a time, so
/// no dot product needs a horizontal sum; on x86-64 with AVX2 and FMA the same code runs
/// compiled for 256-bit vectors.
fn attend_part(
    rows: &[(&[f32], Range<usize>)],
    cache: (&[f32], &[f32]),
    range: std::ops::Range<usize>,
    scale: f32,
    scratch: &mut Scratch,
    partial: &mut Partial,
) {
    #[cfg(target_arch = "x86_64")]
    if let Some(fma) = Fma::detect() {
        /// The caller guarantees AVX2 and FMA.
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(
            fma: Fma,
            rows: &[(&[f32], Range<usize>)],
            cache: (&[f32], &[f32]),
            range: std::ops::Range<usize>,
            scale: f32,
            scratch: &mut Scratch,
            partial: &mut Partial,
        ) {
            attend_part_grouped(fma, rows, cache, range, scale, scratch, partial)
        }
        // SAFETY: the CPU has AVX2 and FMA (detected above).
        return unsafe { avx2(fma, rows, cache, range, scale, scratch, partial) };
    }
    attend_part_grouped(Portable, rows, cache, range, scale, scratch, partial)
}

/// [`attend_part_generic`] taking the rows three at a time when threes divide their count and
/// fours do not (decoding with three query heads per key/value head, as SmolLM2), so that no
/// lane computes a row that is not there; four at a time otherwise. Inlined into each build.
#[inline(always)]
fn attend_part_grouped(
    arith: impl Arith,
    rows: &[(&[f32], Range<usize>)],
    cache: (&[f32], &[f32]),
    range: std::ops::Range<usize>,
    scale: f32,
    scratch: &mut Scratch,
    partial: &mut Partial,
) {
    if rows.len().is_multiple_of(3) && !rows.len().is_multiple_of(4) {
        attend_part_generic::<3>(arith, rows, cache, range, scale, scratch, partial)
    } else {
        attend_part_generic::<4>(arith, rows, cache, range, scale, scratch, partial)
    }
}

/// [`attend_part`]'s arithmetic, inlined into each build of it, taking the rows `R` at a time.
/// Plain loops over fixed-size arrays (not iterator adapters, which would be compiled outside
/// the caller's target features).
#[inline(always)]
fn attend_part_generic<const R: usize>(
    arith: impl Arith,
    rows: &[(&[f32], Range<usize>)],
    (keys, values): (&[f32], &[f32]),
    range: std::ops::Range<usize>,
    scale: f32,
    scratch: &mut Scratch,
    partial: &mut Partial,
) {
    let hd = rows.first().map_or(LANES, |(q, _)| q.len());
    let first = range.start;
    // Positions of the part some row sees.
    let longest = rows
        .iter()
        .map(|(_, seen)| seen.end.min(range.end).saturating_sub(first))
        .max()
        .unwrap_or(0);
    partial.maxima.clear();
    partial.totals.clear();
    partial.sums.clear();
    partial.sums.resize(rows.len() * hd, 0.0);
    let Scratch {
        weights,
        queries,
        columns,
        sums,
    } = scratch;
    weights.clear();
    weights.resize(rows.len() * longest, 0.0);
    // The queries `R` rows at a time, interleaved: `queries[g·hd + d][i]` is dimension d of
    // row R·g + i (zeros past the last row).
    queries.clear();
    queries.resize(rows.len().div_ceil(R) * hd * R, 0.0);
    let (queries, _) = queries.as_chunks_mut::<R>();
    for (r, &(query, _)) in rows.iter().enumerate() {
        for (d, &x) in query.iter().enumerate().take(hd) {
            queries[r / R * hd + d][r % R] = x;
        }
    }
    // Scores, `R` rows by sixteen keys (two tiles) at a time: `2·R` independent sums keep the
    // vector units busy (`R` would wait on each other's additions).
    let keys = &keys[first * hd..];
    let tile_bytes = hd * LANES * size_of::<f32>();
    let tile = |first_key: usize| keys[first_key * hd..][..hd * LANES].as_chunks::<LANES>().0;
    // The loop asks for the keys it will read after the next PREFETCH_POSITIONS; these are
    // the first ones, asked for all at once.
    arith.prefetch(keys.as_ptr(), PREFETCH_POSITIONS * hd * size_of::<f32>());
    for first_key in (0..longest).step_by(2 * LANES) {
        arith.prefetch(
            keys.as_ptr()
                .wrapping_add((first_key + PREFETCH_POSITIONS) * hd),
            2 * tile_bytes,
        );
        // A last tile without a second is scored twice, its copy's scores dropped.
        let second = if first_key + LANES < longest {
            first_key + LANES
        } else {
            first_key
        };
        score_tiles(
            arith,
            [tile(first_key), tile(second)],
            queries,
            weights,
            (rows.len(), longest),
            first_key,
            scale,
        );
    }
    // Softmax's numerators over the positions each row sees (the rest weigh 0), and their
    // largest score and sum, for the merge, written `R` rows side by side for the weighted
    // sums of the values (`columns[j][i]`: position j of row `first_row + i`).
    if longest == 0 {
        partial.maxima.resize(rows.len(), f32::NEG_INFINITY);
        partial.totals.resize(rows.len(), 0.0);
        return;
    }
    let values = &values[first * hd..];
    arith.prefetch(values.as_ptr(), PREFETCH_POSITIONS * hd * size_of::<f32>());
    let chunks = hd / LANES;
    for first_row in (0..rows.len()).step_by(R) {
        let count = R.min(rows.len() - first_row);
        columns.clear();
        columns.resize(longest * R, 0.0);
        let (columns, _) = columns.as_chunks_mut::<R>();
        for i in 0..count {
            let r = first_row + i;
            let visible = rows[r].1.end.saturating_sub(first).min(longest);
            let hidden = rows[r].1.start.saturating_sub(first).min(visible);
            let (seen, unseen) = weights[r * longest..][..longest].split_at_mut(visible);
            // Positions before a sliding window weigh 0 too.
            let (before, seen) = seen.split_at_mut(hidden);
            before.fill(0.0);
            let max = seen.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            arith.exp_shifted(seen, max);
            unseen.fill(0.0);
            partial.maxima.push(max);
        }
        // The rows' sums run side by side (one addition after another would wait on each
        // other), each in position order: the same results wherever the buffers lie and
        // however the work is split (a vector sum from the first aligned address would not
        // be; adding the unseen positions' zeros changes no sum).
        let mut totals = [0f32; R];
        for (j, column) in columns.iter_mut().enumerate() {
            for i in 0..count {
                let weight = weights[(first_row + i) * longest + j];
                column[i] = weight;
                totals[i] += weight;
            }
        }
        partial.totals.extend_from_slice(&totals[..count]);
        // Weighted sums of the values, `R` rows by eight dimensions at a time. The values
        // are read in order, a block of positions at a time, all dimensions of a block before
        // the next (a pass per run of dimensions over the whole cache would stride through
        // memory); each sum still adds its terms in position order.
        sums.clear();
        sums.resize(chunks * R * LANES, 0.0);
        let (sums, _) = sums.as_chunks_mut::<LANES>().0.as_chunks_mut::<R>();
        for (columns, values) in columns
            .chunks(VALUE_BLOCK)
            .zip(values.chunks(VALUE_BLOCK * hd))
        {
            arith.prefetch(
                values.as_ptr().wrapping_add(PREFETCH_POSITIONS * hd),
                VALUE_BLOCK * hd * size_of::<f32>(),
            );
            let mut pairs = sums.chunks_exact_mut(2);
            for (pair, acc) in (&mut pairs).enumerate() {
                let acc: &mut [_; 2] = acc.try_into().expect("a pair");
                weigh_values(arith, acc, 2 * pair, columns, values, hd);
            }
            if let [acc] = pairs.into_remainder() {
                weigh_values(
                    arith,
                    std::array::from_mut(acc),
                    chunks - 1,
                    columns,
                    values,
                    hd,
                );
            }
        }
        for (chunk, acc) in sums.iter().enumerate() {
            for (i, acc) in acc.iter().enumerate().take(count) {
                partial.sums[(first_row + i) * hd + chunk * LANES..][..LANES].copy_from_slice(acc);
            }
        }
    }
}

/// Writes the scaled scores of every row of `queries` (`R` rows side by side, `hd` entries
/// per group) against two tiles of eight keys, from position `first_key` on, into `weights`
/// (`rows × longest`): each score a sum over the dimensions in order.
#[inline(always)]
fn score_tiles<const R: usize>(
    arith: impl Arith,
    tiles: [&[[f32; LANES]]; 2],
    queries: &[[f32; R]],
    weights: &mut [f32],
    (rows, longest): (usize, usize),
    first_key: usize,
    scale: f32,
) {
    let hd = tiles[0].len();
    for (group, q) in queries.chunks_exact(hd).enumerate() {
        let (mut first, mut second) = ([[0f32; LANES]; R], [[0f32; LANES]; R]);
        for ((q, k), l) in q.iter().zip(tiles[0]).zip(tiles[1]) {
            for i in 0..R {
                for j in 0..LANES {
                    first[i][j] = arith.mul_add(q[i], k[j], first[i][j]);
                    second[i][j] = arith.mul_add(q[i], l[j], second[i][j]);
                }
            }
        }
        for (t, acc) in [first, second].iter().enumerate() {
            let key = first_key + t * LANES;
            let Some(width) = longest.checked_sub(key).map(|left| left.min(LANES)) else {
                break;
            };
            for (i, acc) in acc.iter().enumerate().take(rows - R * group) {
                let row = &mut weights[(R * group + i) * longest + key..][..width];
                for (w, a) in row.iter_mut().zip(acc) {
                    *w = a * scale;
                }
            }
        }
    }
}

/// Adds to `sums` (`R` rows' sums of `C` runs of eight dimensions, from run `first` of each
/// value) each position's value weighted by the rows' `columns` entry, position after
/// position: `R · C` independent sums keep the vector units busy.
#[inline(always)]
fn weigh_values<const R: usize, const C: usize>(
    arith: impl Arith,
    sums: &mut [[[f32; LANES]; R]; C],
    first: usize,
    columns: &[[f32; R]],
    values: &[f32],
    hd: usize,
) {
    let mut acc = *sums;
    for (w, value) in columns.iter().zip(values.chunks_exact(hd)) {
        let (v, _) = value[first * LANES..][..C * LANES].as_chunks::<LANES>();
        for c in 0..C {
            let v = &v[c];
            for i in 0..R {
                for l in 0..LANES {
                    acc[c][i][l] = arith.mul_add(w[i], v[l], acc[c][i][l]);
                }
            }
        }
    }
    *sums = acc;
}

impl TypedOp for CachedAttention {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(inputs[0].shape.to_tvec())))
    }
    as_op!();
}

impl Expansion for CachedAttention {
    fn name(&self) -> StaticName {
        OP_TYPE.into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 6)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, f32::datum_type())?;
        s.equals(&outputs[0].shape, &inputs[0].shape)
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.clone(), inputs)
    }
}

/// Builds [`CachedAttention`] for an [`OP_TYPE`] node.
pub fn build(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let op = CachedAttention {
        layer: node.get_attr("layer")?,
        group: node.get_attr("group")?,
        head_dim: node.get_attr("head_dim")?,
        window: node.get_attr("window")?,
        workers: MappedTensors::with(|m| Ok(Arc::clone(&m.workers)))?,
    };
    ensure!(
        op.group > 0 && op.head_dim > 0,
        "{OP_TYPE} {:?}: bad attributes",
        node.name
    );
    Ok((expand(op), vec![]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1).
    fn values(count: usize, seed: usize) -> Vec<f32> {
        (0..count)
            .map(|i| ((i * 7919 + seed * 104_729) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    /// RoPE tables of `context` rows for heads of `hd` values.
    fn tables(context: usize, hd: usize) -> (Vec<f32>, Vec<f32>) {
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for p in 0..context {
            for i in 0..hd / 2 {
                let angle = p as f64 * 10000f64.powf(-2.0 * i as f64 / hd as f64);
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        (cos, sin)
    }

    /// `x` rotated as position `p`, in f64.
    fn rotated(x: &[f32], p: usize) -> Vec<f64> {
        let hd = x.len();
        x.chunks_exact(2)
            .enumerate()
            .flat_map(|(i, pair)| {
                let angle = p as f64 * 10000f64.powf(-2.0 * i as f64 / hd as f64);
                let (a, b) = (pair[0] as f64, pair[1] as f64);
                [
                    a * angle.cos() - b * angle.sin(),
                    a * angle.sin() + b * angle.cos(),
                ]
            })
            .collect()
    }

    /// Causal attention with RoPE over all positions so far (or the last `window` of them), in
    /// f64, straight from the definition: `all_q[p][h]` (query head h), `all_k[p][kv]`,
    /// `all_v[p][kv]`; keys (rotated in f32 with the tables `cos`/`sin`, as the op does).
    #[allow(clippy::too_many_arguments)]
    fn naive(
        all_q: &[Vec<Vec<f32>>],
        all_k: &[Vec<Vec<f32>>],
        all_v: &[Vec<Vec<f32>>],
        (cos, sin): (&[f32], &[f32]),
        (p, window): (usize, usize),
        h: usize,
        group: usize,
    ) -> Vec<f64> {
        let kv = h / group;
        let hd = all_k[0][0].len();
        let scale = 1.0 / (hd as f64).sqrt();
        let query = rotated(&all_q[p][h], p);
        let first = if window == 0 {
            0
        } else {
            (p + 1).saturating_sub(window)
        };
        let scores: Vec<f64> = (first..=p)
            .map(|t| {
                let mut key = all_k[t][kv].clone();
                rotate(&mut key, &cos[t * hd / 2..], &sin[t * hd / 2..]);
                (0..hd).map(|d| query[d] * f64::from(key[d])).sum::<f64>() * scale
            })
            .collect();
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let sum: f64 = exps.iter().sum();
        (0..hd)
            .map(|d| {
                (first..=p)
                    .zip(&exps)
                    .map(|(t, e)| e / sum * f64::from(all_v[t][kv][d]))
                    .sum()
            })
            .collect()
    }

    #[test]
    fn prefill_then_decode_match_causal_attention_with_rope() {
        // Decoding after 41 positions splits the cache into parts (two threads).
        let cache = attend_calls_match_naive(0, &[5, 1, 1, 3, 30, 1, 1]);
        assert_eq!((cache.positions, cache.dropped), (42, 0));
    }

    #[test]
    fn a_sliding_window_sees_its_last_positions_and_drops_the_rest() {
        // Prefill blocks that straddle the window's edge, then decoding. The cache drops what
        // is out of sight once 64 positions are: 72 (whole tiles) before the call at 82, 64
        // more before the one at 146.
        let cache = attend_calls_match_naive(10, &[5, 1, 1, 3, 30, 1, 1, 40, 1, 3, 60, 1, 1]);
        assert_eq!((cache.positions, cache.dropped), (148, 136));
        assert_eq!(cache.values[0].len(), (148 - 136) * 16);
    }

    /// Runs the op over calls of `steps` positions each (with a `window`, 0 for none), checks
    /// every output against [`naive`], and returns the cache.
    fn attend_calls_match_naive(window: usize, calls: &[usize]) -> LayerCache {
        let (kv_heads, group, hd) = (2, 3, 16);
        let heads = kv_heads * group;
        let op = CachedAttention {
            layer: 0,
            group,
            head_dim: hd,
            window,
            workers: Arc::new(Workers::new(2).unwrap()),
        };
        let context: usize = calls.iter().sum();
        let (cos_table, sin_table) = tables(context, hd);
        let cos = Tensor::from_shape(&[context, hd / 2], &cos_table).unwrap();
        let sin = Tensor::from_shape(&[context, hd / 2], &sin_table).unwrap();
        let mut cache = LayerCache::default();
        let (mut all_q, mut all_k, mut all_v) = (Vec::new(), Vec::new(), Vec::new());
        let mut position = 0;
        for (call, &steps) in calls.iter().enumerate() {
            let per_step = |heads: usize, seed: usize| -> Vec<Vec<Vec<f32>>> {
                (0..steps)
                    .map(|s| {
                        (0..heads)
                            .map(|h| values(hd, seed + call * 100 + s * 10 + h))
                            .collect()
                    })
                    .collect()
            };
            let (q, k, v) = (
                per_step(heads, 0),
                per_step(kv_heads, 5000),
                per_step(kv_heads, 9000),
            );
            let flat = |x: &Vec<Vec<Vec<f32>>>| -> Vec<f32> {
                x.iter().flatten().flatten().copied().collect()
            };
            let positions: Vec<i64> = (position..position + steps).map(|p| p as i64).collect();
            let tensor = |shape: &[usize], data: &[f32]| Tensor::from_shape(shape, data).unwrap();
            let out = op
                .attend(
                    &mut cache,
                    [
                        &tensor(&[1, steps, heads * hd], &flat(&q)),
                        &tensor(&[1, steps, kv_heads * hd], &flat(&k)),
                        &tensor(&[1, steps, kv_heads * hd], &flat(&v)),
                    ],
                    &Tensor::from_shape(&[1, steps], &positions).unwrap(),
                    [&cos, &sin],
                )
                .unwrap();
            let out = out[0]
                .try_as_plain_ram()
                .unwrap()
                .as_slice::<f32>()
                .unwrap()
                .to_vec();
            all_q.extend(q);
            all_k.extend(k);
            all_v.extend(v);
            for s in 0..steps {
                for h in 0..heads {
                    let want = naive(
                        &all_q,
                        &all_k,
                        &all_v,
                        (&cos_table, &sin_table),
                        (position + s, window),
                        h,
                        group,
                    );
                    for (got, want) in out[(s * heads + h) * hd..][..hd].iter().zip(want) {
                        assert!(
                            (*got as f64 - want).abs() < 1e-5,
                            "call {call} step {s} head {h}: {got} vs {want}"
                        );
                    }
                }
            }
            position += steps;
        }
        assert_eq!(cache.positions, position);
        cache
    }

    #[test]
    fn positions_that_do_not_continue_the_cache_are_refused() {
        let op = CachedAttention {
            layer: 0,
            group: 1,
            head_dim: 8,
            window: 0,
            workers: Arc::new(Workers::new(1).unwrap()),
        };
        let mut cache = LayerCache::default();
        let zeros = |shape: &[usize]| Tensor::zero::<f32>(shape).unwrap();
        let at = |p: i64| Tensor::from_shape(&[1, 1], &[p]).unwrap();
        let (table, q) = (zeros(&[4, 4]), zeros(&[1, 1, 8]));
        let tables = [&table, &table];
        assert!(op.attend(&mut cache, [&q, &q, &q], &at(0), tables).is_ok());
        let error = op
            .attend(&mut cache, [&q, &q, &q], &at(5), tables)
            .unwrap_err();
        assert!(format!("{error}").contains("do not continue"), "{error}");
        let narrow = zeros(&[1, 1, 4]);
        assert!(
            op.attend(&mut cache, [&narrow, &q, &q], &at(1), tables)
                .is_err()
        );
        let error = op.attend(
            &mut cache,
            [&q, &q, &q],
            &at(1),
            [&zeros(&[1, 4]), &zeros(&[1, 4])],
        );
        assert!(format!("{}", error.unwrap_err()).contains("beyond the RoPE tables"));
    }

    #[test]
    fn a_graph_without_caches_is_refused() {
        let mut graph = GraphProto::default();
        let architecture = Architecture {
            n_layers: 1,
            n_embd: 8,
            n_ff: 32,
            n_head: 1,
            n_head_kv: 1,
            rope_dim: 8,
            rope_base: 10_000.0,
            rms_eps: 1e-5,
            context_length: 16,
            vocab_size: 4,
            variant: Default::default(),
        };
        assert!(keep_cache_in_place(&mut graph, &architecture).is_err());
    }
}
