//! The GGUF reader against a fixture written and dequantized by gguf-py (see
//! `tests/fixtures/README.md`), plus properties: arbitrary or damaged bytes never panic the
//! reader, and what the writer writes the reader reads back.

use ember_gguf::{
    GgufError, GgufFile, GgufWriter, TensorType, Value, ValueType, dequantize, parse, quantize,
};
use quickcheck::{QuickCheck, TestResult, quickcheck};
use serde_json::Value as Json;
mod common;
use common::{assert_dequantizes_to, fixture_path};

fn fixture_bytes() -> Vec<u8> {
    std::fs::read(fixture_path("fixture.gguf")).expect("fixture.gguf")
}

fn expected() -> Json {
    let text = std::fs::read_to_string(fixture_path("expected.json")).expect("expected.json");
    serde_json::from_str(&text).unwrap()
}

fn type_name(ty: ValueType) -> &'static str {
    match ty {
        ValueType::U8 => "u8",
        ValueType::I8 => "i8",
        ValueType::U16 => "u16",
        ValueType::I16 => "i16",
        ValueType::U32 => "u32",
        ValueType::I32 => "i32",
        ValueType::U64 => "u64",
        ValueType::I64 => "i64",
        ValueType::F32 => "f32",
        ValueType::F64 => "f64",
        ValueType::Bool => "bool",
        ValueType::String => "string",
        ValueType::Array => "array",
    }
}

/// True when a metadata value equals gguf-py's JSON rendering of it.
fn value_matches(value: &Value, json: &Json) -> bool {
    match value {
        Value::F32(v) => json.as_f64().map(|j| j as f32) == Some(*v),
        Value::F64(v) => json.as_f64() == Some(*v),
        Value::Bool(v) => json.as_bool() == Some(*v),
        Value::String(v) => json.as_str() == Some(v),
        Value::Array(_, items) => json.as_array().is_some_and(|list| {
            list.len() == items.len() && items.iter().zip(list).all(|(v, j)| value_matches(v, j))
        }),
        int => {
            let n = int.as_i128().unwrap();
            json.as_i64().map(i128::from) == Some(n) || json.as_u64().map(i128::from) == Some(n)
        }
    }
}

#[test]
fn fixture_metadata_matches_gguf_py() {
    let file = GgufFile::open(fixture_path("fixture.gguf")).unwrap();
    let expected = expected();
    assert_eq!(file.parsed().version as u64, expected["version"]);
    assert_eq!(file.parsed().alignment, expected["alignment"]);
    let keys = expected["metadata"].as_object().unwrap();
    let mut types_seen = std::collections::HashSet::new();
    for (key, want) in keys {
        let value = file
            .metadata()
            .get(key)
            .unwrap_or_else(|| panic!("missing {key}"));
        assert_eq!(type_name(value.value_type()), want["type"], "type of {key}");
        if let (Value::Array(elem, _), Some(want_elem)) = (value, want.get("elem_type")) {
            assert_eq!(type_name(*elem), want_elem, "element type of {key}");
        }
        assert!(
            value_matches(value, &want["value"]),
            "{key}: {value:?} vs {}",
            want["value"]
        );
        types_seen.insert(value.value_type());
    }
    assert_eq!(types_seen.len(), 13, "the fixture covers every value type");
    assert_eq!(file.metadata().entries().len(), keys.len());
}

#[test]
fn fixture_tensors_dequantize_like_gguf_py() {
    let file = GgufFile::open(fixture_path("fixture.gguf")).unwrap();
    let expected = expected();
    let tensors = expected["tensors"].as_array().unwrap();
    assert_eq!(file.tensors().len(), tensors.len());
    let mut types_seen = std::collections::HashSet::new();
    for want in tensors {
        let name = want["name"].as_str().unwrap();
        let info = file.tensor(name).unwrap();
        assert_eq!(info.ty.to_string(), want["type"], "{name}");
        let dims: Vec<u64> = serde_json::from_value(want["dims"].clone()).unwrap();
        assert_eq!(info.dims, dims, "{name}");
        assert_eq!(info.offset, want["offset"], "{name}");
        assert_dequantizes_to(&file, name, want);
        types_seen.insert(info.ty);
    }
    for ty in [
        TensorType::F32,
        TensorType::F16,
        TensorType::Q8_0,
        TensorType::Q4_0,
        TensorType::Q4_1,
    ] {
        assert!(types_seen.contains(&ty), "fixture lacks {ty}");
    }
}

#[test]
fn wrong_magic_version_and_truncation_are_typed_errors() {
    let bytes = fixture_bytes();
    let mut bad = bytes.clone();
    bad[0] = b'X';
    assert!(matches!(parse(&bad), Err(GgufError::BadMagic { .. })));
    let mut bad = bytes.clone();
    bad[4] = 1;
    assert!(matches!(parse(&bad), Err(GgufError::UnsupportedVersion(1))));
    assert!(matches!(
        parse(&bytes[..bytes.len() - 1]),
        Err(GgufError::BadTensorData { .. })
    ));
    assert!(matches!(
        parse(&bytes[..100]),
        Err(GgufError::Truncated { .. } | GgufError::ImplausibleCount { .. })
    ));
    assert!(matches!(
        GgufFile::open("/nonexistent/model.gguf"),
        Err(GgufError::Io { .. })
    ));
}

#[test]
fn arbitrary_bytes_never_panic_the_reader() {
    fn prop(bytes: Vec<u8>) -> bool {
        let _ = parse(&bytes);
        let mut with_magic = b"GGUF\x03\x00\x00\x00".to_vec();
        with_magic.extend_from_slice(&bytes);
        let _ = parse(&with_magic);
        true
    }
    QuickCheck::new()
        .tests(2000)
        .quickcheck(prop as fn(Vec<u8>) -> bool);
}

#[test]
fn damaged_fixtures_never_panic_the_reader() {
    static FIXTURE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    fn prop(cut: usize, flips: Vec<(usize, u8)>) -> bool {
        let bytes = FIXTURE.get_or_init(fixture_bytes);
        let mut damaged = bytes[..cut % (bytes.len() + 1)].to_vec();
        for (at, xor) in flips {
            if !damaged.is_empty() {
                let i = at % damaged.len();
                damaged[i] ^= xor;
            }
        }
        if let Ok(parsed) = parse(&damaged) {
            for t in &parsed.tensors {
                let start = (parsed.data_offset + t.offset) as usize;
                let _ = dequantize(t, &damaged[start..start + t.byte_size() as usize]);
            }
        }
        true
    }
    QuickCheck::new()
        .tests(1000)
        .quickcheck(prop as fn(usize, Vec<(usize, u8)>) -> bool);
}

quickcheck! {
    fn written_files_read_back(values: Vec<f32>, ints: Vec<i32>, text: String, flag: bool) -> TestResult {
        let finite: Vec<f32> = values.into_iter().filter(|v| v.is_finite()).take(64).collect();
        let mut row = finite.clone();
        row.resize(64, 0.5);
        let mut writer = GgufWriter::new();
        writer.add_metadata("text", Value::String(text.clone())).unwrap();
        writer.add_metadata("flag", Value::Bool(flag)).unwrap();
        writer.add_metadata("ints", Value::Array(ValueType::I32, ints.iter().map(|&i| Value::I32(i)).collect())).unwrap();
        writer.add_tensor("f32", &[64], TensorType::F32, quantize(TensorType::F32, &row).unwrap()).unwrap();
        writer.add_tensor("q8", &[32, 2], TensorType::Q8_0, quantize(TensorType::Q8_0, &row).unwrap()).unwrap();
        let bytes = writer.to_bytes();
        let parsed = parse(&bytes).unwrap();
        let m = &parsed.metadata;
        let ok = m.get_str("text").unwrap() == text
            && m.get_bool("flag").unwrap() == flag
            && m.get_int_array("ints").unwrap() == ints.iter().map(|&i| i as i64).collect::<Vec<_>>()
            && parsed.tensors[1].dims == [32, 2];
        let t = &parsed.tensors[0];
        let start = (parsed.data_offset + t.offset) as usize;
        let back = dequantize(t, &bytes[start..start + 256]).unwrap();
        TestResult::from_bool(ok && back == row)
    }

    fn quantization_error_is_within_half_a_step(values: Vec<i16>) -> TestResult {
        if values.len() < 32 {
            return TestResult::discard();
        }
        let x: Vec<f32> = values[..32].iter().map(|&v| v as f32 / 1000.0).collect();
        let info = |ty| ember_gguf::TensorInfo { name: "t".into(), dims: vec![32], ty, offset: 0 };
        let max = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let range = x.iter().copied().fold(f32::MIN, f32::max) - x.iter().copied().fold(f32::MAX, f32::min);
        // Q4_0 maps [-8d, 7d]: the extreme opposite in sign to the largest is off by one step.
        for (ty, step, steps) in [(TensorType::Q8_0, max / 127.0, 0.5), (TensorType::Q4_1, range / 15.0, 0.5), (TensorType::Q4_0, max / 8.0, 1.0)] {
            let back = dequantize(&info(ty), &quantize(ty, &x).unwrap()).unwrap();
            for (a, b) in x.iter().zip(&back) {
                // The rounding step, plus the f16 rounding of the scale and minimum.
                if (a - b).abs() > steps * step + 2e-3 * (max + step) + 1e-6 {
                    return TestResult::error(format!("{ty}: {a} became {b} (step {step})"));
                }
            }
        }
        TestResult::passed()
    }
}

/// Found writing the fuzz target's round trip: a file whose metadata sets `general.alignment`
/// was written with its tensors at the default alignment, so the reader (which honours the
/// key) refused it or read the wrong bytes.
#[test]
fn the_writer_honours_general_alignment() {
    for align in [1u32, 8, 64, 4096] {
        let mut writer = GgufWriter::new();
        writer
            .add_metadata("general.alignment", Value::U32(align))
            .unwrap();
        writer
            .add_metadata("pad", Value::String("x".into()))
            .unwrap();
        let one = quantize(TensorType::F32, &[1.0, 2.0, 3.0]).unwrap();
        writer
            .add_tensor("a", &[3], TensorType::F32, one.clone())
            .unwrap();
        writer
            .add_tensor("b", &[3], TensorType::F32, one.clone())
            .unwrap();
        let bytes = writer.to_bytes();
        let parsed = parse(&bytes).unwrap_or_else(|e| panic!("alignment {align}: {e}"));
        assert_eq!(parsed.alignment, u64::from(align));
        for t in &parsed.tensors {
            assert_eq!(t.offset % u64::from(align), 0);
            let start = (parsed.data_offset + t.offset) as usize;
            assert_eq!(&bytes[start..start + 12], &one[..], "alignment {align}");
        }
    }
}
