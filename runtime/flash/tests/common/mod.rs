//! What the flash tests share: real Ember images (made by `ember_image::ImageWriter`, so every
//! section hash can be checked), and a host that sends one block by block, raw and zstd.

use ed25519_dalek::{Signer, SigningKey};
use ember_core::flash::{BlockEncoding, FLASH_BLOCK, MAX_CHUNK, signed_message};
use ember_core::frame::crc32;
use ember_core::image::{
    Architecture, Manifest, SamplingDefaults, SelfTest, TensorEncoding, TokenizerData,
    TokenizerSpec,
};
use ember_core::protocol::{FlashBegin, FlashChunk, Signature};
use ember_flash::{FlashError, SlotDir, Storage};
use ember_image::{EncodedTensor, ImageWriter};
use sha2::{Digest, Sha256};

/// A valid Ember image named `name` whose weights are `floats` f32 values: the first half
/// compresses well, the second half hardly (pseudo-random).
#[allow(dead_code)] // not every test binary uses it
pub fn image(name: &str, floats: usize) -> Vec<u8> {
    versioned_image(name, floats, 0)
}

/// [`image`] of image version `version` (`ember quantize --image-version`).
pub fn versioned_image(name: &str, floats: usize, version: u32) -> Vec<u8> {
    let manifest = Manifest {
        model_name: name.into(),
        architecture: Architecture {
            n_layers: 1,
            n_embd: 64,
            n_ff: 64,
            n_head: 4,
            n_head_kv: 2,
            rope_dim: 16,
            rope_base: 10_000.0,
            rms_eps: 1e-5,
            context_length: 128,
            vocab_size: 3,
            variant: Default::default(),
        },
        tokenizer: TokenizerSpec {
            model: "gpt2".into(),
            pre: "smollm".into(),
            bos: Some(1),
            eos: 2,
            add_bos: false,
            section: String::new(),
        },
        chat_template: None,
        default_sampling: SamplingDefaults {
            temperature: 0.7,
            top_k: 40,
            top_p: 0.9,
            repetition_penalty: 1.1,
        },
        quantization: "int8-block32".into(),
        tensors: vec![],
        sections: vec![],
        self_test: SelfTest {
            prompt: "a".into(),
            tokens: vec![0],
        },
        image_version: version,
    };
    let tokenizer = TokenizerData {
        tokens: vec!["a".into(), "<|im_start|>".into(), "<|im_end|>".into()],
        token_types: vec![1, 3, 3],
        merges: vec![],
        scores: vec![],
    };
    let mut state = name.bytes().fold(0x9E37_79B9_7F4A_7C15u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01B3)
    });
    let weights: Vec<u8> = (0..floats)
        .flat_map(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let value = if i < floats / 2 {
                (i % 1000) as f32
            } else {
                (state >> 40) as f32
            };
            value.to_le_bytes()
        })
        .collect();
    let mut writer = ImageWriter::new(manifest, tokenizer);
    writer.add_tensor(EncodedTensor::new(
        "weights",
        &[floats as u64],
        TensorEncoding::F32,
        &weights,
        &[],
    ));
    let bytes = writer.to_bytes();
    let manifest = ember_image::parse(&bytes, true).expect("a valid image");
    assert_eq!(manifest.image_version, version);
    bytes
}

/// The signing key made from `seed`, and its public key as a line of `flash.pub`.
#[allow(dead_code)] // not every test binary uses it
pub fn key(seed: u8) -> (SigningKey, String) {
    let key = SigningKey::from_bytes(&[seed; 32]);
    let public = key
        .verifying_key()
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    (key, public)
}

/// An image as a host sends it: the `FlashBegin` and each block's chunks, the even blocks
/// zstd-compressed, the odd ones raw.
pub struct Flash {
    /// The image.
    pub bytes: Vec<u8>,
    begin: FlashBegin,
    blocks: Vec<Vec<FlashChunk>>,
}

impl Flash {
    pub fn new(bytes: Vec<u8>) -> Flash {
        let begin = FlashBegin {
            image_len: bytes.len() as u64,
            sha256: Sha256::digest(&bytes).into(),
            header: bytes[..64].iter().copied().collect(),
            signature: None,
        };
        let blocks = bytes
            .chunks(FLASH_BLOCK as usize)
            .enumerate()
            .map(|(index, plain)| {
                let (encoding, data) = if index % 2 == 0 {
                    (BlockEncoding::Zstd, zstd::bulk::compress(plain, 3).unwrap())
                } else {
                    (BlockEncoding::Raw, plain.to_vec())
                };
                data.chunks(MAX_CHUNK)
                    .enumerate()
                    .map(|(i, piece)| FlashChunk {
                        offset: index as u64 * FLASH_BLOCK as u64,
                        at: (i * MAX_CHUNK) as u32,
                        encoding,
                        encoded_len: data.len() as u32,
                        crc32: crc32(&[piece]),
                        data: piece.iter().copied().collect(),
                    })
                    .collect()
            })
            .collect();
        Flash {
            bytes,
            begin,
            blocks,
        }
    }

    pub fn begin(&self) -> &FlashBegin {
        &self.begin
    }

    /// The same image signed with `key` (as `ember sign` does).
    #[allow(dead_code)] // not every test binary uses it
    pub fn signed(mut self, key: &SigningKey) -> Flash {
        let message = signed_message(&self.begin.sha256, self.begin.image_len);
        let signature = key.sign(&message).to_bytes();
        self.begin.signature = Some(Signature::from_bytes(&signature));
        self
    }

    /// The chunks of the blocks from image offset `offset` on.
    pub fn chunks_from(&self, offset: u64) -> impl Iterator<Item = &FlashChunk> {
        let first = (offset / FLASH_BLOCK as u64) as usize;
        self.blocks.iter().skip(first).flatten()
    }

    /// Begins (or resumes) the transfer and sends every block the device still needs; returns
    /// the offset it resumed from.
    pub fn transfer<S: Storage>(&self, slots: &mut SlotDir<S>) -> Result<u64, FlashError> {
        let start = slots.begin(&self.begin)?;
        for chunk in self.chunks_from(start.offset) {
            slots.chunk(chunk)?;
        }
        Ok(start.offset)
    }
}

/// The image `slots` boots: its active slot's bytes, each section hash checked.
pub fn booted<S: Storage>(storage: &S, slots: &SlotDir<S>) -> Vec<u8> {
    let path = slots.active_path();
    let bytes = storage.read(&path).expect("the active slot reads");
    if let Err(e) = ember_image::parse(&bytes, true) {
        panic!("the active slot {} is no valid image: {e}", path.display());
    }
    bytes
}
