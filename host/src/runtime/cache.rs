//! On-disk cache of compiled components, keyed by the component's content hash and
//! the engine's compatibility hash (wasmtime version and settings).
//!
//! Compiling a component takes tens of milliseconds for a small Rust guest and about
//! ten seconds for a Python or JavaScript one; loading a cached artifact takes well
//! under a millisecond, so every host keeps this cache.

use super::LogicHash;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
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
        if path.exists() {
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

    fn store(&self, path: &Path, compiled: &[u8]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        // Write then rename, so a crash never leaves a truncated entry under the real name.
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, compiled)?;
        std::fs::rename(&tmp, path)
    }
}

#[allow(unsafe_code)]
fn deserialize(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: wasmtime requires the file to be a trusted artifact produced by
    // `precompile_component` of a compatible engine. The cache directory is private
    // to this user and is only ever written by `CompiledCache::store` with compiler
    // output; wasmtime itself checks the engine compatibility header.
    unsafe { Component::deserialize_file(engine, path) }
}

#[allow(unsafe_code)]
fn deserialize_bytes(engine: &Engine, compiled: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: `compiled` was produced by `precompile_component` on this very engine.
    unsafe { Component::deserialize(engine, compiled) }
}
