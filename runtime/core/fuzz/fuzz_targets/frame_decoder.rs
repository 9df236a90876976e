//! Run: cd runtime/core && cargo +nightly fuzz run frame_decoder -- -max_total_time=60
//!
//! Arbitrary bytes into the frame decoder: it never panics, and every frame it accepts
//! re-encodes (`encode_frame`) to bytes that decode to the same sequence number and payload.
#![no_main]

use ember_core::frame::{DELIMITER, FrameDecoder, OVERHEAD, encode_frame, max_encoded_len};
use libfuzzer_sys::fuzz_target;

const N: usize = 256;

fuzz_target!(|data: &[u8]| {
    let mut decoder = FrameDecoder::<N>::new();
    for &byte in data {
        let Some(Ok(frame)) = decoder.push(byte) else {
            continue;
        };
        assert!(frame.payload.len() + OVERHEAD <= N);
        let mut scratch = [0u8; N];
        let mut encoded = [0u8; max_encoded_len(N) + 1];
        let len = encode_frame(frame.seq, frame.payload, &mut scratch, &mut encoded)
            .expect("an accepted frame re-encodes");
        assert_eq!(encoded[len - 1], DELIMITER);
        assert!(!encoded[..len - 1].contains(&DELIMITER));
        let mut again = FrameDecoder::<{ max_encoded_len(N) + 1 }>::new();
        let mut decoded = None;
        for (i, &b) in encoded[..len].iter().enumerate() {
            if let Some(result) = again.push(b) {
                assert_eq!(i, len - 1, "a frame ended before its delimiter");
                let back = result.expect("a re-encoded frame decodes");
                assert_eq!((back.seq, back.payload), (frame.seq, frame.payload));
                decoded = Some(());
            }
        }
        assert!(decoded.is_some(), "the re-encoded frame was not decoded");
    }
});
