//! Images written by [`ImageWriter`] read back; damaged or arbitrary bytes give typed errors and
//! never a panic.

use ember_core::image::{
    Architecture, Family, ImageError, ImageHeader, Manifest, SamplingDefaults, SelfTest,
    TensorEncoding, TokenizerData, TokenizerSpec, Variant,
};
use ember_image::{EncodedTensor, Image, ImageWriter, assemble, decode_tensor, parse};
use quickcheck::{QuickCheck, TestResult};

fn manifest() -> Manifest {
    Manifest {
        model_name: "test".into(),
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
        chat_template: Some("{{ chatml }}".into()),
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
            tokens: vec![0, 0],
        },
        image_version: 0,
    }
}

fn vocabulary() -> TokenizerData {
    TokenizerData {
        tokens: vec!["a".into(), "<|im_start|>".into(), "<|im_end|>".into()],
        token_types: vec![1, 3, 3],
        merges: vec![],
        scores: vec![],
    }
}

/// An image with one tensor of each encoding; returns its bytes and the decoded values.
fn sample_image() -> (Vec<u8>, Vec<Vec<f32>>) {
    let mut writer = ImageWriter::new(manifest(), vocabulary());
    let norm: Vec<f32> = (0..64).map(|i| 1.0 + i as f32 / 64.0).collect();
    let norm_bytes: Vec<u8> = norm.iter().flat_map(|v| v.to_le_bytes()).collect();
    writer.add_tensor(EncodedTensor::new(
        "norm",
        &[64],
        TensorEncoding::F32,
        &norm_bytes,
        &[],
    ));
    let quants: Vec<u8> = (0..128).map(|i| (i + 64) as u8).collect();
    writer.add_tensor(EncodedTensor::new(
        "sym",
        &[64, 2],
        TensorEncoding::Int8Block32,
        &quants,
        &[0.5, 0.25, 2.0, 1.0],
    ));
    let sym: Vec<f32> = (0..128)
        .map(|i| [0.5, 0.25, 2.0, 1.0][i / 32] * (i as f32 - 64.0))
        .collect();
    (writer.to_bytes(), vec![norm, sym])
}

#[test]
fn written_images_read_back() {
    let (bytes, values) = sample_image();
    let manifest = parse(&bytes, true).unwrap();
    assert_eq!(manifest.model_name, "test");
    assert_eq!(manifest.sections.len(), 2);
    for section in &manifest.sections {
        assert_eq!(section.offset % 64, 0);
    }
    let weights = &manifest.sections[1];
    for (entry, want) in manifest.tensors.iter().zip(&values) {
        let start = (weights.offset + entry.offset) as usize;
        let data = &bytes[start..start + entry.length as usize];
        assert_eq!(&decode_tensor(entry, data), want, "{}", entry.name);
    }
    let dir = std::env::temp_dir().join(format!("ember-image-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sample.ember");
    std::fs::write(&path, &bytes).unwrap();
    let image = Image::open(&path).unwrap();
    image.verify().unwrap();
    assert_eq!(image.tensor_f32("sym").unwrap(), values[1]);
    assert_eq!(image.tokenizer_data().unwrap(), vocabulary());
}

#[test]
fn damage_is_named() {
    let (bytes, _) = sample_image();
    let manifest = parse(&bytes, false).unwrap();
    let error = |b: &[u8]| parse(b, true).unwrap_err();
    assert!(matches!(
        error(&bytes[..bytes.len() - 1]),
        ImageError::Truncated { .. }
    ));
    assert!(matches!(error(&bytes[..10]), ImageError::Truncated { .. }));
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(error(&longer), ImageError::TrailingBytes { .. }));
    let mut bad = bytes.clone();
    bad[0] = b'X';
    assert_eq!(error(&bad), ImageError::BadMagic);
    let mut bad = bytes.clone();
    bad[8] = 9;
    assert_eq!(error(&bad), ImageError::UnsupportedVersion(9));
    let mut bad = bytes.clone();
    bad[70] ^= 1;
    assert_eq!(error(&bad), ImageError::ManifestHashMismatch);
    let mut bad = bytes.clone();
    let last = manifest.sections[1].offset as usize + 3;
    bad[last] ^= 0x40;
    assert_eq!(error(&bad), ImageError::SectionHashMismatch);
    assert!(parse(&bad, false).is_ok(), "structure alone is still fine");
}

#[test]
fn the_image_version_is_in_the_manifest_and_copied_in_the_header() {
    let unversioned = manifest();
    let versioned = Manifest {
        image_version: 300,
        ..manifest()
    };
    // Version 0 adds nothing: images made before the field existed read as version 0.
    let old = unversioned.to_bytes();
    assert_eq!(Manifest::from_bytes(&old).unwrap().image_version, 0);
    let new = versioned.to_bytes();
    assert_eq!(new[..old.len()], old[..]);
    assert_eq!(new[old.len()..], [0xac, 0x02], "300 as a varint");
    assert_eq!(Manifest::from_bytes(&new).unwrap(), versioned);
    let mut trailing = new.clone();
    trailing.push(0);
    assert_eq!(
        Manifest::from_bytes(&trailing),
        Err(ImageError::BadManifest)
    );

    let mut writer = ImageWriter::new(versioned, vocabulary());
    let bytes = writer.to_bytes();
    assert_eq!(parse(&bytes, true).unwrap().image_version, 300);
    let header = ImageHeader::parse(&bytes).unwrap();
    assert_eq!(header.image_version, 300);
    assert_eq!(bytes[56..64], [0x2c, 0x01, 0, 0, 0, 0, 0, 0]);
    // A header whose copy disagrees with the manifest is corrupt.
    let mut bad = bytes.clone();
    bad[56] = 0x2d;
    assert_eq!(parse(&bad, false), Err(ImageError::CorruptHeader));
    let mut bad = bytes;
    bad[60] = 1;
    assert_eq!(ImageHeader::parse(&bad), Err(ImageError::CorruptHeader));
}

#[test]
fn a_familys_variant_follows_the_image_version() {
    let llama = manifest();
    let gemma = Manifest {
        architecture: Architecture {
            variant: Variant {
                family: Family::Gemma3,
                head_dim: 32,
                sliding_window: 512,
                global_every: 6,
                local_rope_base: 10_000.0,
                logit_softcap: 0.0,
            },
            ..llama.architecture
        },
        ..manifest()
    };
    // A Llama's variant adds nothing; another family's comes after the version (0 here).
    let (old, new) = (llama.to_bytes(), gemma.to_bytes());
    assert_eq!(new[..old.len()], old[..]);
    assert_eq!(
        new[old.len()],
        0,
        "image version 0, written because a variant follows"
    );
    let decoded = Manifest::from_bytes(&new).unwrap();
    assert_eq!(decoded, gemma);
    assert_eq!(decoded.architecture.window(4), Some(512));
    assert_eq!(decoded.architecture.window(5), None);
    assert_eq!(decoded.architecture.head_dim(), 32);
    let mut writer = ImageWriter::new(gemma.clone(), vocabulary());
    let parsed = parse(&writer.to_bytes(), true).unwrap();
    assert_eq!(parsed.architecture, gemma.architecture);
    // A variant cut short is a bad manifest, not a Llama.
    assert_eq!(
        Manifest::from_bytes(&new[..new.len() - 1]),
        Err(ImageError::BadManifest)
    );
}

#[test]
fn arbitrary_and_damaged_bytes_never_panic() {
    fn arbitrary(bytes: Vec<u8>) -> bool {
        let _ = parse(&bytes, true);
        let mut with_magic = b"EMBERIMG\x01\x00".to_vec();
        with_magic.extend_from_slice(&bytes);
        let _ = parse(&with_magic, true);
        true
    }
    fn damaged(cut: usize, flips: Vec<(usize, u8)>) -> TestResult {
        let (mut bytes, _) = sample_image();
        bytes.truncate(cut % (bytes.len() + 1));
        for (at, xor) in flips {
            if !bytes.is_empty() {
                let i = at % bytes.len();
                bytes[i] ^= xor;
            }
        }
        if let Ok(manifest) = parse(&bytes, true) {
            // Whatever still parses must decode without panicking.
            let weights = &manifest.sections[1];
            for entry in &manifest.tensors {
                let start = (weights.offset + entry.offset) as usize;
                let _ = decode_tensor(entry, &bytes[start..start + entry.length as usize]);
            }
        }
        TestResult::passed()
    }
    QuickCheck::new()
        .tests(2000)
        .quickcheck(arbitrary as fn(Vec<u8>) -> bool);
    QuickCheck::new()
        .tests(1000)
        .quickcheck(damaged as fn(usize, Vec<(usize, u8)>) -> TestResult);
}

/// `assemble` with no sections lays out a header and manifest that parse (it used to set the
/// file length to 0, which the header refuses; found by the `image` fuzz target).
#[test]
fn an_image_without_sections_assembles() {
    let mut laid_out = manifest();
    let bytes = assemble(&mut laid_out, &[]);
    assert_eq!(parse(&bytes, true).unwrap(), laid_out);
    // An empty section at the end still ends the file at its (aligned) offset.
    let mut laid_out = manifest();
    let bytes = assemble(&mut laid_out, &[("empty", &[])]);
    assert_eq!(parse(&bytes, true).unwrap(), laid_out);
}
