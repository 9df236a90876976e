//! `ember package`: everything a board needs to run Ember, in one tarball — the `emberd` binary
//! for the board's target, its profile, a systemd unit serving on its UART, an install note, and
//! optionally a model image that was checked against the board's memory budget.

use anyhow::{Context, Result, bail};
use ember_board::{Board, Serial};
use ember_image::Image;
use ember_reference::WeightSource;
use indicatif::{ProgressBar, ProgressStyle};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the binary goes on the board.
pub const INSTALLED_BINARY: &str = "/usr/local/bin/emberd";
/// Where the profile goes on the board.
pub const INSTALLED_PROFILE: &str = "/etc/ember/board.toml";

/// What to package.
#[derive(Debug, Clone)]
pub struct PackageOptions {
    /// The board.
    pub board: Board,
    /// Its profile as written (shipped as `board.toml`).
    pub profile: String,
    /// The `emberd` binary (else built with cargo in this workspace).
    pub emberd: Option<PathBuf>,
    /// A model image to include.
    pub model: Option<PathBuf>,
    /// The tarball to write.
    pub output: PathBuf,
    /// Show progress on stderr.
    pub progress: bool,
}

/// The machine an ELF file is for, as a Rust architecture name (`x86_64`, `aarch64`, `arm`).
pub fn elf_architecture(path: &Path) -> Result<&'static str> {
    let mut header = Vec::with_capacity(20);
    File::open(path)
        .and_then(|f| f.take(20).read_to_end(&mut header))
        .with_context(|| format!("cannot read {}", path.display()))?;
    if header.len() < 20 || header[..4] != *b"\x7fELF" {
        bail!("{} is not an ELF executable", path.display());
    }
    // e_machine, little-endian on every target Ember builds for.
    Ok(match u16::from_le_bytes([header[18], header[19]]) {
        0x3e => "x86_64",
        0xb7 => "aarch64",
        0x28 => "arm",
        other => bail!("{} is an ELF file for machine {other:#x}", path.display()),
    })
}

/// Writes the tarball and returns the files it holds (paths inside it).
pub fn package(options: &PackageOptions) -> Result<Vec<String>> {
    let board = &options.board;
    let emberd = match &options.emberd {
        Some(path) => path.clone(),
        None => build_emberd(board)?,
    };
    let arch = elf_architecture(&emberd)?;
    if arch != board.architecture() {
        bail!(
            "{} is built for {arch}, but board {} runs {} (build it with `cargo build --profile \
             dist -p emberd --target {}`)",
            emberd.display(),
            board.name,
            board.target,
            board.target
        );
    }
    if let Some(model) = &options.model {
        check_model_fits(model, board)?;
    }

    let root = format!("ember-{}", board.name);
    let texts = [
        ("board.toml", options.profile.clone()),
        ("emberd.service", systemd_unit(board)),
        ("INSTALL.md", install_note(board, options.model.is_some())),
    ];
    let mut files = vec![(format!("{root}/bin/emberd"), emberd.clone(), 0o755)];
    if let Some(model) = &options.model {
        files.push((format!("{root}/model.ember"), model.clone(), 0o644));
    }
    let total: u64 = files
        .iter()
        .map(|(_, path, _)| std::fs::metadata(path).map_or(0, |m| m.len()))
        .sum();

    let part = PathBuf::from(format!("{}.part", options.output.display()));
    let written = (|| -> Result<Vec<String>> {
        let out =
            File::create(&part).with_context(|| format!("cannot create {}", part.display()))?;
        let gzip =
            flate2::write::GzEncoder::new(BufWriter::new(out), flate2::Compression::default());
        let mut tar = tar::Builder::new(gzip);
        let bar = if options.progress {
            ProgressBar::new(total).with_style(
                ProgressStyle::with_template(
                    "packaging {bar:30} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
                )
                .expect("valid template"),
            )
        } else {
            ProgressBar::hidden()
        };
        let mtime = std::fs::metadata(&emberd)?
            .modified()?
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut names = Vec::new();
        for (name, path, mode) in &files {
            let file =
                File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
            let mut header = tar::Header::new_gnu();
            header.set_size(file.metadata()?.len());
            header.set_mode(*mode);
            header.set_mtime(mtime);
            tar.append_data(&mut header, name, bar.wrap_read(file))
                .with_context(|| format!("cannot add {}", path.display()))?;
            names.push(name.clone());
        }
        for (name, text) in &texts {
            let mut header = tar::Header::new_gnu();
            header.set_size(text.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(mtime);
            let name = format!("{root}/{name}");
            tar.append_data(&mut header, &name, text.as_bytes())?;
            names.push(name);
        }
        bar.finish_and_clear();
        let mut out = tar.into_inner()?.finish()?;
        out.flush()?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        Ok(names)
    })();
    match written {
        Ok(names) => {
            std::fs::rename(&part, &options.output).with_context(|| {
                format!(
                    "cannot rename {} to {}",
                    part.display(),
                    options.output.display()
                )
            })?;
            Ok(names)
        }
        Err(error) => {
            let _ = std::fs::remove_file(&part);
            Err(error).with_context(|| format!("cannot write {}", options.output.display()))
        }
    }
}

/// Refuses a model that is not a sound Ember image or does not fit the board's memory budget.
fn check_model_fits(model: &Path, board: &Board) -> Result<()> {
    let context = || format!("cannot package model {}", model.display());
    let image = Image::open(model).with_context(context)?;
    image.verify().with_context(context)?;
    image.architecture().with_context(context)?;
    let plan = board
        .plan_memory(&ember_boot::model_needs(&image), None)
        .with_context(|| format!("{} does not fit board {}", model.display(), board.name))?;
    eprintln!("{} on {}: {plan}", model.display(), board.name);
    Ok(())
}

/// Builds `emberd` for the board's target with cargo, in the Ember workspace holding the current
/// directory, and returns the binary's path.
fn build_emberd(board: &Board) -> Result<PathBuf> {
    let workspace = find_workspace()?;
    eprintln!(
        "building emberd for {} (cargo build --release)",
        board.target
    );
    let status = Command::new(std::env::var_os("CARGO").unwrap_or("cargo".into()))
        .current_dir(&workspace)
        .args([
            "build",
            "--release",
            "-p",
            "emberd",
            "--target",
            &board.target,
        ])
        .status()
        .context("cannot run cargo (give the binary with --emberd)")?;
    if !status.success() {
        bail!(
            "cargo build for {} failed ({status}); cross targets need `scripts/install-cross.sh`",
            board.target
        );
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    Ok(target_dir.join(&board.target).join("dist/emberd"))
}

/// The Ember source tree around the current directory.
fn find_workspace() -> Result<PathBuf> {
    let start = std::env::current_dir()?;
    start
        .ancestors()
        .find(|dir| dir.join("runtime/emberd/Cargo.toml").is_file() && dir.join("boards").is_dir())
        .map(Path::to_path_buf)
        .with_context(|| {
            format!(
                "{} is not inside Ember's source tree: give the binary with --emberd",
                start.display()
            )
        })
}

/// systemd's name for the device unit of `path` (`/dev/serial0` → `dev-serial0.device`).
pub fn device_unit(path: &Path) -> String {
    let text = path.to_string_lossy();
    let mut unit = String::new();
    for (i, byte) in text.trim_start_matches('/').bytes().enumerate() {
        match byte {
            b'/' => unit.push('-'),
            b'.' if i == 0 => unit.push_str("\\x2e"),
            b if b.is_ascii_alphanumeric() || b == b'_' || b == b'.' => unit.push(b as char),
            b => unit.push_str(&format!("\\x{b:02x}")),
        }
    }
    unit + ".device"
}

/// A systemd unit that serves the board's serial line, restarting emberd if it stops.
pub fn systemd_unit(board: &Board) -> String {
    let device = match &board.serial {
        Serial::Device(path) => {
            let unit = device_unit(path);
            format!("# Start once the UART exists.\nBindsTo={unit}\nAfter={unit}\n")
        }
        Serial::Pty => String::new(),
    };
    format!(
        "[Unit]
Description=Ember chat on {serial} ({description})
Documentation=file:///usr/share/doc/ember/INSTALL.md
{device}
[Service]
ExecStart={INSTALLED_BINARY} --board {INSTALLED_PROFILE}
User=ember
Group=ember
SupplementaryGroups=dialout
Restart=always
RestartSec=2
Environment=EMBER_LOG=info
# emberd writes nothing but the serial line and its model slots (flashing).
ReadWritePaths={slot_dir}
ProtectSystem=strict
ProtectHome=yes
NoNewPrivileges=yes
PrivateTmp=yes

[Install]
WantedBy=multi-user.target
",
        serial = board.serial,
        description = board.description,
        slot_dir = board.slot_dir.display(),
    )
}

/// The install note for the board.
pub fn install_note(board: &Board, with_model: bool) -> String {
    let slot = board.slot_dir.display();
    let uart = match &board.serial {
        Serial::Device(path) => format!(
            "## 1. Free the UART\n\n\
             emberd needs {path} to itself: no login console on it, the UART switched on.\n\n\
             ```sh\n\
             sudo raspi-config nonint do_serial_cons 1   # no serial console\n\
             sudo raspi-config nonint do_serial_hw 0     # UART on\n\
             ```\n\n\
             On boards with Bluetooth (Pi 3, Pi 4, Zero 2 W) add `dtoverlay=disable-bt` to\n\
             `/boot/firmware/config.txt` so that {path} is the PL011 UART, whose baud rate does not\n\
             follow the CPU clock. Reboot. Wire a 3.3 V USB-serial adapter to GPIO 14 (TX, pin 8)\n\
             and GPIO 15 (RX, pin 10) crossed, and ground (pin 6).\n\n",
            path = path.display()
        ),
        Serial::Pty => "## 1. The line\n\n\
             This board serves on a PTY pair: `journalctl -u emberd` shows its path, which\n\
             `ember chat --port PATH` or picocom opens.\n\n"
            .to_string(),
    };
    let model = if with_model {
        format!(
            "sudo install -o ember -m 644 model.ember {slot}/slot-a.ember   # checked against the memory budget\n"
        )
    } else {
        format!("# then copy an Ember image (`ember quantize`) to {slot}/slot-a.ember\n")
    };
    format!(
        "# Ember on {description}\n\n\
         This bundle holds `bin/emberd` (built for {target}), `board.toml` (the `{name}` profile:\n\
         {serial} at {baud} baud, {threads}, a {budget} MiB memory budget), `emberd.service`\n\
         (systemd){model_file}.\n\n\
         {uart}\
         ## 2. Install\n\n\
         ```sh\n\
         sudo useradd --system --user-group --no-create-home --groups dialout ember\n\
         sudo install -m 755 bin/emberd {INSTALLED_BINARY}\n\
         sudo install -D -m 644 board.toml {INSTALLED_PROFILE}\n\
         sudo install -d -o ember -m 755 {slot}\n\
         {model}\
         sudo install -m 644 emberd.service /etc/systemd/system/emberd.service\n\
         sudo install -D -m 644 INSTALL.md /usr/share/doc/ember/INSTALL.md\n\
         sudo systemctl daemon-reload\n\
         sudo systemctl enable --now emberd\n\
         ```\n\n\
         ## 3. Check\n\n\
         ```sh\n\
         emberd --board {INSTALLED_PROFILE} --dry-run   # memory plan and the kernels it will use\n\
         systemctl status emberd; journalctl -u emberd\n\
         ```\n\n\
         From the host, over the adapter: `ember chat --port /dev/ttyUSB0 --baud {baud}`, or\n\
         `picocom -b {baud} /dev/ttyUSB0` and type.\n\n\
         ## 4. New models\n\n\
         `ember flash NEW.ember --port /dev/ttyUSB0` sends a model over the same line into the\n\
         other slot of {slot}; the device switches once it has verified the image and run its\n\
         self-test. To take signed images only, install the public key from `ember keygen`:\n\
         `sudo install -o ember -m 644 fleet.pub {slot}/flash.pub`, then `ember sign` images.\n",
        description = board.description,
        target = board.target,
        name = board.name,
        serial = board.serial,
        baud = board.baud,
        threads = match board.threads {
            Some(n) => format!("{n} threads"),
            None => "one thread per core".to_string(),
        },
        budget = board.memory_budget_mib,
        model_file = if with_model { ", `model.ember`" } else { "" },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_units_follow_systemds_escaping() {
        assert_eq!(device_unit(Path::new("/dev/serial0")), "dev-serial0.device");
        assert_eq!(device_unit(Path::new("/dev/ttyAMA0")), "dev-ttyAMA0.device");
        assert_eq!(
            device_unit(Path::new("/dev/serial/by-id/usb-FTDI_x-if00")),
            "dev-serial-by\\x2did-usb\\x2dFTDI_x\\x2dif00.device"
        );
    }

    #[test]
    fn the_unit_serves_the_boards_uart_with_the_installed_profile() {
        let unit = systemd_unit(&Board::builtin("rpi5").unwrap());
        assert!(unit.contains("ExecStart=/usr/local/bin/emberd --board /etc/ember/board.toml"));
        assert!(unit.contains("BindsTo=dev-serial0.device"));
        assert!(unit.contains("SupplementaryGroups=dialout"));
        let pty = systemd_unit(&Board::builtin("x86_64-pty").unwrap());
        assert!(!pty.contains("BindsTo"));
    }

    #[test]
    fn elf_headers_name_the_machine_and_other_files_are_refused() {
        let this = std::env::current_exe().unwrap();
        assert_eq!(elf_architecture(&this).unwrap(), std::env::consts::ARCH);
        let dir = std::env::temp_dir().join(format!("ember-elf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = dir.join("script.sh");
        std::fs::write(&text, "#!/bin/sh\necho not an ELF file\n").unwrap();
        let error = elf_architecture(&text).unwrap_err().to_string();
        assert!(error.contains("is not an ELF executable"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
