//! Dequantization of Q5_0, Q5_1, IQ4_NL, the K-quants and IQ4_XS against `quants.gguf`, whose
//! values gguf-py computed (`tests/fixtures/make_quant_fixture.py`; Q8_K's by numpy, as gguf-py
//! lacks it): every value bit-exact.

use ember_gguf::{GgufError, GgufFile, TensorInfo, TensorType, dequantize};
use serde_json::Value as Json;
use std::collections::HashSet;
mod common;
use common::{assert_dequantizes_to, fixture_path};

#[test]
fn every_block_type_dequantizes_like_gguf_py() {
    let file = GgufFile::open(fixture_path("quants.gguf")).unwrap();
    let text = std::fs::read_to_string(fixture_path("quants.json")).expect("quants.json");
    let expected: Json = serde_json::from_str(&text).unwrap();
    let tensors = expected["tensors"].as_array().unwrap();
    assert_eq!(file.tensors().len(), tensors.len());
    let mut types_seen = HashSet::new();
    for want in tensors {
        let name = want["name"].as_str().unwrap();
        let info = file.tensor(name).unwrap();
        assert_eq!(info.ty.to_string(), want["type"], "{name}");
        assert_dequantizes_to(&file, name, want);
        types_seen.insert(info.ty);
    }
    use TensorType::*;
    for ty in [Q5_0, Q5_1, IQ4NL, Q2K, Q3K, Q4K, Q5K, Q6K, Q8K, IQ4XS] {
        assert!(types_seen.contains(&ty), "the fixture lacks {ty}");
    }
}

#[test]
fn types_without_a_dequantizer_are_typed_errors() {
    let info = TensorInfo {
        name: "blk.0.ffn_up.weight".into(),
        dims: vec![32],
        ty: TensorType::Q8_1,
        offset: 0,
    };
    let err = dequantize(&info, &[0; 36]).unwrap_err();
    assert!(matches!(
        err,
        GgufError::UnsupportedType {
            ty: TensorType::Q8_1,
            ..
        }
    ));
    let message = err.to_string();
    assert!(
        message.contains("Q8_1") && message.contains("Q4_K"),
        "{message}"
    );
}
