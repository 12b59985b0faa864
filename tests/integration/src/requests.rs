//! Request builders shared by the tests.

use std::collections::HashMap;

use kmsgate_proto::client::V2Client;
use kmsgate_proto::v2;

/// A v2 Encrypt of `plaintext`.
pub fn encrypt(plaintext: &[u8]) -> v2::EncryptRequest {
    v2::EncryptRequest {
        plaintext: plaintext.to_vec(),
        uid: "uid-test".into(),
    }
}

/// The v2 Decrypt of what Encrypt returned.
pub fn decrypt(sealed: &v2::EncryptResponse) -> v2::DecryptRequest {
    v2::DecryptRequest {
        ciphertext: sealed.ciphertext.clone(),
        uid: "uid-test".into(),
        key_id: sealed.key_id.clone(),
        annotations: sealed.annotations.clone(),
    }
}

/// A v2 Decrypt of arbitrary bytes under `key_id`, no annotations.
pub fn decrypt_raw(ciphertext: Vec<u8>, key_id: &str) -> v2::DecryptRequest {
    v2::DecryptRequest {
        ciphertext,
        uid: "uid-test".into(),
        key_id: key_id.into(),
        annotations: HashMap::new(),
    }
}

/// The daemon's v2 Status.
pub async fn status(client: &mut V2Client) -> v2::StatusResponse {
    client
        .status(v2::StatusRequest {})
        .await
        .expect("Status")
        .into_inner()
}
