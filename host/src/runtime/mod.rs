//! The WebAssembly runtime: loads object logic (components), checks that it
//! implements the liveobjects world, caches compiled code on disk by content hash,
//! and creates sandboxed [`Replica`]s.
//!
//! ```no_run
//! use liveobjects_host::runtime::{Runtime, RuntimeConfig, ReplicaIdentity};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let runtime = Runtime::new(RuntimeConfig::default())?;
//! let logic = runtime.load_file("counter.wasm".as_ref())?;
//! let mut replica = runtime.instantiate(&logic, ReplicaIdentity::local("counter", "me"))?;
//! replica.init(None)?;
//! # Ok(()) }
//! ```

mod aggregate;
mod cache;
mod interface;
mod lifecycle;
pub mod recorder;
pub mod replay;
mod replica;
pub(crate) mod sandbox;

pub use self::aggregate::{
    AGGREGATE_INTERFACE, AggregateError, AggregateInstance, AggregateLogic, MAX_STATE_BYTES,
    SharedAggregate,
};
pub use self::interface::{Method, MethodLookupError, ObjectInterface, type_name};
pub use self::replica::{
    AppliedEvent, CallOutcome, Delivery, MAX_BATCH_BYTES, MAX_BATCH_EVENTS, MemoryUse,
    Notification, Replica, ReplicaError, ReplicaIdentity, ReplicaStats,
};
pub use self::sandbox::Limit;

/// Where a replica announces the events it applies: made on the first
/// subscription (a broadcast channel preallocates its whole queue, which would
/// otherwise cost every idle object hundreds of KiB).
pub type AppliedTap = Arc<std::sync::OnceLock<tokio::sync::broadcast::Sender<AppliedEvent>>>;

use self::cache::CompiledCache;
use self::lifecycle::LifecycleIndices;
use self::replica::ReplicaState;
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine};

/// Host-side bindings for objects built against 0.1 of the contract
/// (`wit/deps/object-0.1/object.wit`).
#[allow(missing_docs)]
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "liveobjects:object/object@0.1.0",
        imports: { default: trappable },
    });
}

/// Host-side bindings for objects built against 0.2 (`wit/deps/object-0.2`), which
/// 0.3 objects export too (0.3 adds `evolve`, called by its export index): 0.1's host
/// interface and types, plus `deliver-batch`.
#[allow(missing_docs)]
pub mod bindings_0_2 {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "liveobjects:object/object@0.2.0",
        imports: { default: trappable },
        with: {
            "liveobjects:object/types@0.1.0": super::bindings::liveobjects::object0_1_0::types,
            "liveobjects:object/host@0.1.0": super::bindings::liveobjects::object0_1_0::host,
        },
    });
}

pub use self::bindings::liveobjects::object0_1_0::types::{Event, LogLevel, View};
pub use self::lifecycle::{BatchedEvent, EventBatch, Rejection};

/// The lifecycle interface of 0.1 objects.
pub const LIFECYCLE_INTERFACE: &str = "liveobjects:object/lifecycle@0.1.0";
/// The lifecycle interface of 0.2 objects (0.1's plus `deliver-batch`).
pub const LIFECYCLE_INTERFACE_0_2: &str = "liveobjects:object/lifecycle@0.2.0";
/// The interface of 0.3 objects' optional upgrade step (`migrate`).
pub const EVOLVE_INTERFACE: &str = "liveobjects:object/evolve@0.3.0";
/// The host interface objects may import (the same in 0.1, 0.2 and 0.3).
pub const HOST_INTERFACE: &str = "liveobjects:object/host@0.1.0";

/// Per-replica resource limits. Every call into a guest runs under them.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Cap on a replica's linear memory, in bytes.
    pub memory_bytes: usize,
    /// Cap on table elements (function pointers) per table.
    pub table_elements: usize,
    /// CPU budget of one call, in wasmtime fuel units (roughly one per instruction).
    /// Fuel is deterministic, so a call that runs out does so on every replica.
    pub fuel_per_call: u64,
    /// Largest payload one `multicast` may carry, in bytes.
    pub multicast_max_bytes: usize,
    /// Most `multicast`s one call may make.
    pub multicast_max_per_call: usize,
    /// Wall-clock bound on one call (wasmtime epoch interruption, checked every
    /// [`EPOCH_TICK`]). Fuel bounds instructions deterministically; this bounds the
    /// time a call may hold a worker whatever it does (a host call that blocks, a
    /// slow machine). Unlike fuel it is not deterministic, so a replica that hits it
    /// while applying an event is taken out of service rather than left to diverge.
    pub call_deadline: std::time::Duration,
}

/// How often the engine's epoch advances: the granularity of [`Limits::call_deadline`].
pub const EPOCH_TICK: std::time::Duration = std::time::Duration::from_millis(10);

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 64 << 20,
            table_elements: 100_000,
            fuel_per_call: 2_000_000_000,
            multicast_max_bytes: 64 << 10,
            multicast_max_per_call: 1024,
            call_deadline: std::time::Duration::from_secs(2),
        }
    }
}

/// How to build a [`Runtime`].
#[derive(Debug, Clone, Default)]
pub struct RuntimeConfig {
    /// Where compiled components are cached (by content hash). `None`: no disk cache.
    pub cache_dir: Option<PathBuf>,
    /// Limits applied to every replica.
    pub limits: Limits,
    /// The object executor's workers, mailboxes and default budgets.
    pub executor: crate::executor::ExecutorConfig,
    /// Preallocate instance slots (wasmtime's pooling allocator) for this many
    /// replicas and aggregates at once; `None`: allocate each on demand. `lo node`
    /// pools (`--max-instances`); in-process users need not.
    pub pooled_instances: Option<u32>,
}

/// Core instances (a component's modules and shims) and tables one pooled
/// component may use, on average: a Rust object has about 4 core instances; a
/// Python one (componentize-py) several more. Past it, instantiation fails with
/// wasmtime's "maximum concurrent core instance limit" error naming the pool.
const POOL_CORE_INSTANCES_PER_OBJECT: u32 = 16;
/// Linear memories per pooled object, on average (one per memory-defining module).
const POOL_MEMORIES_PER_OBJECT: u32 = 2;
/// Address space the pool may reserve: half of x86-64's 128 TiB for user space.
const POOL_ADDRESS_SPACE: u64 = 64 << 40;

impl RuntimeConfig {
    /// The default configuration with the compiled-component cache in the user's
    /// cache directory (`$XDG_CACHE_HOME/liveobjects/compiled` or
    /// `~/.cache/liveobjects/compiled`).
    pub fn with_user_cache() -> Self {
        RuntimeConfig {
            cache_dir: default_cache_dir(),
            ..Default::default()
        }
    }
}

fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("liveobjects").join("compiled"))
}

/// The SHA-256 of a component's bytes: how logic is named in the directory and cache.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LogicHash(pub [u8; 32]);

impl LogicHash {
    /// Hash component bytes.
    pub fn of(bytes: &[u8]) -> Self {
        LogicHash(Sha256::digest(bytes).into())
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for LogicHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for LogicHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LogicHash({})", self.to_hex())
    }
}

/// Why a component could not be loaded. None of these affects other loaded objects.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The bytes are not a WebAssembly component at all.
    #[error("{name} is not a WebAssembly component: {reason}")]
    NotAComponent {
        /// File or object name.
        name: String,
        /// What it looks like instead.
        reason: String,
    },
    /// A component, but not one that implements the liveobjects world.
    #[error(
        "{name} does not implement the liveobjects world (liveobjects:object/object@0.3.0, \
         @0.2.0 or @0.1.0): {reason}. Build it against wit/object.wit (in Rust, with the \
         liveobjects-guest SDK)"
    )]
    WrongWorld {
        /// File or object name.
        name: String,
        /// What is missing or mismatched.
        reason: String,
    },
    /// The component is malformed or uses features the host does not enable.
    #[error("{name} failed to compile: {message}")]
    Compile {
        /// File or object name.
        name: String,
        /// wasmtime's explanation.
        message: String,
    },
    /// The wasmtime engine could not be set up (a host bug or unsupported machine).
    #[error("cannot set up the WebAssembly engine: {0}")]
    Engine(String),
}

/// Loaded object logic: a compiled component known to implement our world, with
/// its natural interface. Cheap to share; instantiate it into many replicas.
pub struct Logic {
    name: String,
    hash: LogicHash,
    size: usize,
    instance_pre: wasmtime::component::InstancePre<ReplicaState>,
    indices: LifecycleIndices,
    interface: ObjectInterface,
}

impl Logic {
    /// The name it was loaded under (file name or object name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Content hash of the component bytes.
    pub fn hash(&self) -> LogicHash {
        self.hash
    }

    /// Size of the component in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The object's methods and world.
    pub fn interface(&self) -> &ObjectInterface {
        &self.interface
    }
}

impl fmt::Debug for Logic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Logic")
            .field("name", &self.name)
            .field("hash", &self.hash)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// One wasmtime engine, linker and compiled-code cache, shared by every replica of
/// every object on this host.
pub struct Runtime {
    engine: Engine,
    linker: Linker<ReplicaState>,
    aggregate_linker: Linker<aggregate::AggregateState>,
    cache: Option<CompiledCache>,
    limits: Limits,
    executor_config: crate::executor::ExecutorConfig,
    executor: std::sync::OnceLock<crate::executor::Executor>,
    /// Where replicas keep their flight recordings, if anywhere.
    recording: Option<recorder::RecordSettings>,
    /// Stops the epoch ticker thread when the runtime is dropped.
    _ticker: EpochTicker,
}

/// A thread that advances the engine's epoch every [`EPOCH_TICK`], so a guest call
/// past its deadline traps (see [`Limits::call_deadline`]). One per runtime: a
/// per-node timer, not one per object.
struct EpochTicker {
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl EpochTicker {
    fn start(engine: &Engine) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let engine = engine.clone();
        let stopped = stop.clone();
        let spawned = std::thread::Builder::new()
            .name("lo-epoch".into())
            .spawn(move || {
                while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            });
        if let Err(e) = spawned {
            // Without the ticker deadlines never fire; fuel still bounds every call.
            tracing::error!("cannot start the epoch ticker (call deadlines are off): {e}");
        }
        EpochTicker { stop }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Add what to do to wasmtime's error when a pooled runtime is full.
pub(crate) fn explain_pool_limit(message: String) -> String {
    if message.contains("concurrent") && message.contains("limit") {
        format!(
            "{message}: this node runs as many sandboxes as it preallocated; leave an \
             object or restart the node with a higher `lo node --max-instances`"
        )
    } else {
        message
    }
}

/// Epoch ticks a call may run for under `limits` (at least one).
pub(crate) fn deadline_ticks(limits: &Limits) -> u64 {
    (limits.call_deadline.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64
}

impl Runtime {
    /// Set up the engine (fuel metering and epoch deadlines on, component model on,
    /// no async concurrency) and the linker with our host interface and a sandboxed WASI.
    pub fn new(config: RuntimeConfig) -> Result<Self, LoadError> {
        let mut wasm_config = Config::new();
        wasm_config
            .consume_fuel(true)
            .epoch_interruption(true)
            .wasm_component_model(true)
            // Component-model async is unused; with it on every call costs about twice as much.
            .concurrency_support(false)
            .cranelift_opt_level(wasmtime::OptLevel::Speed)
            // Replicas on different CPUs must compute the same bits: canonical NaNs and
            // the deterministic flavour of relaxed SIMD.
            .cranelift_nan_canonicalization(true)
            .relaxed_simd_deterministic(true);
        if let Some(instances) = config.pooled_instances {
            // Slots are reserved address space, not memory: each linear memory's slot
            // keeps the default 4 GiB reservation (so bounds checks stay elided),
            // and pages are committed only when a guest touches them and decommitted
            // (kept copy-on-write from the module's image) when its replica goes.
            // Instantiation then maps nothing, and a reused slot is warm.
            let instances = instances.max(1);
            let per_object = u64::from(POOL_MEMORIES_PER_OBJECT) * ((4 << 30) + (32 << 20));
            let most = POOL_ADDRESS_SPACE / per_object;
            if u64::from(instances) > most {
                return Err(LoadError::Engine(format!(
                    "{instances} pooled sandboxes would reserve {} TiB of address space \
                     (about 8 GiB each); use at most {most} (lo node --max-instances)",
                    (u64::from(instances) * per_object) >> 40
                )));
            }
            let mut pool = wasmtime::PoolingAllocationConfig::new();
            pool.total_component_instances(instances)
                .total_core_instances(instances.saturating_mul(POOL_CORE_INSTANCES_PER_OBJECT))
                .total_memories(instances.saturating_mul(POOL_MEMORIES_PER_OBJECT))
                .total_tables(instances.saturating_mul(POOL_CORE_INSTANCES_PER_OBJECT))
                .max_memory_size(config.limits.memory_bytes)
                .table_elements(config.limits.table_elements);
            wasm_config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        }
        let engine = Engine::new(&wasm_config).map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        let linker = build_linker(&engine).map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        let aggregate_linker =
            aggregate::build_linker(&engine).map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        let cache = config.cache_dir.map(|dir| CompiledCache::new(dir, &engine));
        let ticker = EpochTicker::start(&engine);
        Ok(Runtime {
            _ticker: ticker,
            engine,
            linker,
            aggregate_linker,
            cache,
            limits: config.limits,
            executor_config: config.executor,
            executor: std::sync::OnceLock::new(),
            recording: None,
        })
    }

    /// Replace the executor's default budgets (before its first use; `lo node`
    /// does this from its `--budget-*` flags). Returns false if the executor has
    /// already started, in which case nothing changed.
    pub fn set_budgets(&mut self, budgets: crate::executor::Budgets) -> bool {
        if self.executor.get().is_some() {
            return false;
        }
        self.executor_config.budgets = budgets;
        true
    }

    /// Hibernate objects idle this long (before the executor's first use; `lo
    /// node --hibernate-after`). Returns false if the executor has already
    /// started, in which case nothing changed.
    pub fn set_hibernation(&mut self, after: Option<std::time::Duration>) -> bool {
        if self.executor.get().is_some() {
            return false;
        }
        self.executor_config.hibernate_after = after;
        true
    }

    /// Record every replica made from now on under `settings.dir` (`lo node
    /// --record`; see [`recorder`]); logic loaded from now on is kept there too.
    pub fn set_recording(&mut self, settings: Option<recorder::RecordSettings>) {
        self.recording = settings;
    }

    /// The node's object executor, started on first use: every networked driver
    /// runs its replicas' guest calls there, never on its own tasks.
    pub fn executor(&self) -> &crate::executor::Executor {
        self.executor
            .get_or_init(|| crate::executor::Executor::start(self.executor_config.clone()))
    }

    /// The limits every replica runs under.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Load a component from a file (name for errors: the path).
    pub fn load_file(&self, path: &Path) -> Result<Arc<Logic>, LoadError> {
        self.load_bytes(&path.display().to_string(), &read_component(path)?)
    }

    /// Load a component from bytes: check it is a component, compile it (or take the
    /// compiled code from the cache), and check it implements our world.
    pub fn load_bytes(&self, name: &str, bytes: &[u8]) -> Result<Arc<Logic>, LoadError> {
        let (hash, component) = self.compile(name, bytes)?;
        if let Some(recording) = &self.recording
            && let Err(e) = recorder::save_logic(&recording.dir, &hash.0, bytes)
        {
            // The recording stays useful: `lo replay --logic FILE` takes the logic.
            tracing::warn!("cannot keep a copy of {name} beside the recordings: {e}");
        }
        let interface = ObjectInterface::of(&self.engine, &component);
        let Some(lifecycle) = interface.lifecycle else {
            return Err(LoadError::WrongWorld {
                name: name.to_string(),
                reason: format!(
                    "it exports neither `{LIFECYCLE_INTERFACE_0_2}` nor `{LIFECYCLE_INTERFACE}` \
                     (it exports: {})",
                    if interface.exports.is_empty() {
                        "nothing".to_string()
                    } else {
                        interface.exports.join(", ")
                    }
                ),
            });
        };
        if interface.malformed_evolve {
            return Err(LoadError::WrongWorld {
                name: name.to_string(),
                reason: format!(
                    "it exports `{EVOLVE_INTERFACE}` without a `migrate: func(from-version: u64, \
                     snapshot: list<u8>) -> result<list<u8>, string>`"
                ),
            });
        }
        let instance_pre =
            self.linker
                .instantiate_pre(&component)
                .map_err(|e| LoadError::WrongWorld {
                    name: name.to_string(),
                    reason: format!("its imports cannot be satisfied: {e:#}"),
                })?;
        let indices =
            LifecycleIndices::new(lifecycle, &instance_pre).map_err(|e| LoadError::WrongWorld {
                name: name.to_string(),
                reason: format!("its `{lifecycle}` export does not match: {e:#}"),
            })?;
        Ok(Arc::new(Logic {
            name: name.to_string(),
            hash,
            size: bytes.len(),
            instance_pre,
            indices,
            interface,
        }))
    }

    /// Check that `bytes` are a component, and compile them (or take the compiled
    /// code from the cache).
    fn compile(&self, name: &str, bytes: &[u8]) -> Result<(LogicHash, Component), LoadError> {
        check_component_header(name, bytes)?;
        let hash = LogicHash::of(bytes);
        let component = match &self.cache {
            Some(cache) => cache.load_or_compile(&self.engine, hash, bytes),
            None => Component::new(&self.engine, bytes),
        }
        .map_err(|e| LoadError::Compile {
            name: name.to_string(),
            message: format!("{e:#}"),
        })?;
        Ok((hash, component))
    }

    /// Load a gossip aggregate object (world `aggregate-object`) from bytes.
    pub fn load_aggregate_bytes(
        &self,
        name: &str,
        bytes: &[u8],
    ) -> Result<Arc<AggregateLogic>, LoadError> {
        let (hash, component) = self.compile(name, bytes)?;
        aggregate::AggregateLogic::new(
            name,
            hash,
            &self.aggregate_linker,
            &component,
            &self.engine,
            self.limits.clone(),
        )
    }

    /// Load a gossip aggregate object from a file.
    pub fn load_aggregate_file(&self, path: &Path) -> Result<Arc<AggregateLogic>, LoadError> {
        self.load_aggregate_bytes(&path.display().to_string(), &read_component(path)?)
    }

    /// Create a replica of `logic` in a fresh sandbox. Call [`Replica::init`] next.
    pub fn instantiate(
        &self,
        logic: &Arc<Logic>,
        identity: ReplicaIdentity,
    ) -> Result<Replica, ReplicaError> {
        let recorder = match &self.recording {
            Some(settings) => Some(
                recorder::Recorder::open(settings, &identity.object, &identity.member).map_err(
                    |e| ReplicaError::Instantiate {
                        object: identity.object.clone(),
                        message: format!(
                            "cannot open its flight recording: {e} (check `lo node --record`)"
                        ),
                    },
                )?,
            ),
            None => None,
        };
        let mut replica = Replica::new(&self.engine, logic.clone(), identity, self.limits.clone())?;
        if let Some(recorder) = recorder {
            replica.record_to(recorder);
        }
        Ok(replica)
    }
}

fn read_component(path: &Path) -> Result<Vec<u8>, LoadError> {
    std::fs::read(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn build_linker(engine: &Engine) -> wasmtime::Result<Linker<ReplicaState>> {
    let mut linker = Linker::new(engine);
    // 0.2 objects import the same host interface, so 0.1's bindings link both.
    bindings::Object::add_to_linker::<ReplicaState, HasSelf<ReplicaState>>(&mut linker, |s| s)?;
    add_sandboxed_wasi(&mut linker)?;
    Ok(linker)
}

/// Add WASI as a guest sees it: capability-free (see [`sandbox`]), and a guest that
/// tries to sleep traps, because it must never block its host on a timer.
pub(crate) fn add_sandboxed_wasi<T: wasmtime_wasi::WasiView + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    linker.allow_shadowing(true);
    let mut clock = linker.instance("wasi:clocks/monotonic-clock@0.2.12")?;
    clock.func_wrap(
        "subscribe-duration",
        |_, (_,): (u64,)| -> wasmtime::Result<(wasmtime::component::Resource<wasmtime_wasi::p2::DynPollable>,)> {
            Err(wasmtime::Error::new(Limit::Blocking))
        },
    )?;
    clock.func_wrap(
        "subscribe-instant",
        |_, (_,): (u64,)| -> wasmtime::Result<(wasmtime::component::Resource<wasmtime_wasi::p2::DynPollable>,)> {
            Err(wasmtime::Error::new(Limit::Blocking))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Tell apart "not wasm at all", "a core module" and "a component" before handing
/// bytes to the compiler, whose error for these cases is less helpful.
fn check_component_header(name: &str, bytes: &[u8]) -> Result<(), LoadError> {
    const MAGIC: &[u8] = b"\0asm";
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        let reason = if bytes.is_empty() {
            "the file is empty".to_string()
        } else {
            "it does not start with the WebAssembly magic bytes `\\0asm`".to_string()
        };
        return Err(LoadError::NotAComponent {
            name: name.to_string(),
            reason,
        });
    }
    // Core modules have version 1 and layer 0; components have layer 1.
    let layer = u16::from_le_bytes([bytes[6], bytes[7]]);
    if layer == 0 {
        return Err(LoadError::NotAComponent {
            name: name.to_string(),
            reason: "it is a core WebAssembly module; build for wasm32-wasip2 or wrap it \
                     with `wasm-tools component new`"
                .to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_module_is_named_as_such() {
        let core = b"\0asm\x01\0\0\0";
        let err = check_component_header("m.wasm", core).unwrap_err();
        assert!(err.to_string().contains("core WebAssembly module"), "{err}");
    }

    #[test]
    fn text_file_is_not_a_component() {
        let err = check_component_header("notes.txt", b"hello world").unwrap_err();
        assert!(matches!(err, LoadError::NotAComponent { .. }));
        assert!(err.to_string().contains("notes.txt"), "{err}");
    }

    /// A pooled runtime runs every shipped object and aggregate, reuses slots when
    /// replicas go (more instantiations than slots), and refuses one past the pool
    /// with an error rather than growing.
    #[test]
    fn pooled_runtime_reuses_slots_and_refuses_past_the_pool() {
        let slots = 3;
        let runtime = Runtime::new(RuntimeConfig {
            pooled_instances: Some(slots),
            ..RuntimeConfig::default()
        })
        .unwrap();
        for (name, bytes) in liveobjects_objects::SHIPPED {
            for round in 0..(slots + 2) {
                if ["census", "average", "max"].contains(name) {
                    let logic = runtime.load_aggregate_bytes(name, bytes).unwrap();
                    let mut instance = logic
                        .instantiate()
                        .unwrap_or_else(|e| panic!("aggregate {name}, round {round}: {e}"));
                    instance.contribute(1.0, 7).unwrap();
                } else {
                    let logic = runtime.load_bytes(name, bytes).unwrap();
                    let mut replica = runtime
                        .instantiate(&logic, ReplicaIdentity::local(*name, "m1"))
                        .unwrap_or_else(|e| panic!("{name}, round {round}: {e}"));
                    replica.init(None).unwrap();
                }
            }
        }
        let logic = runtime
            .load_bytes("counter", liveobjects_objects::COUNTER_BYTES)
            .unwrap();
        let held: Vec<Replica> = (0..slots)
            .map(|i| {
                let mut r = runtime
                    .instantiate(&logic, ReplicaIdentity::local("counter", format!("m{i}")))
                    .unwrap();
                r.init(None).unwrap();
                r
            })
            .collect();
        let past = runtime
            .instantiate(&logic, ReplicaIdentity::local("counter", "one-too-many"))
            .and_then(|mut r| r.init(None).map(|_| r));
        let err = past.err().expect("a replica past the pool must be refused");
        let message = err.to_string();
        assert!(message.contains("counter"), "{message}");
        assert!(message.contains("--max-instances"), "{message}");
        drop(held);
    }

    #[test]
    fn logic_hash_is_sha256_hex() {
        assert_eq!(
            LogicHash::of(b"").to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
