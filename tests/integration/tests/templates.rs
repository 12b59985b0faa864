//! `kmsgate provider new --lang rust|python|js NAME`: each project builds
//! with its own language's tools, as the README it writes says, and passes
//! `kmsgate provider test` against OpenBao as generated; each component
//! says its name and version (the Rust SDK's `export!`; `kmsgate provider
//! stamp` in the others' `build.sh`).

use std::path::Path;
use std::process::Command;

use kmsgate_integration::{OpenBao, daemon_binary, workspace_root};
use kmsgate_wasm::identity::Identity;

/// Runs `command`, failing the test with its output if it fails.
fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{command:?}: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Builds the project the way its README says; the component's path.
fn build(lang: &str, project: &Path, name: &str) -> std::path::PathBuf {
    match lang {
        "rust" => {
            // Its own workspace; the target directory is kept between runs
            // (under the repository's target/) so that only the first
            // builds the SDK's dependencies.
            let target = workspace_root().join("target/templates");
            run(Command::new("cargo")
                .args(["build", "--release", "--target", "wasm32-wasip2"])
                .current_dir(project)
                .env("CARGO_TARGET_DIR", &target));
            target.join(format!(
                "wasm32-wasip2/release/{}.wasm",
                name.replace('-', "_")
            ))
        }
        _ => {
            run(Command::new(project.join("build.sh")).env("KMSGATE", daemon_binary()));
            project.join(format!("{name}.wasm"))
        }
    }
}

#[tokio::test]
async fn a_new_project_in_every_language_builds_and_passes_provider_test() {
    let bao = OpenBao::dev().await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, &bao.token).unwrap();
    for lang in ["rust", "python", "js"] {
        let name = format!("acme-{lang}");
        bao.create_key(&name).await;
        let project = dir.path().join(&name);
        run(Command::new(daemon_binary())
            .args(["provider", "new", "--lang", lang, &name, "--dir"])
            .arg(&project));
        let component = build(lang, &project, &name);

        let identity = Identity::read(&std::fs::read(&component).unwrap())
            .unwrap_or_else(|| panic!("{lang}: the component has no identity"));
        assert_eq!(
            (identity.name.as_str(), identity.version.as_str()),
            (name.as_str(), "0.1.0"),
            "{lang}"
        );

        let report = run(Command::new(daemon_binary())
            .args(["--log", "error", "provider", "test", "--latency-calls", "5"])
            .arg(&component)
            .args(["--setting", &format!("address={}", bao.address)])
            .args(["--setting", &format!("key={name}")])
            .args(["--secret", &format!("token={}", token.display())])
            .args(["--allow", &bao.address]));
        assert!(
            report.contains("PASS  start: loaded, canary passed"),
            "{lang}: {report}"
        );
        assert!(report.contains(" 0 failed"), "{lang}: {report}");
    }
}
