//! `kmsgate provider stamp COMPONENT --name N --version V`: writes the
//! identity that `kmsgate providers` shows into a component whose tools
//! cannot (componentize-py, componentize-js; the Rust SDK's `export!`
//! writes it by itself).

use std::path::PathBuf;

use anyhow::Context;
use kmsgate_wasm::identity::Identity;

/// Write a provider's name and version into its component (a custom
/// section `kmsgate:provider-identity`), in place. A component that has an
/// identity already is left alone and this fails.
#[derive(clap::Args)]
pub struct StampArgs {
    /// The `.wasm` component.
    component: PathBuf,
    #[arg(long)]
    name: String,
    #[arg(long)]
    version: String,
    /// What built it, with its version (`componentize-py 0.25.1`).
    #[arg(long, default_value = "")]
    sdk: String,
}

pub fn run(args: StampArgs) -> anyhow::Result<()> {
    let bytes = std::fs::read(&args.component).with_context(|| format!("{:?}", args.component))?;
    let identity = Identity {
        name: args.name,
        version: args.version,
        sdk: args.sdk,
    };
    let stamped = identity
        .stamp(&bytes)
        .map_err(|why| anyhow::anyhow!("{:?}: {why}", args.component))?;
    // Written beside it, then renamed over it: a daemon watching the file
    // never sees half a component.
    let partial = args.component.with_extension("wasm.stamping");
    std::fs::write(&partial, stamped).with_context(|| format!("{partial:?}"))?;
    std::fs::rename(&partial, &args.component).with_context(|| format!("{:?}", args.component))?;
    super::super::print_line(&format!(
        "stamped {:?}: {} {}",
        args.component, identity.name, identity.version
    ))
}
