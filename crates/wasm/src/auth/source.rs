//! The operator's inputs to an auth (a token, a secret id, a JWT, AWS
//! keys), read from files or the environment. Files are read again on every
//! check, so a rotated file is noticed; problems name the file or variable,
//! never its content.

use std::path::PathBuf;

use sha2::{Digest, Sha256};

use super::Problem;
use crate::spec::Source;
use kmsgate_core::secret::Secret;

/// The sources of one auth's inputs, by name.
pub struct InputSources {
    sources: Vec<(&'static str, Input)>,
}

/// One input: a credential source, or a file whose bytes are the input
/// (a JWT, a client certificate).
#[derive(Clone)]
pub enum Input {
    Source(Source),
    File(PathBuf),
}

/// The inputs as read now.
pub struct Inputs {
    values: Vec<(&'static str, Secret)>,
    fingerprint: u64,
}

impl InputSources {
    pub fn new(sources: Vec<(&'static str, Source)>) -> InputSources {
        InputSources {
            sources: sources
                .into_iter()
                .map(|(name, source)| (name, Input::Source(source)))
                .collect(),
        }
    }

    /// Adds a file read as is.
    pub fn with_file(mut self, name: &'static str, path: PathBuf) -> InputSources {
        self.sources.push((name, Input::File(path)));
        self
    }

    /// Reads every input (off the async runtime: files may be slow).
    pub async fn read(&self) -> Result<Inputs, Problem> {
        let sources = self.sources.clone();
        let read =
            kmsgate_core::files::off_runtime("auth inputs", move || read_all(&sources)).await;
        match read {
            Ok(result) => result,
            Err(why) => Err(Problem::unreachable(why)),
        }
    }
}

fn read_all(sources: &[(&'static str, Input)]) -> Result<Inputs, Problem> {
    let mut hasher = Sha256::new();
    let mut values = Vec::new();
    for (name, input) in sources {
        let value = match input {
            Input::Source(source) => source.read().map_err(Problem::refused)?,
            // A PEM file, kept whole.
            Input::File(file) => {
                let bytes =
                    kmsgate_core::files::read_bounded(file, kmsgate_core::files::MAX_SMALL_FILE)
                        .map_err(Problem::refused)?;
                String::from_utf8(bytes)
                    .map_err(|_| Problem::refused(format!("{file:?} is not UTF-8")))?
            }
        };
        if value.trim().is_empty() {
            let origin = match input {
                Input::Source(Source::File { file }) | Input::File(file) => format!("{file:?}"),
                Input::Source(Source::Env { env }) => format!("environment variable {env}"),
            };
            return Err(Problem::refused(format!("{name}: {origin} is empty")));
        }
        hasher.update((value.len() as u64).to_le_bytes());
        hasher.update(value.as_bytes());
        values.push((*name, Secret::new(value)));
    }
    let digest = hasher.finalize();
    let fingerprint = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes of a digest"));
    Ok(Inputs {
        values,
        fingerprint,
    })
}

impl Inputs {
    /// Changes whenever any input does.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    pub fn get(&self, name: &str) -> Option<&Secret> {
        self.values
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, value)| value)
    }

    /// An input every kind that names it has; missing means a bug here.
    pub fn require(&self, name: &str) -> Result<&Secret, Problem> {
        self.get(name)
            .ok_or_else(|| Problem::refused(format!("input {name} was not read")))
    }

    /// All values, for searching error texts.
    pub fn secrets(&self) -> impl Iterator<Item = &Secret> {
        self.values.iter().map(|(_, value)| value)
    }
}
