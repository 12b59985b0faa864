//! The KMS gRPC protos (v2, v1beta1) and kmsgate's admin API, generated
//! (see `build.rs` and `proto/`), with hand-written `Debug` for the
//! messages that carry plaintext, and [`client`], the one typed client over
//! the Unix socket (the CLI, `kmsgate bench` and the tests use it).

pub mod client;

use std::fmt;

pub mod v2 {
    tonic::include_proto!("v2");
}

pub mod v1beta1 {
    tonic::include_proto!("v1beta1");
}

/// kmsgate's operator API (`kmsgate providers`, `kmsgate reload`).
pub mod admin {
    tonic::include_proto!("kmsgate.admin.v1");
}

impl fmt::Debug for v2::EncryptRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptRequest")
            .field(
                "plaintext",
                &format_args!("{} bytes, redacted", self.plaintext.len()),
            )
            .field("uid", &self.uid)
            .finish()
    }
}

impl fmt::Debug for v2::DecryptResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecryptResponse")
            .field(
                "plaintext",
                &format_args!("{} bytes, redacted", self.plaintext.len()),
            )
            .finish()
    }
}

impl fmt::Debug for v1beta1::EncryptRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptRequest")
            .field("version", &self.version)
            .field(
                "plain",
                &format_args!("{} bytes, redacted", self.plain.len()),
            )
            .finish()
    }
}

impl fmt::Debug for v1beta1::DecryptResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecryptResponse")
            .field(
                "plain",
                &format_args!("{} bytes, redacted", self.plain.len()),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_messages_debug_without_bytes() {
        let request = v2::EncryptRequest {
            plaintext: b"secret-dek".to_vec(),
            uid: "u".into(),
        };
        let shown = format!(
            "{request:?} {:?}",
            v1beta1::DecryptResponse {
                plain: b"secret-dek".to_vec()
            }
        );
        assert!(
            !shown.contains("secret") && !shown.contains("115"),
            "{shown}"
        );
    }
}
