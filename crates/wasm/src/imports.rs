//! A component's imports and exports, read before it is compiled (a large
//! component takes seconds to compile): its `kmsgate:provider` version
//! checked against the host's, and its imports against what the host links,
//! with a hint for the known mistakes; and the list of what the host
//! offers, for the link error of one that still does not fit.

/// What the host links, by interface namespace: WASI 0.2 (what language
/// runtimes import: clocks, random, I/O, and the filesystem, sockets and CLI
/// interfaces that grant nothing), the settings and logging imports, and
/// `kmsgate:provider`.
const OFFERED: &[&str] = &[
    "wasi:io/",
    "wasi:clocks/",
    "wasi:random/",
    "wasi:filesystem/",
    "wasi:sockets/",
    "wasi:cli/",
    "wasi:config/store@",
    "wasi:logging/logging@",
    "kmsgate:provider/",
];

/// What the host offers, in words, for error messages.
pub fn offered() -> String {
    format!(
        "this host offers kmsgate:provider@{} to @{} (worlds provider and batching-provider), wasi:config/store@0.2.0-rc.1, wasi:logging/logging@0.1.0-draft, and WASI 0.2 (io, clocks, random; filesystem, sockets and cli that grant nothing)",
        crate::bindings::OLDEST_WIT_VERSION,
        crate::bindings::WIT_VERSION
    )
}

/// Refuses a component that imports an interface the host never links,
/// naming it, what the host offers, and how to fix the usual causes.
/// Bytes that do not parse are left to the compiler, which says why.
pub fn check(bytes: &[u8]) -> Result<(), String> {
    let (imports, exports) = top_level_names(bytes);
    crate::bindings::check_wit_version(imports.iter().chain(&exports).map(String::as_str))?;
    let missing: Vec<String> = imports
        .into_iter()
        .filter(|name| !OFFERED.iter().any(|offered| name.starts_with(offered)))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut message = format!(
        "the component imports {}, which kmsgate does not link; {}",
        missing.join(", "),
        offered()
    );
    if missing.iter().any(|name| name.starts_with("wasi:http/")) {
        message.push_str(
            ". Providers reach the network only through kmsgate:provider/outbound-http. \
             componentize-js adds wasi:http unless told not to: build with \
             `disableFeatures: [\"http\", \"fetch-event\"]` (jco componentize: \
             `--disable http --disable fetch-event`)",
        );
    }
    Err(message)
}

/// The names the component itself imports and exports (not those of
/// components and modules nested in it).
fn top_level_names(bytes: &[u8]) -> (Vec<String>, Vec<String>) {
    let (mut imports, mut exports) = (Vec::new(), Vec::new());
    let mut depth = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        let Ok(payload) = payload else {
            break;
        };
        match payload {
            wasmparser::Payload::Version { .. } => depth += 1,
            wasmparser::Payload::End(_) => depth = depth.saturating_sub(1),
            wasmparser::Payload::ComponentImportSection(reader) if depth == 1 => {
                imports.extend(reader.into_iter().flatten().map(|i| i.name.name.to_owned()));
            }
            wasmparser::Payload::ComponentExportSection(reader) if depth == 1 => {
                exports.extend(reader.into_iter().flatten().map(|e| e.name.name.to_owned()));
            }
            _ => {}
        }
    }
    (imports, exports)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A component importing `names`, each as an empty instance.
    fn component(names: &[&str]) -> Vec<u8> {
        let mut types = wasm_encoder::ComponentTypeSection::new();
        types.instance(&wasm_encoder::InstanceType::new());
        let mut imports = wasm_encoder::ComponentImportSection::new();
        for name in names {
            imports.import(*name, wasm_encoder::ComponentTypeRef::Instance(0));
        }
        let mut component = wasm_encoder::Component::new();
        component.section(&types).section(&imports);
        component.finish()
    }

    #[test]
    fn what_the_host_links_passes_and_wasi_http_is_refused_with_the_fix() {
        assert!(
            check(&component(&[
                "wasi:io/streams@0.2.6",
                "wasi:config/store@0.2.0-rc.1",
                "kmsgate:provider/outbound-http@0.1.1",
            ]))
            .is_ok()
        );
        let error = check(&component(&[
            "wasi:io/streams@0.2.3",
            "wasi:http/outgoing-handler@0.2.3",
        ]))
        .unwrap_err();
        assert!(
            error.contains("wasi:http/outgoing-handler@0.2.3"),
            "{error}"
        );
        assert!(error.contains("disableFeatures"), "{error}");
        assert!(
            error.contains("kmsgate:provider@0.1.0 to @0.1.1"),
            "{error}"
        );
        let error = check(&component(&["acme:secrets/vault@1.0.0"])).unwrap_err();
        assert!(
            error.contains("acme:secrets/vault@1.0.0") && !error.contains("disableFeatures"),
            "{error}"
        );
    }

    #[test]
    fn garbage_is_left_to_the_compiler() {
        assert!(check(b"not wasm at all").is_ok());
    }
}
