use std::collections::HashMap;

use kmsgate_provider::http::Method;

use super::*;

const UUID: &str = "1234abcd-12ab-34cd-56ef-1234567890ab";
const ARN: &str = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";

fn settings_from(pairs: &[(&str, &str)]) -> Settings {
    let map: HashMap<&str, &str> = pairs.iter().copied().collect();
    Settings::from_lookup(|name| map.get(name).map(|v| v.to_string())).unwrap()
}

fn metadata() -> KeyMetadata {
    KeyMetadata {
        key_id: UUID.into(),
        arn: ARN.into(),
        enabled: true,
        key_state: Some("Enabled".into()),
        current_key_material_id: None,
    }
}

fn settings() -> Settings {
    settings_from(&[("endpoint", "http://127.0.0.1:4566"), ("key", "alias/kube")])
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

fn kind(error: &KmsError) -> &'static str {
    match error {
        KmsError::InvalidArgument(_) => "invalid-argument",
        KmsError::InvalidCiphertext(_) => "invalid-ciphertext",
        KmsError::UnknownKey(_) => "unknown-key",
        KmsError::PermissionDenied(_) => "permission-denied",
        KmsError::Unavailable(_) => "unavailable",
        KmsError::InvalidConfig(_) => "invalid-config",
        KmsError::Internal(_) => "internal",
    }
}

fn message(error: &KmsError) -> &str {
    match error {
        KmsError::InvalidArgument(m)
        | KmsError::InvalidCiphertext(m)
        | KmsError::UnknownKey(m)
        | KmsError::PermissionDenied(m)
        | KmsError::Unavailable(m)
        | KmsError::InvalidConfig(m)
        | KmsError::Internal(m) => m,
    }
}

// --- requests ---

#[test]
fn every_request_is_a_signed_json_post_to_the_root() {
    let s = settings();
    for (request, target) in [
        (s.describe_key_request(), "TrentService.DescribeKey"),
        (
            s.list_rotations_request(&metadata(), None),
            "TrentService.ListKeyRotations",
        ),
        (s.encrypt_request(b"dek").unwrap(), "TrentService.Encrypt"),
        (s.decrypt_request(b"blob").unwrap(), "TrentService.Decrypt"),
    ] {
        assert_eq!(request.method, Method::Post);
        assert_eq!(request.url, "http://127.0.0.1:4566/");
        assert_eq!(
            request.headers,
            [
                ("content-type".to_string(), CONTENT_TYPE.to_string()),
                ("x-amz-target".to_string(), target.to_string()),
            ]
        );
        assert_eq!(request.auth.as_deref(), Some("aws"));
        assert!(request.secret_headers.is_empty());
        // The host owns these: a provider setting one is refused.
        for owned in [
            "authorization",
            "x-amz-date",
            "x-amz-security-token",
            "x-amz-content-sha256",
        ] {
            assert_eq!(header(&request, owned), None);
        }
    }
}

#[test]
fn bodies_name_the_configured_key_and_carry_base64() {
    let s = settings_from(&[
        ("endpoint", "https://kms.eu-west-1.amazonaws.com"),
        ("key", ARN),
        ("auth", "prod"),
        ("encryption-context", r#"{"cluster": "c1"}"#),
    ]);
    assert_eq!(
        json(&s.describe_key_request().body),
        serde_json::json!({"KeyId": ARN})
    );
    // By the described key's ARN: ListKeyRotations takes no alias.
    let by_alias = settings();
    assert_eq!(
        json(
            &by_alias
                .list_rotations_request(&metadata(), Some("m1"))
                .body
        ),
        serde_json::json!({"KeyId": ARN, "Limit": 1000, "Marker": "m1"})
    );
    let no_arn = KeyMetadata {
        arn: String::new(),
        ..metadata()
    };
    assert_eq!(
        json(&by_alias.list_rotations_request(&no_arn, None).body),
        serde_json::json!({"KeyId": UUID, "Limit": 1000})
    );
    let encrypt = s.encrypt_request(b"dek").unwrap();
    assert_eq!(encrypt.auth.as_deref(), Some("prod"));
    assert_eq!(
        json(&encrypt.body),
        serde_json::json!({"KeyId": ARN, "Plaintext": "ZGVr", "EncryptionContext": {"cluster": "c1"}})
    );
    assert!(!format!("{encrypt:?}").contains("ZGVr"));
    assert_eq!(
        json(&s.decrypt_request(b"dek").unwrap().body),
        serde_json::json!({"KeyId": ARN, "CiphertextBlob": "ZGVr", "EncryptionContext": {"cluster": "c1"}})
    );
    // Without a context, none is sent.
    assert_eq!(
        json(&settings().decrypt_request(b"dek").unwrap().body),
        serde_json::json!({"KeyId": "alias/kube", "CiphertextBlob": "ZGVr"})
    );
}

#[test]
fn empty_and_oversized_inputs_never_reach_kms() {
    let s = settings();
    assert_eq!(
        kind(&s.encrypt_request(b"").unwrap_err()),
        "invalid-argument"
    );
    assert!(s.encrypt_request(&[7; MAX_PLAINTEXT]).is_ok());
    assert_eq!(
        kind(&s.encrypt_request(&[7; MAX_PLAINTEXT + 1]).unwrap_err()),
        "invalid-argument"
    );
    assert_eq!(
        kind(&s.decrypt_request(b"").unwrap_err()),
        "invalid-ciphertext"
    );
}

// --- answers ---

#[test]
fn describe_key_reads_state_and_material() {
    let s = settings();
    let body = format!(
        r#"{{"KeyMetadata": {{"AWSAccountId": "123456789012", "KeyId": "{UUID}", "Arn": "{ARN}",
        "CreationDate": 1795926165.729465, "Enabled": true, "KeyState": "Enabled",
        "CurrentKeyMaterialId": "a1b2c3"}}}}"#
    );
    let meta = s.parse_describe_key(body.as_bytes()).unwrap();
    assert_eq!(meta.key_id, UUID);
    assert_eq!(meta.current_key_material_id.as_deref(), Some("a1b2c3"));
    assert_eq!(meta.unusable(), None);

    // moto: no CurrentKeyMaterialId.
    let body = format!(
        r#"{{"KeyMetadata": {{"KeyId": "{UUID}", "Arn": "{ARN}", "Enabled": false, "KeyState": "Disabled"}}}}"#
    );
    let meta = s.parse_describe_key(body.as_bytes()).unwrap();
    assert_eq!(meta.current_key_material_id, None);
    assert_eq!(meta.unusable(), Some(format!("key {ARN} is Disabled")));

    let pending = KeyMetadata {
        key_state: Some("PendingDeletion".into()),
        ..meta.clone()
    };
    assert_eq!(
        pending.unusable(),
        Some(format!("key {ARN} is PendingDeletion"))
    );
    let no_state = KeyMetadata {
        key_state: None,
        enabled: true,
        ..meta
    };
    assert_eq!(no_state.unusable(), None);
}

#[test]
fn describe_key_refuses_answers_it_cannot_use() {
    let s = settings();
    let not_a_key = br#"{"KeyMetadata": {"KeyId": "alias/kube", "Enabled": true}}"#;
    assert_eq!(
        kind(&s.parse_describe_key(not_a_key).unwrap_err()),
        "internal"
    );
    assert_eq!(
        kind(&s.parse_describe_key(b"<html>").unwrap_err()),
        "internal"
    );
}

#[test]
fn rotation_pages_count_and_follow_the_marker() {
    let s = settings();
    let moto = format!(
        r#"{{"Rotations": [{{"KeyId": "{UUID}", "RotationDate": 1795926166.343828, "RotationType": "ON_DEMAND"}}], "Truncated": false}}"#
    );
    assert_eq!(
        s.parse_rotations(moto.as_bytes()).unwrap(),
        RotationsPage {
            count: 1,
            next_marker: None
        }
    );
    assert_eq!(
        s.parse_rotations(br#"{"Rotations": [], "Truncated": false}"#)
            .unwrap(),
        RotationsPage {
            count: 0,
            next_marker: None
        }
    );
    let truncated = br#"{"Rotations": [{}, {}], "Truncated": true, "NextMarker": "m2"}"#;
    assert_eq!(
        s.parse_rotations(truncated).unwrap(),
        RotationsPage {
            count: 2,
            next_marker: Some("m2".into())
        }
    );
    // A marker on a last page is ignored; a truncated page without one is a bug.
    let last = br#"{"Rotations": [], "Truncated": false, "NextMarker": "m3"}"#;
    assert_eq!(s.parse_rotations(last).unwrap().next_marker, None);
    let broken = br#"{"Rotations": [], "Truncated": true}"#;
    assert_eq!(kind(&s.parse_rotations(broken).unwrap_err()), "internal");
}

#[test]
fn a_refused_rotation_listing_is_not_an_error() {
    let s = settings();
    for (status, body) in [
        (
            400,
            &br#"{"__type": "AccessDeniedException", "message": "no"}"#[..],
        ),
        (
            400,
            br#"{"__type": "UnsupportedOperationException", "message": "asymmetric"}"#,
        ),
        (
            403,
            b"<ErrorResponse><Error><Code>AccessDenied</Code></Error></ErrorResponse>",
        ),
    ] {
        assert_eq!(
            s.check_rotations(status, body.to_vec()),
            Ok(None),
            "{status}"
        );
    }
    assert_eq!(
        s.check_rotations(200, b"{}".to_vec()),
        Ok(Some(b"{}".to_vec()))
    );
    let throttled = br#"{"__type": "ThrottlingException"}"#.to_vec();
    assert_eq!(
        kind(&s.check_rotations(400, throttled).unwrap_err()),
        "unavailable"
    );
}

#[test]
fn key_ids_follow_material_then_rotations() {
    assert_eq!(
        key_id(UUID, material_marker("a1b2")),
        format!("{UUID}:a1b2")
    );
    assert_eq!(
        key_id(UUID, Some(&rotation_marker(2))),
        format!("{UUID}:r2")
    );
    assert_eq!(key_id(UUID, None), UUID);
    let longest = key_id(UUID, material_marker(&"f".repeat(128)));
    assert!(longest.len() <= 1000);
    assert_eq!(key_id_uuid(&longest), Ok(UUID));
}

#[test]
fn encrypt_answers_give_the_blob_of_the_named_key() {
    let s = settings();
    let body = format!(r#"{{"CiphertextBlob": "YmxvYg==", "KeyId": "{ARN}"}}"#);
    assert_eq!(s.parse_encrypt(UUID, body.as_bytes()).unwrap(), b"blob");
    let bare = br#"{"CiphertextBlob": "YmxvYg=="}"#;
    assert_eq!(s.parse_encrypt(UUID, bare).unwrap(), b"blob");
    let other = "00000000-0000-0000-0000-000000000000";
    let moved = s.parse_encrypt(other, body.as_bytes()).unwrap_err();
    assert_eq!(kind(&moved), "unknown-key");
    assert!(message(&moved).contains(UUID), "{moved:?}");
    let garbage = br#"{"CiphertextBlob": "%%"}"#;
    assert_eq!(
        kind(&s.parse_encrypt(UUID, garbage).unwrap_err()),
        "internal"
    );
}

#[test]
fn decrypt_answers_never_quote_the_plaintext() {
    let s = settings();
    let body = format!(r#"{{"Plaintext": "U0VDUkVU", "KeyId": "{ARN}"}}"#);
    assert_eq!(s.parse_decrypt(body.as_bytes()).unwrap(), b"SECRET");
    let error = s
        .parse_decrypt(br#"{"Plaintext": 5, "X": "U0VDUkVU"}"#)
        .unwrap_err();
    assert_eq!(kind(&error), "internal");
    assert!(!message(&error).contains("U0VDUkVU"));
    assert_eq!(
        kind(&s.parse_decrypt(br#"{"Plaintext": "%%"}"#).unwrap_err()),
        "internal"
    );
}

// --- errors ---

#[test]
fn errors_are_read_from_json_and_xml() {
    assert_eq!(
        AwsError::parse(br#"{"__type": "NotFoundException", "message": "Key 'x' does not exist"}"#),
        AwsError {
            code: Some("NotFoundException".into()),
            message: Some("Key 'x' does not exist".into()),
        }
    );
    assert_eq!(
        AwsError::parse(br#"{"__type": "com.amazonaws.kms#DisabledException", "Message": "off"}"#),
        AwsError {
            code: Some("DisabledException".into()),
            message: Some("off".into()),
        }
    );
    assert_eq!(
        AwsError::parse(br#"{"__type":"InvalidCiphertextException"}"#),
        AwsError {
            code: Some("InvalidCiphertextException".into()),
            message: None,
        }
    );
    let moto = br#"<?xml version="1.0" encoding="utf-8"?>
<ErrorResponse><Errors><Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match the signature you provided.</Message><Type>Sender</Type></Error></Errors></ErrorResponse>"#;
    assert_eq!(
        AwsError::parse(moto),
        AwsError {
            code: Some("SignatureDoesNotMatch".into()),
            message: Some(
                "The request signature we calculated does not match the signature you provided."
                    .into()
            ),
        }
    );
    assert_eq!(AwsError::parse(b"<html>500</html>"), AwsError::default());
    // A code that is not an identifier is not quoted; messages are cut.
    let odd = format!(
        r#"{{"__type": "a b<script>", "message": "{}"}}"#,
        "m".repeat(500)
    );
    let parsed = AwsError::parse(odd.as_bytes());
    assert_eq!(parsed.code, None);
    assert_eq!(parsed.message.unwrap().chars().count(), MAX_MESSAGE + 1);
}

#[test]
fn error_codes_map_to_kms_errors() {
    let s = settings();
    for (status, code, expected) in [
        (400, "InvalidCiphertextException", "invalid-ciphertext"),
        (400, "IncorrectKeyException", "invalid-ciphertext"),
        (400, "NotFoundException", "unknown-key"),
        (400, "DisabledException", "invalid-config"),
        (400, "KMSInvalidStateException", "invalid-config"),
        (400, "InvalidKeyUsageException", "invalid-config"),
        (400, "InvalidArnException", "invalid-config"),
        (400, "AccessDeniedException", "permission-denied"),
        (403, "AccessDenied", "permission-denied"),
        (403, "SignatureDoesNotMatch", "permission-denied"),
        (403, "InvalidClientTokenId", "permission-denied"),
        (400, "UnrecognizedClientException", "permission-denied"),
        (400, "IncompleteSignature", "permission-denied"),
        (400, "ExpiredTokenException", "permission-denied"),
        (400, "ThrottlingException", "unavailable"),
        (500, "KMSInternalException", "unavailable"),
        (500, "DependencyTimeoutException", "unavailable"),
        (500, "KeyUnavailableException", "unavailable"),
        (400, "ValidationException", "internal"),
        (429, "", "unavailable"),
        (503, "", "unavailable"),
        (403, "", "permission-denied"),
        (400, "", "internal"),
    ] {
        let error = AwsError {
            code: (!code.is_empty()).then(|| code.to_string()),
            message: Some("why".into()),
        };
        let mapped = s.classify(Op::Decrypt, status, &error);
        assert_eq!(kind(&mapped), expected, "{status} {code}");
        let text = message(&mapped);
        assert!(
            text.starts_with("decrypting with KMS key alias/kube: AWS answered HTTP")
                && text.contains(code)
                && text.ends_with("why"),
            "{text}"
        );
    }
}

#[test]
fn check_passes_success_and_classifies_the_rest() {
    let s = settings();
    assert_eq!(
        s.check(Op::Encrypt, 200, b"{}".to_vec()),
        Ok(b"{}".to_vec())
    );
    let xml = b"<ErrorResponse><Error><Code>InvalidClientTokenId</Code><Message>The security token included in the request is invalid.</Message></Error></ErrorResponse>";
    let error = s.check(Op::Encrypt, 403, xml.to_vec()).unwrap_err();
    assert_eq!(kind(&error), "permission-denied");
    assert!(
        message(&error).contains("InvalidClientTokenId"),
        "{error:?}"
    );
    let moto_500 = b"<!doctype html><title>500 Internal Server Error</title>";
    assert_eq!(
        kind(&s.check(Op::Encrypt, 500, moto_500.to_vec()).unwrap_err()),
        "unavailable"
    );
}
