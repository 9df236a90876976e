//! Run: cd runtime/core && cargo +nightly fuzz run image_header fuzz/seeds/image_header -- -max_len=8192
//!
//! Arbitrary bytes as the start of an Ember image: `ImageHeader::parse` on them, and
//! `Manifest::from_bytes` and `TokenizerData::decode` on what follows the 64 header bytes
//! (without checking the manifest's hash, so mutations reach the manifest decoder). Nothing
//! panics; an accepted header re-encodes (`to_bytes`) to exactly the 64 bytes it came from, its
//! manifest range lies after the header within its declared file length; an accepted manifest
//! or vocabulary re-encodes to canonical bytes (no longer than the input) that decode and
//! re-encode to the same bytes; the derived sizes of an architecture that passes its check
//! do not overflow (its keys no wider than its queries; with no explicit head width, the
//! queries as wide as the residual stream).
#![no_main]

use ember_core::image::{HEADER_LEN, ImageHeader, Manifest, TokenizerData};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = ImageHeader::parse(data) {
        assert_eq!(header.to_bytes()[..], data[..HEADER_LEN]);
        assert_eq!(ImageHeader::parse(&header.to_bytes()), Ok(header));
        let range = header.manifest_range();
        assert_eq!(range.start, HEADER_LEN);
        assert!(range.end as u64 <= header.file_len);
    }
    let body = data.get(HEADER_LEN..).unwrap_or_default();
    if let Ok(manifest) = Manifest::from_bytes(body) {
        let bytes = manifest.to_bytes();
        assert!(bytes.len() <= body.len());
        let again = Manifest::from_bytes(&bytes).expect("a re-encoded manifest decodes");
        assert_eq!(again.to_bytes(), bytes);
        // What the engines and the board fit compute from a shape that passed its check.
        let shape = manifest.architecture;
        if shape.check().is_ok() {
            assert!(shape.kv_dim() <= shape.q_dim());
            assert!(shape.variant.head_dim != 0 || shape.q_dim() == shape.n_embd);
            let _ = shape.cache_values_per_position();
        }
    }
    if let Ok(vocabulary) = TokenizerData::decode(body) {
        let bytes = vocabulary.encode();
        assert!(bytes.len() <= body.len());
        let again = TokenizerData::decode(&bytes).expect("a re-encoded vocabulary decodes");
        // Compared as bytes: a score may be NaN.
        assert_eq!(again.encode(), bytes);
    }
});
