//! The one provider value of a Wasm instance, behind the static export
//! functions that [`crate::export!`] generates.

use std::cell::RefCell;

use crate::{KmsError, Provider, Settings};

/// Holds the instance's provider, made on the first call that needs it.
///
/// Lives in a `thread_local!` of the provider's crate: a component instance
/// is single-threaded and has its own linear memory, so this is exactly
/// "one per instance". An instance serves one call at a time and the
/// component model forbids re-entering it, so the `RefCell` borrow taken
/// for a call can never conflict; a call that traps takes the instance
/// (and any borrow it held) with it, because the host discards it.
pub struct Instance<P> {
    provider: RefCell<Option<P>>,
}

impl<P> Instance<P> {
    /// An instance with no provider yet.
    pub const fn new() -> Self {
        Instance {
            provider: RefCell::new(None),
        }
    }
}

impl<P: Provider> Instance<P> {
    /// Runs `f` on the provider, first making it from the settings if
    /// this instance has none yet. A failed `new` is returned and not
    /// kept, so every call reports it (settings never change while an
    /// instance lives, so the outcome is the same each time).
    pub fn call<T>(&self, f: impl FnOnce(&mut P) -> Result<T, KmsError>) -> Result<T, KmsError> {
        let mut slot = self.provider.borrow_mut();
        let provider = match &mut *slot {
            Some(provider) => provider,
            empty => empty.insert(P::new(&Settings::load()?)?),
        };
        f(provider)
    }
}

impl<P> Default for Instance<P> {
    fn default() -> Self {
        Instance::new()
    }
}
