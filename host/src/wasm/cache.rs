//! Compiled components by content hash, so a reload (or a second provider
//! using the same file) does not compile again. Bounded: the least recently
//! used entry goes first, so reloading many versions does not grow memory.

use std::sync::Mutex;

use wasmtime::Engine;
use wasmtime::component::Component;

/// How many compiled components stay cached.
const CAPACITY: usize = 8;

#[derive(Default)]
pub struct CompileCache {
    /// Most recently used last.
    entries: Mutex<Vec<(String, Component)>>,
}

impl CompileCache {
    /// The component for `sha256`, compiled from `bytes` on a miss. The
    /// bool says whether it was cached. Compiling is CPU-heavy (tens to
    /// hundreds of ms), so it runs off the async workers.
    pub async fn get_or_compile(
        &self,
        engine: &Engine,
        sha256: &str,
        bytes: Vec<u8>,
    ) -> Result<(Component, bool), String> {
        if let Some(component) = self.lookup(sha256) {
            return Ok((component, true));
        }
        let engine = engine.clone();
        let component = tokio::task::spawn_blocking(move || Component::new(&engine, &bytes))
            .await
            .map_err(|e| format!("compiling: {e}"))?
            .map_err(|e| format!("not a valid component: {e}"))?;
        let mut entries = self.entries.lock().expect("compile cache lock poisoned");
        entries.retain(|(hash, _)| hash != sha256);
        entries.push((sha256.to_owned(), component.clone()));
        if entries.len() > CAPACITY {
            entries.remove(0);
        }
        Ok((component, false))
    }

    fn lookup(&self, sha256: &str) -> Option<Component> {
        let mut entries = self.entries.lock().expect("compile cache lock poisoned");
        let index = entries.iter().position(|(hash, _)| hash == sha256)?;
        let entry = entries.remove(index);
        let component = entry.1.clone();
        entries.push(entry);
        Some(component)
    }
}
