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

/// Ends a KMS call: counts it in the metrics, logs a failure (with its gRPC
/// code and the call's api, method, provider and uid, so the line stands on
/// its own at `warn`), and turns the error into a gRPC status.
///
/// The call's span is a `debug` span: at the default `info` level it is
/// disabled and costs nothing (an enabled span's fields are formatted on
/// every call, ~5% of the daemon's CPU under load by `perf`).
pub(crate) fn conclude<T>(
    metrics: &crate::metrics::Metrics,
    (api, method): (&'static str, &'static str),
    provider: &str,
    uid: &str,
    started: std::time::Instant,
    span: &tracing::Span,
    result: Result<T, crate::error::KmsError>,
) -> Result<T, tonic::Status> {
    metrics.observe(
        api,
        method,
        provider,
        result.as_ref().map(|_| ()),
        started.elapsed(),
    );
    result.map_err(|error| {
        span.in_scope(
            || tracing::warn!(api, method, provider, uid, code = ?error.code(), "{error}"),
        );
        error.into()
    })
}
