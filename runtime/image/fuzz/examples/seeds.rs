//! Writes the committed seed inputs of the `image` target into `seeds/image/`: small images
//! written by `ImageWriter`, one int8 and one 4-bit, each with an f32 tensor.
//!
//!     cd runtime/image/fuzz && cargo run --example seeds
//!
//! (This constructs a `Manifest`: when its fields change, update it here and rerun.)
use ember_core::image::{
    Architecture, Manifest, SamplingDefaults, SelfTest, TensorEncoding, TokenizerData,
    TokenizerSpec,
};
use ember_image::{EncodedTensor, ImageWriter, parse};
use std::path::Path;

fn manifest(quantization: &str) -> Manifest {
    Manifest {
        model_name: "fuzz".into(),
        architecture: Architecture {
            n_layers: 1,
            n_embd: 32,
            n_ff: 64,
            n_head: 2,
            n_head_kv: 1,
            rope_dim: 16,
            rope_base: 10_000.0,
            rms_eps: 1e-5,
            context_length: 64,
            vocab_size: 3,
            variant: Default::default(),
        },
        tokenizer: TokenizerSpec {
            model: "gpt2".into(),
            pre: "smollm".into(),
            bos: None,
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
        quantization: quantization.into(),
        tensors: vec![],
        sections: vec![],
        self_test: SelfTest {
            prompt: "a".into(),
            tokens: vec![1],
        },
        image_version: 0,
    }
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/image");
    std::fs::create_dir_all(&dir).unwrap();
    let vocabulary = TokenizerData {
        tokens: vec!["a".into(), "b".into(), "<|im_end|>".into()],
        token_types: vec![1, 1, 3],
        merges: vec!["a b".into()],
        scores: vec![],
    };
    let quants: Vec<u8> = (0..96).map(|i| (i * 37 % 256) as u8).collect();
    let norm: Vec<u8> = (0..32)
        .flat_map(|i| (i as f32 / 4.0).to_le_bytes())
        .collect();
    for (name, encoding, quantization) in [
        ("int8", TensorEncoding::Int8Block32, "int8-block32"),
        ("q4", TensorEncoding::Int4Block32, "q4-block32"),
    ] {
        let mut writer = ImageWriter::new(manifest(quantization), vocabulary.clone());
        let tensor = match encoding {
            TensorEncoding::Int4Block32 => {
                let nibbles: Vec<u8> = quants.iter().map(|q| q & 15).collect();
                EncodedTensor::int4(
                    "token_embd.weight",
                    &[32, 3],
                    &nibbles,
                    &[0.5, 0.25, 1.0],
                    &[-1.0; 3],
                )
            }
            _ => EncodedTensor::new(
                "token_embd.weight",
                &[32, 3],
                encoding,
                &quants,
                &[0.5, 0.25, 1.0],
            ),
        };
        writer.add_tensor(tensor);
        writer.add_tensor(EncodedTensor::new(
            "output_norm.weight",
            &[32],
            TensorEncoding::F32,
            &norm,
            &[],
        ));
        let bytes = writer.to_bytes();
        parse(&bytes, true).expect("the seed image parses");
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}
