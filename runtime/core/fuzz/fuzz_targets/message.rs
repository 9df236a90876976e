//! Run: cd runtime/core && cargo +nightly fuzz run message fuzz/seeds/message -- -max_len=2048
//!
//! Arbitrary bytes as a frame payload, decoded as a `Request` through `protocol::decode_request`
//! (what a device decodes), as an `Event` through `protocol::decode` (what a host decodes), and
//! as a line-mode command (`line::parse_line`). `decode_request` accepts exactly what `decode`
//! accepts, and of the rest calls `BadFields { variant }` exactly the payloads whose leading
//! varint is a known request's index `variant`. It never panics, and every message that decodes
//! re-encodes through `FrameWriter` into a frame that `FrameDecoder` reads back to the canonical
//! payload, which decodes and re-encodes to the same bytes (postcard accepts over-long varints,
//! so the canonical payload may be shorter than the input, never longer).
#![no_main]

use core::fmt::Write;

use ember_core::frame::FrameDecoder;
use ember_core::line::parse_line;
use ember_core::protocol::{
    self, Event, FrameWriter, MAX_FRAME, ProtocolError, REQUEST_VARIANTS, Request,
};
use libfuzzer_sys::fuzz_target;
use serde::{Serialize, de::DeserializeOwned};

/// Formats into nowhere, to run every `Debug` and `Display`.
struct Sink;

impl Write for Sink {
    fn write_str(&mut self, _: &str) -> core::fmt::Result {
        Ok(())
    }
}

/// The payload of the single frame in `frame`.
fn payload_of(frame: &[u8]) -> Vec<u8> {
    let mut decoder = FrameDecoder::<MAX_FRAME>::new();
    let mut out = None;
    for (i, &b) in frame.iter().enumerate() {
        if let Some(result) = decoder.push(b) {
            assert_eq!(i, frame.len() - 1, "a frame ended before its delimiter");
            let frame = result.expect("a frame FrameWriter wrote decodes");
            assert_eq!(frame.seq, 0);
            out = Some(frame.payload.to_vec());
        }
    }
    out.expect("FrameWriter's frame yields a frame")
}

/// `decode_request` against `decode`: the same requests, and `BadFields` for exactly the
/// refused payloads that start with a known request's index.
fn request(data: &[u8]) {
    let plain = protocol::decode::<Request>(data);
    let variant = postcard::take_from_bytes::<u32>(data).ok().map(|(v, _)| v);
    match protocol::decode_request(data) {
        Ok(request) => {
            // The same request (compared encoded: a float field may be NaN).
            let plain = plain.expect("decode accepts what decode_request accepts");
            assert_eq!(
                postcard::to_allocvec(&plain).unwrap(),
                postcard::to_allocvec(&request).unwrap()
            );
            round_trip(request, data);
        }
        Err(ProtocolError::BadFields { variant: v }) => {
            assert!(
                plain.is_err(),
                "decode accepted what decode_request refused"
            );
            assert!(v < REQUEST_VARIANTS);
            assert_eq!(variant, Some(v));
        }
        Err(ProtocolError::BadMessage) => {
            assert!(
                plain.is_err(),
                "decode accepted what decode_request refused"
            );
            assert!(variant.is_none_or(|v| v >= REQUEST_VARIANTS));
        }
        Err(e) => panic!("decode_request: unexpected {e}"),
    }
}

fn round_trip<M: Serialize + DeserializeOwned + core::fmt::Debug>(message: M, data: &[u8]) {
    write!(Sink, "{message:?}").unwrap();
    let frame = match FrameWriter::new().encode(&message) {
        Ok(frame) => frame.to_vec(),
        // Frames hold MAX_FRAME encoded bytes; a payload near that may not fit with its
        // overhead, but anything the device's decoder accepted (shorter) must.
        Err(ProtocolError::TooBig) if data.len() > MAX_FRAME - 32 => return,
        Err(e) => panic!("a decoded message does not re-encode: {e}"),
    };
    assert!(frame.len() <= MAX_FRAME);
    let canonical = payload_of(&frame);
    assert!(
        canonical.len() <= data.len(),
        "re-encoded longer than the input"
    );
    let again: M = protocol::decode(&canonical).expect("a re-encoded message decodes");
    let frame2 = FrameWriter::new()
        .encode(&again)
        .expect("re-encodes")
        .to_vec();
    assert_eq!(frame, frame2, "decode∘encode is not stable");
}

fuzz_target!(|data: &[u8]| {
    request(data);
    if let Ok(event) = protocol::decode::<Event>(data) {
        round_trip(event, data);
    }
    if let Ok(line) = core::str::from_utf8(data) {
        match parse_line(line) {
            Ok(command) => write!(Sink, "{command:?}").unwrap(),
            Err(error) => write!(Sink, "{error}").unwrap(),
        }
    }
});
