//! The Kubernetes KMS plugin contract, checked end to end against a
//! running plugin's Unix socket, kmsgate or any other: what kube-apiserver
//! relies on and enforces (`k8s.io/kms/apis/v2`, and the apiserver's
//! checks in `k8s.io/apiserver/pkg/storage/value/encrypt/envelope`), plus
//! the answers a caller needs to tell bad input from an outage.
//!
//! It dials as kube-apiserver does (grpc-go on a Unix socket sends
//! `:authority` "localhost"; [`kmsgate_proto::client`]). Each check is one
//! [`Check`], PASS or FAIL with what was seen (the gRPC code a caller got);
//! latency is reported as INFO against the Kubernetes targets, never
//! failed on, because it depends on the machine.
//!
//! Nothing here depends on kmsgate's own behaviour beyond the contract;
//! `kmsgate conformance --socket S` prints the report.
//!
//! # Layout
//! - this file — the checks and the report.

use std::path::Path;
use std::time::{Duration, Instant};

use kmsgate_core::limits::{self, Annotations};
use kmsgate_proto::client::{self, ConnectError, V1beta1Client, V2Client};
use kmsgate_proto::{v1beta1, v2};
use serde::Serialize;
use tonic::Code;

/// How one check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Fail,
    /// A measurement, reported, never failed on.
    Info,
}

/// One check: its name, how it ended, and what was seen.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub outcome: Outcome,
    /// The gRPC code the caller got, when the check made a call that
    /// failed (or should have).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    pub detail: String,
}

impl Check {
    /// A check that made no call (or whose call's code does not matter).
    pub fn new(name: &str, outcome: Outcome, detail: impl Into<String>) -> Check {
        Check {
            name: name.to_owned(),
            outcome,
            code: None,
            detail: detail.into(),
        }
    }
}

/// Every check, in the order run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    pub fn failed(&self) -> usize {
        self.count(Outcome::Fail)
    }

    pub fn passed(&self) -> usize {
        self.count(Outcome::Pass)
    }

    fn count(&self, outcome: Outcome) -> usize {
        self.checks.iter().filter(|c| c.outcome == outcome).count()
    }

    fn pass(&mut self, name: &str, detail: impl Into<String>) {
        self.push(name, Outcome::Pass, None, detail);
    }

    fn fail(&mut self, name: &str, detail: impl Into<String>) {
        self.push(name, Outcome::Fail, None, detail);
    }

    fn push(
        &mut self,
        name: &str,
        outcome: Outcome,
        code: Option<Code>,
        detail: impl Into<String>,
    ) {
        self.checks.push(Check {
            name: name.to_owned(),
            outcome,
            code: code.map(|code| format!("{code:?}")),
            detail: detail.into(),
        });
    }

    /// PASS if `result` failed with one of `expected`; FAIL otherwise
    /// (success, another code, INTERNAL above all).
    fn expect_error<T>(&mut self, name: &str, result: Result<T, tonic::Status>, expected: &[Code]) {
        match result {
            Ok(_) => self.fail(name, "accepted; a caller cannot tell bad input from good"),
            Err(status) if expected.contains(&status.code()) => {
                self.push(
                    name,
                    Outcome::Pass,
                    Some(status.code()),
                    clip(status.message()),
                );
            }
            Err(status) => self.push(
                name,
                Outcome::Fail,
                Some(status.code()),
                format!("expected {}: {}", codes(expected), clip(status.message())),
            ),
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Also check the deprecated v1beta1 service.
    pub v1beta1: bool,
    /// Calls per latency measurement.
    pub latency_calls: usize,
    /// Deadline of every call.
    pub timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            v1beta1: false,
            latency_calls: 50,
            timeout: Duration::from_secs(5),
        }
    }
}

/// Plaintext sizes every plugin must round-trip: the apiserver's DEKs are
/// 32 bytes; 256 leaves room for text encodings (Vault's base64). Larger
/// ones are probed up to the largest that fits ([`largest_plaintext`]).
const SIZES: &[usize] = &[1, 16, 32, 64, 128, 256];

/// The Kubernetes targets the latency is reported against.
const ENCRYPT_TARGET: Duration = Duration::from_millis(100);
const DECRYPT_TARGET: Duration = Duration::from_millis(10);

/// Runs every check against the plugin listening on `socket`.
pub async fn run(socket: &Path, options: &Options) -> Result<Report, ConnectError> {
    let mut report = Report::default();
    let mut v2 = client::v2(socket).await?;
    check_v2(&mut v2, options, &mut report).await;
    if options.v1beta1 {
        let mut v1 = client::v1beta1(socket).await?;
        check_v1beta1(&mut v1, options, &mut report).await;
    }
    Ok(report)
}

fn request<T>(message: T, options: &Options) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(options.timeout);
    request
}

fn encrypt_request(plaintext: &[u8], uid: &str) -> v2::EncryptRequest {
    v2::EncryptRequest {
        plaintext: plaintext.to_vec(),
        uid: uid.into(),
    }
}

fn decrypt_request(
    sealed: &v2::EncryptResponse,
    ciphertext: Vec<u8>,
    key_id: &str,
) -> v2::DecryptRequest {
    v2::DecryptRequest {
        ciphertext,
        uid: "conformance-decrypt".into(),
        key_id: key_id.into(),
        annotations: sealed.annotations.clone(),
    }
}

async fn check_v2(client: &mut V2Client, options: &Options, report: &mut Report) {
    // Status: what the apiserver's health check and key id tracking read.
    let status = match client.status(request(v2::StatusRequest {}, options)).await {
        Ok(status) => status.into_inner(),
        Err(error) => {
            report.push(
                "v2 status",
                Outcome::Fail,
                Some(error.code()),
                clip(error.message()),
            );
            return;
        }
    };
    if status.version == "v2" {
        report.pass("v2 status version", "\"v2\"");
    } else {
        report.fail(
            "v2 status version",
            format!("{:?}, the apiserver requires \"v2\"", status.version),
        );
    }
    if status.healthz == "ok" {
        report.pass("v2 status healthz", "\"ok\"");
    } else {
        report.fail(
            "v2 status healthz",
            format!(
                "{:?}: the apiserver treats anything but \"ok\" as unhealthy",
                clip(&status.healthz)
            ),
        );
    }
    match limits::check_key_id(&status.key_id) {
        Ok(()) => report.pass("v2 status key id", format!("{} bytes", status.key_id.len())),
        Err(why) => report.fail("v2 status key id", why),
    }
    let mut stable = true;
    for _ in 0..3 {
        match client.status(request(v2::StatusRequest {}, options)).await {
            Ok(again) if again.get_ref().key_id == status.key_id => {}
            Ok(_) => stable = false,
            Err(error) => {
                report.push(
                    "v2 status stable",
                    Outcome::Fail,
                    Some(error.code()),
                    clip(error.message()),
                );
                stable = false;
                break;
            }
        }
    }
    if stable {
        report.pass("v2 status stable", "the same key id on 4 calls");
    } else {
        report.fail(
            "v2 status stable",
            "the key id changed between calls with no rotation",
        );
    }

    // Round trips, and what the apiserver checks on each answer.
    let mut sample = None;
    for &size in SIZES {
        let name = format!("v2 round trip {size} bytes");
        let plaintext: Vec<u8> = (0..size).map(|i| (i * 7 + size) as u8).collect();
        let sealed = match client
            .encrypt(request(
                encrypt_request(&plaintext, "conformance-encrypt"),
                options,
            ))
            .await
        {
            Ok(sealed) => sealed.into_inner(),
            Err(error) => {
                report.push(
                    &name,
                    Outcome::Fail,
                    Some(error.code()),
                    format!("encrypt: {}", clip(error.message())),
                );
                continue;
            }
        };
        if let Err(why) = answer_problems(&sealed, &status.key_id) {
            report.fail(&name, why);
            continue;
        }
        let ciphertext = sealed.ciphertext.clone();
        let key_id = sealed.key_id.clone();
        match client
            .decrypt(request(
                decrypt_request(&sealed, ciphertext, &key_id),
                options,
            ))
            .await
        {
            Ok(opened) if opened.get_ref().plaintext == plaintext => report.pass(
                &name,
                format!(
                    "ciphertext {} bytes, {} annotations",
                    sealed.ciphertext.len(),
                    sealed.annotations.len()
                ),
            ),
            Ok(_) => report.fail(&name, "decrypted to other bytes"),
            Err(error) => report.push(
                &name,
                Outcome::Fail,
                Some(error.code()),
                format!("decrypt: {}", clip(error.message())),
            ),
        }
        if size == 32 {
            sample = Some((plaintext, sealed));
        }
    }
    largest_plaintext(client, options, report).await;
    let Some((plaintext, sealed)) = sample else {
        report.fail(
            "v2 bad input",
            "skipped: no round trip of a 32-byte DEK succeeded",
        );
        return;
    };

    match client
        .encrypt(request(
            encrypt_request(&plaintext, "conformance-twice"),
            options,
        ))
        .await
    {
        Ok(again) if again.get_ref().ciphertext != sealed.ciphertext => {
            report.pass(
                "v2 encrypt is randomised",
                "two encrypts of one plaintext differ",
            );
        }
        Ok(_) => report.fail(
            "v2 encrypt is randomised",
            "two encrypts of one plaintext gave the same ciphertext",
        ),
        Err(error) => report.push(
            "v2 encrypt is randomised",
            Outcome::Fail,
            Some(error.code()),
            clip(error.message()),
        ),
    }

    // Bad input: a clear error, never INTERNAL, success or a hang.
    let bad = [Code::InvalidArgument, Code::FailedPrecondition];
    let mut tampered = sealed.ciphertext.clone();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0x01;
    let cases: [(&str, Vec<u8>); 3] = [
        ("v2 decrypt tampered ciphertext", tampered),
        (
            "v2 decrypt truncated ciphertext",
            sealed.ciphertext[..sealed.ciphertext.len() / 2].to_vec(),
        ),
        (
            "v2 decrypt garbage ciphertext",
            b"conformance garbage, not a ciphertext of any plugin".to_vec(),
        ),
    ];
    for (name, ciphertext) in cases {
        let result = client
            .decrypt(request(
                decrypt_request(&sealed, ciphertext, &sealed.key_id),
                options,
            ))
            .await;
        report.expect_error(name, result, &bad);
    }
    let empty = client
        .decrypt(request(
            decrypt_request(&sealed, Vec::new(), &sealed.key_id),
            options,
        ))
        .await;
    report.expect_error("v2 decrypt empty ciphertext", empty, &bad);
    let unknown = client
        .decrypt(request(
            decrypt_request(
                &sealed,
                sealed.ciphertext.clone(),
                "conformance-unknown-key-id",
            ),
            options,
        ))
        .await;
    report.expect_error(
        "v2 decrypt unknown key id",
        unknown,
        &[
            Code::NotFound,
            Code::InvalidArgument,
            Code::FailedPrecondition,
        ],
    );
    // A key id shaped like the plugin's own (kmsgate's `provider/key`), so
    // that it reaches the provider behind the routing.
    if let Some((prefix, _)) = sealed.key_id.split_once('/') {
        let key_id = format!("{prefix}/conformance-unknown-key-id");
        let unknown = client
            .decrypt(request(
                decrypt_request(&sealed, sealed.ciphertext.clone(), &key_id),
                options,
            ))
            .await;
        report.expect_error(
            "v2 decrypt unknown key id, same prefix",
            unknown,
            &[
                Code::NotFound,
                Code::InvalidArgument,
                Code::FailedPrecondition,
            ],
        );
    }
    let long_key_id = "k".repeat(limits::MAX_KEY_ID_BYTES + 1);
    let long = client
        .decrypt(request(
            decrypt_request(&sealed, sealed.ciphertext.clone(), &long_key_id),
            options,
        ))
        .await;
    report.expect_error("v2 decrypt key id over 1 KiB", long, &bad);
    let empty_plaintext = client
        .encrypt(request(encrypt_request(&[], "conformance-empty"), options))
        .await;
    report.expect_error("v2 encrypt empty plaintext", empty_plaintext, &bad);

    latency(client, options, &plaintext, &sealed, report).await;
}

/// Finds the largest plaintext (up to 1024 bytes) the plugin encrypts:
/// above it, an encrypt must be refused as INVALID_ARGUMENT (its ciphertext
/// would not fit the apiserver's 1024 bytes), never answered with one that
/// does not fit, nor failed otherwise. Reported as INFO when clean.
async fn largest_plaintext(client: &mut V2Client, options: &Options, report: &mut Report) {
    const NAME: &str = "v2 largest plaintext";
    let mut fits = *SIZES.last().expect("sizes");
    let mut refused = limits::MAX_PLAINTEXT_BYTES + 1;
    let mut largest_ciphertext = 0;
    while refused - fits > 1 {
        let size = (fits + refused) / 2;
        let plaintext = vec![0x5a; size];
        match client
            .encrypt(request(
                encrypt_request(&plaintext, "conformance-size"),
                options,
            ))
            .await
        {
            Ok(sealed) if limits::check_ciphertext(&sealed.get_ref().ciphertext).is_ok() => {
                fits = size;
                largest_ciphertext = sealed.get_ref().ciphertext.len();
            }
            Ok(sealed) => {
                let len = sealed.get_ref().ciphertext.len();
                report.fail(NAME, format!("a {size}-byte plaintext was answered with a {len}-byte ciphertext; the apiserver refuses over 1024"));
                return;
            }
            Err(status) if status.code() == Code::InvalidArgument => refused = size,
            Err(status) => {
                report.push(
                    NAME,
                    Outcome::Fail,
                    Some(status.code()),
                    format!(
                        "a {size}-byte plaintext: expected success or InvalidArgument: {}",
                        clip(status.message())
                    ),
                );
                return;
            }
        }
    }
    let ciphertext = if largest_ciphertext > 0 {
        format!(" (ciphertext {largest_ciphertext} bytes)")
    } else {
        String::new()
    };
    report.push(
        NAME,
        Outcome::Info,
        None,
        format!("{fits} bytes{ciphertext}; larger ones refused as InvalidArgument"),
    );
}

/// What the apiserver checks on an Encrypt answer before storing it.
fn answer_problems(sealed: &v2::EncryptResponse, status_key_id: &str) -> Result<(), String> {
    limits::check_ciphertext(&sealed.ciphertext)?;
    limits::check_key_id(&sealed.key_id)?;
    if sealed.key_id != status_key_id {
        return Err(format!(
            "encrypt's key id {:?} differs from Status's {:?}; the apiserver requires them equal",
            clip(&sealed.key_id),
            clip(status_key_id)
        ));
    }
    let annotations: Annotations = sealed
        .annotations
        .iter()
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    limits::check_annotations(&annotations)
}

async fn latency(
    client: &mut V2Client,
    options: &Options,
    plaintext: &[u8],
    sealed: &v2::EncryptResponse,
    report: &mut Report,
) {
    let calls = options.latency_calls.max(1);
    let mut encrypts = Vec::with_capacity(calls);
    let mut decrypts = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        if client
            .encrypt(request(
                encrypt_request(plaintext, "conformance-latency"),
                options,
            ))
            .await
            .is_err()
        {
            report.fail("v2 latency", "an encrypt failed while measuring");
            return;
        }
        encrypts.push(started.elapsed());
        let started = Instant::now();
        let again = decrypt_request(sealed, sealed.ciphertext.clone(), &sealed.key_id);
        if client.decrypt(request(again, options)).await.is_err() {
            report.fail("v2 latency", "a decrypt failed while measuring");
            return;
        }
        decrypts.push(started.elapsed());
    }
    for (name, mut times, target) in [
        ("v2 encrypt latency", encrypts, ENCRYPT_TARGET),
        ("v2 decrypt latency", decrypts, DECRYPT_TARGET),
    ] {
        times.sort();
        let p50 = times[times.len() / 2];
        let p99 = times[(times.len() * 99 / 100).min(times.len() - 1)];
        let verdict = if p99 < target { "within" } else { "over" };
        report.push(
            name,
            Outcome::Info,
            None,
            format!("p50 {p50:.1?}, p99 {p99:.1?} over {calls} calls; {verdict} the Kubernetes target of {target:?}"),
        );
    }
}

async fn check_v1beta1(client: &mut V1beta1Client, options: &Options, report: &mut Report) {
    let version = v1beta1::VersionRequest {
        version: "v1beta1".into(),
    };
    match client.version(request(version, options)).await {
        Ok(answer) if answer.get_ref().version == "v1beta1" => {
            report.pass("v1beta1 version", "\"v1beta1\"")
        }
        Ok(answer) => report.fail("v1beta1 version", format!("{:?}", answer.get_ref().version)),
        Err(error) => report.push(
            "v1beta1 version",
            Outcome::Fail,
            Some(error.code()),
            clip(error.message()),
        ),
    }
    let plain = b"a v1beta1 data key, 32 bytes...".to_vec();
    let encrypt = v1beta1::EncryptRequest {
        version: "v1beta1".into(),
        plain: plain.clone(),
    };
    let cipher = match client.encrypt(request(encrypt, options)).await {
        Ok(answer) => answer.into_inner().cipher,
        Err(error) => {
            report.push(
                "v1beta1 round trip",
                Outcome::Fail,
                Some(error.code()),
                clip(error.message()),
            );
            return;
        }
    };
    let decrypt = |cipher: Vec<u8>| v1beta1::DecryptRequest {
        version: "v1beta1".into(),
        cipher,
    };
    match client
        .decrypt(request(decrypt(cipher.clone()), options))
        .await
    {
        Ok(answer) if answer.get_ref().plain == plain => {
            report.pass(
                "v1beta1 round trip",
                format!("cipher {} bytes", cipher.len()),
            );
        }
        Ok(_) => report.fail("v1beta1 round trip", "decrypted to other bytes"),
        Err(error) => report.push(
            "v1beta1 round trip",
            Outcome::Fail,
            Some(error.code()),
            clip(error.message()),
        ),
    }
    let mut tampered = cipher;
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    let result = client.decrypt(request(decrypt(tampered), options)).await;
    report.expect_error(
        "v1beta1 decrypt tampered cipher",
        result,
        &[Code::InvalidArgument, Code::FailedPrecondition],
    );
}

fn codes(codes: &[Code]) -> String {
    codes
        .iter()
        .map(|code| format!("{code:?}"))
        .collect::<Vec<_>>()
        .join(" or ")
}

/// A plugin's message, cut for one report line.
fn clip(text: &str) -> String {
    const MAX: usize = 200;
    let text: String = text.chars().filter(|c| !c.is_control()).collect();
    match text.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(key_id: &str, ciphertext: usize) -> v2::EncryptResponse {
        v2::EncryptResponse {
            ciphertext: vec![1; ciphertext],
            key_id: key_id.into(),
            annotations: Default::default(),
        }
    }

    #[test]
    fn answers_are_held_to_the_apiserver_rules() {
        assert!(answer_problems(&sealed("k1", 100), "k1").is_ok());
        assert!(
            answer_problems(&sealed("k1", 100), "k2")
                .unwrap_err()
                .contains("differs")
        );
        assert!(answer_problems(&sealed("k1", 1025), "k1").is_err());
        assert!(answer_problems(&sealed("k1", 0), "k1").is_err());
        let mut bad_annotation = sealed("k1", 10);
        bad_annotation.annotations.insert("NoDots".into(), vec![]);
        assert!(answer_problems(&bad_annotation, "k1").is_err());
    }

    #[test]
    fn errors_pass_only_with_an_expected_code() {
        let mut report = Report::default();
        report.expect_error::<()>(
            "a",
            Err(tonic::Status::invalid_argument("bad")),
            &[Code::InvalidArgument],
        );
        report.expect_error::<()>(
            "b",
            Err(tonic::Status::internal("oops")),
            &[Code::InvalidArgument],
        );
        report.expect_error("c", Ok(()), &[Code::InvalidArgument]);
        let outcomes: Vec<Outcome> = report.checks.iter().map(|c| c.outcome).collect();
        assert_eq!(outcomes, [Outcome::Pass, Outcome::Fail, Outcome::Fail]);
        assert_eq!(report.checks[1].code.as_deref(), Some("Internal"));
    }
}
