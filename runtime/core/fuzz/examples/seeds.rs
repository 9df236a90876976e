//! Writes the committed seed inputs of the fuzz targets into `seeds/<target>/` (a few valid
//! inputs each, so the fuzzers start deep):
//!
//!     cd runtime/core/fuzz && cargo run --example seeds
//!
//! Only requests and events whose shape is stable are written (the seeds are bytes: a later
//! change to a message leaves them valid inputs, merely shallower).
use ember_core::flash::{
    BlockEncoding, FlashOutcome, Incoming, MAX_SLOT_TABLE, Position, Slot, SlotTable,
};
use ember_core::image::{IMAGE_VERSION, ImageHeader, Manifest, TokenizerData};
use ember_core::protocol::{
    self, ChatOptions, ChatRequest, Event, FlashBegin, FlashChunk, FrameWriter, Hello,
    MessageRequest, PROTOCOL_VERSION, Request, Role, Status,
};
use std::fs;
use std::path::Path;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(name), bytes).unwrap();
}

fn frame<M: serde::Serialize>(message: &M) -> Vec<u8> {
    FrameWriter::new().encode(message).unwrap().to_vec()
}

fn payload<M: serde::Serialize>(message: &M) -> Vec<u8> {
    let mut buf = [0u8; protocol::MAX_FRAME];
    postcard::to_slice(message, &mut buf).unwrap().to_vec()
}

/// Device steps: a length byte, then the step (its first byte picks what it is).
fn steps(steps: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for step in steps {
        let (&op, body) = step.split_first().unwrap();
        if body.is_empty() {
            out.extend([1, op]);
        }
        for piece in body.chunks(254) {
            out.extend([piece.len() as u8 + 1, op]);
            out.extend_from_slice(piece);
        }
    }
    out
}

fn receive(bytes: &[u8]) -> Vec<u8> {
    let mut step = vec![5];
    step.extend_from_slice(bytes);
    step
}

fn main() {
    let chat = Request::Chat(ChatRequest {
        session: 7,
        text: protocol::truncated("Why is the sky blue?"),
        options: ChatOptions {
            max_tokens: Some(8),
            temperature: Some(0.7),
            top_k: Some(40),
            seed: Some(1),
            stop: [protocol::truncated("\n\n")].into_iter().collect(),
            sentences: true,
            ..Default::default()
        },
    });
    let image = ImageHeader {
        version: IMAGE_VERSION,
        manifest_len: 100,
        manifest_sha256: [0x5a; 32],
        file_len: 4096,
        image_version: 0,
    };
    let begin = Request::FlashBegin(FlashBegin {
        image_len: 4096,
        sha256: [1; 32],
        header: image.to_bytes().iter().copied().collect(),
        signature: None,
    });
    let chunk = Request::FlashChunk(FlashChunk {
        offset: 0,
        at: 0,
        encoding: BlockEncoding::Raw,
        encoded_len: 4096,
        crc32: ember_core::frame::crc32(&[b"EMBERIMG"]),
        data: b"EMBERIMG".iter().copied().collect(),
    });
    let hello = Event::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        model_name: protocol::truncated("SmolLM2-135M"),
        model_hash: [9; 32],
        context_length: 2048,
        max_frame: protocol::MAX_FRAME as u32,
        slot: Some(Slot::B),
        last_flash: Some(FlashOutcome::Activated),
        max_baud: 921_600,
    });
    let message = |index, role, text| {
        Request::Message(MessageRequest {
            session: 7,
            index,
            role,
            text: protocol::truncated(text),
        })
    };
    let requests = [
        (
            "hello",
            Request::Hello {
                protocol_version: PROTOCOL_VERSION,
            },
        ),
        ("chat", chat.clone()),
        (
            "set_system",
            Request::SetSystem {
                text: protocol::truncated("Be brief."),
            },
        ),
        ("flash_begin", begin.clone()),
        ("flash_chunk", chunk.clone()),
        ("set_baud", Request::SetBaud { baud: 921_600 }),
        (
            "message",
            message(0, Role::User, "What is Rayleigh scattering?"),
        ),
    ];
    let events = [
        ("event_hello", hello),
        (
            "event_token",
            Event::Token {
                text: protocol::truncated("Rayleigh "),
            },
        ),
        (
            "event_status",
            Event::Status(Status {
                session: 7,
                turns: 2,
                context_used: 100,
                context_length: 2048,
                replies: 3,
            }),
        ),
        (
            "event_flash_next",
            Event::FlashNext(Position {
                offset: 65536,
                at: 1792,
            }),
        ),
    ];

    // frame_decoder: whole frames, back to back.
    write("frame_decoder", "hello", &frame(&requests[0].1));
    let mut two = frame(&chat);
    two.extend(frame(&requests[2].1));
    write("frame_decoder", "chat_and_system", &two);

    // message: payloads, and line-mode commands.
    for (name, request) in &requests {
        write("message", name, &payload(request));
    }
    for (name, event) in &events {
        write("message", name, &payload(event));
    }
    write("message", "line_set", b"/set temperature 0.5");
    write("message", "line_system", b"/system You are terse.");

    // line_editor: typed lines with editing keys.
    write(
        "line_editor",
        "typing",
        b"hello\x7f\x7fp!\r/help\r/set top_k 5\r\n/status\r",
    );
    write("line_editor", "interrupt", b"long line\x03/reset\r");

    // device: line mode then frame mode, a reply and a flash begin.
    let device = steps(&[
        receive(b"/help\r"),
        receive(b"hi there\r"),
        b"\x01Hello! How".to_vec(),
        b"\x02".to_vec(),
        receive(&[0]),
        receive(&frame(&requests[0].1)),
        receive(&frame(&requests[6].1)),
        receive(&frame(&message(1, Role::Assistant, "Light scattered by "))),
        receive(&frame(&message(2, Role::Assistant, "molecules."))),
        receive(&frame(&message(3, Role::User, "And "))),
        receive(&frame(&chat)),
        b"\x01The sky scatters light.\n\nMore".to_vec(),
        b"\x02".to_vec(),
        receive(&frame(&Request::Status)),
        receive(&frame(&begin)),
        receive(&frame(&chunk)),
        b"\x06".to_vec(),
        receive(&frame(&Request::Goodbye)),
    ]);
    write("device", "session", &device);
    let baud = steps(&[
        receive(&[0]),
        receive(&frame(&requests[0].1)),
        receive(&frame(&requests[5].1)),
        b"\x0d".to_vec(),
        receive(&frame(&Request::Status)),
        b"\x04".to_vec(),
    ]);
    write("device", "baud", &baud);

    // slot_table: a fresh table, one mid-transfer, one after a flash.
    let tables = [
        ("new", SlotTable::new()),
        (
            "incoming",
            SlotTable {
                active: Slot::A,
                incoming: Some(Incoming {
                    image_len: 3 << 20,
                    sha256: [7; 32],
                    slot: Slot::B,
                    stored: 1 << 20,
                }),
                trial: Some(Slot::B),
                last: None,
                switches: 2,
            },
        ),
        ("activated", SlotTable::new().activated()),
    ];
    for (name, table) in &tables {
        let mut out = [0u8; MAX_SLOT_TABLE];
        let len = table.encode(&mut out);
        write("slot_table", name, &out[..len]);
    }

    // image_header: a header followed by a manifest, and by a vocabulary.
    let body = tiny_manifest();
    if Manifest::from_bytes(&body).is_err() {
        eprintln!("the manifest changed: update tiny_manifest (the image_header seed is shallow)");
    }
    let header = ImageHeader {
        manifest_len: body.len() as u32,
        file_len: 64 + body.len() as u64,
        ..image
    };
    let mut bytes = header.to_bytes().to_vec();
    bytes.extend(&body);
    write("image_header", "manifest", &bytes);
    let vocabulary = TokenizerData {
        tokens: ["<|endoftext|>", "a", "b", "ab", "Ġ"]
            .map(String::from)
            .to_vec(),
        token_types: vec![3, 1, 1, 1, 1],
        merges: vec!["a b".into()],
        scores: vec![],
    };
    let mut bytes = header.to_bytes().to_vec();
    bytes.extend(vocabulary.encode());
    write("image_header", "vocabulary", &bytes);
}

/// A small manifest, written field by field in postcard (so this file does not construct the
/// manifest's structs, which other work changes).
fn tiny_manifest() -> Vec<u8> {
    use serde::Serialize;
    #[derive(Serialize)]
    struct Arch(u64, u64, u64, u64, u64, u64, f32, f32, u64, u64);
    #[derive(Serialize)]
    struct Tok(String, String, Option<u32>, u32, bool, String);
    #[derive(Serialize)]
    struct Sampling(f32, u32, f32, f32);
    #[derive(Serialize)]
    struct Tensor(String, Vec<u64>, u32, u32, u64, u64);
    #[derive(Serialize)]
    struct Section(String, u64, u64, [u8; 32]);
    #[derive(Serialize)]
    struct SelfTest(String, Vec<u32>);
    #[derive(Serialize)]
    struct M(
        String,
        Arch,
        Tok,
        Option<String>,
        Sampling,
        String,
        Vec<Tensor>,
        Vec<Section>,
        SelfTest,
    );
    let m = M(
        "tiny".into(),
        Arch(2, 64, 128, 4, 2, 16, 10000.0, 1e-5, 128, 5),
        Tok(
            "gpt2".into(),
            "smollm".into(),
            Some(0),
            0,
            false,
            "tokenizer".into(),
        ),
        Some("{{ messages }}".into()),
        Sampling(0.7, 40, 0.9, 1.1),
        "int8-block32".into(),
        vec![Tensor(
            "token_embd.weight".into(),
            vec![64, 5],
            1,
            1,
            0,
            1024,
        )],
        vec![
            Section("tokenizer".into(), 512, 40, [0; 32]),
            Section("weights".into(), 576, 1024, [0; 32]),
        ],
        SelfTest("Hi".into(), vec![1, 2]),
    );
    postcard::to_allocvec(&m).unwrap()
}
