//! Loads an image's ONNX graph into tract (optimized once, with symbolic lengths) and runs it
//! with a KV cache that lives across calls.

use crate::attention;
use crate::graph::WEIGHTS_FILE;
use crate::kernels::Kernel;
use crate::ops::{self, MappedTensors};
use crate::pb::{self, ModelProto};
use crate::workers::Workers;
use ember_core::image::Architecture;
use ember_engine::{EngineError, LanguageModel, SELF_TEST_CONTEXT, self_test_tokens};
use ember_image::{GRAPH_SECTION, Image, WEIGHTS_SECTION};
use ember_tokenizer::Tokenizer;
use prost::Message;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tract_onnx::prelude::*;

fn backend(context: &str, error: impl std::fmt::Display) -> EngineError {
    EngineError::Backend(format!("{context}: {error:#}"))
}

/// An image's model, ready to run: the optimized tract plan over the mapped weights.
#[derive(Debug)]
pub struct TractModel {
    plan: Arc<TypedRunnableModel>,
    architecture: Architecture,
    kernel: Kernel,
    threads: usize,
}

/// Byte range in the image and dimensions of an initializer the int8 ops read in place.
type MappedTensor = (std::ops::Range<usize>, Vec<usize>);

/// Names of the initializers the contrib ops read in place.
fn mapped_initializers(graph: &pb::GraphProto) -> HashSet<String> {
    let mut names = HashSet::new();
    for node in &graph.node {
        let picks: &[usize] = match node.op_type.as_str() {
            "MatMulNBits" => &[1, 2, 3],
            "GatherBlockQuantized" => &[0, 2],
            _ => &[],
        };
        names.extend(picks.iter().filter_map(|&i| node.input.get(i).cloned()));
    }
    names
}

/// Resolves the graph's external data against the image: initializers of the int8 ops become
/// byte ranges of the mapping (their proto keeps no data), every other one is copied inline.
fn resolve_external_data(
    graph: &mut pb::GraphProto,
    image: &Image,
) -> Result<HashMap<String, MappedTensor>, EngineError> {
    let weights = image.section(WEIGHTS_SECTION)?;
    let base = weights.offset as usize;
    let bytes = image.section_bytes(weights);
    let mapped = mapped_initializers(graph);
    let mut tensors = HashMap::new();
    for init in &mut graph.initializer {
        if init.external_data.is_empty() {
            continue;
        }
        let field = |key: &str| {
            init.external_data
                .iter()
                .find(|e| e.key == key)
                .map(|e| e.value.as_str())
        };
        let number = |key| field(key).and_then(|v| v.parse::<usize>().ok());
        let (Some(WEIGHTS_FILE), Some(offset), Some(length)) =
            (field("location"), number("offset"), number("length"))
        else {
            return Err(backend(
                &format!("initializer {:?}", init.name),
                format!("external data must be an offset and length in {WEIGHTS_FILE}"),
            ));
        };
        if offset
            .checked_add(length)
            .is_none_or(|end| end > bytes.len())
        {
            return Err(backend(
                &format!("initializer {:?}", init.name),
                format!(
                    "bytes {offset}..+{length} lie outside the weights section ({} bytes)",
                    bytes.len()
                ),
            ));
        }
        if mapped.contains(&init.name) {
            let dims = init.dims.iter().map(|&d| d.max(0) as usize).collect();
            tensors.insert(
                init.name.clone(),
                (base + offset..base + offset + length, dims),
            );
            init.dims = vec![0];
        } else {
            init.raw_data = bytes[offset..offset + length].to_vec();
        }
        init.external_data.clear();
        init.data_location = None;
    }
    Ok(tensors)
}

impl TractModel {
    /// Loads `image` (structure checked at open; hashes are [`Image::verify`]'s job) to run on
    /// `threads` threads.
    pub fn load(image: &Image, threads: usize) -> Result<Self, EngineError> {
        let architecture = image.manifest().architecture;
        architecture.check()?;
        let graph = image.section(GRAPH_SECTION)?;
        let mut proto = ModelProto::decode(image.section_bytes(graph))
            .map_err(|e| backend("the image's ONNX graph does not decode", e))?;
        let graph = proto
            .graph
            .as_mut()
            .ok_or_else(|| backend("the image's ONNX model", "it has no graph"))?;
        let tensors = resolve_external_data(graph, image)?;
        attention::keep_cache_in_place(graph, &architecture)
            .map_err(|e| backend("the image's attention", e))?;
        ops::fuse_matmuls(graph);
        ops::fuse_gated_units(graph);
        ops::fuse_residual_adds(graph);
        ops::fuse_rms_norms(graph);
        let threads = threads.max(1);
        let workers =
            Workers::new(threads).map_err(|e| backend("cannot start the worker threads", e))?;
        let kernel = Kernel::detect();
        let mapped = MappedTensors {
            map: image.mapping(),
            tensors,
            workers: Arc::new(workers),
            kernel,
        };
        let mut onnx = tract_onnx::onnx();
        onnx.op_register.insert("MatMulNBits", ops::build_matmul);
        onnx.op_register
            .insert(ops::FUSED_MATMULS, ops::build_fused_matmuls);
        onnx.op_register
            .insert("GatherBlockQuantized", ops::build_gather);
        onnx.op_register
            .insert(attention::OP_TYPE, attention::build);
        let parsed = mapped
            .install(|| onnx.parse(&proto, None))
            .map_err(|e| backend("tract cannot read the graph", e))?;
        let plan = parsed
            .model
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(|e| backend("tract cannot optimize the graph", e))?;
        Ok(TractModel {
            plan,
            architecture,
            kernel,
            threads,
        })
    }

    /// The model's shape.
    pub fn architecture(&self) -> &Architecture {
        &self.architecture
    }

    /// The int8 dot-product kernel in use.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Threads the matmuls use.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// A fresh conversation state with an empty cache of `capacity` positions (at most the
    /// model's context).
    pub fn session(&self, capacity: usize) -> Result<TractSession<'_>, EngineError> {
        let state = TypedSimpleState::new(&self.plan)
            .map_err(|e| backend("cannot start a tract session", e))?;
        Ok(TractSession {
            model: self,
            state,
            position: 0,
            capacity: capacity.min(self.architecture.context_length),
            profile: None,
        })
    }
}

/// One conversation: tract's state, whose attention ops hold the KV cache in place.
pub struct TractSession<'m> {
    model: &'m TractModel,
    state: TypedSimpleState,
    position: usize,
    capacity: usize,
    profile: Option<OpProfile>,
}

/// Where a session's runs spent their time, by op kind (tract's name for the op), while
/// profiling was on ([`TractSession::profile`]).
#[derive(Debug, Clone, Default)]
pub struct OpProfile {
    /// Per op kind: total time and number of evaluations.
    pub kinds: std::collections::BTreeMap<String, (std::time::Duration, u64)>,
    /// Runs (calls to `feed`) profiled.
    pub runs: u64,
}

impl std::fmt::Debug for TractSession<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TractSession")
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

impl TractSession<'_> {
    /// Starts timing every op of the following runs (clearing what was recorded), or stops and
    /// returns what was recorded.
    pub fn profile(&mut self, on: bool) -> Option<OpProfile> {
        let recorded = self.profile.take();
        if on {
            self.profile = Some(OpProfile::default());
        }
        recorded
    }

    /// Runs the plan, timing each node when profiling.
    fn run(&mut self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let Some(profile) = self.profile.as_mut() else {
            return self.state.run(inputs);
        };
        profile.runs += 1;
        self.state
            .run_plan_with_eval(inputs, |ctx, state, node, input| {
                let start = std::time::Instant::now();
                let outputs = tract_onnx::tract_core::plan::eval(ctx, state, node, input);
                let entry = profile
                    .kinds
                    .entry(node.op().name().to_string())
                    .or_default();
                entry.0 += start.elapsed();
                entry.1 += 1;
                outputs
            })
    }
}

impl LanguageModel for TractSession<'_> {
    fn context_length(&self) -> usize {
        self.capacity
    }

    fn position(&self) -> usize {
        self.position
    }

    fn feed(&mut self, tokens: &[u32]) -> Result<Vec<f32>, EngineError> {
        let architecture = &self.model.architecture;
        if tokens.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        if self.position + tokens.len() > self.capacity {
            return Err(EngineError::ContextFull {
                capacity: self.capacity,
            });
        }
        if let Some(&token) = tokens
            .iter()
            .find(|&&t| t as usize >= architecture.vocab_size)
        {
            return Err(EngineError::TokenOutOfRange {
                token,
                vocab: architecture.vocab_size,
            });
        }
        let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
        let positions: Vec<i64> = (self.position..self.position + tokens.len())
            .map(|p| p as i64)
            .collect();
        let shape = [1, tokens.len()];
        let inputs: TVec<TValue> = tvec![
            Tensor::from_shape(&shape, &ids)
                .map_err(|e| backend("input", e))?
                .into_tvalue(),
            Tensor::from_shape(&shape, &positions)
                .map_err(|e| backend("input", e))?
                .into_tvalue(),
        ];
        let outputs = match self.run(inputs) {
            Ok(outputs) => outputs,
            Err(e) => {
                // The cache may hold part of the failed run: start over rather than keep it.
                self.reset();
                return Err(backend("tract failed to run the model", e));
            }
        };
        let logits = outputs[0]
            .try_as_plain_ram()
            .and_then(|v| v.as_slice::<f32>().map(<[f32]>::to_vec))
            .map_err(|e| backend("logits", e))?;
        self.position += tokens.len();
        Ok(logits)
    }

    fn reset(&mut self) {
        // A new state starts with empty caches. Making one cannot fail for this plan (its ops'
        // states are built infallibly); were it to, the old state would stay and the next call be
        // refused, its positions not continuing the cache.
        if let Ok(state) = TypedSimpleState::new(&self.model.plan) {
            self.state = state;
        }
        self.position = 0;
    }
}

/// The tokens `image`'s self-test generates on this machine: its manifest's prompt continued
/// greedily by the int8 engine. `ember quantize` records them; a device that receives the image
/// compares them before switching to it.
pub fn self_test(
    image: &Image,
    tokenizer: &Tokenizer,
    threads: usize,
) -> Result<Vec<u32>, EngineError> {
    let model = TractModel::load(image, threads)?;
    let manifest = image.manifest();
    let context = SELF_TEST_CONTEXT.min(model.architecture().context_length);
    let mut session = model.session(context)?;
    self_test_tokens(
        &mut session,
        tokenizer,
        &manifest.self_test.prompt,
        manifest.tokenizer.add_bos,
    )
}
