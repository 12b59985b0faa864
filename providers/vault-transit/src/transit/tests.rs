use std::collections::HashMap;

use super::*;

fn settings_from(pairs: &[(&str, &str)]) -> Result<Settings, KmsError> {
    let map: HashMap<&str, &str> = pairs.iter().copied().collect();
    Settings::from_lookup(|name| map.get(name).map(|v| v.to_string()))
}

fn settings() -> Settings {
    settings_from(&[("address", "http://127.0.0.1:8200"), ("key", "kube")]).unwrap()
}

fn header<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request
        .headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap()
}

// --- requests ---

#[test]
fn read_key_request_builds_url_and_asks_for_the_token() {
    let r = settings().read_key_request();
    assert_eq!(r.method, Method::Get);
    assert_eq!(r.url, "http://127.0.0.1:8200/v1/transit/keys/kube");
    assert!(r.body.is_empty());
    assert_eq!(header(&r, "content-type"), None);
    assert_eq!(
        r.secret_headers,
        vec![("x-vault-token".to_string(), "token".to_string())]
    );
}

#[test]
fn urls_use_the_mount_and_namespace_goes_in_a_header() {
    let s = settings_from(&[
        ("address", "https://vault.example.com:8200/"),
        ("mount", "kms/transit"),
        ("key", "kube"),
        ("namespace", "admin"),
    ])
    .unwrap();
    let r = s.read_key_request();
    assert_eq!(
        r.url,
        "https://vault.example.com:8200/v1/kms/transit/keys/kube"
    );
    assert_eq!(header(&r, "x-vault-namespace"), Some("admin"));
    let (r, _) = s.encrypt_request("kube:v1", b"x").unwrap();
    assert_eq!(
        r.url,
        "https://vault.example.com:8200/v1/kms/transit/encrypt/kube"
    );
    assert_eq!(header(&r, "x-vault-namespace"), Some("admin"));
    assert_eq!(
        header(&settings().read_key_request(), "x-vault-namespace"),
        None
    );
}

#[test]
fn encrypt_request_sends_base64_plaintext_and_explicit_version() {
    let (r, version) = settings().encrypt_request("kube:v3", b"dek bytes").unwrap();
    assert_eq!(version, 3);
    assert_eq!(r.method, Method::Post);
    assert_eq!(r.url, "http://127.0.0.1:8200/v1/transit/encrypt/kube");
    assert_eq!(header(&r, "content-type"), Some("application/json"));
    assert_eq!(
        json(&r.body),
        serde_json::json!({"plaintext": base64::encode(b"dek bytes"), "key_version": 3})
    );
    assert!(!format!("{r:?}").contains(&base64::encode(b"dek bytes")));
}

#[test]
fn encrypt_request_rejects_empty_plaintext_and_foreign_key_ids() {
    let s = settings();
    assert!(matches!(
        s.encrypt_request("kube:v1", b""),
        Err(KmsError::InvalidArgument(_))
    ));
    assert!(matches!(
        s.encrypt_request("other:v1", b"x"),
        Err(KmsError::UnknownKey(_))
    ));
}

#[test]
fn decrypt_request_sends_the_ciphertext() {
    let r = settings()
        .decrypt_request("kube:v2", b"vault:v2:c2VjcmV0+/==")
        .unwrap();
    assert_eq!(r.method, Method::Post);
    assert_eq!(r.url, "http://127.0.0.1:8200/v1/transit/decrypt/kube");
    assert_eq!(header(&r, "content-type"), Some("application/json"));
    assert_eq!(
        json(&r.body),
        serde_json::json!({"ciphertext": "vault:v2:c2VjcmV0+/=="})
    );
}

#[test]
fn decrypt_request_rejects_bad_ciphertexts_before_vault() {
    let s = settings();
    for ciphertext in [
        &b""[..],
        b"\xff\xfe",
        b"c2VjcmV0",
        b"vault:v2",
        b"vault:v2:",
        b"vault:vx:c2VjcmV0",
        b"vault:v0:c2VjcmV0",
        b"vault:v2:c2Vj\"cmV0",
        b"vault:v3:c2VjcmV0",
    ] {
        match s.decrypt_request("kube:v2", ciphertext) {
            Err(KmsError::InvalidCiphertext(m)) => assert!(!m.contains("c2VjcmV0"), "{m}"),
            other => panic!("{ciphertext:?}: expected InvalidCiphertext, got {other:?}"),
        }
    }
    assert!(matches!(
        s.decrypt_request("kube", b"vault:v2:c2VjcmV0"),
        Err(KmsError::UnknownKey(_))
    ));
}

// --- responses ---

#[test]
fn parses_key_read() {
    let body = br#"{"request_id":"x","data":{"latest_version":3,"min_encryption_version":0,
        "min_decryption_version":1,"type":"aes256-gcm96","supports_encryption":true,
        "keys":{"1":1,"2":2,"3":3}},"warnings":null}"#;
    let info = settings().parse_key(body).unwrap();
    assert_eq!(
        info,
        KeyInfo {
            latest_version: 3,
            min_decryption_version: 1,
            min_encryption_version: 0,
            key_type: "aes256-gcm96".into(),
            supports_encryption: Some(true),
        }
    );
}

#[test]
fn key_read_rejects_signing_keys_and_garbage() {
    let s = settings();
    let signing = br#"{"data":{"latest_version":1,"type":"ed25519","supports_encryption":false}}"#;
    assert!(matches!(
        s.parse_key(signing),
        Err(KmsError::InvalidConfig(_))
    ));
    let zero = br#"{"data":{"latest_version":0}}"#;
    assert!(matches!(s.parse_key(zero), Err(KmsError::Internal(_))));
    for body in [&b"<html>"[..], b"{}", br#"{"data":{"latest_version":"3"}}"#] {
        assert!(matches!(s.parse_key(body), Err(KmsError::Internal(_))));
    }
}

#[test]
fn parses_encrypt_answer_of_the_requested_version() {
    let s = settings();
    let body = br#"{"data":{"ciphertext":"vault:v3:AAAA","key_version":3}}"#;
    assert_eq!(s.parse_encrypt(3, body).unwrap(), "vault:v3:AAAA");
    let old_vault = br#"{"data":{"ciphertext":"vault:v3:AAAA"}}"#;
    assert_eq!(s.parse_encrypt(3, old_vault).unwrap(), "vault:v3:AAAA");
}

#[test]
fn encrypt_answer_of_another_version_or_shape_is_internal() {
    let s = settings();
    for body in [
        &br#"{"data":{"ciphertext":"vault:v1:AAAA","key_version":1}}"#[..],
        br#"{"data":{"ciphertext":"vault:v3:AAAA","key_version":1}}"#,
        br#"{"data":{"ciphertext":"vault:v1:AAAA"}}"#,
        br#"{"data":{"ciphertext":"AAAA"}}"#,
        br#"{"data":{}}"#,
    ] {
        match s.parse_encrypt(3, body) {
            Err(KmsError::Internal(m)) => assert!(!m.contains("AAAA"), "{m}"),
            other => panic!("expected Internal, got {other:?}"),
        }
    }
}

#[test]
fn parses_decrypt_answer() {
    let body = format!(r#"{{"data":{{"plaintext":"{}"}}}}"#, base64::encode(b"dek"));
    assert_eq!(settings().parse_decrypt(body.as_bytes()).unwrap(), b"dek");
}

#[test]
fn decrypt_answer_errors_never_quote_the_plaintext() {
    let s = settings();
    for body in [
        &br#"{"data":{"plaintext":"not base64 SECRET!"}}"#[..],
        br#"{"data":{"plaintext":["SECRET"]}}"#,
        br#"{"data":"SECRET"}"#,
    ] {
        match s.parse_decrypt(body) {
            Err(KmsError::Internal(m)) => assert!(!m.contains("SECRET"), "{m}"),
            other => panic!("expected Internal, got {other:?}"),
        }
    }
}

// --- error classification ---

fn classify(action: Action, status: u16, errors: &[&str]) -> KmsError {
    let body = serde_json::to_vec(&serde_json::json!({ "errors": errors })).unwrap();
    settings().classify(action, status, &body)
}

#[test]
fn bad_ciphertexts_are_invalid_ciphertext() {
    for message in [
        "invalid ciphertext: no prefix",
        "invalid ciphertext: could not decode base64",
        "invalid ciphertext: version is too new",
        "cipher: message authentication failed",
        "ciphertext or signature version is disallowed by policy (too old)",
    ] {
        let e = classify(Action::Decrypt, 400, &[message]);
        assert!(
            matches!(&e, KmsError::InvalidCiphertext(m) if m.contains(message)),
            "{e:?}"
        );
    }
}

#[test]
fn missing_keys_are_unknown_key() {
    for (action, status, errors) in [
        (Action::Decrypt, 400, &["encryption key not found"][..]),
        (Action::Encrypt, 400, &["encryption key not found"]),
        (Action::Encrypt, 404, &["encryption key not found"]),
        (Action::ReadKey, 404, &[]),
        (
            Action::Encrypt,
            400,
            &["requested version for encryption is higher than the latest key version"],
        ),
    ] {
        let e = classify(action, status, errors);
        assert!(
            matches!(e, KmsError::UnknownKey(_)),
            "{action:?} {status}: {e:?}"
        );
    }
    let e = settings().classify(Action::ReadKey, 404, b"");
    assert!(
        matches!(&e, KmsError::UnknownKey(m) if m.contains("never creates")),
        "{e:?}"
    );
}

#[test]
fn forbidden_is_permission_denied() {
    for action in [Action::ReadKey, Action::Encrypt, Action::Decrypt] {
        let e = classify(action, 403, &["permission denied"]);
        assert!(matches!(e, KmsError::PermissionDenied(_)), "{e:?}");
    }
    let e = classify(Action::ReadKey, 400, &["missing client token"]);
    assert!(matches!(e, KmsError::PermissionDenied(_)), "{e:?}");
}

#[test]
fn transient_failures_are_unavailable() {
    for (status, errors) in [
        (429, &["rate limit quota exceeded"][..]),
        (500, &["internal error"]),
        (502, &[]),
        (503, &["Vault is sealed"]),
        (400, &["OpenBao is sealed"]),
    ] {
        let e = classify(Action::Encrypt, status, errors);
        assert!(matches!(e, KmsError::Unavailable(_)), "{status}: {e:?}");
    }
    let e = settings().classify(Action::Decrypt, 502, b"<html>bad gateway</html>");
    assert!(
        matches!(&e, KmsError::Unavailable(m) if !m.contains("html")),
        "{e:?}"
    );
}

#[test]
fn a_missing_mount_is_invalid_config() {
    let e = classify(
        Action::ReadKey,
        404,
        &[r#"no handler for route "transit2/keys/kube". route entry not found."#],
    );
    assert!(
        matches!(&e, KmsError::InvalidConfig(m) if m.contains("`mount`")),
        "{e:?}"
    );
}

#[test]
fn anything_else_is_internal() {
    for (action, status, errors) in [
        (Action::Encrypt, 400, &["missing plaintext to encrypt"][..]),
        (Action::Decrypt, 404, &[]),
        (Action::Encrypt, 302, &[]),
        (Action::Decrypt, 400, &[]),
    ] {
        let e = classify(action, status, errors);
        assert!(matches!(e, KmsError::Internal(_)), "{status}: {e:?}");
    }
}

#[test]
fn vault_messages_are_joined_and_truncated() {
    let e = classify(Action::Encrypt, 400, &["first", "second"]);
    assert!(
        matches!(&e, KmsError::Internal(m) if m.ends_with("first; second")),
        "{e:?}"
    );
    let long = "é".repeat(500);
    let KmsError::Internal(m) = classify(Action::Encrypt, 400, &[long.as_str()]) else {
        panic!("expected Internal");
    };
    assert!(m.ends_with('…'));
    assert!(m.chars().count() < 300, "{}", m.chars().count());
}

#[test]
fn check_passes_success_bodies_through() {
    let s = settings();
    assert_eq!(
        s.check(Action::ReadKey, 200, b"{}".to_vec()),
        Ok(b"{}".to_vec())
    );
    assert!(s.check(Action::ReadKey, 403, Vec::new()).is_err());
}

// --- batch decrypt ---

#[test]
fn decrypt_batch_request_sends_every_ciphertext_and_asks_for_partial_answers() {
    let r = settings().decrypt_batch_request(&["vault:v1:AAAA", "vault:v2:BBBB"]);
    assert_eq!(r.url, "http://127.0.0.1:8200/v1/transit/decrypt/kube");
    assert_eq!(
        json(&r.body),
        serde_json::json!({
            "batch_input": [{"ciphertext": "vault:v1:AAAA"}, {"ciphertext": "vault:v2:BBBB"}],
            "partial_failure_response_code": 200,
        })
    );
}

#[test]
fn batch_answers_are_judged_item_by_item() {
    // As OpenBao answers a batch with one good and two bad ciphertexts.
    let body = br#"{"data":{"batch_results":[
        {"plaintext":"aGk=","reference":""},
        {"plaintext":"","error":"cipher: message authentication failed","reference":""},
        {"plaintext":"","error":"invalid ciphertext: version is too new","reference":""}]}}"#;
    let results = settings().parse_decrypt_batch(200, body, 3).unwrap();
    assert_eq!(results[0], Ok(b"hi".to_vec()));
    assert!(matches!(&results[1], Err(KmsError::InvalidCiphertext(_))));
    assert!(matches!(&results[2], Err(KmsError::InvalidCiphertext(_))));

    // Every item failed: Vault answers 400, still with per-item results.
    let body = br#"{"data":{"batch_results":[{"plaintext":"","error":"cipher: message authentication failed"}]}}"#;
    let results = settings().parse_decrypt_batch(400, body, 1).unwrap();
    assert!(matches!(&results[0], Err(KmsError::InvalidCiphertext(_))));
}

#[test]
fn a_failed_batch_request_fails_every_item() {
    let s = settings();
    let denied = br#"{"errors":["permission denied"]}"#;
    assert!(matches!(
        s.parse_decrypt_batch(403, denied, 2),
        Err(KmsError::PermissionDenied(_))
    ));
    let sealed = br#"{"errors":["Vault is sealed"]}"#;
    assert!(matches!(
        s.parse_decrypt_batch(503, sealed, 2),
        Err(KmsError::Unavailable(_))
    ));
    let missing = br#"{"errors":["encryption key not found"]}"#;
    assert!(matches!(
        s.parse_decrypt_batch(400, missing, 2),
        Err(KmsError::UnknownKey(_))
    ));
    // The wrong number of results is not something to hand out piecemeal.
    let short = br#"{"data":{"batch_results":[{"plaintext":"aGk="}]}}"#;
    assert!(matches!(
        s.parse_decrypt_batch(200, short, 2),
        Err(KmsError::Internal(_))
    ));
}

#[test]
fn with_an_auth_the_host_authenticates_and_no_secret_is_named() {
    let with_auth = settings_from(&[
        ("address", "http://127.0.0.1:8200"),
        ("key", "kube"),
        ("auth", "vault"),
    ])
    .unwrap();
    let request = with_auth.read_key_request();
    assert_eq!(request.auth.as_deref(), Some("vault"));
    assert!(request.secret_headers.is_empty());
    let request = settings().read_key_request();
    assert_eq!(request.auth, None);
    assert_eq!(
        request.secret_headers,
        vec![(TOKEN_HEADER.to_string(), TOKEN_SECRET.to_string())]
    );
}
