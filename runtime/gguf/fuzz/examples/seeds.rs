//! Writes the committed seed inputs of the `gguf` target into `seeds/gguf/`: the reader's
//! fixture (written by gguf-py) and two small files written by `GgufWriter`.
//!
//!     cd runtime/gguf/fuzz && cargo run --example seeds
use ember_gguf::{GgufWriter, TensorType, Value, ValueType, quantize};
use std::path::Path;

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/gguf");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        dir.join("../../../tests/fixtures/fixture.gguf"),
        dir.join("fixture"),
    )
    .unwrap();

    let values: Vec<f32> = (0..64).map(|i| (i as f32 - 31.5) / 8.0).collect();
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", Value::String("llama".into()))
        .unwrap();
    w.add_metadata("llama.block_count", Value::U32(1)).unwrap();
    w.add_metadata("llama.rope.freq_base", Value::F32(10000.0))
        .unwrap();
    w.add_metadata("tokenizer.ggml.add_bos_token", Value::Bool(false))
        .unwrap();
    w.add_metadata(
        "tokenizer.ggml.tokens",
        Value::Array(
            ValueType::String,
            ["a", "b", "ab"].map(|s| Value::String(s.into())).to_vec(),
        ),
    )
    .unwrap();
    w.add_metadata(
        "tokenizer.ggml.token_type",
        Value::Array(ValueType::I32, vec![Value::I32(1); 3]),
    )
    .unwrap();
    w.add_metadata(
        "test.nested",
        Value::Array(
            ValueType::Array,
            vec![Value::Array(ValueType::U8, vec![Value::U8(1)])],
        ),
    )
    .unwrap();
    for (name, ty) in [
        ("f32", TensorType::F32),
        ("f16", TensorType::F16),
        ("q8_0", TensorType::Q8_0),
        ("q4_0", TensorType::Q4_0),
        ("q4_1", TensorType::Q4_1),
    ] {
        let data = quantize(ty, &values).unwrap();
        w.add_tensor(name, &[32, 2], ty, data).unwrap();
    }
    w.add_tensor(
        "bf16",
        &[4],
        TensorType::BF16,
        vec![0x80, 0x3f, 0, 0x40, 0, 0, 0x80, 0xbf],
    )
    .unwrap();
    w.add_tensor("q4_k", &[256], TensorType::Q4K, vec![0; 144])
        .unwrap();
    std::fs::write(dir.join("writer"), w.to_bytes()).unwrap();

    let mut w = GgufWriter::new();
    w.add_metadata("general.alignment", Value::U32(64)).unwrap();
    w.add_tensor("one", &[1], TensorType::F32, 1.0f32.to_le_bytes().to_vec())
        .unwrap();
    std::fs::write(dir.join("aligned_64"), w.to_bytes()).unwrap();
}
