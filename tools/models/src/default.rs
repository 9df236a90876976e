//! The default model: what `ember chat`, `ember generate`, `ember bench` and `emberd` run when
//! given no `--model`.
//!
//! On first use the recipe's GGUF is fetched and quantized into an image in Ember's cache
//! (`$EMBER_HOME/images/NAME/`); later uses open that image at once. The image's file name
//! carries what it was made from — the source's SHA-256, the image format version, the
//! quantization scheme and the revision of the engine that recorded its self-test — so a new
//! source, format or engine makes a new image (the old one is removed).
//! The image is written to a temporary name and renamed when complete, under a lock, so a
//! half-written image is never used and two processes never make it twice.

use crate::fetch::{self, FetchError, Recipe};
use crate::quantize;
use anyhow::{Context, Result};
use ember_core::image::IMAGE_VERSION;
use ember_gguf::GgufFile;
use std::fs;
use std::path::PathBuf;
use std::time::Instant;

/// The recipe used when a command is given no model.
pub const DEFAULT_MODEL: &str = "smollm2-135m";

/// A model ready to run: its image, and the GGUF it was made from.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The Ember image in the cache.
    pub image: PathBuf,
    /// The source GGUF in the cache (it may have been deleted since the image was made).
    pub gguf: PathBuf,
}

/// Where the image of `recipe` lives in the cache.
pub fn image_path(recipe: &Recipe) -> PathBuf {
    let source = &recipe.source;
    let sha = &source.member_sha256[..source.member_sha256.len().min(16)];
    fetch::ember_home()
        .join("images")
        .join(&recipe.name)
        .join(format!(
            "{}-{sha}-v{IMAGE_VERSION}-{}-e{}.ember",
            recipe.name,
            quantize::Scheme::Int8.name(),
            ember_tract::ENGINE_REVISION
        ))
}

/// The default model, fetched and quantized on first use (progress on stderr); `threads` run
/// the self-test the image carries.
pub fn default_model(threads: usize) -> Result<Prepared> {
    prepare(&fetch::recipe(DEFAULT_MODEL)?, threads)
}

/// The image of `recipe`'s model, made (fetched and quantized, progress on stderr) if the cache
/// lacks it.
pub fn prepare(recipe: &Recipe, threads: usize) -> Result<Prepared> {
    let image = image_path(recipe);
    let gguf = fetch::model_path(recipe);
    if image.exists() {
        return Ok(Prepared { image, gguf });
    }
    let dir = image.parent().context("image path without a directory")?;
    fs::create_dir_all(dir).map_err(|source| FetchError::Io {
        action: "cannot create",
        path: dir.to_path_buf(),
        source,
    })?;
    let _lock = fetch::lock(dir)?;
    if image.exists() {
        // Another process made it while this one waited for the lock.
        return Ok(Prepared { image, gguf });
    }
    eprintln!(
        "first use of {}: fetching and quantizing it into {} (once)",
        recipe.name,
        dir.display()
    );
    let gguf = fetch::fetch(recipe, true)?;
    let start = Instant::now();
    let file =
        GgufFile::open(&gguf).with_context(|| format!("cannot load model {}", gguf.display()))?;
    quantize::quantize(&file, &image, quantize::Scheme::Int8, true, threads).with_context(
        || {
            format!(
                "cannot quantize {} into {}",
                gguf.display(),
                image.display()
            )
        },
    )?;
    eprintln!(
        "made {} in {:.1} s",
        image.display(),
        start.elapsed().as_secs_f64()
    );
    remove_stale_images(&image);
    Ok(Prepared { image, gguf })
}

/// Removes the other images of the same model (older formats or sources) beside `current`.
fn remove_stale_images(current: &std::path::Path) {
    let Some(dir) = current.parent() else { return };
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if path != current && path.extension().is_some_and(|e| e == "ember") {
            let _ = fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_name_changes_with_its_source_and_format() {
        let recipe = fetch::recipe(DEFAULT_MODEL).unwrap();
        let path = image_path(&recipe);
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(name.contains(&recipe.source.member_sha256[..16]), "{name}");
        assert!(name.contains(&format!("-v{IMAGE_VERSION}-")), "{name}");
        assert!(
            name.ends_with(&format!("-e{}.ember", ember_tract::ENGINE_REVISION)),
            "{name}"
        );
        assert!(name.ends_with(".ember"), "{name}");
        let mut other = recipe.clone();
        other.source.member_sha256 = "0".repeat(64);
        assert_ne!(image_path(&other), path);
        assert_eq!(image_path(&other).parent(), path.parent());
    }

    #[test]
    fn stale_images_are_removed_and_the_current_one_kept() {
        let dir = std::env::temp_dir().join(format!("ember-stale-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let current = dir.join("m-new-v4.ember");
        for name in ["m-new-v4.ember", "m-old-v3.ember", ".lock", "notes.txt"] {
            fs::write(dir.join(name), name).unwrap();
        }
        remove_stale_images(&current);
        let mut left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, [".lock", "m-new-v4.ember", "notes.txt"]);
        let _ = fs::remove_dir_all(&dir);
    }
}
