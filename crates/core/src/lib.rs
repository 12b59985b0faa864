//! The domain of kmsgate, free of gRPC and of wasmtime: what a KMS provider
//! is ([`kms::KmsProvider`]), how its calls fail ([`error`]), and the rules
//! every call obeys whoever serves it.
//!
//! The daemon's gRPC layer depends on this crate's trait, the Wasm layer
//! implements it, and tests implement it with in-process fakes.
//!
//! # Layout
//! - [`kms`] — the provider trait and its domain types.
//! - [`error`] — provider and call errors (the mapping to gRPC codes lives in the daemon).
//! - [`limits`] — the apiserver's limits on key ids, ciphertexts, annotations.
//! - [`key_id`] — `<provider>/<key id>`: namespacing, splitting, checking what a provider reports.
//! - [`envelope`] — the v1beta1 ciphertext header that carries the key id.
//! - [`secret`] — redacting wrappers for plaintext and credentials.
//! - [`sanitize`] — provider- and caller-supplied text, cut and cleaned before it is shown.
//! - [`files`] — reading the files a config names: regular, bounded, off the runtime.
//! - [`log_limit`] — log lines outsiders can provoke, written at most every few seconds.

pub mod envelope;
pub mod error;
pub mod files;
pub mod key_id;
pub mod kms;
pub mod limits;
pub mod log_limit;
pub mod sanitize;
pub mod secret;
