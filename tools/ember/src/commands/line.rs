//! `ember line`: two PTYs joined like a serial cable at a real line's speed.

use anyhow::{Context, Result, bail};
use std::io::Write;

/// Join two PTYs like a serial cable at a real line's speed (for tests without a board).
///
/// For measuring flashing and chat on a line as slow as a real one (a bare PTY pair moves bytes
/// at memory speed).
///
/// Prints the device's end and the host's end (`device PATH`, `host PATH`), then carries bytes
/// both ways at baud/10 bytes per second until killed. A receiver that does not read in time
/// loses bytes, like a UART without flow control. What crossed is reported on stderr.
#[derive(clap::Args)]
pub struct Args {
    /// The line's rate.
    #[arg(long, default_value_t = 115_200)]
    baud: u32,
    /// Fastest rate the cable carries: an end sending faster is received as garbage (0: any).
    #[arg(long, default_value_t = 0)]
    max_baud: u32,
    /// Flip a bit in every Nth byte the host sends (fault injection; 0: never).
    #[arg(long, default_value_t = 0)]
    corrupt_every: u64,
    /// Lose every Nth byte the host sends (fault injection; 0: never).
    #[arg(long, default_value_t = 0)]
    drop_every: u64,
    /// Flip and drop the device's bytes too (its replies), at the same rates.
    #[arg(long)]
    both_ways: bool,
}

/// Runs `ember line` (until killed).
pub fn run(args: Args) -> Result<()> {
    if args.baud < 300 {
        bail!("--baud must be at least 300");
    }
    let faults = ember_serial::Faults {
        max_baud: args.max_baud,
        corrupt_every: args.corrupt_every,
        drop_every: args.drop_every,
    };
    let to_host = if args.both_ways {
        faults
    } else {
        ember_serial::Faults {
            max_baud: args.max_baud,
            ..Default::default()
        }
    };
    let line = ember_serial::SimulatedLine::open_with(args.baud, faults, to_host)
        .context("cannot open PTYs")?;
    super::emit(
        &format!(
            "device {}\nhost {}",
            line.device_path().display(),
            line.host_path().display()
        ),
        false,
    )?;
    std::io::stdout().flush()?;
    // What crossed, on stderr, whenever it changed.
    let mut last = String::new();
    loop {
        std::thread::sleep(std::time::Duration::from_secs(5));
        let count = |c: &ember_serial::LineCounters| {
            use std::sync::atomic::Ordering::Relaxed;
            format!(
                "{} bytes ({} faults injected, {} lost to a full receiver)",
                c.delivered.load(Relaxed),
                c.faults.load(Relaxed),
                c.overrun.load(Relaxed)
            )
        };
        let now = format!(
            "host → device {}; device → host {}",
            count(&line.to_device),
            count(&line.to_host)
        );
        if now != last {
            eprintln!("{now}");
            last = now;
        }
    }
}
