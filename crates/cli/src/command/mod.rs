//! One module per subcommand, each with its clap `Args` and a `run`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub mod bench;
pub mod check;
pub mod compile;
pub mod conformance;
pub mod decrypt;
pub mod encrypt;
pub mod provider;
pub mod providers;
pub mod reload;
pub mod serve;
pub mod status;

/// Prints `text` and a newline to stdout. A reader that stopped reading
/// (`kmsgate providers | grep -q ...`) is not an error: `println!` would
/// panic on the broken pipe.
pub fn print_line(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    match writeln!(std::io::stdout().lock(), "{text}") {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// Which KMS API a client command speaks.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Api {
    V2,
    V1beta1,
}

/// What `encrypt` prints and `decrypt` reads.
#[derive(Serialize, Deserialize)]
pub struct Sealed {
    /// Base64.
    pub ciphertext: String,
    /// Empty for v1beta1 (the key id is inside the ciphertext).
    #[serde(default)]
    pub key_id: String,
    /// Values in base64.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}
