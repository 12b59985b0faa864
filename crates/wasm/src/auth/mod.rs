//! Host-held authentication for providers' outbound requests
//! (`send-with-auth` in the WIT, `[providers.auth.<name>]` in the config).
//!
//! Each [`Auth`] owns one credential and a task that keeps it fresh: it
//! reads the operator's files (again whenever they change), logs in or
//! looks the token up, renews before expiry, and logs in again when
//! renewal cannot go on (a Vault token at its max TTL) or a backend
//! refused the credential (a 401 or 403 answer nudges it). Requests wait
//! for the first attempt, never for a refresh: a refresh happens ahead of
//! expiry, while the old credential still works.
//!
//! The credential is applied to a request after the provider has built it
//! ([`Auth::apply`]): a header for the Vault kinds and `header`, a SigV4
//! signature over the whole request for `aws-sigv4`. It never enters the
//! sandbox, and [`Auth::leaks`] lets the outbound client withhold any
//! response that carries it, the tokens obtained by login included.
//!
//! Nothing here logs or reports a credential: problems name the file or
//! the endpoint and quote the backend's error text only after searching it
//! for the credentials and login inputs ([`Problem`]).
//!
//! # Layout
//! - this file — the credential's state, the refresh loop, applying it.
//! - [`vault`] — token lookup and renewal, and AppRole, JWT and cert login.
//! - [`sigv4`] — AWS Signature Version 4, and STS web identity.
//! - `source` — credentials read from files or the environment.

pub mod sigv4;
mod source;
pub mod vault;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{HeaderName, HeaderValue};
use tokio::sync::{Notify, watch};

use crate::allowlist::Allowlist;
use crate::leak::LeakDetector;
use crate::spec::AuthConfig;
use kmsgate_core::kms::CredentialStatus;
use kmsgate_core::secret::Secret;

pub use source::Inputs;

/// Request headers an auth sets: a request sent with an auth may not set
/// them itself.
pub const AUTH_OWNED_HEADERS: &[&str] = &[
    "authorization",
    "x-vault-token",
    "x-amz-date",
    "x-amz-security-token",
    "x-amz-content-sha256",
];

/// How often the files behind a credential are checked for changes.
const FILE_POLL: Duration = Duration::from_secs(1);
/// Retry delays after a failed refresh: from the first to the last,
/// doubling.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_LAST: Duration = Duration::from_secs(30);
/// A 401/403 nudges a fresh login at most this often.
const NUDGE_EVERY: Duration = Duration::from_secs(1);
/// A credential this close to its end with no way to renew it is warned
/// about.
const EXPIRY_WARNING: Duration = Duration::from_secs(300);

/// A credential the host applies to requests.
pub enum Credential {
    /// One header: a Vault token (`x-vault-token`) or a `header` auth.
    Header {
        name: HeaderName,
        /// Marked sensitive, so HTTP tooling does not print it.
        value: HeaderValue,
        /// The same value, for the leak search.
        secret: Secret,
    },
    /// AWS keys, signed into every request.
    Aws(sigv4::Credentials),
}

impl Credential {
    /// A header credential; `None` if `value` cannot be a header value.
    pub fn header(name: HeaderName, secret: Secret) -> Result<Credential, Problem> {
        let mut value = HeaderValue::from_str(secret.expose())
            .map_err(|_| Problem::refused("the credential is not a valid header value"))?;
        value.set_sensitive(true);
        Ok(Credential::Header {
            name,
            value,
            secret,
        })
    }

    /// The secret values in it, for the leak search.
    fn secrets(&self) -> Vec<&str> {
        match self {
            Credential::Header { secret, .. } => vec![secret.expose()],
            Credential::Aws(aws) => aws.secrets(),
        }
    }
}

/// Why an auth holds no credential, or its last refresh failed. The
/// message never carries a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub message: String,
    /// The backend refused (a revoked token, a wrong secret id), as
    /// opposed to not answering: requests then fail `denied`, not
    /// `connection-failed`.
    pub refused: bool,
}

impl Problem {
    pub fn refused(message: impl Into<String>) -> Problem {
        Problem {
            message: message.into(),
            refused: true,
        }
    }

    pub fn unreachable(message: impl Into<String>) -> Problem {
        Problem {
            message: message.into(),
            refused: false,
        }
    }
}

/// What a refresh got.
pub struct Obtained {
    pub credential: Credential,
    /// When it stops working, if it has an end.
    pub expires: Option<SystemTime>,
    /// When to refresh it next, if before `expires` (a Vault token is
    /// renewed at half its lease).
    pub refresh_in: Option<Duration>,
    /// Whether it can be renewed (else the next refresh logs in again).
    pub renewable: bool,
    /// A login (or a token lookup), not a renewal.
    pub login: bool,
}

/// The state requests read.
#[derive(Clone, Default)]
struct State {
    credential: Option<Arc<Credential>>,
    expires: Option<SystemTime>,
    problem: Option<Problem>,
    /// The credential now and the one before it (a response to a request
    /// sent just before a refresh may still echo it).
    leaks: Option<Arc<LeakDetector>>,
    /// Whether the first attempt has finished.
    settled: bool,
}

/// What the kind of auth does.
enum Method {
    Header { header: HeaderName, prefix: String },
    Vault(vault::Vault),
    Aws(sigv4::Aws),
}

/// One auth of one provider, and its refresh task.
pub struct Auth {
    provider: String,
    name: String,
    kind: &'static str,
    hosts: Allowlist,
    method: Method,
    inputs: source::InputSources,
    state: watch::Sender<State>,
    nudge: Arc<Notify>,
    last_nudge: std::sync::Mutex<Option<Instant>>,
    logins: AtomicU64,
    renewals: AtomicU64,
    failures: AtomicU64,
    /// How long a request waits for the first attempt.
    first_wait: Duration,
}

/// What the outbound client needs to build an auth's own HTTP client.
pub struct AuthContext<'a> {
    pub provider: &'a str,
    pub allowed_hosts: &'a [String],
    pub ca_pem: Option<&'a [u8]>,
    pub timeout: Duration,
}

impl Auth {
    /// Builds the auth and starts its refresh task (on the current tokio
    /// runtime). The task stops when the auth is dropped.
    pub fn start(
        name: &str,
        config: &AuthConfig,
        context: &AuthContext<'_>,
    ) -> Result<Arc<Auth>, String> {
        let hosts = Allowlist::parse(&config.effective_hosts(context.allowed_hosts))?;
        let (method, inputs) = match config {
            AuthConfig::Header(header) => (
                Method::Header {
                    header: HeaderName::from_bytes(header.header.as_bytes())
                        .map_err(|e| format!("auth {name}: header: {e}"))?,
                    prefix: header.prefix.clone(),
                },
                source::InputSources::new(vec![("value", header.value.clone())]),
            ),
            AuthConfig::AwsSigv4(aws) => {
                let (aws, inputs) = sigv4::Aws::new(aws, context)?;
                (Method::Aws(aws), inputs)
            }
            _ => {
                let (vault, inputs) = vault::Vault::new(config, context)?;
                (Method::Vault(vault), inputs)
            }
        };
        let auth = Arc::new(Auth {
            provider: context.provider.to_owned(),
            name: name.to_owned(),
            kind: config.kind(),
            hosts,
            method,
            inputs,
            state: watch::Sender::new(State::default()),
            nudge: Arc::new(Notify::new()),
            last_nudge: std::sync::Mutex::new(None),
            logins: AtomicU64::new(0),
            renewals: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            first_wait: context.timeout * 2,
        });
        tokio::spawn(run(Arc::downgrade(&auth), auth.nudge.clone()));
        Ok(auth)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the credential may be applied to `url`.
    pub fn covers(&self, url: &url::Url) -> bool {
        self.hosts.check(url).is_ok()
    }

    /// The credential to apply now, waiting for the first attempt if it
    /// is still running.
    pub async fn credential(&self) -> Result<Arc<Credential>, Problem> {
        // The common case, on every request: a credential is held.
        if let Some(credential) = self.state.borrow().credential.clone() {
            return Ok(credential);
        }
        let mut receiver = self.state.subscribe();
        let waited =
            tokio::time::timeout(self.first_wait, receiver.wait_for(|state| state.settled)).await;
        let state = self.state.borrow().clone();
        if let Some(credential) = state.credential {
            return Ok(credential);
        }
        Err(match (waited, state.problem) {
            (_, Some(problem)) => Problem {
                message: format!("auth {}: {}", self.name, problem.message),
                ..problem
            },
            (Err(_), None) => Problem::unreachable(format!(
                "auth {}: no credential yet (the first login is still running)",
                self.name
            )),
            (Ok(_), None) => Problem::unreachable(format!("auth {}: no credential", self.name)),
        })
    }

    /// Applies `credential` to `request` (a header, or a signature over it).
    pub fn apply(
        &self,
        credential: &Credential,
        request: &mut reqwest::Request,
    ) -> Result<(), String> {
        match (credential, &self.method) {
            (Credential::Header { name, value, .. }, _) => {
                request.headers_mut().insert(name.clone(), value.clone());
                Ok(())
            }
            (Credential::Aws(keys), Method::Aws(aws)) => aws.sign(keys, request, SystemTime::now()),
            (Credential::Aws(_), _) => Err("AWS keys without an aws-sigv4 auth".into()),
        }
    }

    /// A backend answered `status` to a request this auth authenticated: a
    /// 401 or 403 asks for a fresh login (at most every second).
    pub fn answered(&self, status: u16) {
        if status != 401 && status != 403 {
            return;
        }
        let mut last = self.last_nudge.lock().unwrap();
        if last.is_some_and(|at| at.elapsed() < NUDGE_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        self.nudge.notify_one();
    }

    /// The credentials to search responses for.
    pub fn leaks(&self) -> Option<Arc<LeakDetector>> {
        self.state.borrow().leaks.clone()
    }

    pub fn status(&self) -> CredentialStatus {
        let state = self.state.borrow();
        let now = SystemTime::now();
        CredentialStatus {
            name: self.name.clone(),
            kind: self.kind,
            state: match (&state.credential, state.settled) {
                (Some(_), _) => "valid",
                (None, false) => "pending",
                (None, true) => "failed",
            },
            expires_in: state
                .credential
                .as_ref()
                .and(state.expires)
                .map(|at| at.duration_since(now).unwrap_or_default()),
            logins: self.logins.load(Ordering::Relaxed),
            renewals: self.renewals.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            detail: state
                .problem
                .as_ref()
                .map(|p| p.message.clone())
                .unwrap_or_default(),
        }
    }

    /// One refresh: a login (or token lookup) when `fresh`, else a renewal.
    async fn obtain(
        &self,
        inputs: &Inputs,
        fresh: bool,
        current: Option<&Credential>,
    ) -> Result<Obtained, Problem> {
        match &self.method {
            Method::Header { header, prefix } => {
                let value = inputs.require("value")?;
                let secret = Secret::new(format!("{prefix}{}", value.expose()));
                Ok(Obtained {
                    credential: Credential::header(header.clone(), secret)?,
                    expires: None,
                    refresh_in: None,
                    renewable: false,
                    login: true,
                })
            }
            Method::Vault(vault) => {
                let token = match current {
                    Some(Credential::Header { secret, .. }) if !fresh => Some(secret),
                    _ => None,
                };
                vault.obtain(inputs, token).await
            }
            Method::Aws(aws) => aws.obtain(inputs).await,
        }
    }

    fn publish(&self, obtained: Result<Obtained, Problem>) {
        let now = SystemTime::now();
        self.state.send_modify(|state| {
            state.settled = true;
            match obtained {
                Ok(obtained) => {
                    let previous = state.credential.take();
                    let credential = Arc::new(obtained.credential);
                    let mut secrets: Vec<(&str, &[u8])> = credential
                        .secrets()
                        .into_iter()
                        .map(|s| (self.name.as_str(), s.as_bytes()))
                        .collect();
                    if let Some(previous) = &previous {
                        secrets.extend(
                            previous
                                .secrets()
                                .into_iter()
                                .map(|s| (self.name.as_str(), s.as_bytes())),
                        );
                    }
                    state.leaks = Some(Arc::new(LeakDetector::new(secrets)));
                    state.credential = Some(credential);
                    state.expires = obtained.expires;
                    state.problem = None;
                }
                Err(problem) => {
                    // A credential past its end is dropped; one still valid
                    // keeps serving while the refresh is retried.
                    if state.expires.is_some_and(|at| at <= now) || problem.refused {
                        state.credential = None;
                        state.expires = None;
                    }
                    state.problem = Some(problem);
                }
            }
        });
    }

    fn expire_if_due(&self) {
        let now = SystemTime::now();
        let expired = {
            let state = self.state.borrow();
            state.credential.is_some() && state.expires.is_some_and(|at| at <= now)
        };
        if expired {
            let message = if self.can_log_in() {
                "the credential expired"
            } else {
                "the credential expired and cannot be renewed: write a new one to its file"
            };
            tracing::warn!(provider = %self.provider, auth = %self.name, kind = self.kind, "{message}");
            self.publish(Err(Problem::refused(message)));
        }
    }
}

/// When the refresh loop acts next.
struct Plan {
    /// The inputs the current credential was obtained with.
    inputs: Option<u64>,
    /// When to refresh; `None` for never (a credential with no end).
    refresh_at: Option<Instant>,
    /// Whether the next refresh must log in afresh (no renewal).
    fresh: bool,
    retry: Duration,
}

/// The refresh loop of one auth. Holds the auth only while working, so
/// dropping the provider ends it.
async fn run(auth: Weak<Auth>, nudge: Arc<Notify>) {
    let mut plan = Plan {
        inputs: None,
        refresh_at: Some(Instant::now()),
        fresh: true,
        retry: RETRY_FIRST,
    };
    let mut nudged = false;
    loop {
        let Some(auth) = auth.upgrade() else { return };
        step(&auth, &mut plan, nudged).await;
        drop(auth);
        let tick = tokio::time::sleep(FILE_POLL);
        nudged = tokio::select! {
            () = tick => false,
            () = nudge.notified() => true,
        };
    }
}

async fn step(auth: &Auth, plan: &mut Plan, nudged: bool) {
    auth.expire_if_due();
    let inputs = match auth.inputs.read().await {
        Ok(inputs) => inputs,
        Err(problem) => {
            if plan.refresh_at.is_some_and(|at| at <= Instant::now()) {
                auth.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(provider = %auth.provider, auth = %auth.name, kind = auth.kind, "{}", problem.message);
                auth.publish(Err(problem));
                plan.refresh_at = Some(Instant::now() + plan.retry);
                plan.retry = (plan.retry * 2).min(RETRY_LAST);
            }
            return;
        }
    };
    let changed = plan.inputs != Some(inputs.fingerprint());
    if changed && plan.inputs.is_some() {
        tracing::info!(provider = %auth.provider, auth = %auth.name, kind = auth.kind, "credential files changed; logging in again");
    }
    let due = plan.refresh_at.is_some_and(|at| at <= Instant::now());
    if !(changed || due || nudged) {
        return;
    }
    let fresh = plan.fresh || changed || nudged;
    let current = auth.state.borrow().credential.clone();
    let mut result = auth.obtain(&inputs, fresh, current.as_deref()).await;
    if let Err(problem) = &result
        && !fresh
        && auth.can_log_in()
    {
        // A renewal refused or failed: log in again at once, while the
        // current token (if still valid) keeps serving.
        tracing::debug!(provider = %auth.provider, auth = %auth.name, kind = auth.kind, "renewal failed ({}); logging in again", problem.message);
        result = auth.obtain(&inputs, true, None).await;
    }
    plan.inputs = Some(inputs.fingerprint());
    match result {
        Ok(obtained) => {
            let counter = if obtained.login {
                &auth.logins
            } else {
                &auth.renewals
            };
            counter.fetch_add(1, Ordering::Relaxed);
            let left = obtained
                .expires
                .and_then(|at| at.duration_since(SystemTime::now()).ok());
            tracing::debug!(
                provider = %auth.provider, auth = %auth.name, kind = auth.kind,
                login = obtained.login, valid_for_s = left.map(|d| d.as_secs()),
                "credential refreshed"
            );
            if !obtained.renewable
                && matches!(auth.method, Method::Vault(_))
                && !auth.can_log_in()
                && left.is_some_and(|left| left < EXPIRY_WARNING)
            {
                tracing::warn!(
                    provider = %auth.provider, auth = %auth.name, kind = auth.kind,
                    "the token cannot be renewed and expires in {} s; replace it", left.unwrap_or_default().as_secs()
                );
            }
            plan.refresh_at = obtained.refresh_in.map(|d| Instant::now() + d);
            plan.fresh = !obtained.renewable;
            plan.retry = RETRY_FIRST;
            auth.publish(Ok(obtained));
        }
        Err(problem) => {
            auth.failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(provider = %auth.provider, auth = %auth.name, kind = auth.kind, "refreshing the credential failed: {}", problem.message);
            // A failed renewal is followed by a login, where there is one.
            plan.fresh = true;
            plan.refresh_at = Some(Instant::now() + plan.retry);
            plan.retry = (plan.retry * 2).min(RETRY_LAST);
            auth.publish(Err(problem));
        }
    }
}

/// A token the host logged in for belongs to this auth alone (each provider
/// version starts its own): when the version is dropped (a swap, a
/// removal, the end of `kmsgate check`), the token is revoked rather than
/// left valid until its TTL runs out. A given token is the operator's and
/// is left alone.
impl Drop for Auth {
    fn drop(&mut self) {
        let Method::Vault(vault) = &self.method else {
            return;
        };
        if !vault.can_log_in() {
            return;
        }
        let Some(credential) = self.state.borrow().credential.clone() else {
            return;
        };
        let Credential::Header { secret, .. } = &*credential else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(vault.revoke(secret.clone()));
        }
    }
}

impl Auth {
    /// Whether a fresh login can replace an expiring credential (not so
    /// for a given token, which only the operator can replace).
    fn can_log_in(&self) -> bool {
        match &self.method {
            Method::Vault(vault) => vault.can_log_in(),
            _ => true,
        }
    }
}

/// A provider's auths, by name.
#[derive(Default)]
pub struct Auths {
    by_name: HashMap<String, Arc<Auth>>,
}

impl Auths {
    pub fn start(
        configs: &std::collections::BTreeMap<String, AuthConfig>,
        context: &AuthContext<'_>,
    ) -> Result<Auths, String> {
        let mut by_name = HashMap::new();
        for (name, config) in configs {
            by_name.insert(name.clone(), Auth::start(name, config, context)?);
        }
        Ok(Auths { by_name })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Auth>> {
        self.by_name.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Auth>> {
        self.by_name.values()
    }

    /// Every auth's status, by name.
    pub fn statuses(&self) -> Vec<CredentialStatus> {
        let mut statuses: Vec<_> = self.by_name.values().map(|auth| auth.status()).collect();
        statuses.sort_by(|a, b| a.name.cmp(&b.name));
        statuses
    }
}

/// Civil time, for the formats AWS and Vault use.
pub mod time {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    /// Days since 1970-01-01 of a proleptic Gregorian date (Howard
    /// Hinnant's `days_from_civil`).
    fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
        let year = if month <= 2 { year - 1 } else { year };
        let era = year.div_euclid(400);
        let year_of_era = year - era * 400;
        let month = i64::from(month);
        let day_of_year =
            (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
        let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
        era * 146_097 + day_of_era - 719_468
    }

    /// The date of a day count (the inverse of `days_from_civil`).
    fn civil_from_days(days: i64) -> (i64, u32, u32) {
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let day_of_era = z - era * 146_097;
        let year_of_era =
            (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
        let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
        let mp = (5 * day_of_year + 2) / 153;
        let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = year_of_era + era * 400 + i64::from(month <= 2);
        (year, month, day)
    }

    /// `20150830T123600Z`, AWS's `x-amz-date`.
    pub fn amz_date(at: SystemTime) -> String {
        let secs = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
        let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
        let second_of_day = secs.rem_euclid(86_400);
        format!(
            "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
            second_of_day / 3600,
            second_of_day / 60 % 60,
            second_of_day % 60
        )
    }

    /// Parses an RFC 3339 UTC time (`2026-11-29T05:00:00Z`, fractions of a
    /// second allowed and ignored).
    pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
        let text = text.trim();
        let (date, time) = text.split_once('T')?;
        let mut date = date.split('-');
        let year: i64 = date.next()?.parse().ok()?;
        let month: u32 = date.next()?.parse().ok()?;
        let day: u32 = date.next()?.parse().ok()?;
        let time = time.strip_suffix('Z')?;
        let time = time.split('.').next()?;
        let mut time = time.split(':');
        let hour: i64 = time.next()?.parse().ok()?;
        let minute: i64 = time.next()?.parse().ok()?;
        let second: i64 = time.next()?.parse().ok()?;
        if !(1..=12).contains(&month)
            || !(1..=31).contains(&day)
            || hour > 23
            || minute > 59
            || second > 60
        {
            return None;
        }
        let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
        Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn dates_round_trip() {
            let at = UNIX_EPOCH + Duration::from_secs(1_440_938_160);
            assert_eq!(amz_date(at), "20150830T123600Z");
            assert_eq!(parse_rfc3339("2015-08-30T12:36:00Z"), Some(at));
            assert_eq!(parse_rfc3339("2015-08-30T12:36:00.123Z"), Some(at));
            assert_eq!(amz_date(UNIX_EPOCH), "19700101T000000Z");
            let leap = parse_rfc3339("2024-02-29T23:59:59Z").unwrap();
            assert_eq!(amz_date(leap), "20240229T235959Z");
            assert_eq!(parse_rfc3339("2024-13-01T00:00:00Z"), None);
            assert_eq!(parse_rfc3339("yesterday"), None);
        }
    }
}
