//! What the GGUF fixture tests share: where the fixtures are, and the bit-exact comparison with
//! the values gguf-py wrote.

use ember_gguf::GgufFile;
use serde_json::Value as Json;
use std::path::PathBuf;

/// A file in `tests/fixtures`.
pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Asserts that `name` in `file` dequantizes to `want["values"]`, every value bit for bit.
pub fn assert_dequantizes_to(file: &GgufFile, name: &str, want: &Json) {
    let values = file.dequantize(name).unwrap();
    let want_values: Vec<f64> = serde_json::from_value(want["values"].clone()).unwrap();
    assert_eq!(values.len(), want_values.len(), "{name}");
    for (i, (got, want)) in values.iter().zip(&want_values).enumerate() {
        assert_eq!(
            got.to_bits(),
            (*want as f32).to_bits(),
            "{name}[{i}]: {got} vs {want}"
        );
    }
}
