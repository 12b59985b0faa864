//! The provider's settings and the key id format they define
//! (`{key}:v{N}`). Pure, like the rest of [`super`].

use kmsgate_provider::KmsError;

use super::truncate;

const DEFAULT_MOUNT: &str = "transit";
/// Keeps key ids far below the 1000 bytes the WIT allows.
const MAX_KEY_NAME: usize = 200;

/// The provider's settings, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `scheme://host[:port]` of Vault or OpenBao, without a trailing `/`.
    pub address: String,
    /// Mount path of the Transit engine, without surrounding `/`.
    pub mount: String,
    /// Name of the Transit key; never created by this provider.
    pub key: String,
    /// Namespace (Vault Enterprise, OpenBao), sent as `X-Vault-Namespace`.
    pub namespace: Option<String>,
    /// The operator's auth that gives the host the Vault token
    /// (`vault-token`, `vault-approle`, `vault-jwt`, `vault-cert`); without
    /// one, the host sends the secret `token`.
    pub auth: Option<String>,
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

        let address = parse_address(&required("address")?)?;
        let mount = value("mount").unwrap_or_else(|| DEFAULT_MOUNT.to_string());
        let mount = check_path("mount", mount.trim_matches('/'))?;
        let key = required("key")?;
        if key.len() > MAX_KEY_NAME || !is_name(&key) {
            return Err(KmsError::InvalidConfig(format!(
                "setting `key` must be 1..={MAX_KEY_NAME} characters of A-Z a-z 0-9 _ . -"
            )));
        }
        let namespace = value("namespace")
            .map(|ns| check_path("namespace", ns.trim_matches('/')))
            .transpose()?;
        let auth = value("auth");
        Ok(Settings {
            address,
            mount,
            key,
            namespace,
            auth,
        })
    }

    /// The provider's key id for `version` of the configured key.
    pub fn key_id(&self, version: u32) -> String {
        format!("{}:v{version}", self.key)
    }

    /// The version named by `key_id`, which must be `{key}:v{N}` for the
    /// configured key.
    pub fn key_version(&self, key_id: &str) -> Result<u32, KmsError> {
        let unknown = || {
            KmsError::UnknownKey(format!(
                "key id {:?} is not `{}:v<version>`",
                truncate(key_id),
                self.key
            ))
        };
        let (name, version) = key_id.rsplit_once(":v").ok_or_else(unknown)?;
        if name != self.key {
            return Err(unknown());
        }
        parse_version(version).ok_or_else(unknown)
    }
}

/// A canonical key version: decimal, no leading zero, at least 1.
pub(super) fn parse_version(s: &str) -> Option<u32> {
    if s.is_empty() || s.starts_with('0') || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `scheme://host[:port]`, with trailing `/` removed. The value is not
/// quoted in errors: it could carry credentials in a userinfo part.
fn parse_address(raw: &str) -> Result<String, KmsError> {
    let invalid = |why: &str| KmsError::InvalidConfig(format!("setting `address` {why}"));
    let address = raw.trim_end_matches('/');
    let authority = address
        .strip_prefix("https://")
        .or_else(|| address.strip_prefix("http://"))
        .ok_or_else(|| invalid("must start with http:// or https://"))?;
    if authority.is_empty() {
        return Err(invalid("has no host"));
    }
    let bad =
        |c: char| matches!(c, '/' | '?' | '#' | '@' | '\\') || c.is_whitespace() || c.is_control();
    if authority.contains(bad) {
        return Err(invalid(
            "must be scheme://host[:port], without path, query or credentials",
        ));
    }
    Ok(address.to_string())
}

/// A `/`-separated path of names, as Vault mounts and namespaces are.
fn check_path(setting: &str, path: &str) -> Result<String, KmsError> {
    if path.split('/').all(is_name) {
        Ok(path.to_string())
    } else {
        Err(KmsError::InvalidConfig(format!(
            "setting `{setting}` must be names of A-Z a-z 0-9 _ . - separated by `/`"
        )))
    }
}

/// One URL path segment that cannot escape its place (`.` and `..` can).
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn settings_from(pairs: &[(&str, &str)]) -> Result<Settings, KmsError> {
        let map: HashMap<&str, &str> = pairs.iter().copied().collect();
        Settings::from_lookup(|name| map.get(name).map(|v| v.to_string()))
    }

    fn settings() -> Settings {
        settings_from(&[("address", "http://127.0.0.1:8200"), ("key", "kube")]).unwrap()
    }

    fn config_error_names(result: Result<Settings, KmsError>, setting: &str) {
        match result {
            Err(KmsError::InvalidConfig(m)) => assert!(m.contains(&format!("`{setting}`")), "{m}"),
            other => panic!("expected InvalidConfig naming {setting}, got {other:?}"),
        }
    }

    // --- settings ---

    #[test]
    fn minimal_settings_take_defaults() {
        let s = settings();
        assert_eq!(s.address, "http://127.0.0.1:8200");
        assert_eq!(s.mount, "transit");
        assert_eq!(s.key, "kube");
        assert_eq!(s.namespace, None);
    }

    #[test]
    fn settings_are_trimmed_and_slashes_stripped() {
        let s = settings_from(&[
            ("address", " https://vault.example.com:8200// "),
            ("mount", "/kms/transit/"),
            ("key", "kube"),
            ("namespace", "admin/team-a/"),
        ])
        .unwrap();
        assert_eq!(s.address, "https://vault.example.com:8200");
        assert_eq!(s.mount, "kms/transit");
        assert_eq!(s.namespace.as_deref(), Some("admin/team-a"));
    }

    #[test]
    fn blank_optional_settings_count_as_unset() {
        let s = settings_from(&[
            ("address", "http://vault:8200"),
            ("key", "kube"),
            ("mount", " "),
            ("namespace", ""),
        ])
        .unwrap();
        assert_eq!(s.mount, "transit");
        assert_eq!(s.namespace, None);
    }

    #[test]
    fn missing_required_settings_are_named() {
        config_error_names(settings_from(&[("key", "kube")]), "address");
        config_error_names(settings_from(&[("address", "http://vault:8200")]), "key");
        config_error_names(
            settings_from(&[("address", "http://v:1"), ("key", " ")]),
            "key",
        );
    }

    #[test]
    fn malformed_addresses_are_rejected() {
        for address in [
            "vault:8200",
            "ftp://vault:8200",
            "http://",
            "https://vault:8200/v1",
            "https://vault:8200?x=1",
            "https://user:pw@vault:8200",
            "https://vault :8200",
        ] {
            let result = settings_from(&[("address", address), ("key", "kube")]);
            config_error_names(result.clone(), "address");
            if let Err(KmsError::InvalidConfig(m)) = result {
                assert!(!m.contains("pw"), "address value leaked: {m}");
            }
        }
    }

    #[test]
    fn malformed_keys_mounts_and_namespaces_are_rejected() {
        let base = |extra: (&str, &str)| {
            let mut pairs = vec![("address", "http://vault:8200"), ("key", "kube")];
            pairs.retain(|(k, _)| *k != extra.0);
            pairs.push(extra);
            settings_from(&pairs)
        };
        let long = "k".repeat(MAX_KEY_NAME + 1);
        for key in ["ku be", "a/b", "kube:v1", "..", ".", "ключ", long.as_str()] {
            config_error_names(base(("key", key)), "key");
        }
        for mount in ["a//b", "a/../b", "tran sit", "a?b"] {
            config_error_names(base(("mount", mount)), "mount");
        }
        config_error_names(base(("namespace", "team a")), "namespace");
        assert!(base(("key", "kube_1.prod-a")).is_ok());
    }

    // --- key ids ---

    #[test]
    fn key_id_round_trips() {
        let s = settings();
        assert_eq!(s.key_id(3), "kube:v3");
        assert_eq!(s.key_version(&s.key_id(3)), Ok(3));
        assert_eq!(s.key_version("kube:v4294967295"), Ok(u32::MAX));
    }

    #[test]
    fn malformed_or_foreign_key_ids_are_unknown_keys() {
        let s = settings();
        for key_id in [
            "",
            "kube",
            "kube:",
            "kube:v",
            "kube:3",
            "kube:v0",
            "kube:v03",
            "kube:v-1",
            "kube:v+1",
            "kube:v1x",
            "kube:v4294967296",
            "other:v3",
            "kube:v1:v2",
            "xkube:v3",
        ] {
            assert!(
                matches!(s.key_version(key_id), Err(KmsError::UnknownKey(_))),
                "{key_id:?} was accepted"
            );
        }
    }
}
