//! Components from OCI registries: `component =
//! "oci://host[:port]/repository[:tag]@sha256:<manifest digest>"`, pulled
//! over HTTPS with the OCI distribution API (`oci-client`), as the
//! WebAssembly artifact the Bytecode Alliance's tools push (`wkg oci push`:
//! one layer `application/wasm`, config
//! `application/vnd.wasm.config.v0+json`; the older
//! `application/vnd.wasm.content.layer.v1+wasm` layer is read too).
//!
//! - A digest is required, unless the operator sets
//!   `registry.allow_unpinned = true`: a tag alone lets whoever can push to
//!   the registry change the code.
//! - Every byte is checked against its digest: the manifest against the
//!   pinned digest, the component against the manifest's layer digest. A
//!   mismatch is refused, never retried from the cache.
//! - Pulled components are kept on disk by their digest, in
//!   `compile_cache_dir/oci`, which must pass the compile cache's
//!   ownership rules (the daemon's user owns it, nobody else can write to
//!   it or above it),
//!   so a registry that is down at start does not stop a provider already
//!   pulled once: the cached copy serves and the provider is marked stale,
//!   saying why.
//! - A pull happens when the provider is loaded: at start and on a reload
//!   the operator asks for (`kmsgate reload`, SIGHUP, a config edit). Files
//!   on disk are not watched for an `oci://` component, so nothing pulls
//!   silently.
//!
//! - Signatures are looked up beside the artifact where `cosign sign --key`
//!   puts them (tag `sha256-<manifest hex>.sig` in the same repository; see
//!   [`crate::signature::CosignSignature`]) and kept in the cache with it,
//!   so a stale copy is checked against the signatures pulled with it. A
//!   provider that names a `signature` file uses that instead.
//! - What a registry sends is bounded: a whole pull within [`PULL_DEADLINE`]
//!   (a registry that drips its answer is treated as one that is down), a
//!   component no larger than its manifest says nor than
//!   [`kmsgate_core::files::MAX_COMPONENT`], at most [`MAX_SIGNATURES`]
//!   signatures of [`crate::signature::MAX_COSIGN_PAYLOAD`] bytes each. A
//!   manifest is checked against [`MAX_MANIFEST`] only once the client has
//!   read it (`oci-client` has no streaming manifest read); the deadline
//!   bounds how long that read may go on.
//!
//! The signature and pin checks ([`crate::signature`], [`crate::integrity`])
//! then run on the pulled bytes exactly as on a local file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::manifest::OciImageManifest;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::{Deserialize, Serialize};

use crate::signature::{COSIGN_PAYLOAD_MEDIA_TYPE, COSIGN_SIGNATURE_ANNOTATION, CosignSignature};
use crate::spec::Source;

/// The scheme that makes a `component` a registry reference.
pub const SCHEME: &str = "oci://";

/// Layer media types that hold a component.
pub const LAYER_MEDIA_TYPES: [&str; 2] = [
    "application/wasm",
    "application/vnd.wasm.content.layer.v1+wasm",
];

/// The longest a registry may take to answer one request.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The longest a whole pull (manifest, component, signatures) may take
/// before the registry counts as unreachable.
pub const PULL_DEADLINE: Duration = Duration::from_secs(60);

/// The largest manifest accepted.
pub const MAX_MANIFEST: usize = 64 << 10;

/// The most signatures read for one artifact.
pub const MAX_SIGNATURES: usize = 16;

/// How a provider reaches its registry: `[providers.registry]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// HTTP basic authentication; anonymous without it.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Source>,
    /// A PEM CA bundle for the registry's certificate, besides the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Accept a reference without `@sha256:` (a tag alone). Default false.
    #[serde(default)]
    pub allow_unpinned: bool,
}

/// A parsed `oci://` reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciReference {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:<64 hex>`, of the manifest.
    pub digest: Option<String>,
}

impl OciReference {
    /// Parses `oci://host[:port]/repository[:tag][@sha256:<hex>]`.
    pub fn parse(text: &str) -> Result<OciReference, String> {
        let rest = text
            .strip_prefix(SCHEME)
            .ok_or_else(|| format!("{text:?} does not start with {SCHEME}"))?;
        let (rest, digest) = match rest.split_once('@') {
            Some((rest, digest)) => {
                let hex = digest.strip_prefix("sha256:").unwrap_or_default();
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(format!(
                        "{text:?}: the digest must be sha256:<64 hex digits>"
                    ));
                }
                (rest, Some(format!("sha256:{}", hex.to_ascii_lowercase())))
            }
            None => (rest, None),
        };
        let (registry, path) = rest
            .split_once('/')
            .ok_or_else(|| format!("{text:?}: expected oci://host/repository"))?;
        // A tag follows the last ':' after the last '/'.
        let (repository, tag) = match path.rsplit_once(':') {
            Some((repository, tag)) if !tag.contains('/') => (repository, Some(tag.to_owned())),
            _ => (path, None),
        };
        let valid_repository = !repository.is_empty()
            && repository.split('/').all(|part| {
                !part.is_empty()
                    && part.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
            });
        if registry.is_empty() || !valid_repository {
            return Err(format!(
                "{text:?}: expected oci://host[:port]/repository[:tag][@sha256:...] (lowercase repository)"
            ));
        }
        if tag.is_none() && digest.is_none() {
            return Err(format!("{text:?}: name a tag or a digest"));
        }
        Ok(OciReference {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            tag,
            digest,
        })
    }

    fn client_reference(&self) -> Reference {
        match (&self.tag, &self.digest) {
            (Some(tag), Some(digest)) => Reference::with_tag_and_digest(
                self.registry.clone(),
                self.repository.clone(),
                tag.clone(),
                digest.clone(),
            ),
            (None, Some(digest)) => Reference::with_digest(
                self.registry.clone(),
                self.repository.clone(),
                digest.clone(),
            ),
            (Some(tag), None) => {
                Reference::with_tag(self.registry.clone(), self.repository.clone(), tag.clone())
            }
            (None, None) => unreachable!("parse requires a tag or a digest"),
        }
    }

    /// The reference as the operator wrote it, for logs and views.
    pub fn text(&self) -> String {
        let mut text = format!("{SCHEME}{}/{}", self.registry, self.repository);
        if let Some(tag) = &self.tag {
            text.push(':');
            text.push_str(tag);
        }
        if let Some(digest) = &self.digest {
            text.push('@');
            text.push_str(digest);
        }
        text
    }
}

/// A component pulled (or found in the cache).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The component's bytes, in the cache.
    pub path: PathBuf,
    /// The manifest's digest.
    pub manifest_digest: String,
    /// The component layer's digest, from the manifest.
    pub layer_digest: String,
    /// The signatures the registry holds for the manifest (pulled with it,
    /// or kept with the cached copy).
    pub signatures: Vec<CosignSignature>,
    /// Where those signatures are looked for, for messages.
    pub signatures_at: String,
    /// Why the registry could not be asked, when the cached copy serves.
    pub stale: Option<String>,
}

/// Why a pull failed.
#[derive(Debug)]
enum PullError {
    /// The registry did not answer: the cached copy may serve.
    Unreachable(String),
    /// It answered, and what it answered is refused (a digest mismatch, no
    /// component in the artifact, credentials refused): never the cache.
    Refused(String),
}

/// Pulls `reference` into `cache`, or falls back to what `cache` holds for
/// it when the registry cannot be reached.
pub async fn fetch(
    reference: &OciReference,
    registry: &RegistryConfig,
    cache: &Path,
) -> Result<Fetched, String> {
    if reference.digest.is_none() && !registry.allow_unpinned {
        return Err(format!(
            "{}: no @sha256: digest; pin the component, or set registry.allow_unpinned = true",
            reference.text()
        ));
    }
    // What is cached here is run: the same rules as for compiled code.
    crate::cache::trusted_dir(cache)
        .map_err(|why| format!("{cache:?} cannot hold pulled components: {why}"))?;
    let pulled = tokio::time::timeout(PULL_DEADLINE, pull(reference, registry, cache))
        .await
        .unwrap_or_else(|_| {
            Err(PullError::Unreachable(format!(
                "no whole answer within {}s",
                PULL_DEADLINE.as_secs()
            )))
        });
    match pulled {
        Ok(fetched) => Ok(fetched),
        Err(PullError::Refused(why)) => Err(format!("{}: {why}", reference.text())),
        Err(PullError::Unreachable(why)) => match off_runtime({
            let (reference, cache) = (reference.clone(), cache.to_owned());
            move || cached(&reference, &cache)
        })
        .await
        .ok()
        .flatten()
        {
            Some(mut fetched) => {
                fetched.stale = Some(format!(
                    "the registry could not be reached ({why}); serving the copy pulled before"
                ));
                Ok(fetched)
            }
            None => Err(format!(
                "{}: the registry could not be reached ({why}), and no copy was pulled before",
                reference.text()
            )),
        },
    }
}

fn client(registry: &RegistryConfig) -> Result<Client, PullError> {
    // oci-client's rustls needs a process-wide crypto provider; ring is
    // what the rest of the daemon's TLS uses. Installing twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut extra_root_certificates = Vec::new();
    if let Some(ca) = &registry.ca_file {
        let data = kmsgate_core::files::read_bounded(ca, kmsgate_core::files::MAX_SMALL_FILE)
            .map_err(PullError::Refused)?;
        extra_root_certificates.push(Certificate {
            encoding: CertificateEncoding::Pem,
            data,
        });
    }
    Ok(Client::new(ClientConfig {
        protocol: ClientProtocol::Https,
        extra_root_certificates,
        read_timeout: Some(TIMEOUT),
        connect_timeout: Some(TIMEOUT),
        ..ClientConfig::default()
    }))
}

fn auth(registry: &RegistryConfig) -> Result<RegistryAuth, PullError> {
    let Some(username) = &registry.username else {
        return Ok(RegistryAuth::Anonymous);
    };
    let password = match &registry.password {
        Some(source) => source.read().map_err(PullError::Refused)?,
        None => String::new(),
    };
    Ok(RegistryAuth::Basic(username.clone(), password))
}

/// Whether an error of the client means the registry was not reached.
fn classify(error: oci_client::errors::OciDistributionError) -> PullError {
    use oci_client::errors::OciDistributionError as E;
    match &error {
        E::RequestError(e) if e.is_connect() || e.is_timeout() => {
            PullError::Unreachable(e.to_string())
        }
        // The client checks a blob's digest as it streams it in.
        E::DigestError(e) => PullError::Refused(format!("digest mismatch: {e}")),
        _ => PullError::Refused(error.to_string()),
    }
}

fn sha256_of(bytes: &[u8]) -> String {
    format!("sha256:{}", crate::integrity::sha256_hex(bytes))
}

async fn pull(
    reference: &OciReference,
    registry: &RegistryConfig,
    cache: &Path,
) -> Result<Fetched, PullError> {
    // The CA and password files are read on the blocking pool, as a
    // provider's other files are.
    let (client, auth) = off_runtime({
        let registry = registry.clone();
        move || Ok::<_, PullError>((client(&registry)?, auth(&registry)?))
    })
    .await??;
    let image = reference.client_reference();
    let (manifest, parsed) = pull_manifest(
        &client,
        &auth,
        &image,
        &[oci_client::manifest::OCI_IMAGE_MEDIA_TYPE],
        "the manifest",
    )
    .await?;
    // The digest is of the bytes received, whatever the registry says.
    let manifest_digest = sha256_of(&manifest);
    if let Some(pinned) = &reference.digest
        && pinned != &manifest_digest
    {
        return Err(PullError::Refused(format!(
            "digest mismatch: the registry sent a manifest with digest {manifest_digest}, the reference pins {pinned}"
        )));
    }
    let layers: Vec<_> = parsed
        .layers
        .iter()
        .filter(|layer| LAYER_MEDIA_TYPES.contains(&layer.media_type.as_str()))
        .collect();
    let [layer] = layers.as_slice() else {
        return Err(PullError::Refused(format!(
            "expected one layer of media type {}, found {}",
            LAYER_MEDIA_TYPES.join(" or "),
            layers.len()
        )));
    };
    let blob = blob_path(cache, &layer.digest)?;
    if !holds(&blob, &layer.digest).await {
        let max = kmsgate_core::files::MAX_COMPONENT as usize;
        let bytes = pull_capped(&client, &image, layer, max, "a component").await?;
        write_off_runtime(&blob, bytes).await?;
    }
    let signatures = pull_signatures(&client, &auth, reference, &manifest_digest).await?;
    let kept = serde_json::to_vec(&signatures).expect("signatures serialise");
    write_off_runtime(&signatures_path(cache, &manifest_digest)?, kept).await?;
    write_off_runtime(
        &ref_path(cache, reference),
        format!("{manifest_digest} {}\n", layer.digest).into_bytes(),
    )
    .await?;
    Ok(Fetched {
        path: blob,
        signatures_at: signatures_at(reference, &manifest_digest),
        manifest_digest,
        layer_digest: layer.digest.clone(),
        signatures,
        stale: None,
    })
}

/// Where cosign keeps the signatures of `manifest_digest`: a tag in the
/// same repository.
fn signature_tag(manifest_digest: &str) -> String {
    format!("{}.sig", manifest_digest.replace(':', "-"))
}

fn signatures_at(reference: &OciReference, manifest_digest: &str) -> String {
    format!(
        "{}/{}:{}",
        reference.registry,
        reference.repository,
        signature_tag(manifest_digest)
    )
}

/// The cosign signatures the registry holds for `manifest_digest`; none if
/// it has no signature tag for it.
async fn pull_signatures(
    client: &Client,
    auth: &RegistryAuth,
    reference: &OciReference,
    manifest_digest: &str,
) -> Result<Vec<CosignSignature>, PullError> {
    let tag = Reference::with_tag(
        reference.registry.clone(),
        reference.repository.clone(),
        signature_tag(manifest_digest),
    );
    let accepted = [
        oci_client::manifest::OCI_IMAGE_MEDIA_TYPE,
        oci_client::manifest::IMAGE_MANIFEST_MEDIA_TYPE,
    ];
    let where_ = signatures_at(reference, manifest_digest);
    let what = format!("the signature manifest at {where_}");
    let parsed = match pull_manifest(client, auth, &tag, &accepted, &what).await {
        Ok((_, parsed)) => parsed,
        Err(Missing) => return Ok(Vec::new()),
        Err(Failed(error)) => return Err(error),
    };
    let layers: Vec<_> = parsed
        .layers
        .iter()
        .filter(|layer| layer.media_type == COSIGN_PAYLOAD_MEDIA_TYPE)
        .collect();
    if layers.len() > MAX_SIGNATURES {
        return Err(PullError::Refused(format!(
            "{} signatures at {where_} (at most {MAX_SIGNATURES})",
            layers.len()
        )));
    }
    let mut signatures = Vec::new();
    for layer in layers {
        let Some(signature) = layer
            .annotations
            .as_ref()
            .and_then(|annotations| annotations.get(COSIGN_SIGNATURE_ANNOTATION))
        else {
            continue;
        };
        let max = crate::signature::MAX_COSIGN_PAYLOAD;
        let what = format!("a signature payload at {where_}");
        let payload = pull_capped(client, &tag, layer, max, &what).await?;
        use base64::Engine;
        signatures.push(CosignSignature {
            payload: base64::engine::general_purpose::STANDARD.encode(payload),
            signature: signature.clone(),
        });
    }
    Ok(signatures)
}

/// Why [`pull_manifest`] has no manifest.
enum ManifestError {
    /// The registry has none under that reference.
    Missing,
    Failed(PullError),
}
use ManifestError::{Failed, Missing};

impl From<ManifestError> for PullError {
    fn from(error: ManifestError) -> PullError {
        match error {
            Missing => PullError::Refused("the registry has no such manifest".into()),
            Failed(error) => error,
        }
    }
}

/// The manifest at `image` (its bytes, and parsed), at most
/// [`MAX_MANIFEST`] bytes; `what` names it in errors.
async fn pull_manifest(
    client: &Client,
    auth: &RegistryAuth,
    image: &Reference,
    accepted: &[&str],
    what: &str,
) -> Result<(bytes::Bytes, OciImageManifest), ManifestError> {
    use oci_client::errors::{OciDistributionError as E, OciErrorCode};
    let manifest = match client.pull_manifest_raw(image, auth, accepted).await {
        Ok((manifest, _)) => manifest,
        Err(E::RegistryError { envelope, .. })
            if envelope
                .errors
                .iter()
                .any(|e| e.code == OciErrorCode::ManifestUnknown) =>
        {
            return Err(Missing);
        }
        Err(E::ServerError { code: 404, .. }) => return Err(Missing),
        Err(error) => return Err(Failed(classify(error))),
    };
    if manifest.len() > MAX_MANIFEST {
        return Err(Failed(PullError::Refused(format!(
            "{what} has {} bytes (at most {MAX_MANIFEST})",
            manifest.len()
        ))));
    }
    let parsed = serde_json::from_slice(&manifest)
        .map_err(|e| Failed(PullError::Refused(format!("{what} does not parse: {e}"))))?;
    Ok((manifest, parsed))
}

/// The blob `layer` of `image`, refused if its descriptor gives more than
/// `max` bytes and cut off if the registry sends more than it gives. The
/// client checks the bytes against the layer's digest as they stream in.
async fn pull_capped(
    client: &Client,
    image: &Reference,
    layer: &oci_client::manifest::OciDescriptor,
    max: usize,
    what: &str,
) -> Result<Vec<u8>, PullError> {
    if layer.size < 0 || layer.size as usize > max {
        return Err(PullError::Refused(format!(
            "{what} of {} bytes (at most {max})",
            layer.size
        )));
    }
    let mut bytes = Capped::new(layer.size as usize);
    client
        .pull_blob(image, layer, &mut bytes)
        .await
        .map_err(classify)?;
    Ok(bytes.into_inner())
}

/// A buffer for a blob that refuses bytes beyond the size its descriptor
/// gave: `oci-client` streams a blob into any writer and checks its digest
/// only at the end, so without this a registry could make the daemon hold
/// as much as it cared to send.
struct Capped {
    bytes: Vec<u8>,
    max: usize,
}

impl Capped {
    fn new(max: usize) -> Capped {
        Capped {
            bytes: Vec::with_capacity(max),
            max,
        }
    }

    fn into_inner(self) -> Vec<u8> {
        self.bytes
    }
}

impl tokio::io::AsyncWrite for Capped {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let max = self.max;
        if self.bytes.len() + buf.len() > max {
            return std::task::Poll::Ready(Err(std::io::Error::other(format!(
                "the registry sent more than the {max} bytes the manifest gives"
            ))));
        }
        self.bytes.extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// What the cache holds for `reference`: the component it last resolved
/// to, if its bytes are still intact.
fn cached(reference: &OciReference, cache: &Path) -> Option<Fetched> {
    let record = std::fs::read_to_string(ref_path(cache, reference)).ok()?;
    let (manifest_digest, layer_digest) = record.trim().split_once(' ')?;
    let blob = blob_path(cache, layer_digest).ok()?;
    if !intact(&blob, layer_digest) {
        return None;
    }
    // Signatures are checked again when the copy is loaded; a record that
    // does not read is treated as none (and a required signature refuses).
    let signatures = std::fs::read(signatures_path(cache, manifest_digest).ok()?)
        .ok()
        .and_then(|kept| serde_json::from_slice(&kept).ok())
        .unwrap_or_default();
    Some(Fetched {
        path: blob,
        manifest_digest: manifest_digest.to_owned(),
        layer_digest: layer_digest.to_owned(),
        signatures,
        signatures_at: signatures_at(reference, manifest_digest),
        stale: None,
    })
}

/// The signatures kept with the manifest `digest`.
fn signatures_path(cache: &Path, digest: &str) -> Result<PathBuf, PullError> {
    let hex = sha256_hex_of(digest)?;
    Ok(cache.join("signatures").join(format!("{hex}.json")))
}

fn blob_path(cache: &Path, digest: &str) -> Result<PathBuf, PullError> {
    let hex = sha256_hex_of(digest)?;
    Ok(cache.join("blobs").join(format!("{hex}.wasm")))
}

/// The hex of a `sha256:` digest; anything else is refused (it names files).
fn sha256_hex_of(digest: &str) -> Result<&str, PullError> {
    digest
        .strip_prefix("sha256:")
        .filter(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| PullError::Refused(format!("a digest {digest:?} that is not sha256")))
}

/// The record of what `reference` last resolved to, named by a digest of
/// its text (a reference has characters a file name should not).
fn ref_path(cache: &Path, reference: &OciReference) -> PathBuf {
    cache
        .join("refs")
        .join(crate::integrity::sha256_hex(reference.text().as_bytes()))
}

/// Cache reads and writes (tens of MB for an interpreter's component) run
/// on the blocking pool, as a local component's do.
async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, PullError> {
    kmsgate_core::files::off_runtime("the pulled-components cache", work)
        .await
        .map_err(PullError::Refused)
}

/// Whether `path` holds the bytes of `digest`.
fn intact(path: &Path, digest: &str) -> bool {
    kmsgate_core::files::read_bounded(path, kmsgate_core::files::MAX_COMPONENT)
        .is_ok_and(|bytes| sha256_of(&bytes) == digest)
}

async fn holds(path: &Path, digest: &str) -> bool {
    let (path, digest) = (path.to_owned(), digest.to_owned());
    off_runtime(move || intact(&path, &digest))
        .await
        .unwrap_or(false)
}

async fn write_off_runtime(path: &Path, bytes: Vec<u8>) -> Result<(), PullError> {
    let path = path.to_owned();
    off_runtime(move || write_atomically(&path, &bytes)).await?
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), PullError> {
    let failed = |e: std::io::Error| PullError::Refused(format!("writing {path:?}: {e}"));
    let dir = path.parent().expect("cache paths have a parent");
    std::fs::create_dir_all(dir).map_err(failed)?;
    let partial = path.with_extension("partial");
    std::fs::write(&partial, bytes).map_err(failed)?;
    std::fs::rename(&partial, path).map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_and_bad_ones_are_refused() {
        let digest = "a".repeat(64);
        let full = OciReference::parse(&format!(
            "oci://127.0.0.1:5000/providers/local-aes:v1@sha256:{digest}"
        ))
        .unwrap();
        assert_eq!(
            (
                full.registry.as_str(),
                full.repository.as_str(),
                full.tag.as_deref(),
                full.digest.clone()
            ),
            (
                "127.0.0.1:5000",
                "providers/local-aes",
                Some("v1"),
                Some(format!("sha256:{digest}"))
            )
        );
        assert_eq!(
            full.text(),
            format!("oci://127.0.0.1:5000/providers/local-aes:v1@sha256:{digest}")
        );
        let untagged =
            OciReference::parse(&format!("oci://registry.example/kms@sha256:{digest}")).unwrap();
        assert_eq!(untagged.tag, None);
        for bad in [
            "https://registry.example/kms:v1".to_owned(),
            "oci://registry.example".to_owned(),
            "oci://registry.example/kms".to_owned(),
            "oci://registry.example/Kms:v1".to_owned(),
            "oci://registry.example/kms:v1@sha256:abc".to_owned(),
            format!("oci://registry.example/kms:v1@md5:{digest}"),
        ] {
            assert!(OciReference::parse(&bad).is_err(), "{bad}");
        }
    }
}
