//! Run: cd runtime/image && cargo +nightly fuzz run image fuzz/seeds/image -- -max_len=16384
//!
//! Arbitrary bytes as a whole Ember image through `ember_image::parse` (what `Image::open` runs
//! on the mapped file), twice: as given with every section's hash checked, and with the header's
//! manifest hash and file length made to match (so mutations of the manifest get past its hash).
//! Nothing panics, and for an accepted image:
//! - the header re-encodes to its 64 bytes, and the manifest to canonical bytes that decode and
//!   re-encode to the same bytes;
//! - every tensor decodes (`decode_tensor`, as `Image::tensor_f32`) to exactly its element count
//!   of values and converts (`standard_layout`, as `ember export-onnx`) to its own length;
//!   the tokenizer section, if present, decodes or is refused;
//! - the same manifest and section bytes laid out again by `assemble` (what `ImageWriter`
//!   writes) parse back, hashes checked, to the same manifest.
#![no_main]

use ember_core::image::{HEADER_LEN, ImageHeader, Manifest, TokenizerData};
use ember_image::{assemble, decode_tensor, parse, sha256, standard_layout};
use libfuzzer_sys::fuzz_target;

/// Decode at most this many tensor values, and reassemble at most this many section bytes, per
/// input: tensors and sections may share bytes, so their total is not bounded by the input's.
const BUDGET: u64 = 1 << 22;

fn check(bytes: &[u8], verify_sections: bool) {
    let Ok(manifest) = parse(bytes, verify_sections) else {
        return;
    };
    let header = ImageHeader::parse(bytes).expect("an accepted image has a header");
    assert_eq!(header.to_bytes()[..], bytes[..HEADER_LEN]);
    assert_eq!(header.file_len, bytes.len() as u64);
    let encoded = manifest.to_bytes();
    assert!(encoded.len() <= header.manifest_len as usize);
    let again = Manifest::from_bytes(&encoded).expect("a re-encoded manifest decodes");
    assert_eq!(again.to_bytes(), encoded);

    let section_bytes = |index: usize| {
        let s = &manifest.sections[index];
        &bytes[s.offset as usize..][..s.length as usize]
    };
    let mut budget = BUDGET;
    for tensor in &manifest.tensors {
        let data = &section_bytes(tensor.section as usize)[tensor.offset as usize..]
            [..tensor.length as usize];
        let (cols, rows) = tensor.rows();
        let count = cols * rows;
        if count > budget {
            continue;
        }
        budget -= count;
        assert_eq!(decode_tensor(tensor, data).len() as u64, count);
        assert_eq!(standard_layout(tensor, data).len(), data.len());
    }
    if let Some(i) = (manifest.sections.iter()).position(|s| s.name == manifest.tokenizer.section) {
        let _ = TokenizerData::decode(section_bytes(i));
    }

    let total: u64 = manifest.sections.iter().map(|s| s.length).sum();
    if total > BUDGET {
        return;
    }
    let bodies: Vec<(&str, &[u8])> = (manifest.sections.iter().enumerate())
        .map(|(i, s)| (s.name.as_str(), section_bytes(i)))
        .collect();
    let mut laid_out = manifest.clone();
    let image = assemble(&mut laid_out, &bodies);
    let back = parse(&image, true).expect("a reassembled image parses");
    assert_eq!(back.to_bytes(), laid_out.to_bytes());
    assert_eq!(back.tensors, manifest.tensors);
}

fuzz_target!(|data: &[u8]| {
    check(data, true);
    let Ok(header) = ImageHeader::parse(data) else {
        return;
    };
    let Some(manifest) = data.get(header.manifest_range()) else {
        return;
    };
    let mut fixed = data.to_vec();
    fixed[16..48].copy_from_slice(&sha256(manifest));
    fixed[48..56].copy_from_slice(&(data.len() as u64).to_le_bytes());
    check(&fixed, false);
});
