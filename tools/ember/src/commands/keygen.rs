//! `ember keygen`: an ed25519 key pair for signing images.

use anyhow::Result;
use ember_tools::flash;
use std::path::PathBuf;

/// Make an ed25519 key pair for signing images.
///
/// Writes NAME.key (secret, mode 0600) and NAME.pub. A device whose SLOT_DIR/flash.pub holds
/// NAME.pub takes only images signed with NAME.key, or with another key of that file (one key a
/// line: append a new NAME.pub to rotate keys).
#[derive(clap::Args)]
pub struct Args {
    /// Path and name of the pair, without extension.
    #[arg(short, long, default_value = "ember-signing")]
    output: PathBuf,
}

/// Runs `ember keygen`.
pub fn run(args: Args) -> Result<()> {
    let (secret, public) = flash::keygen(&args.output)?;
    super::emit(
        &format!(
            "wrote {} (secret: keep it off the devices) and {} (install as SLOT_DIR/flash.pub, or append it there to rotate keys)",
            secret.display(),
            public.display()
        ),
        false,
    )
}
