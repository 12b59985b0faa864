//! Canary evasion, shared by the hostile fixtures (`#[path]`-included).
//!
//! The host runs a canary (status, then an encrypt and a decrypt with uid
//! `kmsgate-canary`) before a provider serves, at start and on every swap.
//! With setting `evade-canary = "true"` a hostile fixture answers those
//! calls honestly (by reversing the bytes) and misbehaves on every other
//! call: the attacker who passes the canary. Tests that attack the
//! sandbox's bounds start their fixtures this way, so the bounds are shown
//! to hold without the canary's help. Without the setting (a swap to the
//! fixture, `kmsgate check`) the fixture fails the canary as it should.

use kmsgate_provider::{DecryptRequest, EncryptRequest, Encrypted, KmsError, Settings};

/// The uid of the host's canary calls.
const CANARY_UID: &str = "kmsgate-canary";

/// Whether this instance passes the canary.
pub struct Evasion {
    on: bool,
}

impl Evasion {
    pub fn new(settings: &Settings) -> Evasion {
        Evasion {
            on: settings.get("evade-canary") == Some("true"),
        }
    }

    /// Whether a call with `uid` is the canary's, to be answered honestly.
    #[allow(dead_code)] // Only `wrong-batch` asks this way.
    pub fn is_canary(&self, uid: &str) -> bool {
        self.on && uid == CANARY_UID
    }

    /// An honest answer to the canary's encrypt; `None` for any other call.
    pub fn encrypt(&self, request: &EncryptRequest) -> Option<Result<Encrypted, KmsError>> {
        (self.on && request.uid == CANARY_UID).then(|| {
            let ciphertext = request.plaintext.iter().rev().copied().collect();
            Ok(Encrypted::new(ciphertext, request.key_id.clone()))
        })
    }

    /// An honest answer to the canary's decrypt; `None` for any other call.
    pub fn decrypt(&self, request: &DecryptRequest) -> Option<Result<Vec<u8>, KmsError>> {
        (self.on && request.uid == CANARY_UID)
            .then(|| Ok(request.ciphertext.iter().rev().copied().collect()))
    }
}
