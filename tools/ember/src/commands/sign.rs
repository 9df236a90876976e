//! `ember sign`: an image's ed25519 signature, which `ember flash` sends with it.

use anyhow::Result;
use ember_models::fetch::hex;
use ember_tools::flash;
use std::path::PathBuf;

/// Sign an Ember image: writes IMAGE.sig, which `ember flash` sends.
///
/// The image is checked whole first.
#[derive(clap::Args)]
pub struct Args {
    /// The image.
    image: PathBuf,
    /// The secret key (from `ember keygen`).
    #[arg(short, long)]
    key: PathBuf,
    /// Where the signature goes (default: IMAGE.sig).
    #[arg(short, long)]
    output: Option<PathBuf>,
}

/// Runs `ember sign`.
pub fn run(args: Args) -> Result<()> {
    let output = args
        .output
        .unwrap_or_else(|| flash::signature_path(&args.image));
    let public = flash::sign(&args.image, &args.key, &output)?;
    super::emit(
        &format!(
            "wrote {} (public key {})",
            output.display(),
            hex(public.as_bytes())
        ),
        false,
    )
}
