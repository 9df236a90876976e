//! `ember package`: a tarball that installs Ember on a board.

use anyhow::Result;
use ember_tools::package;
use std::path::PathBuf;

/// Bundle Ember for a board: emberd, profile, systemd unit, install note, model.
///
/// A .tar.gz with `emberd` built for the board's target, the board's profile, a systemd unit
/// that serves its UART, an install note, and optionally a model image (checked against the
/// board's memory budget).
///
/// Without --emberd the binary is built with `cargo build --profile dist -p emberd --target
/// TRIPLE` (release, stripped) in the Ember source tree around the current directory (cross
/// targets need `scripts/install-cross.sh`). The tarball is written to a `.part` file and
/// renamed when complete. Boards: rpi5, rpi4, rpi-zero-2w, rpi3-armv7, x86_64-pty, or a
/// profile file.
#[derive(clap::Args)]
pub struct Args {
    /// Board name (boards/NAME.toml) or the path of a profile.
    #[arg(long, value_name = "NAME|FILE")]
    board: String,
    /// The emberd binary to bundle (checked to be built for the board's architecture).
    #[arg(long)]
    emberd: Option<PathBuf>,
    /// An Ember image to bundle as the board's model.
    #[arg(long)]
    model: Option<PathBuf>,
    /// The tarball (default: ember-BOARD.tar.gz).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

/// Runs `ember package`.
pub fn run(args: Args) -> Result<()> {
    let (board, profile) = ember_board::Board::find_with_text(&args.board)?;
    let output = args
        .output
        .unwrap_or_else(|| PathBuf::from(format!("ember-{}.tar.gz", board.name)));
    let options = package::PackageOptions {
        board,
        profile,
        emberd: args.emberd,
        model: args.model,
        output,
        progress: !args.quiet,
    };
    let files = package::package(&options)?;
    let size = std::fs::metadata(&options.output)?.len();
    let mut listing = format!(
        "{} ({}, for {}):",
        options.output.display(),
        ember_board::mib(size),
        options.board.target
    );
    for file in files {
        listing.push_str(&format!("\n  {file}"));
    }
    super::emit(&listing, false)
}
