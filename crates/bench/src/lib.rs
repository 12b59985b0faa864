//! Measuring kmsgate: a load generator for any KMS plugin socket, and the
//! native floor the Wasm path is measured against.
//!
//! `kmsgate bench` (the CLI) runs [`load`]; the `kmsgate-floor` binary of
//! this crate serves a [`floor`] provider through the daemon's own stack.
//! The floor never ships in the `kmsgate` binary.
//!
//! # Layout
//! - [`load`] — the load generator: throughput, latency percentiles, errors by code.
//! - [`floor`] — native providers (AES-GCM, a Vault Transit client) with no Wasm.

pub mod floor;
pub mod load;
