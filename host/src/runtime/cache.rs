//! On-disk cache of compiled components, keyed by the component's content hash and
//! the engine's compatibility hash (wasmtime version and settings).
//!
//! Compiling a component takes tens of milliseconds for a small Rust guest and about
//! ten seconds for a Python or JavaScript one; loading a cached artifact takes well
//! under a millisecond, so every host keeps this cache.

use super::LogicHash;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use wasmtime::Engine;
use wasmtime::component::Component;

pub(crate) struct CompiledCache {
    dir: PathBuf,
    engine_key: String,
}

impl CompiledCache {
    pub(crate) fn new(dir: PathBuf, engine: &Engine) -> Self {
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        CompiledCache {
            dir,
            engine_key: format!("{:016x}", hasher.finish()),
        }
    }

    fn path_for(&self, hash: LogicHash) -> PathBuf {
        self.dir
            .join(format!("{}-{}.cwasm", hash.to_hex(), self.engine_key))
    }

    /// Load the compiled artifact for `bytes`, compiling and storing it on a miss.
    /// A cache that cannot be read or written only costs time: we fall back to
    /// compiling in memory.
    pub(crate) fn load_or_compile(
        &self,
        engine: &Engine,
        hash: LogicHash,
        bytes: &[u8],
    ) -> wasmtime::Result<Component> {
        let path = self.path_for(hash);
        if path.exists() && self.trusted(&path) {
            match deserialize(engine, &path) {
                Ok(component) => return Ok(component),
                Err(e) => tracing::warn!(
                    "compiled cache entry {} is unusable ({e:#}); recompiling",
                    path.display()
                ),
            }
        }
        let compiled = engine.precompile_component(bytes)?;
        if let Err(e) = self.store(&path, &compiled) {
            tracing::warn!("cannot write compiled cache entry {}: {e}", path.display());
        }
        deserialize_bytes(engine, &compiled)
    }

    /// Loading a cache entry runs its machine code, so only entries in a directory
    /// and file owned by this user and writable by nobody else are used.
    fn trusted(&self, path: &Path) -> bool {
        let me = rustix::process::getuid().as_raw();
        let private = |p: &Path| {
            std::fs::metadata(p)
                .map(|m| m.uid() == me && m.permissions().mode() & 0o022 == 0)
                .unwrap_or(false)
        };
        let ok = private(&self.dir) && private(path);
        if !ok {
            tracing::warn!(
                "ignoring compiled cache entry {}: it or its directory is not private to this user \
                 (fix with chmod 700 on the directory)",
                path.display()
            );
        }
        ok
    }

    fn store(&self, path: &Path, compiled: &[u8]) -> std::io::Result<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        // Write then rename, so a crash never leaves a truncated entry under the real
        // name; the temporary name is unique per process and per write.
        static WRITES: AtomicU64 = AtomicU64::new(0);
        let tmp = path.with_extension(format!(
            "tmp.{}.{}",
            std::process::id(),
            WRITES.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&tmp, compiled)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&tmp, path)
    }
}

#[allow(unsafe_code)]
fn deserialize(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: wasmtime requires the file to be a trusted artifact produced by
    // `precompile_component` of a compatible engine. `CompiledCache::trusted` checked
    // that the file and its directory belong to this user and nobody else can write
    // them; only `CompiledCache::store` writes there, with compiler output; wasmtime
    // itself checks the engine compatibility header.
    unsafe { Component::deserialize_file(engine, path) }
}

#[allow(unsafe_code)]
fn deserialize_bytes(engine: &Engine, compiled: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: `compiled` was produced by `precompile_component` on this very engine.
    unsafe { Component::deserialize(engine, compiled) }
}
