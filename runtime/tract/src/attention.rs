//! Attention over a KV cache that stays in place.
//!
//! The image's graph carries the cache as explicit inputs and outputs (`past_*` → `Concat` →
//! `present_*`), which onnxruntime runs as it is. Run that way in tract, every step would copy
//! the whole cache into a new tensor and repack it for the two matrix products, so decoding
//! slows as the context grows. When tract loads the graph, [`keep_cache_in_place`] replaces each
//! layer's cache concatenation, masked scores, softmax and weighted sum with one
//! [`CachedAttention`] node: a stateful op whose state holds that layer's keys and values for
//! the session, appended in place as positions arrive and read where they lie.

use rayon::prelude::*;
use std::collections::HashSet;
use tract_onnx::model::ParsingContext;
use tract_onnx::pb::{AttributeProto, GraphProto, NodeProto, attribute_proto::AttributeType};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

/// The node type [`keep_cache_in_place`] writes (domain `ai.ember`).
pub const OP_TYPE: &str = "EmberCachedAttention";

fn int_attr(name: &str, value: usize) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: value as i64,
        ..Default::default()
    }
}

/// Rewrites `graph` (built by [`crate::graph::build`]) so that each of its `layers` attends over
/// a cache held in place by the session: one [`OP_TYPE`] node per layer takes the queries, the
/// new keys and values and the positions, and the `past_*` inputs, `present_*` outputs and every
/// node only they needed (the concatenations, the causal mask, the score products) go.
pub fn keep_cache_in_place(
    graph: &mut GraphProto,
    layers: usize,
    group: usize,
    head_dim: usize,
) -> Result<(), String> {
    for layer in 0..layers {
        let (present_key, present_value) = (
            format!("present_key.{layer}"),
            format!("present_value.{layer}"),
        );
        let find = |what: &str, test: &dyn Fn(&NodeProto) -> bool| {
            graph
                .node
                .iter()
                .position(test)
                .ok_or_else(|| format!("layer {layer}: the graph has no {what}"))
        };
        let produces = |name: &str| {
            let name = name.to_string();
            move |n: &NodeProto| n.op_type == "Concat" && n.output.first() == Some(&name)
        };
        let reads = |name: &str| {
            let name = name.to_string();
            move |n: &NodeProto| n.op_type == "MatMul" && n.input.get(1) == Some(&name)
        };
        let concat_key = find("key cache concatenation", &produces(&present_key))?;
        let concat_value = find("value cache concatenation", &produces(&present_value))?;
        let scores = find("product of queries and keys", &reads(&present_key))?;
        let mixed = find("product of weights and values", &reads(&present_value))?;
        let input = |node: usize, i: usize| {
            graph.node[node]
                .input
                .get(i)
                .cloned()
                .ok_or_else(|| format!("layer {layer}: node {node} lacks input {i}"))
        };
        let inputs = vec![
            input(scores, 0)?,
            input(concat_key, 1)?,
            input(concat_value, 1)?,
            "position_ids".to_string(),
        ];
        let output = graph.node[mixed].output.clone();
        graph.node[mixed] = NodeProto {
            name: format!("attention.{layer}"),
            op_type: OP_TYPE.into(),
            domain: "ai.ember".into(),
            input: inputs,
            output,
            attribute: vec![
                int_attr("layer", layer),
                int_attr("group", group),
                int_attr("head_dim", head_dim),
            ],
            ..Default::default()
        };
    }
    graph.input.retain(|i| !i.name.starts_with("past_"));
    graph.output.retain(|o| !o.name.starts_with("present_"));
    // Keep only what the remaining outputs need (ONNX nodes are in topological order): the
    // concatenations, the mask and the score products go.
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
/// Inputs: queries `[1, kv_heads, S · group, head_dim]` (the `group` query heads of each KV head
/// stacked as rows, position by position), keys `[1, kv_heads, head_dim, S]`, values
/// `[1, kv_heads, S, head_dim]`, positions `[1, S]` (consecutive, starting where the cache
/// ends). Output: the attended values, shaped like the queries. Query position `p` sees the
/// cached positions `0..=p`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedAttention {
    /// The layer: ops of different layers must never compare equal (tract merges equal ops).
    layer: usize,
    /// Query heads per key/value head.
    group: usize,
    /// Values per head.
    head_dim: usize,
}

/// A session's cache for one layer: per key/value head, every position's key (and value) as
/// `head_dim` consecutive values.
#[derive(Debug, Clone, Default)]
struct LayerCache {
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    positions: usize,
}

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
        let (q, k, v, positions) = args_4!(inputs);
        op.attend(self, &q, &k, &v, &positions)
    }

    fn reset_lanes(&mut self, _lanes: &[LaneId]) -> TractResult<()> {
        bail!("Ember's cached attention holds one conversation, not one per lane")
    }
}

impl CachedAttention {
    fn attend(
        &self,
        cache: &mut LayerCache,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        positions: &Tensor,
    ) -> TractResult<TVec<TValue>> {
        let (group, hd) = (self.group, self.head_dim);
        let &[1, kv_heads, rows, q_hd] = q.shape() else {
            bail!("attention: queries of shape {:?}", q.shape());
        };
        let steps = rows / group.max(1);
        ensure!(
            q_hd == hd
                && rows == steps * group
                && k.shape() == [1, kv_heads, hd, steps]
                && v.shape() == [1, kv_heads, steps, hd]
                && positions.len() == steps,
            "attention: queries {:?}, keys {:?}, values {:?}, positions {:?} do not agree",
            q.shape(),
            k.shape(),
            v.shape(),
            positions.shape()
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
        if cache.keys.len() != kv_heads {
            cache.keys = vec![Vec::new(); kv_heads];
            cache.values = vec![Vec::new(); kv_heads];
        }
        let (k, v) = (
            k.try_as_plain_ram()?.as_slice::<f32>()?,
            v.try_as_plain_ram()?.as_slice::<f32>()?,
        );
        for head in 0..kv_heads {
            let keys = &k[head * hd * steps..][..hd * steps];
            let cached = &mut cache.keys[head];
            for s in 0..steps {
                cached.extend((0..hd).map(|d| keys[d * steps + s]));
            }
            cache.values[head].extend_from_slice(&v[head * steps * hd..][..steps * hd]);
        }
        cache.positions += steps;

        let q = q.try_as_plain_ram()?.as_slice::<f32>()?;
        let scale = 1.0 / (hd as f32).sqrt();
        let mut out = vec![0f32; q.len()];
        let cache = &*cache;
        out.par_chunks_mut(hd)
            .zip(q.par_chunks(hd))
            .enumerate()
            .for_each_init(Vec::new, |scores, (row, (out, query))| {
                let (head, step) = (row / rows, row % rows / group);
                let seen = start + step + 1;
                let (keys, values) = (&cache.keys[head], &cache.values[head]);
                scores.clear();
                scores.extend(
                    keys.chunks_exact(hd)
                        .take(seen)
                        .map(|key| dot(query, key) * scale),
                );
                let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0;
                for s in scores.iter_mut() {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                for (weight, value) in scores.iter().zip(values.chunks_exact(hd)) {
                    let weight = weight / sum;
                    for (o, x) in out.iter_mut().zip(value) {
                        *o += weight * x;
                    }
                }
            });
        Ok(tvec!(
            Tensor::from_shape(&[1, kv_heads, rows, hd], &out)?.into_tvalue()
        ))
    }
}

/// `Σ a·b`, in eight lanes the compiler turns into vector code.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
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
        check_input_arity(inputs, 4)?;
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

    /// Causal attention over all positions so far, in f64, straight from the definition:
    /// `all_q[p][head][g]`, `all_k[p][head]`, `all_v[p][head]` (each `hd` values).
    fn naive(
        all_q: &[Vec<Vec<Vec<f32>>>],
        all_k: &[Vec<Vec<f32>>],
        all_v: &[Vec<Vec<f32>>],
        p: usize,
        head: usize,
        g: usize,
    ) -> Vec<f64> {
        let hd = all_k[0][0].len();
        let scale = 1.0 / (hd as f64).sqrt();
        let scores: Vec<f64> = (0..=p)
            .map(|t| {
                (0..hd)
                    .map(|d| all_q[p][head][g][d] as f64 * all_k[t][head][d] as f64)
                    .sum::<f64>()
                    * scale
            })
            .collect();
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let sum: f64 = exps.iter().sum();
        (0..hd)
            .map(|d| {
                (0..=p)
                    .map(|t| exps[t] / sum * all_v[t][head][d] as f64)
                    .sum()
            })
            .collect()
    }

    #[test]
    fn prefill_then_decode_match_causal_attention() {
        let (kv_heads, group, hd) = (2, 3, 16);
        let op = CachedAttention {
            layer: 0,
            group,
            head_dim: hd,
        };
        let mut cache = LayerCache::default();
        let (mut all_q, mut all_k, mut all_v) = (Vec::new(), Vec::new(), Vec::new());
        let mut position = 0;
        for (call, steps) in [5usize, 1, 1, 3].into_iter().enumerate() {
            // Per step and head: the group's queries, one key, one value.
            let q: Vec<Vec<Vec<Vec<f32>>>> = (0..steps)
                .map(|s| {
                    (0..kv_heads)
                        .map(|h| {
                            (0..group)
                                .map(|g| values(hd, call * 100 + s * 10 + h * 3 + g))
                                .collect()
                        })
                        .collect()
                })
                .collect();
            let k: Vec<Vec<Vec<f32>>> = (0..steps)
                .map(|s| {
                    (0..kv_heads)
                        .map(|h| values(hd, 5000 + call * 100 + s * 10 + h))
                        .collect()
                })
                .collect();
            let v: Vec<Vec<Vec<f32>>> = (0..steps)
                .map(|s| {
                    (0..kv_heads)
                        .map(|h| values(hd, 9000 + call * 100 + s * 10 + h))
                        .collect()
                })
                .collect();
            // The op's layouts: q [1, kvh, S·group, hd], k [1, kvh, hd, S], v [1, kvh, S, hd].
            let mut q_flat = Vec::new();
            for h in 0..kv_heads {
                for step in &q {
                    for query in &step[h] {
                        q_flat.extend(query);
                    }
                }
            }
            let mut k_flat = Vec::new();
            let mut v_flat = Vec::new();
            for h in 0..kv_heads {
                for d in 0..hd {
                    k_flat.extend(k.iter().map(|step| step[h][d]));
                }
                for step in &v {
                    v_flat.extend(&step[h]);
                }
            }
            let positions: Vec<i64> = (position..position + steps).map(|p| p as i64).collect();
            let tensor = |shape: &[usize], data: &[f32]| Tensor::from_shape(shape, data).unwrap();
            let out = op
                .attend(
                    &mut cache,
                    &tensor(&[1, kv_heads, steps * group, hd], &q_flat),
                    &tensor(&[1, kv_heads, hd, steps], &k_flat),
                    &tensor(&[1, kv_heads, steps, hd], &v_flat),
                    &Tensor::from_shape(&[1, steps], &positions).unwrap(),
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
            for h in 0..kv_heads {
                for s in 0..steps {
                    for g in 0..group {
                        let row = (h * steps + s) * group + g;
                        let want = naive(&all_q, &all_k, &all_v, position + s, h, g);
                        for (got, want) in out[row * hd..][..hd].iter().zip(want) {
                            assert!(
                                (*got as f64 - want).abs() < 1e-5,
                                "call {call} head {h} step {s}: {got} vs {want}"
                            );
                        }
                    }
                }
            }
            position += steps;
        }
        assert_eq!(cache.positions, position);
    }

    #[test]
    fn positions_that_do_not_continue_the_cache_are_refused() {
        let op = CachedAttention {
            layer: 0,
            group: 1,
            head_dim: 8,
        };
        let mut cache = LayerCache::default();
        let zeros = |shape: &[usize]| Tensor::zero::<f32>(shape).unwrap();
        let at = |p: i64| Tensor::from_shape(&[1, 1], &[p]).unwrap();
        let (q, k, v) = (
            zeros(&[1, 1, 1, 8]),
            zeros(&[1, 1, 8, 1]),
            zeros(&[1, 1, 1, 8]),
        );
        assert!(op.attend(&mut cache, &q, &k, &v, &at(0)).is_ok());
        let error = op.attend(&mut cache, &q, &k, &v, &at(5)).unwrap_err();
        assert!(format!("{error}").contains("do not continue"), "{error}");
        assert!(
            op.attend(&mut cache, &zeros(&[1, 1, 1, 4]), &k, &v, &at(1))
                .is_err()
        );
    }

    #[test]
    fn a_graph_without_caches_is_refused() {
        let mut graph = GraphProto::default();
        assert!(keep_cache_in_place(&mut graph, 1, 1, 8).is_err());
    }
}
