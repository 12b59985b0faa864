//! The gRPC services on the KMS socket: v2 and the deprecated v1beta1,
//! both thin translations onto [`crate::gateway::Gateway`], and kmsgate's
//! own admin service.

mod admin;
pub mod status;
mod v1beta1;
mod v2;

pub use admin::AdminService;
pub use v1beta1::V1beta1Service;
pub use v2::V2Service;

/// When a call must be answered by: the caller's `grpc-timeout` (the
/// apiserver sends 3 s by default), less a margin so the answer, even a
/// failure, arrives before the caller gives up. `None` when the caller set
/// no deadline (the provider's own limits still apply).
pub(crate) fn caller_deadline(
    metadata: &tonic::metadata::MetadataMap,
) -> Option<std::time::Instant> {
    let timeout = parse_grpc_timeout(metadata.get("grpc-timeout")?.to_str().ok()?)?;
    // A tenth of the timeout, at most 100 ms: the socket is local.
    let margin = (timeout / 10).min(std::time::Duration::from_millis(100));
    Some(std::time::Instant::now() + timeout - margin)
}

/// `grpc-timeout`: up to 8 digits and a unit (H, M, S, m, u, n), as the
/// gRPC over HTTP/2 spec defines it.
fn parse_grpc_timeout(value: &str) -> Option<std::time::Duration> {
    use std::time::Duration;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Largest gRPC message accepted. The largest valid KMS message is a v2
/// Decrypt of about 34 KiB (ciphertext and key id ≤ 1 KiB each,
/// annotations ≤ 32 KiB); the cap is higher so that a plaintext of up to
/// 64 KiB (kmsgate's old limit) still reaches the checks and gets
/// INVALID_ARGUMENT, not the gRPC layer's OUT_OF_RANGE. Every stream can
/// buffer up to this much, so it is part of the memory bound
/// (`docs/security.md`).
pub const MAX_MESSAGE_BYTES: usize = 68 * 1024;

/// HTTP/2 flow-control windows: a stream may send about a message's worth
/// before the daemon reads it, a connection four times that.
pub const STREAM_WINDOW_BYTES: u32 = 64 * 1024;
pub const CONNECTION_WINDOW_BYTES: u32 = 256 * 1024;

/// Largest header block accepted per request (gRPC metadata is a few
/// hundred bytes).
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

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
    result: Result<T, kmsgate_core::error::KmsError>,
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
            || tracing::warn!(api, method, provider, uid = %kmsgate_core::sanitize::Escaped(uid), code = ?status::code(&error), "{error}"),
        );
        status::status(error)
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn grpc_timeouts_parse_by_the_spec() {
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_grpc_timeout("2999m"),
            Some(Duration::from_millis(2999))
        );
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5u"), Some(Duration::from_micros(5)));
        for bad in ["", "S", "3", "3s", "-1S", "123456789S", "1.5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_deadline_leaves_a_margin() {
        let mut metadata = tonic::metadata::MetadataMap::new();
        assert!(caller_deadline(&metadata).is_none());
        metadata.insert("grpc-timeout", "3S".parse().unwrap());
        let left = caller_deadline(&metadata).unwrap() - std::time::Instant::now();
        assert!(left <= Duration::from_millis(2900), "{left:?}");
        assert!(left > Duration::from_millis(2800), "{left:?}");
    }
}
