//! An image's graph and weights as files onnxruntime runs: `ember export-onnx`, and the graph
//! `ember bench` hands its onnxruntime peer.

use anyhow::{Context, Result};
use ember_image::Image;
use ember_tract::pb::{AttributeProto, ModelProto, attribute_proto::AttributeType};
use prost::Message;
use std::path::{Path, PathBuf};

/// onnxruntime's `MatMulNBits` `accuracy_level` that quantizes the activations to int8 and
/// multiplies in int8 (AVX-VNNI/AVX-512 VNNI on x86, SDOT on ARM), as Ember's int8 kernels do.
pub const INT8_ACCURACY_LEVEL: i64 = 4;

/// Writes `model.onnx` (the image's graph) and `model.weights` (its weights in the standard
/// layout of the com.microsoft contrib ops) into `dir`, created if missing. Returns each file
/// written and its size in bytes.
pub fn export(image: &Image, dir: &Path) -> Result<Vec<(PathBuf, usize)>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let graph = image.section(ember_image::GRAPH_SECTION)?;
    let weights = image.section(ember_image::WEIGHTS_SECTION)?;
    // The image interleaves int8 rows for Ember's kernels; onnxruntime reads them row-major,
    // at the same offsets.
    let mut standard = image.section_bytes(weights).to_vec();
    for entry in &image.manifest().tensors {
        if image.manifest().sections.get(entry.section as usize) != Some(weights) {
            continue;
        }
        let range = entry.offset as usize..(entry.offset + entry.length) as usize;
        let tensor = ember_image::standard_layout(entry, &standard[range.clone()]);
        standard[range].copy_from_slice(&tensor);
    }
    let mut written = Vec::new();
    for (name, bytes) in [
        ("model.onnx", image.section_bytes(graph)),
        (ember_tract::graph::WEIGHTS_FILE, &standard[..]),
    ] {
        let target = dir.join(name);
        ember_image::write_atomically(&target, bytes)?;
        written.push((target, bytes.len()));
    }
    Ok(written)
}

/// `model` (an ONNX model, as [`export`] writes it) with every `MatMulNBits` node set to
/// `accuracy_level` = [`INT8_ACCURACY_LEVEL`]. Without the attribute onnxruntime's CPU kernel
/// computes in f32, dequantizing all of an 8-bit weight matrix on every call (SmolLM2: ~0.3 s
/// a token instead of ~0.03 s).
pub fn with_int8_activations(model: &[u8]) -> Result<Vec<u8>> {
    let mut proto = ModelProto::decode(model).context("the exported ONNX model does not decode")?;
    let graph = proto
        .graph
        .as_mut()
        .context("the exported ONNX model has no graph")?;
    for node in graph.node.iter_mut().filter(|n| n.op_type == "MatMulNBits") {
        node.attribute.retain(|a| a.name != "accuracy_level");
        node.attribute.push(AttributeProto {
            name: "accuracy_level".into(),
            r#type: AttributeType::Int as i32,
            i: INT8_ACCURACY_LEVEL,
            ..Default::default()
        });
    }
    Ok(proto.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember_tract::pb::{GraphProto, NodeProto};

    fn node(op_type: &str, attribute: Vec<AttributeProto>) -> NodeProto {
        NodeProto {
            op_type: op_type.into(),
            attribute,
            ..Default::default()
        }
    }

    fn int(name: &str, i: i64) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            r#type: AttributeType::Int as i32,
            i,
            ..Default::default()
        }
    }

    #[test]
    fn every_matmul_gets_int8_activations_and_nothing_else_changes() {
        let model = ModelProto {
            graph: Some(GraphProto {
                node: vec![
                    node("MatMulNBits", vec![int("bits", 8)]),
                    node("Add", vec![]),
                    node("MatMulNBits", vec![int("accuracy_level", 0), int("K", 64)]),
                ],
                ..Default::default()
            }),
            ..Default::default()
        };
        let out = ModelProto::decode(&with_int8_activations(&model.encode_to_vec()).unwrap()[..])
            .unwrap();
        let nodes = &out.graph.unwrap().node;
        let names = |n: &NodeProto| -> Vec<(String, i64)> {
            n.attribute.iter().map(|a| (a.name.clone(), a.i)).collect()
        };
        let level = ("accuracy_level".to_string(), INT8_ACCURACY_LEVEL);
        assert_eq!(names(&nodes[0]), [("bits".to_string(), 8), level.clone()]);
        assert!(nodes[1].attribute.is_empty());
        assert_eq!(names(&nodes[2]), [("K".to_string(), 64), level]);
        assert!(with_int8_activations(b"\xff not a model").is_err());
    }
}
