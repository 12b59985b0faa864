//! `kmsgate:provider/outbound-http`: the provider's only way out. The
//! request goes to [`crate::outbound::OutboundClient`], which applies the
//! allowlist, TLS settings, secrets, auths and caps; the time it waits is
//! not charged to the provider's CPU budget.

use wasmtime::component::{HasSelf, Linker};

use super::HostState;
use crate::bindings::http;

pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    http::add_to_linker::<_, HasSelf<_>>(linker, |state| state)
}

impl http::Host for HostState {
    async fn send(&mut self, request: http::Request) -> Result<http::Response, http::HttpError> {
        // While the request is out, a timeout is the backend's fault, not
        // the guest's.
        let meter = self.meter.clone();
        let result = meter
            .outbound(self.shared.outbound.send(request.into()))
            .await;
        result.map(Into::into).map_err(Into::into)
    }

    async fn send_with_auth(
        &mut self,
        auth: String,
        request: http::Request,
    ) -> Result<http::Response, http::HttpError> {
        let meter = self.meter.clone();
        let result = meter
            .outbound(self.shared.outbound.send_with_auth(&auth, request.into()))
            .await;
        result.map(Into::into).map_err(Into::into)
    }
}
