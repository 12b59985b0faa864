//! Log lines through the host (`wasi:logging`): it tags each with the
//! provider's name, cuts it to 1024 characters and removes control
//! characters. **Never log plaintext, key material or credentials**
//! (settings may hold keys; bodies may hold plaintexts).

use crate::Level;

/// Logs `message` at `level`; `context` says where (`"init"`,
/// `"encrypt"`). Outside a component it goes to standard error, so native
/// tests show it. Usually called through [`log!`](crate::log!).
pub fn log(level: Level, context: &str, message: &str) {
    if cfg!(target_arch = "wasm32") {
        crate::wit::wasi::logging::logging::log(level, context, message);
    } else {
        eprintln!("{level:?} {context}: {message}");
    }
}

/// Logs a line through the host: `log!(level, context, format, args...)`,
/// where `level` is a [`Level`](crate::Level) and the rest is as for
/// `format!`. **Never log plaintext, key material or credentials.**
///
/// ```
/// use kmsgate_provider::{Level, log};
///
/// let version = 3;
/// log!(Level::Info, "init", "using key kube at version {version}");
/// ```
#[macro_export]
macro_rules! log {
    ($level:expr, $context:expr, $($format:tt)+) => {
        $crate::logging::log($level, $context, &::std::format!($($format)+))
    };
}
