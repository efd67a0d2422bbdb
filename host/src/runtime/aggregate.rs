//! Gossip aggregate objects (world `aggregate-object` in
//! `wit/deps/object-0.1/object.wit`): pure `contribute`, `merge` and `estimate` functions run in the same sandbox as
//! replicas (no files, sockets or clocks; fuel and memory caps).
//!
//! The functions are meant to be pure, so one instance can serve every host of a
//! simulation and a trap costs nothing but a fresh instance. The host does not
//! enforce purity: a guest could keep data in its memory between calls (or draw
//! from WASI random, which is seeded once per instance). Such a guest only skews
//! its own aggregate; the sandbox limits still hold.
//!
//! Each call gets at most [`MAX_AGGREGATE_FUEL`] fuel whatever the replica limit
//! is: merging two sketches takes well under a million instructions. On a node
//! (`lo node --gossip`) calls run on the object executor under the object's
//! budgets; `lo gossip` and the simulator call them from the gossip node itself.

use super::sandbox::{self, EventClock, Limit, MemoryLimiter, SeededRandom, StderrTail};
use super::{Limits, LoadError, LogicHash};
use std::sync::{Arc, Mutex};
use wasmtime::component::{Component, InstancePre, Linker, ResourceTable};
use wasmtime::{Engine, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Host-side bindings generated from the `aggregate-object` world.
#[allow(missing_docs)]
mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "liveobjects:object/aggregate-object@0.1.0",
    });
}

use bindings::{AggregateObject, AggregateObjectIndices};

/// The interface an aggregate object must export.
pub const AGGREGATE_INTERFACE: &str = "liveobjects:object/aggregate@0.1.0";

/// Fuel cap per call into an aggregate (see the module docs).
pub const MAX_AGGREGATE_FUEL: u64 = 50_000_000;

/// Most bytes of a state passed into or accepted out of a guest; a state is one
/// gossip message's worth, so anything bigger is a bug or an attack.
pub const MAX_STATE_BYTES: usize = 8 * 1024;

pub(crate) struct AggregateState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
}

impl WasiView for AggregateState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

pub(crate) fn build_linker(engine: &Engine) -> wasmtime::Result<Linker<AggregateState>> {
    let mut linker = Linker::new(engine);
    super::add_sandboxed_wasi(&mut linker)?;
    Ok(linker)
}

/// Why a call into an aggregate object failed. The instance is replaced after a
/// trap or limit, so the next call starts clean.
#[derive(Debug, thiserror::Error)]
pub enum AggregateError {
    /// The guest trapped or hit a limit.
    #[error("aggregate object {object} failed during {during}: {message}")]
    Trap {
        /// The object's name.
        object: String,
        /// Which function.
        during: &'static str,
        /// The trap or limit.
        message: String,
    },
    /// The guest refused a state (it did not decode).
    #[error("aggregate object {object} refused a state during {during}: {reason}")]
    Refused {
        /// The object's name.
        object: String,
        /// Which function.
        during: &'static str,
        /// The guest's reason.
        reason: String,
    },
    /// A state was larger than [`MAX_STATE_BYTES`].
    #[error(
        "aggregate object {object}: a state of {size} bytes during {during} exceeds the \
         {MAX_STATE_BYTES}-byte cap"
    )]
    TooLarge {
        /// The object's name.
        object: String,
        /// Which function.
        during: &'static str,
        /// The state's size.
        size: usize,
    },
    /// A fresh instance could not be created (a host bug or an exhausted machine).
    #[error("aggregate object {object} cannot be instantiated: {message}")]
    Instantiate {
        /// The object's name.
        object: String,
        /// wasmtime's explanation.
        message: String,
    },
}

/// A loaded aggregate object: compiled, and known to export `aggregate`.
pub struct AggregateLogic {
    name: String,
    hash: LogicHash,
    engine: Engine,
    instance_pre: InstancePre<AggregateState>,
    indices: AggregateObjectIndices,
    limits: Limits,
}

impl std::fmt::Debug for AggregateLogic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AggregateLogic")
            .field("name", &self.name)
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

impl AggregateLogic {
    pub(crate) fn new(
        name: &str,
        hash: LogicHash,
        linker: &Linker<AggregateState>,
        component: &Component,
        engine: &Engine,
        limits: Limits,
    ) -> Result<Arc<Self>, LoadError> {
        let wrong = |reason: String| LoadError::WrongWorld {
            name: name.to_string(),
            reason,
        };
        let exports: Vec<String> = component
            .component_type()
            .exports(engine)
            .map(|(n, _)| n.to_string())
            .collect();
        if !exports.iter().any(|e| e == AGGREGATE_INTERFACE) {
            return Err(wrong(format!(
                "it does not export `{AGGREGATE_INTERFACE}`, so it is not a gossip aggregate \
                 object (it exports: {})",
                if exports.is_empty() {
                    "nothing".to_string()
                } else {
                    exports.join(", ")
                }
            )));
        }
        let instance_pre = linker
            .instantiate_pre(component)
            .map_err(|e| wrong(format!("its imports cannot be satisfied: {e:#}")))?;
        let indices = AggregateObjectIndices::new(&instance_pre).map_err(|e| {
            wrong(format!(
                "its `{AGGREGATE_INTERFACE}` export does not match: {e:#}"
            ))
        })?;
        Ok(Arc::new(AggregateLogic {
            name: name.to_string(),
            hash,
            engine: engine.clone(),
            instance_pre,
            indices,
            limits,
        }))
    }

    /// Fuel for one call: the replica limit, capped at [`MAX_AGGREGATE_FUEL`].
    fn fuel(&self) -> u64 {
        self.limits.fuel_per_call.min(MAX_AGGREGATE_FUEL)
    }

    /// The name it was loaded under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Content hash of the component bytes.
    pub fn hash(&self) -> LogicHash {
        self.hash
    }

    /// A sandboxed instance to call.
    pub fn instantiate(self: &Arc<Self>) -> Result<AggregateInstance, AggregateError> {
        let (store, bindings) = self.fresh()?;
        Ok(AggregateInstance {
            logic: self.clone(),
            store,
            bindings,
        })
    }

    fn fresh(&self) -> Result<(Store<AggregateState>, AggregateObject), AggregateError> {
        let clock = EventClock::default();
        let random = SeededRandom::new(self.name.as_bytes(), &Default::default());
        let state = AggregateState {
            wasi: sandbox::wasi_context(&clock, &random, 0, &StderrTail::default()),
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                memory_bytes: self.limits.memory_bytes,
                table_elements: self.limits.table_elements,
                granted: 0,
            },
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        let _ = store.set_fuel(self.fuel());
        store.set_epoch_deadline(super::deadline_ticks(&self.limits));
        let failed = |e: wasmtime::Error| AggregateError::Instantiate {
            object: self.name.clone(),
            message: super::explain_pool_limit(format!("{e:#}")),
        };
        let instance = self.instance_pre.instantiate(&mut store).map_err(failed)?;
        let bindings = self.indices.load(&mut store, &instance).map_err(failed)?;
        Ok((store, bindings))
    }
}

/// One sandboxed instance of an aggregate object.
pub struct AggregateInstance {
    logic: Arc<AggregateLogic>,
    store: Store<AggregateState>,
    bindings: AggregateObject,
}

impl AggregateInstance {
    /// The object's logic.
    pub fn logic(&self) -> &Arc<AggregateLogic> {
        &self.logic
    }

    /// This host's contribution for one epoch.
    pub fn contribute(&mut self, input: f64, seed: u64) -> Result<Vec<u8>, AggregateError> {
        let state = self.call("contribute", |store, b| {
            b.liveobjects_object0_1_0_aggregate()
                .call_contribute(store, input, seed)
        })?;
        self.check_size("contribute", state)
    }

    /// Merge two partial aggregates.
    pub fn merge(&mut self, a: &[u8], b: &[u8]) -> Result<Vec<u8>, AggregateError> {
        self.check_size("merge", a)?;
        self.check_size("merge", b)?;
        let merged = self
            .call("merge", |store, bi| {
                bi.liveobjects_object0_1_0_aggregate()
                    .call_merge(store, a, b)
            })?
            .map_err(|reason| self.refused("merge", reason))?;
        self.check_size("merge", merged)
    }

    /// The value a partial aggregate stands for.
    pub fn estimate(&mut self, state: &[u8]) -> Result<f64, AggregateError> {
        self.check_size("estimate", state)?;
        self.call("estimate", |store, b| {
            b.liveobjects_object0_1_0_aggregate()
                .call_estimate(store, state)
        })?
        .map_err(|reason| self.refused("estimate", reason))
    }

    fn refused(&self, during: &'static str, reason: String) -> AggregateError {
        AggregateError::Refused {
            object: self.logic.name.clone(),
            during,
            reason,
        }
    }

    fn check_size<B: AsRef<[u8]>>(
        &self,
        during: &'static str,
        state: B,
    ) -> Result<B, AggregateError> {
        let size = state.as_ref().len();
        if size > MAX_STATE_BYTES {
            return Err(AggregateError::TooLarge {
                object: self.logic.name.clone(),
                during,
                size,
            });
        }
        Ok(state)
    }

    fn call<R>(
        &mut self,
        during: &'static str,
        f: impl FnOnce(&mut Store<AggregateState>, &AggregateObject) -> wasmtime::Result<R>,
    ) -> Result<R, AggregateError> {
        let _ = self.store.set_fuel(self.logic.fuel());
        self.store
            .set_epoch_deadline(super::deadline_ticks(&self.logic.limits));
        match f(&mut self.store, &self.bindings) {
            Ok(value) => Ok(value),
            Err(err) => {
                let message = describe(&err, self.logic.fuel());
                // A trapped instance cannot be entered again; the functions are
                // pure, so a fresh one is an exact replacement.
                let (store, bindings) = self.logic.fresh()?;
                self.store = store;
                self.bindings = bindings;
                Err(AggregateError::Trap {
                    object: self.logic.name.clone(),
                    during,
                    message,
                })
            }
        }
    }
}

fn describe(err: &wasmtime::Error, fuel: u64) -> String {
    if let Some(limit) = err.chain().find_map(|c| c.downcast_ref::<Limit>()) {
        return limit.to_string();
    }
    if err
        .chain()
        .any(|c| c.downcast_ref::<Trap>() == Some(&Trap::OutOfFuel))
    {
        return Limit::Cpu { fuel }.to_string();
    }
    format!("{err:#}")
}

/// An instance shared by many gossip nodes (e.g. every node of a simulation, or
/// every group of one host), behind a lock.
#[derive(Clone)]
pub struct SharedAggregate(pub Arc<Mutex<AggregateInstance>>);

impl SharedAggregate {
    /// Share `instance`.
    pub fn new(instance: AggregateInstance) -> Self {
        SharedAggregate(Arc::new(Mutex::new(instance)))
    }

    fn instance(&self) -> std::sync::MutexGuard<'_, AggregateInstance> {
        self.0.lock().expect("aggregate instance poisoned")
    }

    /// [`AggregateInstance::contribute`] on the shared instance.
    pub fn contribute(&self, input: f64, seed: u64) -> Result<Vec<u8>, AggregateError> {
        self.instance().contribute(input, seed)
    }

    /// [`AggregateInstance::merge`] on the shared instance.
    pub fn merge(&self, a: &[u8], b: &[u8]) -> Result<Vec<u8>, AggregateError> {
        self.instance().merge(a, b)
    }

    /// [`AggregateInstance::estimate`] on the shared instance.
    pub fn estimate(&self, state: &[u8]) -> Result<f64, AggregateError> {
        self.instance().estimate(state)
    }
}

impl liveobjects_protocols::gossip::core::AggregateCode for SharedAggregate {
    type Error = AggregateError;

    fn contribute(&mut self, input: f64, seed: u64) -> Result<Vec<u8>, AggregateError> {
        SharedAggregate::contribute(self, input, seed)
    }

    fn merge(&mut self, a: &[u8], b: &[u8]) -> Result<Vec<u8>, AggregateError> {
        SharedAggregate::merge(self, a, b)
    }

    fn estimate(&mut self, state: &[u8]) -> Result<f64, AggregateError> {
        SharedAggregate::estimate(self, state)
    }
}

impl liveobjects_protocols::gossip::core::AggregateCode for AggregateInstance {
    type Error = AggregateError;

    fn contribute(&mut self, input: f64, seed: u64) -> Result<Vec<u8>, AggregateError> {
        AggregateInstance::contribute(self, input, seed)
    }

    fn merge(&mut self, a: &[u8], b: &[u8]) -> Result<Vec<u8>, AggregateError> {
        AggregateInstance::merge(self, a, b)
    }

    fn estimate(&mut self, state: &[u8]) -> Result<f64, AggregateError> {
        AggregateInstance::estimate(self, state)
    }
}
