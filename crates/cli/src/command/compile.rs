//! `kmsgate compile`: fill the compile cache ahead of a swap.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use kmsgate_daemon::config::Config;
use kmsgate_wasm::Runtime;

/// Compile components into the daemon's compile cache (the config's
/// `compile_cache_dir`, or `--cache-dir`), checking their imports as a load
/// does, so that a later start or swap loads them instead of compiling
/// (seconds for a large component). Run it as the daemon's user: the cache
/// is used only while that user owns it.
#[derive(clap::Args)]
pub struct Args {
    /// The `.wasm` components.
    #[arg(required = true)]
    components: Vec<PathBuf>,
    /// Use this config's `compile_cache_dir`.
    #[arg(long, short, conflicts_with = "cache_dir")]
    config: Option<PathBuf>,
    /// Or this directory.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let dir = match (&args.config, &args.cache_dir) {
        (Some(config), None) => Config::load(config)?
            .compile_cache_dir
            .with_context(|| format!("{config:?} sets no compile_cache_dir"))?,
        (None, Some(dir)) => dir.clone(),
        _ => bail!("name the cache: --config FILE (its compile_cache_dir) or --cache-dir DIR"),
    };
    let runtime = Runtime::new(Some(&dir), 0).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut failed = false;
    for component in &args.components {
        let started = Instant::now();
        let bytes =
            kmsgate_core::files::read_bounded(component, kmsgate_core::files::MAX_COMPONENT)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        match runtime.compile(bytes).await {
            Ok((sha256, compiled)) => println!(
                "{}  {component:?} sha256 {sha256} in {:.1?}",
                if compiled { "compiled" } else { "cached  " },
                started.elapsed()
            ),
            Err(why) => {
                failed = true;
                println!("error     {component:?}: {why}");
            }
        }
    }
    if failed {
        bail!("some components could not be compiled");
    }
    Ok(())
}
