//! What a component says it is: a custom section `kmsgate:provider-identity`
//! of `key=value` lines (`name`, `version`, `sdk`), which the Rust SDK's
//! `export!` writes from the provider crate's name and version, and which a
//! component in any language may carry. Read from the bytes without running
//! them, for `kmsgate providers` and `kmsgate_provider_info`. It is the
//! provider's own claim, shown as such: cleaned and cut like any text a
//! provider supplies, never trusted for a decision (the digest and, later,
//! signatures are for that).

/// The section's name.
pub const SECTION: &str = "kmsgate:provider-identity";

/// The longest value kept.
const MAX_VALUE: usize = 128;

/// A component's claimed name, version and SDK.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub version: String,
    /// The SDK that built it, with its version (`kmsgate-provider 0.1.0`).
    pub sdk: String,
}

impl Identity {
    /// The identity in `bytes`, if it has the section (the first one, at
    /// any depth: it sits in the component's core module) with a name.
    pub fn read(bytes: &[u8]) -> Option<Identity> {
        for payload in wasmparser::Parser::new(0).parse_all(bytes) {
            let Ok(payload) = payload else {
                return None;
            };
            if let wasmparser::Payload::CustomSection(section) = payload
                && section.name() == SECTION
            {
                return Identity::parse(section.data());
            }
        }
        None
    }

    fn parse(data: &[u8]) -> Option<Identity> {
        let text = String::from_utf8_lossy(&data[..data.len().min(4096)]);
        let mut identity = Identity::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let value = kmsgate_core::sanitize::clean(value.trim(), MAX_VALUE);
            match key.trim() {
                "name" => identity.name = value,
                "version" => identity.version = value,
                "sdk" => identity.sdk = value,
                _ => {}
            }
        }
        (!identity.name.is_empty()).then_some(identity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn component_with(section: &[u8]) -> Vec<u8> {
        let mut module = wasm_encoder::Module::new();
        module.section(&wasm_encoder::CustomSection {
            name: SECTION.into(),
            data: section.into(),
        });
        let mut component = wasm_encoder::Component::new();
        component.section(&wasm_encoder::ModuleSection(&module));
        component.finish()
    }

    #[test]
    fn the_section_is_read_cleaned_and_cut() {
        let bytes = component_with(
            b"name=vault-transit\nversion=1.2.3\nsdk=kmsgate-provider 0.1.0\nother=x\n",
        );
        let identity = Identity::read(&bytes).unwrap();
        assert_eq!(
            (
                identity.name.as_str(),
                identity.version.as_str(),
                identity.sdk.as_str()
            ),
            ("vault-transit", "1.2.3", "kmsgate-provider 0.1.0")
        );
        let long = format!("name=a\x1b[2J{}\n", "b".repeat(500));
        let identity = Identity::read(&component_with(long.as_bytes())).unwrap();
        assert!(
            !identity.name.contains('\x1b') && identity.name.chars().count() <= MAX_VALUE + 1,
            "{identity:?}"
        );
        assert_eq!(Identity::read(&component_with(b"version=1\n")), None);
        assert_eq!(Identity::read(b"not wasm"), None);
    }
}
