//! `wasi:config/store`: the provider's settings, as the operator wrote them
//! (files and environment variables already read). Read-only.

use wasmtime::component::{HasSelf, Linker};

use super::HostState;
use crate::bindings::wasi::config::store;

pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    store::add_to_linker::<_, HasSelf<_>>(linker, |state| state)
}

impl store::Host for HostState {
    fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<String>, store::Error>> {
        let value = self.shared.settings.iter().find(|(k, _)| *k == key);
        Ok(Ok(value.map(|(_, v)| v.clone())))
    }

    fn get_all(&mut self) -> wasmtime::Result<Result<Vec<(String, String)>, store::Error>> {
        Ok(Ok(self.shared.settings.clone()))
    }
}
