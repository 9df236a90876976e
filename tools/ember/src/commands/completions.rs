//! `ember completions`: a shell's completion script for `ember`.

use anyhow::Result;

/// Print the completion script of a shell (bash, zsh, fish, …) for `ember`.
///
/// E.g. `ember completions bash > ~/.local/share/bash-completion/completions/ember`.
#[derive(clap::Args)]
pub struct Args {
    /// The shell.
    shell: clap_complete::Shell,
}

/// Runs `ember completions` for the command line `command`.
pub fn run(args: Args, mut command: clap::Command) -> Result<()> {
    clap_complete::generate(args.shell, &mut command, "ember", &mut std::io::stdout());
    Ok(())
}
