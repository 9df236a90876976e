//! Run: cd runtime/gguf && cargo +nightly fuzz run gguf fuzz/seeds/gguf -- -max_len=16384
//!
//! Arbitrary bytes as a GGUF file through `ember_gguf::parse`. It never panics; every tensor it
//! accepts lies in the file (its data slices without panicking) and dequantizes (F32, F16,
//! BF16, Q8_0, Q4_0, Q4_1) to exactly its element count of values. An accepted file written
//! back by `GgufWriter` (metadata and tensors, the data copied) parses to the same metadata,
//! tensor names, shapes, types and data, and writing that again gives the same bytes.
#![no_main]

use ember_gguf::{GgufError, GgufWriter, TensorType, parse};
use libfuzzer_sys::fuzz_target;

/// Dequantize at most this many values per input: tensors may share their bytes, so their
/// total size is not bounded by the input's.
const DEQUANTIZE_BUDGET: u64 = 1 << 20;

fn rewrite(bytes: &[u8]) -> Vec<u8> {
    let parsed = parse(bytes).expect("rewrite of a parsed file");
    let mut writer = GgufWriter::new();
    for (key, value) in parsed.metadata.entries() {
        writer
            .add_metadata(key, value.clone())
            .expect("unique keys");
    }
    for t in &parsed.tensors {
        let start = (parsed.data_offset + t.offset) as usize;
        let data = bytes[start..start + t.byte_size() as usize].to_vec();
        writer
            .add_tensor(&t.name, &t.dims, t.ty, data)
            .expect("a parsed tensor is a valid tensor");
    }
    writer.to_bytes()
}

fuzz_target!(|data: &[u8]| {
    let Ok(parsed) = parse(data) else {
        return;
    };
    let mut budget = DEQUANTIZE_BUDGET;
    for t in &parsed.tensors {
        let start = parsed.data_offset + t.offset;
        let end = start + t.byte_size();
        assert!(end <= data.len() as u64 && t.offset % parsed.alignment == 0);
        let bytes = &data[start as usize..end as usize];
        let (row, rows) = t.rows();
        assert_eq!((row * rows) as u64, t.element_count());
        if t.element_count() > budget {
            continue;
        }
        budget -= t.element_count();
        match ember_gguf::dequantize(t, bytes) {
            Ok(values) => assert_eq!(values.len() as u64, t.element_count()),
            Err(GgufError::UnsupportedType { .. }) => assert!(!matches!(
                t.ty,
                TensorType::F32
                    | TensorType::F16
                    | TensorType::BF16
                    | TensorType::Q8_0
                    | TensorType::Q4_0
                    | TensorType::Q4_1
                    | TensorType::Q5_0
                    | TensorType::Q5_1
                    | TensorType::Q2K
                    | TensorType::Q3K
                    | TensorType::Q4K
                    | TensorType::Q5K
                    | TensorType::Q6K
                    | TensorType::Q8K
                    | TensorType::IQ4NL
                    | TensorType::IQ4XS
            )),
            Err(e) => panic!("{}: {e}", t.name),
        }
    }
    let written = rewrite(data);
    let again = parse(&written).expect("a rewritten file parses");
    assert_eq!(again.tensors.len(), parsed.tensors.len());
    for (a, b) in again.tensors.iter().zip(&parsed.tensors) {
        assert_eq!((&a.name, &a.dims, a.ty), (&b.name, &b.dims, b.ty));
        let at = |p: &ember_gguf::ParsedGguf, t: &ember_gguf::TensorInfo, bytes: &'_ [u8]| {
            let start = (p.data_offset + t.offset) as usize;
            bytes[start..start + t.byte_size() as usize].to_vec()
        };
        assert_eq!(at(&again, a, &written), at(&parsed, b, data));
    }
    let keys = |p: &ember_gguf::ParsedGguf| {
        p.metadata
            .entries()
            .iter()
            .map(|(k, v)| (k.clone(), v.value_type()))
            .collect::<Vec<_>>()
    };
    assert_eq!(keys(&again), keys(&parsed));
    assert_eq!(rewrite(&written), written, "writing is not stable");
});
