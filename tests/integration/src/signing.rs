//! Signing keys and signatures made with `openssl`, as an operator makes
//! them (ECDSA P-256 in cosign's formats, Ed25519), never by kmsgate.

use std::path::{Path, PathBuf};
use std::process::Command;

use toml::Value;

/// Runs openssl; fails the test with its stderr if it fails.
pub fn openssl(args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed (scripts/setup)");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[derive(Clone, Copy, PartialEq)]
pub enum Kind {
    /// ECDSA P-256, the signature base64 of its DER, as `cosign sign-blob
    /// --key` writes it.
    Ecdsa,
    /// Ed25519 over the whole file, binary, as `openssl pkeyutl -rawin`
    /// writes it.
    Ed25519,
}

/// A signing key pair in `dir`: `NAME.key` (private) and `NAME.pub`.
pub struct Key {
    pub name: String,
    pub kind: Kind,
    pub private: PathBuf,
    pub public: PathBuf,
}

impl Key {
    pub fn new(dir: &Path, name: &str, kind: Kind) -> Key {
        let private = dir.join(format!("{name}.key"));
        let public = dir.join(format!("{name}.pub"));
        let (p, q) = (private.to_str().unwrap(), public.to_str().unwrap());
        match kind {
            Kind::Ecdsa => {
                openssl(&[
                    "ecparam",
                    "-name",
                    "prime256v1",
                    "-genkey",
                    "-noout",
                    "-out",
                    p,
                ]);
                openssl(&["ec", "-in", p, "-pubout", "-out", q]);
            }
            Kind::Ed25519 => {
                openssl(&["genpkey", "-algorithm", "ed25519", "-out", p]);
                openssl(&["pkey", "-in", p, "-pubout", "-out", q]);
            }
        }
        Key {
            name: name.into(),
            kind,
            private,
            public,
        }
    }

    /// Signs `file` into `signature`.
    pub fn sign(&self, file: &Path, signature: &Path) {
        let (k, f, s) = (
            self.private.to_str().unwrap(),
            file.to_str().unwrap(),
            signature.to_str().unwrap(),
        );
        match self.kind {
            Kind::Ecdsa => {
                let der = format!("{s}.der");
                openssl(&["dgst", "-sha256", "-sign", k, "-out", &der, f]);
                openssl(&["base64", "-A", "-in", &der, "-out", s]);
                std::fs::remove_file(der).unwrap();
            }
            Kind::Ed25519 => openssl(&[
                "pkeyutl", "-sign", "-inkey", k, "-rawin", "-in", f, "-out", s,
            ]),
        }
    }

    /// Its `[[trusted_keys]]` entry.
    pub fn trusted(&self) -> Value {
        let mut table = toml::Table::new();
        table.insert("name".into(), self.name.clone().into());
        table.insert("file".into(), self.public.display().to_string().into());
        Value::Table(table)
    }
}

/// Writes to `path` the "simple signing" payload `cosign sign` signs for
/// the manifest `digest` of `repository` (cosign's signature
/// specification).
pub fn cosign_payload(path: &Path, repository: &str, digest: &str) -> PathBuf {
    let payload = serde_json::json!({
        "critical": {
            "identity": {"docker-reference": repository},
            "image": {"docker-manifest-digest": digest},
            "type": "cosign container image signature",
        },
        "optional": null,
    });
    std::fs::write(path, payload.to_string()).unwrap();
    path.to_owned()
}

impl Key {
    /// Signs `payload` and returns the signature in base64, as cosign puts
    /// it in a registry.
    pub fn sign_base64(&self, payload: &Path) -> String {
        let signature = PathBuf::from(format!("{}.sig", payload.display()));
        self.sign(payload, &signature);
        let bytes = std::fs::read(&signature).unwrap();
        match self.kind {
            Kind::Ecdsa => String::from_utf8(bytes).unwrap().trim().to_owned(),
            Kind::Ed25519 => {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD.encode(bytes)
            }
        }
    }
}
