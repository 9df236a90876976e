//! The default model: what `ember chat`, `ember generate` and `ember bench` run when given no
//! `--model` (and `emberd`, once it is made).
//!
//! On first use the recipe's GGUF is fetched and quantized into an image in Ember's cache
//! (`$EMBER_HOME/images/NAME/`, named by [`ember_recipes::image_path`]); later uses open that
//! image at once. A new source, format or engine makes a new image (the old one is removed).
//! The image is written to a temporary name and renamed when complete, under a lock, so a
//! half-written image is never used and two processes never make it twice.

use crate::fetch::{self, FetchError};
use crate::quantize;
use anyhow::{Context, Result};
use ember_gguf::GgufFile;
use ember_recipes::{DEFAULT_MODEL, Recipe};
use std::fs;
use std::path::PathBuf;
use std::time::Instant;

/// A model ready to run: its image, and the GGUF it was made from.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The Ember image in the cache.
    pub image: PathBuf,
    /// The source GGUF in the cache (it may have been deleted since the image was made).
    pub gguf: PathBuf,
}

/// Where the image of `recipe` lives in the cache (see [`ember_recipes::image_path`]), for
/// this build's int8 engine.
pub fn image_path(recipe: &Recipe) -> PathBuf {
    ember_recipes::image_path(recipe, ember_tract::ENGINE_REVISION)
}

/// The default model, fetched and quantized on first use (progress on stderr); `threads` run
/// the self-test the image carries.
pub fn default_model(threads: usize) -> Result<Prepared> {
    prepare(&ember_recipes::recipe(DEFAULT_MODEL)?, threads)
}

/// The image of `recipe`'s model, made (fetched and quantized, progress on stderr) if the cache
/// lacks it.
pub fn prepare(recipe: &Recipe, threads: usize) -> Result<Prepared> {
    let image = image_path(recipe);
    let gguf = ember_recipes::model_path(recipe);
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
    quantize::quantize(
        &file,
        &image,
        quantize::Scheme::Int8,
        (0, None),
        true,
        threads,
    )
    .with_context(|| {
        format!(
            "cannot quantize {} into {}",
            gguf.display(),
            image.display()
        )
    })?;
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
    fn the_image_is_named_after_the_scheme_and_engine_it_is_made_with() {
        let recipe = ember_recipes::recipe(DEFAULT_MODEL).unwrap();
        let path = image_path(&recipe);
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(
            name.ends_with(&format!(
                "-{}-e{}.ember",
                quantize::Scheme::Int8.name(),
                ember_tract::ENGINE_REVISION
            )),
            "{name}"
        );
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
