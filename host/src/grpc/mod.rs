//! The gRPC services on the KMS socket: v2 and the deprecated v1beta1,
//! both thin translations onto [`crate::gateway::Gateway`], and kmsgate's
//! own admin service.

mod admin;
mod v1beta1;
mod v2;

pub use admin::AdminService;
pub use v1beta1::V1beta1Service;
pub use v2::V2Service;

/// Largest gRPC message accepted. KMS messages are a few KiB at most
/// (ciphertext ≤ 1 KiB, annotations ≤ 32 KiB, plaintext ≤ 64 KiB).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
