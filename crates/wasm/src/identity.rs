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

    /// `component` with this identity appended as a custom section of the
    /// component itself (valid at its end), for components built by tools
    /// that cannot write one (componentize-py, componentize-js):
    /// `kmsgate provider stamp`. Refused if it has an identity already (the
    /// first one found is the one read), or if a value would not read back
    /// as written.
    pub fn stamp(&self, component: &[u8]) -> Result<Vec<u8>, String> {
        if !component.starts_with(b"\0asm") || component.get(6..8) != Some(&[1, 0]) {
            return Err("not a WebAssembly component".into());
        }
        if let Some(present) = Identity::read(component) {
            return Err(format!(
                "it already says it is {} {}",
                present.name, present.version
            ));
        }
        let mut data = String::new();
        for (key, value) in [
            ("name", &self.name),
            ("version", &self.version),
            ("sdk", &self.sdk),
        ] {
            let clean = kmsgate_core::sanitize::clean(value, MAX_VALUE);
            if clean != *value || value.contains('=') || (key == "name" && value.is_empty()) {
                return Err(format!(
                    "{key} {value:?}: 1 to {MAX_VALUE} printable characters, no '='"
                ));
            }
            if !value.is_empty() {
                data.push_str(&format!("{key}={value}\n"));
            }
        }
        let mut section = Vec::new();
        wasm_encoder::Encode::encode(
            &wasm_encoder::CustomSection {
                name: SECTION.into(),
                data: data.as_bytes().into(),
            },
            &mut section,
        );
        let mut stamped = component.to_vec();
        // A section is its id, then its size and contents: encoding a
        // custom section gives the size and contents.
        stamped.push(0);
        stamped.extend_from_slice(&section);
        Ok(stamped)
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

    #[test]
    fn a_stamped_component_reads_back_and_still_parses() {
        let component = wasm_encoder::Component::new().finish();
        let identity = Identity {
            name: "acme-kms".into(),
            version: "1.0.0".into(),
            sdk: "componentize-py 0.25.1".into(),
        };
        let stamped = identity.stamp(&component).unwrap();
        assert_eq!(Identity::read(&stamped), Some(identity.clone()));
        for payload in wasmparser::Parser::new(0).parse_all(&stamped) {
            payload.expect("a component that still parses");
        }
        let again = identity.stamp(&stamped).unwrap_err();
        assert!(
            again.contains("already says it is acme-kms 1.0.0"),
            "{again}"
        );
        let bad = Identity {
            name: "a\nversion=9".into(),
            ..Identity::default()
        };
        assert!(bad.stamp(&component).is_err());
        assert!(
            Identity::default().stamp(&component).is_err(),
            "a name is needed"
        );
        assert!(identity.stamp(b"\0asm\x01\0\0\0").is_err(), "a core module");
    }
}
