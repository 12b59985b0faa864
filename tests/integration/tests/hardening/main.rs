//! Every bound under attack (issue "Hold every bound under attack"): each
//! module attacks one promise with real processes (OpenBao behind a delay
//! proxy, a header-echo server, hostile fixture components) and checks the
//! daemon holds it. Each test failed before its fix.
//!
//! # Layout
//! - [`cpu`] — the CPU budget counts guest work only, whatever the host call.
//! - [`pools`] — one provider cannot take another's instances.

mod cpu;
mod pools;

use kmsgate::proto::v2;

pub fn encrypt(plaintext: &[u8]) -> v2::EncryptRequest {
    v2::EncryptRequest {
        plaintext: plaintext.to_vec(),
        uid: "u".into(),
    }
}

pub fn decrypt(key_id: &str, ciphertext: &[u8]) -> v2::DecryptRequest {
    v2::DecryptRequest {
        ciphertext: ciphertext.to_vec(),
        uid: "u".into(),
        key_id: key_id.into(),
        annotations: Default::default(),
    }
}
