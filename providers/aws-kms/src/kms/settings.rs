//! The provider's settings and the key id format they define
//! (`{key uuid}:{material}`). Pure, like the rest of [`super`].

use kmsgate_provider::KmsError;
use serde_json::{Map, Value};

use super::truncate;

const DEFAULT_AUTH: &str = "aws";
/// AWS allows 2048; real key ids, aliases and ARNs are far shorter, and a
/// short cap keeps error messages and key ids small.
const MAX_KEY: usize = 512;
/// The WIT allows key ids of 1000 bytes; ours stay far below.
pub const MAX_KEY_ID: usize = 1000;
/// A key material id (64 hex digits at AWS) longer than this is ignored.
const MAX_MATERIAL: usize = 128;

/// The provider's settings, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `scheme://host[:port]` of the KMS endpoint, without a trailing `/`.
    pub endpoint: String,
    /// The KMS key: a key id, `alias/name`, or a key or alias ARN.
    pub key: String,
    /// The operator's auth (kind `aws-sigv4`) that signs every request.
    pub auth: String,
    /// Sent as `EncryptionContext` with every Encrypt and Decrypt.
    pub encryption_context: Option<Map<String, Value>>,
}

impl Settings {
    /// Reads and validates the settings; blank values count as unset.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Settings, KmsError> {
        let value = |name: &str| {
            get(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let required = |name: &str| {
            value(name)
                .ok_or_else(|| KmsError::InvalidConfig(format!("setting `{name}` is missing")))
        };

        let endpoint = parse_endpoint(&required("endpoint")?)?;
        let key = required("key")?;
        let key_chars = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b':' | b'/' | b'_' | b'-');
        if key.len() > MAX_KEY || !key.bytes().all(key_chars) {
            return Err(KmsError::InvalidConfig(format!(
                "setting `key` must be a key id, `alias/<name>` or an ARN: 1..={MAX_KEY} characters of A-Z a-z 0-9 : / _ -"
            )));
        }
        let auth = value("auth").unwrap_or_else(|| DEFAULT_AUTH.to_string());
        let encryption_context = value("encryption-context")
            .map(|text| parse_context(&text))
            .transpose()?;
        Ok(Settings {
            endpoint,
            key,
            auth,
            encryption_context,
        })
    }

    /// The key's uuid when setting `key` names it (a key id or key ARN);
    /// `None` for an alias, whose key only DescribeKey tells.
    pub fn configured_key_uuid(&self) -> Option<&str> {
        let id = match self.key.split_once(":key/") {
            Some((arn, id)) if arn.starts_with("arn:") => id,
            _ => self.key.as_str(),
        };
        is_key_uuid(id).then_some(id)
    }
}

/// The provider's key id: the key's uuid, then `:` and what tells its
/// current key material apart (none when nothing does).
pub fn key_id(uuid: &str, material: Option<&str>) -> String {
    match material {
        Some(material) => format!("{uuid}:{material}"),
        None => uuid.to_string(),
    }
}

/// The key uuid a key id of this provider starts with; `unknown-key` if
/// `key_id` does not have our shape.
pub fn key_id_uuid(key_id: &str) -> Result<&str, KmsError> {
    let (uuid, material) = match key_id.split_once(':') {
        Some((uuid, material)) => (uuid, Some(material)),
        None => (key_id, None),
    };
    let material_ok = material.is_none_or(is_material);
    if key_id.len() <= MAX_KEY_ID && is_key_uuid(uuid) && material_ok {
        Ok(uuid)
    } else {
        Err(KmsError::UnknownKey(format!(
            "key id {:?} is not `<KMS key id>[:<key material>]`",
            truncate(key_id)
        )))
    }
}

/// The marker of the key material from a `CurrentKeyMaterialId`, if it is
/// one we can put in a key id.
pub fn material_marker(material_id: &str) -> Option<&str> {
    is_material(material_id).then_some(material_id)
}

/// The marker for a key rotated `count` times (from ListKeyRotations).
pub fn rotation_marker(count: usize) -> String {
    format!("r{count}")
}

/// A KMS key id: a uuid (`1234abcd-12ab-34cd-56ef-1234567890ab`) or a
/// multi-Region key id (`mrk-` and 32 hex digits).
pub fn is_key_uuid(s: &str) -> bool {
    let hex = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_hexdigit());
    if let Some(rest) = s.strip_prefix("mrk-") {
        return rest.len() == 32 && hex(rest);
    }
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(part, len)| part.len() == len && hex(part))
}

/// Key material ids are hex at AWS; we take any short run of A-Z a-z 0-9.
fn is_material(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_MATERIAL && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// `scheme://host[:port]`, with trailing `/` removed. The value is not
/// quoted in errors: it could carry credentials in a userinfo part.
fn parse_endpoint(raw: &str) -> Result<String, KmsError> {
    let invalid = |why: &str| KmsError::InvalidConfig(format!("setting `endpoint` {why}"));
    let endpoint = raw.trim_end_matches('/');
    let authority = endpoint
        .strip_prefix("https://")
        .or_else(|| endpoint.strip_prefix("http://"))
        .ok_or_else(|| invalid("must start with http:// or https://"))?;
    if authority.is_empty() {
        return Err(invalid("has no host"));
    }
    let bad =
        |c: char| matches!(c, '/' | '?' | '#' | '@' | '\\') || c.is_whitespace() || c.is_control();
    if authority.contains(bad) {
        return Err(invalid(
            "must be scheme://host[:port] (e.g. https://kms.eu-west-1.amazonaws.com), without path, query or credentials",
        ));
    }
    Ok(endpoint.to_string())
}

/// A JSON object of strings. Errors do not quote it.
fn parse_context(text: &str) -> Result<Map<String, Value>, KmsError> {
    let invalid = || {
        KmsError::InvalidConfig(
            "setting `encryption-context` must be a JSON object of strings".into(),
        )
    };
    let map: Map<String, Value> = serde_json::from_str(text).map_err(|_| invalid())?;
    if map.values().all(Value::is_string) {
        Ok(map)
    } else {
        Err(invalid())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const UUID: &str = "1234abcd-12ab-34cd-56ef-1234567890ab";

    fn settings_from(pairs: &[(&str, &str)]) -> Result<Settings, KmsError> {
        let map: HashMap<&str, &str> = pairs.iter().copied().collect();
        Settings::from_lookup(|name| map.get(name).map(|v| v.to_string()))
    }

    fn config_error_names(result: Result<Settings, KmsError>, setting: &str) {
        match result {
            Err(KmsError::InvalidConfig(m)) => assert!(m.contains(&format!("`{setting}`")), "{m}"),
            other => panic!("expected InvalidConfig naming {setting}, got {other:?}"),
        }
    }

    #[test]
    fn minimal_settings_take_defaults() {
        let s = settings_from(&[
            ("endpoint", " https://kms.eu-west-1.amazonaws.com/ "),
            ("key", "alias/kube"),
        ])
        .unwrap();
        assert_eq!(s.endpoint, "https://kms.eu-west-1.amazonaws.com");
        assert_eq!(s.key, "alias/kube");
        assert_eq!(s.auth, "aws");
        assert_eq!(s.encryption_context, None);
        assert_eq!(s.configured_key_uuid(), None);
    }

    #[test]
    fn missing_and_bad_settings_are_named() {
        config_error_names(settings_from(&[("key", UUID)]), "endpoint");
        config_error_names(settings_from(&[("endpoint", "http://k:1")]), "key");
        for endpoint in [
            "kms.amazonaws.com",
            "http://",
            "http://k:1/path",
            "http://u:p@k:1",
        ] {
            config_error_names(
                settings_from(&[("endpoint", endpoint), ("key", UUID)]),
                "endpoint",
            );
        }
        for key in ["alias/a b", "k\"}", &"k".repeat(MAX_KEY + 1)] {
            config_error_names(
                settings_from(&[("endpoint", "http://k:1"), ("key", key)]),
                "key",
            );
        }
        for context in ["[]", "{\"a\": 1}", "not json"] {
            let result = settings_from(&[
                ("endpoint", "http://k:1"),
                ("key", UUID),
                ("encryption-context", context),
            ]);
            config_error_names(result, "encryption-context");
        }
    }

    #[test]
    fn the_key_uuid_is_known_from_a_key_id_or_key_arn() {
        let uuid_of = |key: &str| {
            settings_from(&[("endpoint", "http://k:1"), ("key", key)])
                .unwrap()
                .configured_key_uuid()
                .map(str::to_string)
        };
        assert_eq!(uuid_of(UUID).as_deref(), Some(UUID));
        let arn = format!("arn:aws:kms:us-east-1:123456789012:key/{UUID}");
        assert_eq!(uuid_of(&arn).as_deref(), Some(UUID));
        assert_eq!(
            uuid_of("arn:aws:kms:us-east-1:123456789012:alias/kube"),
            None
        );
        assert_eq!(uuid_of("alias/kube"), None);
    }

    #[test]
    fn key_ids_round_trip_and_malformed_ones_are_unknown() {
        let mrk = "mrk-1234abcd12ab34cd56ef1234567890ab";
        for (uuid, material) in [
            (UUID, None),
            (UUID, Some("r0")),
            (UUID, Some("r12")),
            (mrk, Some("a1b2c3")),
        ] {
            let id = key_id(uuid, material);
            assert_eq!(key_id_uuid(&id), Ok(uuid), "{id}");
        }
        for bad in [
            "",
            "kube:v1",
            "alias/kube",
            "1234abcd-12ab-34cd-56ef-1234567890a",
            "mrk-1234",
            &format!("{UUID}:"),
            &format!("{UUID}:a-b"),
            &format!("{UUID}:{}", "a".repeat(MAX_MATERIAL + 1)),
        ] {
            assert!(
                matches!(key_id_uuid(bad), Err(KmsError::UnknownKey(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn markers_name_the_material_or_the_rotation_count() {
        assert_eq!(material_marker("a1b2"), Some("a1b2"));
        assert_eq!(material_marker("a-b"), None);
        assert_eq!(material_marker(""), None);
        assert_eq!(rotation_marker(0), "r0");
        assert_eq!(rotation_marker(3), "r3");
    }
}
