//! The ONNX graph of a decoder (Llama, Qwen2, Qwen3, Gemma 3: the blocks of
//! `ember_reference`'s forward pass) over an image's int8 weights.
//!
//! Standard ONNX ops (opset 17) plus two `com.microsoft` contrib ops that onnxruntime implements:
//! `MatMulNBits` (bits 8, or 4 for a 4-bit tensor; blocks of 32) for every linear layer and
//! `GatherBlockQuantized` (bits 8) for the token embedding. Their initializers are external data in [`WEIGHTS_FILE`] at the offsets of
//! the image's weights section, so the graph and the image share one copy of the weights. The
//! image stores int8 rows interleaved in groups (`ember_core::blocks::int8::quant_index`), as Ember's
//! kernels stream them; `ember export-onnx` writes the weights file in the standard layout these
//! ops define, at the same offsets, for onnxruntime. A 4-bit `MatMulNBits` has a fourth input,
//! float zero points: in the image that array holds the blocks' minimums m (value = d · q + m),
//! which the export turns into zero points −m/d (`ember_image::standard_layout`).
//!
//! Inputs: `input_ids` and `position_ids` (int64 `[1, sequence]`), and per layer `i`
//! `past_key.i` (f32 `[1, kv_heads, head_dim, past_sequence]`, keys transposed) and
//! `past_value.i` (f32 `[1, kv_heads, past_sequence, head_dim]`). Outputs: `logits` (f32
//! `[1, vocab]`, after the last input position) and `present_key.i` / `present_value.i` (the
//! same layouts with `past_sequence + sequence` positions). The cache must hold positions
//! `0..past_sequence` in order: the causal mask compares positions.

use crate::pb::{
    self, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto::dimension,
};
use ember_core::blocks::{BLOCK, int4, int8};
use ember_core::image::{Architecture, Family, TensorEncoding, TensorEntry};

use prost::Message;

/// The initializers of one quantized matrix.
struct MatrixArrays {
    quants: String,
    scales: String,
    /// A 4-bit matrix's zero points (in the image: its minimums).
    zero_points: Option<String>,
}

/// File name the graph's external data points at (the weights section, de-interleaved).
pub const WEIGHTS_FILE: &str = "model.weights";
/// Domain of the contrib ops.
pub const CONTRIB_DOMAIN: &str = "com.microsoft";

/// Why a graph could not be built for a model.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// A tensor the architecture needs is not in the image.
    #[error("the image has no tensor {0:?}")]
    MissingTensor(String),
    /// A tensor has an encoding or shape the graph cannot use.
    #[error("tensor {name:?}: {problem}")]
    BadTensor {
        /// The tensor.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// The architecture uses something the graph does not implement.
    #[error("unsupported architecture: {0}")]
    Unsupported(String),
}

/// Accumulates nodes and initializers with generated names.
struct Builder<'a> {
    config: &'a Architecture,
    tensors: &'a [TensorEntry],
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    counter: usize,
}

/// An integer attribute.
pub(crate) fn int_attr(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: value,
        ..Default::default()
    }
}

/// A float attribute.
pub(crate) fn float_attr(name: &str, value: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Float as i32,
        f: value,
        ..Default::default()
    }
}

/// An integer-list attribute.
pub(crate) fn ints_attr(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: values.to_vec(),
        ..Default::default()
    }
}

fn value_info(name: &str, elem: DataType, dims: &[Result<i64, &str>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| pb::tensor_shape_proto::Dimension {
            value: Some(match d {
                Ok(v) => dimension::Value::DimValue(*v),
                Err(p) => dimension::Value::DimParam((*p).into()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: elem as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl Builder<'_> {
    fn fresh(&mut self, hint: &str) -> String {
        self.counter += 1;
        format!("{hint}_{}", self.counter)
    }

    /// Adds a node with one output and returns the output's name.
    fn op(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        let out = self.fresh(&op.to_lowercase());
        self.node(op, "", inputs, &out, attrs);
        out
    }

    fn node(
        &mut self,
        op: &str,
        domain: &str,
        inputs: &[&str],
        out: &str,
        attrs: Vec<AttributeProto>,
    ) {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.into()],
            name: out.into(),
            op_type: op.into(),
            domain: domain.into(),
            attribute: attrs,
            ..Default::default()
        });
    }

    fn inline(&mut self, hint: &str, data_type: DataType, dims: &[i64], raw: Vec<u8>) -> String {
        let name = self.fresh(hint);
        self.initializers.push(TensorProto {
            name: name.clone(),
            dims: dims.to_vec(),
            data_type: data_type as i32,
            raw_data: raw,
            ..Default::default()
        });
        name
    }

    fn ints(&mut self, values: &[i64]) -> String {
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.inline("ints", DataType::Int64, &[values.len() as i64], raw)
    }

    fn scalar_f32(&mut self, value: f32) -> String {
        self.inline("scalar", DataType::Float, &[], value.to_le_bytes().to_vec())
    }

    fn scalar_i64(&mut self, value: i64) -> String {
        self.inline("scalar", DataType::Int64, &[], value.to_le_bytes().to_vec())
    }

    fn entry(&self, name: &str) -> Result<&TensorEntry, GraphError> {
        self.tensors
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| GraphError::MissingTensor(name.into()))
    }

    fn external(
        &mut self,
        name: &str,
        data_type: DataType,
        dims: &[i64],
        offset: u64,
        length: u64,
    ) {
        let entry = |key: &str, value: String| StringStringEntryProto {
            key: key.into(),
            value,
        };
        self.initializers.push(TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: data_type as i32,
            data_location: Some(pb::tensor_proto::DataLocation::External as i32),
            external_data: vec![
                entry("location", WEIGHTS_FILE.into()),
                entry("offset", offset.to_string()),
                entry("length", length.to_string()),
            ],
            ..Default::default()
        });
    }

    /// An f32 vector of `len` values (a norm's weight), as external data.
    fn vector(&mut self, tensor: &str, len: usize) -> Result<String, GraphError> {
        let entry = self.entry(tensor)?.clone();
        if entry.encoding != TensorEncoding::F32 || entry.dims != [len as u64] {
            return Err(GraphError::BadTensor {
                name: tensor.into(),
                problem: format!(
                    "expected f32 [{len}], found {:?} {:?}",
                    entry.encoding, entry.dims
                ),
            });
        }
        self.external(
            tensor,
            DataType::Float,
            &[len as i64],
            entry.offset,
            len as u64 * 4,
        );
        Ok(tensor.into())
    }

    /// The quants and scales of an int8 `rows × cols` matrix: `(quants, scales)` initializers in
    /// `MatMulNBits` shapes (`[rows, cols/32, 32]`, `[rows · cols/32]`) or, for a gather,
    /// `GatherBlockQuantized` shapes (`[rows, cols]`, `[rows, cols/32]`); for a 4-bit matrix
    /// (not gathered) the `MatMulNBits` bits-4 shapes (`[rows, cols/32, 16]`, `[rows · cols/32]`)
    /// and a third initializer, the minimums as zero points (`[rows · cols/32]`).
    fn matrix(
        &mut self,
        tensor: &str,
        cols: usize,
        rows: usize,
        gather: bool,
    ) -> Result<MatrixArrays, GraphError> {
        let entry = self.entry(tensor)?.clone();
        let supported = match entry.encoding {
            TensorEncoding::Int8Block32 => true,
            TensorEncoding::Int4Block32 => !gather,
            TensorEncoding::F32 => false,
        };
        if !supported || entry.dims != [cols as u64, rows as u64] {
            return Err(GraphError::BadTensor {
                name: tensor.into(),
                problem: format!(
                    "expected {} [{cols}, {rows}], found {:?} {:?}",
                    if gather {
                        "int8-block32"
                    } else {
                        "int8-block32 or 4-bit"
                    },
                    entry.encoding,
                    entry.dims
                ),
            });
        }
        let layout = TensorEntry::layout(entry.encoding, cols as u64, rows as u64);
        let blocks = (cols / BLOCK) as i64;
        let (rows, cols) = (rows as i64, cols as i64);
        let four_bit = entry.encoding == TensorEncoding::Int4Block32;
        let (suffix, quant_dims, scale_dims) = if gather {
            ("gather", vec![rows, cols], vec![rows, blocks])
        } else {
            (
                "matmul",
                vec![
                    rows,
                    blocks,
                    if four_bit {
                        int4::BLOCK_BYTES
                    } else {
                        int8::BLOCK_BYTES
                    } as i64,
                ],
                vec![rows * blocks],
            )
        };
        let mut array = |array: &str, data_type, dims: &[i64], offset: u64, length| {
            let name = format!("{tensor}.{suffix}.{array}");
            self.external(&name, data_type, dims, entry.offset + offset, length);
            name
        };
        Ok(MatrixArrays {
            quants: array(
                "quants",
                DataType::Uint8,
                &quant_dims,
                layout.quants.0,
                layout.standard.0,
            ),
            scales: array(
                "scales",
                DataType::Float,
                &scale_dims,
                layout.scales.0,
                layout.standard.1,
            ),
            zero_points: four_bit.then(|| {
                array(
                    "zero_points",
                    DataType::Float,
                    &scale_dims,
                    layout.mins.0,
                    layout.standard.2,
                )
            }),
        })
    }

    /// `x · Wᵀ` for the int8 or 4-bit matrix `tensor` of `rows` outputs over `cols` inputs.
    fn linear(
        &mut self,
        x: &str,
        tensor: &str,
        cols: usize,
        rows: usize,
    ) -> Result<String, GraphError> {
        let arrays = self.matrix(tensor, cols, rows, false)?;
        let bits = if arrays.zero_points.is_some() { 4 } else { 8 };
        let out = self.fresh("matmul");
        let attrs = vec![
            int_attr("K", cols as i64),
            int_attr("N", rows as i64),
            int_attr("bits", bits),
            int_attr("block_size", BLOCK as i64),
        ];
        let mut inputs = vec![x, &arrays.quants, &arrays.scales];
        inputs.extend(arrays.zero_points.as_deref());
        self.node("MatMulNBits", CONTRIB_DOMAIN, &inputs, &out, attrs);
        Ok(out)
    }

    /// x / sqrt(mean(x²) + eps) · weight, over the last axis.
    fn rms_norm(&mut self, x: &str, weight: &str, eps: &str) -> String {
        let square = self.op("Mul", &[x, x], vec![]);
        let mean = self.op(
            "ReduceMean",
            &[&square],
            vec![ints_attr("axes", &[-1]), int_attr("keepdims", 1)],
        );
        let shifted = self.op("Add", &[&mean, eps], vec![]);
        let root = self.op("Sqrt", &[&shifted], vec![]);
        let inverse = self.op("Reciprocal", &[&root], vec![]);
        let scaled = self.op("Mul", &[x, &inverse], vec![]);
        self.op("Mul", &[&scaled, weight], vec![])
    }

    /// `x` (`[1, S, heads · head_dim]`) with each head RMS-normalized and scaled by `weight`
    /// (`[head_dim]`).
    fn head_norm(&mut self, x: &str, heads: usize, weight: &str, eps: &str) -> String {
        let hd = self.config.head_dim() as i64;
        let split = self.ints(&[0, 0, heads as i64, hd]);
        let split = self.op("Reshape", &[x, &split], vec![]);
        let normed = self.rms_norm(&split, weight, eps);
        let merged = self.ints(&[0, 0, heads as i64 * hd]);
        self.op("Reshape", &[&normed, &merged], vec![])
    }

    /// GELU, tanh approximation: `0.5 · x · (1 + tanh(√(2/π) · x · (1 + 0.044715 · x²)))`.
    fn gelu_tanh(&mut self, x: &str) -> String {
        let (cubic, sqrt_2_over_pi) = (self.scalar_f32(0.044_715), self.scalar_f32(0.797_884_6));
        let (one, half) = (self.scalar_f32(1.0), self.scalar_f32(0.5));
        let square = self.op("Mul", &[x, x], vec![]);
        let inner = self.op("Mul", &[&square, &cubic], vec![]);
        let inner = self.op("Add", &[&inner, &one], vec![]);
        let scaled = self.op("Mul", &[x, &sqrt_2_over_pi], vec![]);
        let inner = self.op("Mul", &[&scaled, &inner], vec![]);
        let tanh = self.op("Tanh", &[&inner], vec![]);
        let factor = self.op("Add", &[&tanh, &one], vec![]);
        let halved = self.op("Mul", &[x, &half], vec![]);
        self.op("Mul", &[&halved, &factor], vec![])
    }

    /// Gives the value `x` the name `name`: renames the output of the node added last if it is
    /// `x` (nothing reads it yet), else adds an `Identity` node.
    fn rename_last(&mut self, x: &str, name: &str) -> String {
        if let Some(node) = self.nodes.last_mut()
            && node.output.first().map(String::as_str) == Some(x)
        {
            node.output[0] = name.into();
            node.name = name.into();
            return name.into();
        }
        self.node("Identity", "", &[x], name, vec![]);
        name.into()
    }

    /// The additive causal mask `[1, S · group, T]` for the value cache `present_value` (`T`
    /// positions), each query position repeated for the `group` heads of a key/value head: key
    /// position t is hidden (−∞) from query position p when t > p.
    /// With a `window`, key position t is also hidden from query position p when
    /// `p − t ≥ window` (a sliding-window layer sees the last `window` positions).
    fn causal_mask(&mut self, present_value: &str, group: i64, window: Option<usize>) -> String {
        let length = self.op(
            "Shape",
            &[present_value],
            vec![int_attr("start", 2), int_attr("end", 3)],
        );
        let zero_axis = self.ints(&[0]);
        let total = self.op("Squeeze", &[&length, &zero_axis], vec![]);
        let (start, step) = (self.scalar_i64(0), self.scalar_i64(1));
        let key_positions = self.op("Range", &[&start, &total, &step], vec![]);
        let last_axis = self.ints(&[2]);
        let query_positions = self.op("Unsqueeze", &["position_ids", &last_axis], vec![]);
        let repeat = self.ints(&[1, 1, group]);
        let query_positions = self.op("Expand", &[&query_positions, &repeat], vec![]);
        let rows = self.ints(&[0, -1, 1]);
        let query_positions = self.op("Reshape", &[&query_positions, &rows], vec![]);
        let mut hidden = self.op("Greater", &[&key_positions, &query_positions], vec![]);
        if let Some(window) = window {
            let window = self.scalar_i64(window as i64);
            let shifted = self.op("Add", &[&key_positions, &window], vec![]);
            let outside = self.op("LessOrEqual", &[&shifted, &query_positions], vec![]);
            hidden = self.op("Or", &[&hidden, &outside], vec![]);
        }
        let (minus_infinity, zero) = (self.scalar_f32(f32::NEG_INFINITY), self.scalar_f32(0.0));
        self.op("Where", &[&hidden, &minus_infinity, &zero], vec![])
    }

    /// Rotates adjacent pairs of each head of `x` (`[1, S, heads · head_dim]`) by the angles whose
    /// cosines and sines are `cos`/`sin` (`[1, S, 1, head_dim/2, 1]`); returns `[1, S, heads, head_dim]`.
    fn rope(&mut self, x: &str, heads: usize, cos: &str, sin: &str) -> String {
        let hd = self.config.head_dim() as i64;
        let pairs_shape = self.ints(&[0, 0, heads as i64, hd / 2, 2]);
        let pairs = self.op("Reshape", &[x, &pairs_shape], vec![]);
        let (axis, zero, one, two) = (
            self.ints(&[4]),
            self.ints(&[0]),
            self.ints(&[1]),
            self.ints(&[2]),
        );
        let a = self.op("Slice", &[&pairs, &zero, &one, &axis], vec![]);
        let b = self.op("Slice", &[&pairs, &one, &two, &axis], vec![]);
        let (a_cos, b_sin) = (
            self.op("Mul", &[&a, cos], vec![]),
            self.op("Mul", &[&b, sin], vec![]),
        );
        let (a_sin, b_cos) = (
            self.op("Mul", &[&a, sin], vec![]),
            self.op("Mul", &[&b, cos], vec![]),
        );
        let first = self.op("Sub", &[&a_cos, &b_sin], vec![]);
        let second = self.op("Add", &[&a_sin, &b_cos], vec![]);
        let rotated = self.op("Concat", &[&first, &second], vec![int_attr("axis", 4)]);
        let heads_shape = self.ints(&[0, 0, heads as i64, hd]);
        self.op("Reshape", &[&rotated, &heads_shape], vec![])
    }
}

/// Cosines and sines of RoPE's angles (base frequency `base`) for every position of the
/// context: two `[context, rope_dim/2]` tables, computed in f64 like the reference.
fn rope_tables(config: &Architecture, base: f32) -> (Vec<u8>, Vec<u8>) {
    let (mut cos, mut sin) = (Vec::new(), Vec::new());
    for position in 0..config.context_length {
        for i in (0..config.rope_dim).step_by(2) {
            let frequency = (base as f64).powf(-(i as f64) / config.rope_dim as f64);
            let angle = position as f64 * frequency;
            cos.extend_from_slice(&(angle.cos() as f32).to_le_bytes());
            sin.extend_from_slice(&(angle.sin() as f32).to_le_bytes());
        }
    }
    (cos, sin)
}

/// The name of the value layer `layer`'s attention takes as its queries, keys or values
/// (`kind`: `q`, `k` or `v`) in a graph where it is not a projection's output (a family with
/// biases or head norms; a Llama graph has none).
pub fn attention_input(layer: usize, kind: &str) -> String {
    format!("attention_{kind}.{layer}")
}

/// Builds the ONNX model for `config` over the image tensors `tensors` (offsets relative to
/// the weights section) and returns its protobuf bytes.
pub fn build(config: &Architecture, tensors: &[TensorEntry]) -> Result<Vec<u8>, GraphError> {
    Ok(build_proto(config, tensors)?.encode_to_vec())
}

/// Builds the ONNX model for `config` over the image tensors `tensors`.
pub fn build_proto(
    config: &Architecture,
    tensors: &[TensorEntry],
) -> Result<ModelProto, GraphError> {
    if config.rope_dim != config.head_dim() {
        return Err(GraphError::Unsupported(format!(
            "RoPE over {} of {} head dimensions",
            config.rope_dim,
            config.head_dim()
        )));
    }
    if !config.n_embd.is_multiple_of(BLOCK) || !config.n_ff.is_multiple_of(BLOCK) {
        return Err(GraphError::Unsupported(
            "widths that are not multiples of 32".into(),
        ));
    }
    let c = config;
    let (hd, kvh, group) = (
        c.head_dim() as i64,
        c.n_head_kv as i64,
        (c.n_head / c.n_head_kv) as i64,
    );
    let mut g = Builder {
        config,
        tensors,
        nodes: Vec::new(),
        initializers: Vec::new(),
        counter: 0,
    };

    // Token embedding and the per-position tables.
    let embedding = g.matrix("token_embd.weight", c.n_embd, c.vocab_size, true)?;
    let (embd_quants, embd_scales) = (embedding.quants, embedding.scales);
    let mut x = g.fresh("embedding");
    let gather_attrs = vec![
        int_attr("bits", 8),
        int_attr("block_size", BLOCK as i64),
        int_attr("gather_axis", 0),
        int_attr("quantize_axis", 1),
    ];
    g.node(
        "GatherBlockQuantized",
        CONTRIB_DOMAIN,
        &[&embd_quants, "input_ids", &embd_scales],
        &x,
        gather_attrs,
    );
    let family = c.family();
    if family.is_gemma() {
        let scale = g.scalar_f32((c.n_embd as f32).sqrt());
        x = g.op("Mul", &[&x, &scale], vec![]);
    }
    // The RoPE angles at the input positions, `[1, S, 1, head_dim/2, 1]`: the global layers'
    // and, with sliding-window layers, theirs (own base frequency).
    let angles = |g: &mut Builder, base: f32, hint: &str| {
        let (cos_table, sin_table) = rope_tables(c, base);
        let table_dims = [c.context_length as i64, hd / 2];
        let cos_table = g.inline(
            &format!("rope_cos{hint}"),
            DataType::Float,
            &table_dims,
            cos_table,
        );
        let sin_table = g.inline(
            &format!("rope_sin{hint}"),
            DataType::Float,
            &table_dims,
            sin_table,
        );
        let angle_shape = g.ints(&[0, 0, 1, -1, 1]);
        let rows = [cos_table, sin_table].map(|table| {
            g.op(
                "Gather",
                &[&table, "position_ids"],
                vec![int_attr("axis", 0)],
            )
        });
        let [cos, sin] = rows.map(|rows| g.op("Reshape", &[&rows, &angle_shape], vec![]));
        (cos, sin)
    };
    let global = angles(&mut g, c.rope_base, "");
    let local = (0..c.n_layers)
        .any(|layer| c.window(layer).is_some())
        .then(|| angles(&mut g, c.variant.local_rope_base, "_local"));

    let eps = g.scalar_f32(c.rms_eps);
    let attention_scale = g.scalar_f32(1.0 / (c.head_dim() as f32).sqrt());
    let query_shape = g.ints(&[0, 0, kvh, group, hd]);
    let query_rows = g.ints(&[0, 0, -1, hd]);
    let split_rows = g.ints(&[0, 0, -1, group, hd]);
    let merge_heads = g.ints(&[0, 0, -1]);
    let mut masks: [Option<String>; 2] = [None, None];
    for layer in 0..c.n_layers {
        let t = |name: &str| format!("blk.{layer}.{name}.weight");
        let window = c.window(layer);
        let (cos, sin) = match (window, &local) {
            (Some(_), Some(local)) => local.clone(),
            _ => global.clone(),
        };
        let norm = g.vector(&t("attn_norm"), c.n_embd)?;
        let h = g.rms_norm(&x, &norm, &eps);
        let (q_dim, kv_dim) = (c.q_dim(), c.kv_dim());
        let mut q = g.linear(&h, &t("attn_q"), c.n_embd, q_dim)?;
        let mut k = g.linear(&h, &t("attn_k"), c.n_embd, kv_dim)?;
        let mut v = g.linear(&h, &t("attn_v"), c.n_embd, kv_dim)?;
        if family.has_qkv_bias() {
            for (x, part, len) in [
                (&mut q, "attn_q", q_dim),
                (&mut k, "attn_k", kv_dim),
                (&mut v, "attn_v", kv_dim),
            ] {
                let bias = g.vector(&format!("blk.{layer}.{part}.bias"), len)?;
                *x = g.op("Add", &[x, &bias], vec![]);
            }
        }
        if family.has_qk_norm() {
            let (q_norm, k_norm) = (
                g.vector(&t("attn_q_norm"), c.head_dim())?,
                g.vector(&t("attn_k_norm"), c.head_dim())?,
            );
            q = g.head_norm(&q, c.n_head, &q_norm, &eps);
            k = g.head_norm(&k, c.n_head_kv, &k_norm, &eps);
        }
        if family != Family::Llama {
            // What attention takes, by name (`attention_input`): the projections' outputs
            // are not, here.
            for (x, kind) in [(&mut q, "q"), (&mut k, "k"), (&mut v, "v")] {
                *x = g.rename_last(x, &attention_input(layer, kind));
            }
        }
        let q = g.rope(&q, c.n_head, &cos, &sin);
        // Queries [1, kv_heads, S · group, hd]: the `group` query heads that share a key/value
        // head become rows of one matrix product with that head's cache.
        let q = g.op("Reshape", &[&q, &query_shape], vec![]);
        let q = g.op(
            "Transpose",
            &[&q],
            vec![ints_attr("perm", &[0, 2, 1, 3, 4])],
        );
        let q = g.op("Reshape", &[&q, &query_rows], vec![]);
        let k = g.rope(&k, c.n_head_kv, &cos, &sin);
        // Keys are cached transposed, [1, kv_heads, head_dim, T], ready for q · kᵀ.
        let k = g.op("Transpose", &[&k], vec![ints_attr("perm", &[0, 2, 3, 1])]);
        let v_shape = g.ints(&[0, 0, kvh, hd]);
        let v = g.op("Reshape", &[&v, &v_shape], vec![]);
        let v = g.op("Transpose", &[&v], vec![ints_attr("perm", &[0, 2, 1, 3])]);
        let (present_key, present_value) = (
            format!("present_key.{layer}"),
            format!("present_value.{layer}"),
        );
        g.node(
            "Concat",
            "",
            &[&format!("past_key.{layer}"), &k],
            &present_key,
            vec![int_attr("axis", 3)],
        );
        g.node(
            "Concat",
            "",
            &[&format!("past_value.{layer}"), &v],
            &present_value,
            vec![int_attr("axis", 2)],
        );
        let mask = match &mut masks[usize::from(window.is_some())] {
            Some(mask) => mask.clone(),
            slot => slot
                .insert(g.causal_mask(&present_value, group, window))
                .clone(),
        };
        // Scores [1, kv_heads, S · group, T].
        let scores = g.op("MatMul", &[&q, &present_key], vec![]);
        let scores = g.op("Mul", &[&scores, &attention_scale], vec![]);
        let scores = g.op("Add", &[&scores, &mask], vec![]);
        let weights = g.op("Softmax", &[&scores], vec![int_attr("axis", -1)]);
        let mixed = g.op("MatMul", &[&weights, &present_value], vec![]);
        let mixed = g.op("Reshape", &[&mixed, &split_rows], vec![]);
        let mixed = g.op(
            "Transpose",
            &[&mixed],
            vec![ints_attr("perm", &[0, 2, 1, 3, 4])],
        );
        let mixed = g.op("Reshape", &[&mixed, &merge_heads], vec![]);
        let mut attended = g.linear(&mixed, &t("attn_output"), q_dim, c.n_embd)?;
        if family.is_gemma() {
            let norm = g.vector(&t("post_attention_norm"), c.n_embd)?;
            attended = g.rms_norm(&attended, &norm, &eps);
        }
        x = g.op("Add", &[&x, &attended], vec![]);

        let norm = g.vector(&t("ffn_norm"), c.n_embd)?;
        let h = g.rms_norm(&x, &norm, &eps);
        let gate = g.linear(&h, &t("ffn_gate"), c.n_embd, c.n_ff)?;
        let up = g.linear(&h, &t("ffn_up"), c.n_embd, c.n_ff)?;
        let activated = if family.is_gemma() {
            g.gelu_tanh(&gate)
        } else {
            let sigmoid = g.op("Sigmoid", &[&gate], vec![]);
            g.op("Mul", &[&gate, &sigmoid], vec![])
        };
        let product = g.op("Mul", &[&activated, &up], vec![]);
        let mut down = g.linear(&product, &t("ffn_down"), c.n_ff, c.n_embd)?;
        if family.is_gemma() {
            let norm = g.vector(&t("post_ffw_norm"), c.n_embd)?;
            down = g.rms_norm(&down, &norm, &eps);
        }
        x = g.op("Add", &[&x, &down], vec![]);
    }

    // Logits after the last position only.
    let norm = g.vector("output_norm.weight", c.n_embd)?;
    let h = g.rms_norm(&x, &norm, &eps);
    let (minus_one, end, seq_axis) = (g.ints(&[-1]), g.ints(&[i64::MAX]), g.ints(&[1]));
    let last = g.op("Slice", &[&h, &minus_one, &end, &seq_axis], vec![]);
    let output = if g.entry("output.weight").is_ok() {
        "output.weight"
    } else {
        "token_embd.weight"
    };
    let mut logits = g.linear(&last, output, c.n_embd, c.vocab_size)?;
    let cap = c.variant.logit_softcap;
    if cap > 0.0 {
        let (inverse, cap) = (g.scalar_f32(1.0 / cap), g.scalar_f32(cap));
        let scaled = g.op("Mul", &[&logits, &inverse], vec![]);
        let squashed = g.op("Tanh", &[&scaled], vec![]);
        logits = g.op("Mul", &[&squashed, &cap], vec![]);
    }
    let logits_shape = g.ints(&[1, c.vocab_size as i64]);
    g.node("Reshape", "", &[&logits, &logits_shape], "logits", vec![]);

    let cache_dims = |kind, seq| match kind {
        "key" => [Ok(1), Ok(kvh), Ok(hd), Err(seq)],
        _ => [Ok(1), Ok(kvh), Err(seq), Ok(hd)],
    };
    let mut inputs = vec![
        value_info("input_ids", DataType::Int64, &[Ok(1), Err("sequence")]),
        value_info("position_ids", DataType::Int64, &[Ok(1), Err("sequence")]),
    ];
    let mut outputs = vec![value_info(
        "logits",
        DataType::Float,
        &[Ok(1), Ok(c.vocab_size as i64)],
    )];
    for layer in 0..c.n_layers {
        for kind in ["key", "value"] {
            inputs.push(value_info(
                &format!("past_{kind}.{layer}"),
                DataType::Float,
                &cache_dims(kind, "past_sequence"),
            ));
            outputs.push(value_info(
                &format!("present_{kind}.{layer}"),
                DataType::Float,
                &cache_dims(kind, "total_sequence"),
            ));
        }
    }
    let opset = |domain: &str, version| OperatorSetIdProto {
        domain: domain.into(),
        version,
    };
    Ok(ModelProto {
        ir_version: 8,
        opset_import: vec![opset("", 17), opset(CONTRIB_DOMAIN, 1)],
        producer_name: "ember".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(GraphProto {
            name: "ember-llama".into(),
            node: g.nodes,
            initializer: g.initializers,
            input: inputs,
            output: outputs,
            ..Default::default()
        }),
        ..Default::default()
    })
}
