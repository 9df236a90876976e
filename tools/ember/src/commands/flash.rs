//! `ember flash`: an image onto devices over their serial lines, one progress bar and one
//! report each.

use anyhow::{Result, bail};
use ember_tools::flash;
use std::path::PathBuf;

/// Flash an image onto devices over their serial lines (A/B slots, verified, resumable).
///
/// The image is checked, compressed (zstd, per 64 KiB block) and sent into each device's
/// inactive slot; a broken line or a restarted device is reconnected and the transfer resumes
/// where the device stopped. The device verifies the image (SHA-256, section hashes, the
/// signature if it holds a key), boots it on trial, and switches to it only if its self-test
/// passes; otherwise it keeps the old model. Several --port flash a fleet at once.
#[derive(clap::Args)]
pub struct Args {
    /// The image (IMAGE.sig, if present, is sent as its signature).
    image: PathBuf,
    /// Serial device of a device running emberd; repeat for several.
    #[arg(long, required = true)]
    port: Vec<PathBuf>,
    /// Baud rate of the ports.
    #[arg(long, default_value_t = 115_200)]
    baud: u32,
    /// Fastest rate to switch the lines to for the transfer; each device's limit (its board's
    /// max_baud) applies too, and a rate that does not get through is stepped down from. The
    /// line returns to --baud afterwards. --max-baud equal to --baud: no switching.
    #[arg(long, default_value_t = 4_000_000)]
    max_baud: u32,
    /// Signature file (default: IMAGE.sig if it exists).
    #[arg(long)]
    signature: Option<PathBuf>,
    /// zstd level (1–22; 0: send blocks uncompressed).
    #[arg(long, default_value_t = flash::DEFAULT_LEVEL)]
    level: i32,
    /// Bytes sent ahead of the device's answers.
    #[arg(long, default_value_t = flash::DEFAULT_WINDOW)]
    window: usize,
    /// Give up on a device after this many seconds without progress (disconnected).
    #[arg(long, default_value_t = 60)]
    patience: u64,
    /// Print the reports as JSON lines on stdout.
    #[arg(long)]
    json: bool,
    /// No progress bars.
    #[arg(long, short)]
    quiet: bool,
}

/// Runs `ember flash`.
pub fn run(args: Args) -> Result<()> {
    if !(0..=22).contains(&args.level) {
        bail!("--level must be 0 to 22");
    }
    if args.window < ember_core::flash::MAX_CHUNK {
        bail!(
            "--window must be at least one chunk ({} bytes)",
            ember_core::flash::MAX_CHUNK
        );
    }
    let options = flash::FlashOptions {
        baud: args.baud,
        max_baud: args.max_baud,
        window: args.window,
        patience: std::time::Duration::from_secs(args.patience),
    };
    let image = &args.image;
    let signature_file = args.signature.or_else(|| {
        let path = flash::signature_path(image);
        path.exists().then_some(path)
    });
    let signature = signature_file
        .as_deref()
        .map(flash::read_signature)
        .transpose()?;
    let prepared = flash::Prepared::new(image, signature, args.level, args.quiet)?;
    if !args.quiet {
        eprintln!(
            "{}: {} bytes, {} compressed ({:.1}%), {}",
            image.display(),
            prepared.image_len,
            prepared.encoded_len(),
            100.0 * prepared.encoded_len() as f64 / prepared.image_len as f64,
            match &signature_file {
                Some(path) => format!("signed ({})", path.display()),
                None => "unsigned".into(),
            }
        );
    }
    let bars = indicatif::MultiProgress::new();
    if args.quiet {
        bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let style = indicatif::ProgressStyle::with_template(
        "{prefix:>14} {bar:30} {binary_bytes:>10}/{binary_total_bytes} {binary_bytes_per_sec:>12} ETA {eta:>4} {msg}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = args
            .port
            .iter()
            .map(|port| {
                let bar = bars.add(
                    indicatif::ProgressBar::new(prepared.image_len)
                        .with_style(style.clone())
                        .with_prefix(port.display().to_string()),
                );
                let (prepared, options) = (&prepared, &options);
                scope.spawn(move || {
                    let result = flash::flash(port, prepared, options, &bar);
                    bar.finish_and_clear();
                    result
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| panic!("a flashing thread panicked"))
            })
            .collect()
    });
    let mut failed = 0;
    for result in results {
        match result {
            Ok(report) => super::emit(&report, args.json)?,
            Err(e) => {
                failed += 1;
                eprintln!("error: {e}");
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} devices were not flashed", args.port.len());
    }
    Ok(())
}
