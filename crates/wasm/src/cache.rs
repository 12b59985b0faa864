//! Compiled components by content hash, so a reload (or a second provider
//! using the same file) does not compile again. Bounded: the least recently
//! used entry goes first, so reloading many versions does not grow memory.
//!
//! Optionally also on disk (`compile_cache_dir`), so a restart does not
//! compile again either. Loading compiled code from disk trusts the
//! directory as much as the kmsgate binary: whoever can write there can run
//! code in the daemon. So:
//! - the directory is used only if it belongs to the daemon's user and
//!   nobody else can write to it, nor to any directory above it (root's
//!   sticky `/tmp` aside) — checked again at every use, not only at start;
//! - files are written 0600 (to a temporary name, then renamed) and named
//!   by the component's SHA-256 *and* the engine's compatibility hash, so
//!   another wasmtime version or configuration never reads it;
//! - a file starts with the SHA-256 of the component it was compiled from
//!   and of the compiled code; both are checked against the bytes actually
//!   loaded (read once, then checked, then loaded), so what runs is bound
//!   to the component that passed its `sha256` pin, and a file swapped in
//!   for another component's, or damaged, is refused.

use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Starts every compiled file kmsgate writes; then the component's and the
/// code's SHA-256.
const MAGIC: &[u8; 8] = b"KMSGATE\x01";
const HEADER_LEN: usize = MAGIC.len() + 32 + 32;

/// How many compiled components stay cached.
const CAPACITY: usize = 8;

#[derive(Default)]
pub struct CompileCache {
    /// Most recently used last.
    entries: Mutex<Vec<(String, Component)>>,
    /// Where compiled components persist, if anywhere.
    disk: Option<PathBuf>,
}

/// Where a compile came from, for logs and the start-up figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Memory,
    Disk,
    Compiled,
}

impl CompileCache {
    /// A cache that also keeps compiled components in `dir`, if `dir` is
    /// safe to trust (see the module docs); otherwise memory only, with a
    /// warning.
    pub fn with_disk(dir: Option<&Path>) -> CompileCache {
        let disk = dir.and_then(|dir| match trusted_dir(dir) {
            Ok(()) => Some(dir.to_owned()),
            Err(why) => {
                tracing::warn!(dir = ?dir, "not using the compile cache directory: {why}");
                None
            }
        });
        CompileCache {
            entries: Mutex::default(),
            disk,
        }
    }

    /// The component for `sha256`: from memory, from disk, or compiled
    /// from `bytes` (and then written to disk). Compiling and disk work are
    /// CPU- or IO-heavy, so they run off the async workers.
    pub async fn get_or_compile(
        &self,
        engine: &Engine,
        sha256: &str,
        bytes: Vec<u8>,
    ) -> Result<(Component, Source), String> {
        if let Some(component) = self.lookup(sha256) {
            return Ok((component, Source::Memory));
        }
        let engine = engine.clone();
        // `sha256` is the digest of `bytes` (`Prepared::read` computed it
        // and checked the pin against it): no need to hash them again.
        let source_digest: [u8; 32] = hex::decode(sha256)
            .ok()
            .and_then(|digest| digest.try_into().ok())
            .ok_or_else(|| format!("not a sha256 digest: {sha256:?}"))?;
        let disk = self.disk.clone();
        let sha256_hex = sha256.to_owned();
        let (component, source) = tokio::task::spawn_blocking(move || -> Result<_, String> {
            // Trust is checked at every use (off the runtime: it reads the
            // metadata of every directory above): a directory whose owner
            // or mode changed since start is not used.
            let disk = disk.filter(|dir| match trusted(dir) {
                Ok(()) => true,
                Err(why) => {
                    tracing::warn!(dir = ?dir, "not using the compile cache directory any more: {why}");
                    false
                }
            });
            let file = disk.map(|dir| {
                let engine_hash = {
                    use std::hash::{Hash, Hasher};
                    let mut hasher = std::collections::hash_map::DefaultHasher::new();
                    engine.precompile_compatibility_hash().hash(&mut hasher);
                    hasher.finish()
                };
                dir.join(format!("{sha256_hex}-{engine_hash:016x}.cwasm"))
            });
            if let Some(component) = file
                .as_deref()
                .and_then(|file| read_compiled(&engine, file, &source_digest))
            {
                return Ok((component, Source::Disk));
            }
            let component = Component::new(&engine, &bytes)
                .map_err(|e| format!("not a valid component: {e}"))?;
            if let Some(file) = &file {
                write_compiled(&component, file, &source_digest);
            }
            drop(bytes);
            release_freed_memory();
            Ok((component, Source::Compiled))
        })
        .await
        .map_err(|e| format!("compiling: {e}"))??;
        let mut entries = self.entries.lock().expect("compile cache lock poisoned");
        entries.retain(|(hash, _)| hash != sha256);
        entries.push((sha256.to_owned(), component.clone()));
        if entries.len() > CAPACITY {
            entries.remove(0);
        }
        Ok((component, source))
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

/// Whether `dir` may hold code the daemon will run (see [`trusted`]).
/// Created (0700) if missing.
pub(crate) fn trusted_dir(dir: &Path) -> Result<(), String> {
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating it: {e}"))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("setting its mode: {e}"))?;
    }
    trusted(dir)
}

/// A directory owned by the daemon's user that no one else can write to,
/// below directories no one but root or the daemon's user can change (a
/// root-owned sticky directory, such as `/tmp`, is fine: others cannot
/// rename what they do not own in it).
fn trusted(dir: &Path) -> Result<(), String> {
    // `/proc/self` belongs to the process's effective user.
    let me = std::fs::metadata("/proc/self")
        .map_err(|e| format!("finding the daemon's user: {e}"))?
        .uid();
    // The path as configured, symbolic links and all (whoever can change a
    // link can point it anywhere), then where it leads.
    for parent in dir.ancestors().skip(1) {
        if parent.as_os_str().is_empty() {
            continue;
        }
        let meta = std::fs::symlink_metadata(parent).map_err(|e| format!("{parent:?}: {e}"))?;
        if meta.is_dir() {
            safe_parent(parent, &meta, me)?;
        }
    }
    let dir = dir.canonicalize().map_err(|e| e.to_string())?;
    let meta = std::fs::metadata(&dir).map_err(|e| e.to_string())?;
    if !meta.is_dir() {
        return Err("not a directory".into());
    }
    if meta.uid() != me {
        return Err(format!(
            "owned by uid {}, not the daemon's uid {me}",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "mode {:o} lets others write to it; use 0700",
            meta.mode() & 0o777
        ));
    }
    for parent in dir.ancestors().skip(1) {
        let meta = std::fs::metadata(parent).map_err(|e| format!("{parent:?}: {e}"))?;
        safe_parent(parent, &meta, me)?;
    }
    Ok(())
}

/// A directory above the cache: owned by root or the daemon's user, and
/// writable by no one else unless root's sticky bit keeps others from
/// renaming what they do not own.
fn safe_parent(parent: &Path, meta: &std::fs::Metadata, me: u32) -> Result<(), String> {
    let owner_ok = meta.uid() == 0 || meta.uid() == me;
    let sticky_root = meta.uid() == 0 && meta.mode() & 0o1000 != 0;
    if !owner_ok || (meta.mode() & 0o022 != 0 && !sticky_root) {
        return Err(format!(
            "{parent:?} (uid {}, mode {:o}) lets another user replace what is below it",
            meta.uid(),
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// A compiled component from `file`, if there is a usable one compiled
/// from the component with SHA-256 `source`. A file that does not check
/// out or load (another component's, truncated, another build) is removed
/// and recompiled.
fn read_compiled(engine: &Engine, file: &Path, source: &[u8; 32]) -> Option<Component> {
    let refuse = |why: String| {
        tracing::warn!(file = ?file, "dropping an unusable compiled component: {why}");
        let _ = std::fs::remove_file(file);
        None
    };
    // Checked and read through one open file, so what is checked is what
    // is read.
    let mut opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(file)
        .ok()?;
    let meta = opened.metadata().ok()?;
    let me = std::fs::metadata("/proc/self").ok()?.uid();
    if !meta.is_file() || meta.uid() != me || meta.mode() & 0o022 != 0 {
        return refuse(format!(
            "not a file only the daemon's user can write (uid {}, mode {:o})",
            meta.uid(),
            meta.mode() & 0o7777
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    std::io::Read::read_to_end(&mut opened, &mut bytes).ok()?;
    let Some((header, code)) = bytes.split_at_checked(HEADER_LEN) else {
        return refuse("too short".into());
    };
    if &header[..MAGIC.len()] != MAGIC {
        return refuse("not written by this kmsgate".into());
    }
    if header[MAGIC.len()..MAGIC.len() + 32] != source[..] {
        return refuse("compiled from another component".into());
    }
    if header[MAGIC.len() + 32..] != Sha256::digest(code)[..] {
        return refuse("its code does not match its digest".into());
    }
    // SAFETY: `deserialize` runs these bytes as machine code. They are
    // ours: read from a directory only the daemon's user can write
    // (`trusted`, checked just before), written by `write_compiled` from
    // the component whose digest (the one its pin was checked against)
    // heads the file, and the code's digest was checked above on the very
    // bytes loaded here. wasmtime also checks its header and version.
    #[allow(unsafe_code)]
    let loaded = unsafe { Component::deserialize(engine, code) };
    match loaded {
        Ok(component) => Some(component),
        Err(error) => refuse(error.to_string()),
    }
}

/// Hands the heap that compiling freed back to the system. Compiling a
/// large component (18 MB of componentize-py output) takes a few hundred
/// MB of transient heap, which glibc's allocator otherwise keeps: measured,
/// a daemon with one Python provider sat at 350 MB RSS idle after a cold
/// compile, 55 MB after loading the same code from the disk cache.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only returns free pages of the allocator's
    // arenas to the kernel; it takes no pointers and is thread-safe.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Writes `component` to `file` (0600, via a temporary name), or logs why
/// not: the disk cache only saves time, so failing to fill it is no error.
fn write_compiled(component: &Component, file: &Path, source: &[u8; 32]) {
    let write = || -> std::io::Result<()> {
        let code = component.serialize().map_err(std::io::Error::other)?;
        let mut bytes = Vec::with_capacity(HEADER_LEN + code.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(source);
        bytes.extend_from_slice(&Sha256::digest(&code));
        bytes.extend_from_slice(&code);
        let temporary = file.with_extension(format!("tmp{}", std::process::id()));
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)?;
        std::io::Write::write_all(&mut out, &bytes)?;
        out.sync_all()?;
        std::fs::rename(&temporary, file)
    };
    if let Err(error) = write() {
        tracing::warn!(file = ?file, "could not write the compiled component: {error}");
    }
}
