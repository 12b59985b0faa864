//! `kmsgate provider new --lang rust|python|js NAME`: a project that builds
//! a provider component and passes `kmsgate provider test` as generated.
//!
//! Every language gets the same provider (Vault / OpenBao Transit, a real
//! backend a vendor can test against at once), the WIT this kmsgate offers,
//! a README with the build and test commands, and its build files: for
//! Rust, a crate on the guest SDK (copied in, as this kmsgate has it, until
//! the SDK is published); for Python and JavaScript, the repository's
//! example providers and a `build.sh` that also stamps the component's
//! identity. The files are compiled into the binary, so the templates are
//! always those of the running kmsgate.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// Write a new provider project: NAME/ (or --dir), ready to build and to
/// pass `kmsgate provider test`.
#[derive(clap::Args)]
pub struct NewArgs {
    /// The provider's name: lowercase letters, digits and '-'.
    name: String,
    #[arg(long, value_enum)]
    lang: Lang,
    /// Where to create the project; default ./NAME. Must not exist.
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Lang {
    Rust,
    Python,
    Js,
}

/// A file of a template: its path in the project and its text, in which
/// `{{name}}` and the other placeholders are replaced.
type File = (&'static str, &'static str);

macro_rules! repo_file {
    ($path:literal) => {
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../", $path))
    };
}

/// In every project: the WIT, the README and ignores.
const COMMON: &[File] = &[
    ("wit/provider.wit", repo_file!("wit/provider.wit")),
    (
        "wit/deps/config/world.wit",
        repo_file!("wit/deps/config/world.wit"),
    ),
    (
        "wit/deps/config/store.wit",
        repo_file!("wit/deps/config/store.wit"),
    ),
    (
        "wit/deps/logging/logging.wit",
        repo_file!("wit/deps/logging/logging.wit"),
    ),
    ("README.md", repo_file!("crates/cli/templates/README.md")),
    (".gitignore", repo_file!("crates/cli/templates/gitignore")),
];

const RUST: &[File] = &[
    (
        "Cargo.toml",
        repo_file!("crates/cli/templates/rust/Cargo.toml"),
    ),
    ("src/lib.rs", repo_file!("crates/cli/templates/rust/lib.rs")),
    (
        "sdk/rust/Cargo.toml",
        repo_file!("crates/cli/templates/rust/sdk-Cargo.toml"),
    ),
    ("sdk/rust/src/lib.rs", repo_file!("sdk/rust/src/lib.rs")),
    (
        "sdk/rust/src/base64.rs",
        repo_file!("sdk/rust/src/base64.rs"),
    ),
    ("sdk/rust/src/http.rs", repo_file!("sdk/rust/src/http.rs")),
    (
        "sdk/rust/src/instance.rs",
        repo_file!("sdk/rust/src/instance.rs"),
    ),
    (
        "sdk/rust/src/logging.rs",
        repo_file!("sdk/rust/src/logging.rs"),
    ),
    (
        "sdk/rust/src/provider.rs",
        repo_file!("sdk/rust/src/provider.rs"),
    ),
    (
        "sdk/rust/src/settings.rs",
        repo_file!("sdk/rust/src/settings.rs"),
    ),
];

const PYTHON: &[File] = &[
    ("app.py", repo_file!("providers/vault-transit-py/app.py")),
    (
        "build.sh",
        repo_file!("crates/cli/templates/python/build.sh"),
    ),
];

const JS: &[File] = &[
    (
        "provider.js",
        repo_file!("providers/vault-transit-js/provider.js"),
    ),
    (
        "build.mjs",
        repo_file!("providers/vault-transit-js/build.mjs"),
    ),
    (
        "package.json",
        repo_file!("providers/vault-transit-js/package.json"),
    ),
    (
        "package-lock.json",
        repo_file!("providers/vault-transit-js/package-lock.json"),
    ),
    ("build.sh", repo_file!("crates/cli/templates/js/build.sh")),
];

impl Lang {
    fn files(self) -> &'static [File] {
        match self {
            Lang::Rust => RUST,
            Lang::Python => PYTHON,
            Lang::Js => JS,
        }
    }

    /// The README's language, build command, component and source file.
    fn readme(self, name: &str) -> [(&'static str, String); 4] {
        let (language, build, wasm, source) = match self {
            Lang::Rust => (
                "Rust",
                "rustup target add wasm32-wasip2\ncargo build --release --target wasm32-wasip2"
                    .into(),
                format!(
                    "target/wasm32-wasip2/release/{}.wasm",
                    name.replace('-', "_")
                ),
                "`src/lib.rs`",
            ),
            Lang::Python => (
                "Python (componentize-py)",
                "pip install componentize-py==0.25.1\n./build.sh".into(),
                format!("{name}.wasm"),
                "`Settings.call` and the three requests in `app.py`",
            ),
            Lang::Js => (
                "JavaScript (componentize-js)",
                "./build.sh    # npm ci the first time".into(),
                format!("{name}.wasm"),
                "`call` and the three requests in `provider.js`",
            ),
        };
        [
            ("{{language}}", language.into()),
            ("{{build}}", build),
            ("{{wasm}}", wasm),
            ("{{source}}", source.into()),
        ]
    }
}

pub fn run(args: NewArgs) -> anyhow::Result<()> {
    let name = &args.name;
    if !is_valid_name(name) {
        bail!(
            "{name:?}: a provider's name is 1-63 lowercase letters, digits or '-', starting with a letter"
        );
    }
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from(name));
    if dir.exists() {
        bail!("{dir:?} exists already: choose another --dir");
    }
    let version = env!("CARGO_PKG_VERSION");
    let mut replacements = vec![
        ("{{name}}", name.clone()),
        ("{{kmsgate_version}}", format!("kmsgate {version}")),
        ("{{sdk_version}}", version.into()),
        ("{{wit_version}}", kmsgate_wasm::WIT_VERSION.to_string()),
    ];
    replacements.extend(args.lang.readme(name));
    for (path, text) in COMMON.iter().chain(args.lang.files()) {
        let mut text = text.to_string();
        for (placeholder, value) in &replacements {
            text = text.replace(placeholder, value);
        }
        if matches!(*path, "package.json" | "package-lock.json") {
            // The example's package name becomes the project's.
            text = text.replace(
                "\"name\": \"vault-transit-js\"",
                &format!("\"name\": \"{name}\""),
            );
        }
        write(&dir.join(path), &text, path.ends_with(".sh"))?;
    }
    super::super::print_line(&format!(
        "created {dir:?}: a {} provider; see its README.md to build and test it",
        args.lang.readme(name)[0].1
    ))
}

fn is_valid_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn write(path: &Path, text: &str, executable: bool) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("{parent:?}"))?;
    }
    std::fs::write(path, text).with_context(|| format!("{path:?}"))?;
    if executable {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("{path:?}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(is_valid_name("acme-kms2"));
        for bad in ["", "Acme", "9lives", "a_b", "a/b", &"a".repeat(64)] {
            assert!(!is_valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn every_placeholder_is_filled() {
        let dir = tempfile::tempdir().unwrap();
        for (lang, sub) in [(Lang::Rust, "r"), (Lang::Python, "p"), (Lang::Js, "j")] {
            let project = dir.path().join(sub);
            run(NewArgs {
                name: "acme".into(),
                lang,
                dir: Some(project.clone()),
            })
            .unwrap();
            for (path, _) in COMMON.iter().chain(lang.files()) {
                let text = std::fs::read_to_string(project.join(path)).unwrap();
                assert!(!text.contains("{{"), "{sub}/{path} keeps a placeholder");
            }
        }
        let refused = run(NewArgs {
            name: "acme".into(),
            lang: Lang::Rust,
            dir: Some(dir.path().join("r")),
        });
        assert!(refused.is_err(), "an existing directory is left alone");
    }
}
