//! `wasi:logging/logging`: a provider's log lines, forwarded to the host's
//! log under the provider's name, cut and cleaned first (a provider's text
//! could otherwise forge log lines or flood them).

use kmsgate_core::sanitize;
use wasmtime::component::{HasSelf, Linker};

use super::HostState;
use crate::bindings::wasi::logging::logging;

pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    logging::add_to_linker::<_, HasSelf<_>>(linker, |state| state)
}

impl logging::Host for HostState {
    fn log(
        &mut self,
        level: logging::Level,
        context: String,
        message: String,
    ) -> wasmtime::Result<()> {
        use logging::Level;
        let provider = self.shared.name.as_str();
        let message = sanitize::clean(&message, sanitize::MAX_LOG_LINE);
        let context = sanitize::clean(&context, sanitize::MAX_DETAIL);
        match level {
            Level::Trace => tracing::trace!(provider, context, "{message}"),
            Level::Debug => tracing::debug!(provider, context, "{message}"),
            Level::Info => tracing::info!(provider, context, "{message}"),
            Level::Warn => tracing::warn!(provider, context, "{message}"),
            Level::Error | Level::Critical => tracing::error!(provider, context, "{message}"),
        }
        Ok(())
    }
}
