//! One replica of one object: a wasmtime store and instance in a sandbox, plus what
//! it needs to survive a misbehaving guest.
//!
//! After a trap (including a limit hit) a wasmtime instance cannot be entered again.
//! A replica therefore keeps a *checkpoint* (the snapshot it last started from) and
//! the log of events applied since; on a trap it re-instantiates from the checkpoint
//! and replays the log, so the state is exactly what it was before the failing call.
//! The log is folded into a fresh checkpoint every [`CHECKPOINT_EVERY`] entries.

use super::lifecycle::{self, Lifecycle, Rejection};
use super::recorder::{Frame, Outcome, RecordedCall, RecordedEvent, Recorder, Start, StartReason};
use super::sandbox::{
    self, BatchWatch, EventClock, Limit, MemoryLimiter, SeededRandom, StderrTail,
};
use super::{Event, Limits, LogLevel, Logic, Method, View};
use std::sync::Arc;
use wasmtime::component::{Instance, ResourceTable, Val};
use wasmtime::{Engine, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Log entries folded into a new checkpoint after this many.
pub const CHECKPOINT_EVERY: usize = 1024;
/// Most events one `deliver-batch` call carries.
pub const MAX_BATCH_EVENTS: usize = 1024;
/// A batch redone one by one may take this many call deadlines in all before the
/// replica goes out of service.
const REDO_DEADLINES: u32 = 10;
/// Most payload bytes one `deliver-batch` call carries (a single larger event
/// still goes, alone).
pub const MAX_BATCH_BYTES: usize = 256 << 10;
/// Most notifications kept per call; more are dropped (and counted in the log).
const MAX_NOTIFICATIONS_PER_CALL: usize = 1024;
/// Longest log line or notification text kept from a guest.
const MAX_GUEST_TEXT: usize = 4096;

/// Which object a replica belongs to and which member runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaIdentity {
    /// The object's name (e.g. `lo://demo/rooms/lobby`, or a local name).
    pub object: String,
    /// This member's identity (what `self-id` returns and events carry as sender).
    pub member: String,
}

impl ReplicaIdentity {
    /// An identity for local, in-process use.
    pub fn local(object: impl Into<String>, member: impl Into<String>) -> Self {
        ReplicaIdentity {
            object: object.into(),
            member: member.into(),
        }
    }
}

/// A notification a guest raised with `notify` (local, not replicated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// What changed.
    pub topic: String,
    /// Free text.
    pub detail: String,
}

/// What came out of a successful method call.
#[derive(Debug, Clone)]
pub struct CallOutcome {
    /// The method's results.
    pub results: Vec<Val>,
    /// Payloads the call multicast, in order (the driver must send them).
    pub multicasts: Vec<Vec<u8>>,
    /// Notifications the call raised.
    pub notifications: Vec<Notification>,
}

impl CallOutcome {
    /// The results in WAVE text form.
    pub fn results_wave(&self) -> Vec<String> {
        self.results.iter().map(val_to_wave).collect()
    }
}

/// Render a value in WAVE text form.
pub fn val_to_wave(val: &Val) -> String {
    wasmtime::component::wasm_wave::to_string(val).unwrap_or_else(|e| format!("<{e}>"))
}

/// What came out of delivering one event.
#[derive(Debug, Clone, Default)]
pub struct Delivery {
    /// `Some(reason)` if the object rejected the event (its state is unchanged).
    pub rejected: Option<String>,
    /// Payloads the object multicast while handling the event.
    pub multicasts: Vec<Vec<u8>>,
    /// Notifications it raised.
    pub notifications: Vec<Notification>,
}

/// Why a replica operation failed. After a trap or limit the replica has already
/// been rolled back to its state before the failing operation and can be used again.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// The guest exceeded a limit and was stopped; state rolled back.
    #[error("object {object} was stopped during {during}: {limit}")]
    LimitExceeded {
        /// The object.
        object: String,
        /// Which limit.
        limit: Limit,
        /// What it was doing.
        during: String,
    },
    /// The guest trapped (a panic, `unreachable`, a bad memory access...); state
    /// rolled back.
    #[error("object {object} trapped during {during}: {message}")]
    Trap {
        /// The object.
        object: String,
        /// What it was doing.
        during: String,
        /// The trap and what the guest printed to stderr.
        message: String,
    },
    /// `init` refused the snapshot.
    #[error("object {object} refused to start from its snapshot: {message}")]
    InitRejected {
        /// The object.
        object: String,
        /// The guest's reason.
        message: String,
    },
    /// The new logic of a live upgrade refused the state it was to take over.
    #[error("version {version} of object {object} refused to take over its state: {message}")]
    UpgradeRefused {
        /// The object.
        object: String,
        /// The record version of the new logic.
        version: u64,
        /// Which step refused, and the guest's reason.
        message: String,
    },
    /// A method name that the object does not export.
    #[error("object {object} has no method `{method}`; its methods are: {available}")]
    NoSuchMethod {
        /// The object.
        object: String,
        /// What was asked for.
        method: String,
        /// What exists.
        available: String,
    },
    /// A method name exported by several interfaces.
    #[error("method `{method}` of {object} is ambiguous; use one of: {candidates}")]
    AmbiguousMethod {
        /// The object.
        object: String,
        /// What was asked for.
        method: String,
        /// Qualified names that work.
        candidates: String,
    },
    /// Wrong number of arguments.
    #[error("`{signature}` of {object} takes {expected} argument(s), got {got}")]
    ArgumentCount {
        /// The object.
        object: String,
        /// The method's WIT signature.
        signature: String,
        /// Parameters it takes.
        expected: usize,
        /// Arguments given.
        got: usize,
    },
    /// An argument that does not parse as the parameter's type.
    #[error("{0}")]
    BadArgument(Box<ArgumentProblem>),
    /// The replica could not be (re)created; it is unusable.
    #[error("object {object} could not be instantiated: {message}")]
    Instantiate {
        /// The object.
        object: String,
        /// Why.
        message: String,
    },
    /// A replica that could not be rolled back after a failure; it refuses all work
    /// (re-create it from a snapshot, e.g. by rejoining).
    #[error("object {object} is out of service: {reason}")]
    Broken {
        /// The object.
        object: String,
        /// What broke it.
        reason: String,
    },
    /// The host took the object out of service on this node (a budget exceeded, a
    /// deadline hit while applying an event, or it left); nothing runs any more.
    #[error("{object} is quarantined on this node: {reason}")]
    Quarantined {
        /// The object.
        object: String,
        /// Which limit, e.g. `exceeded 2,000 multicasts/s made while applying events`.
        reason: String,
    },
    /// Used before `init`.
    #[error("object {object} was used before init")]
    NotInitialized {
        /// The object.
        object: String,
    },
}

/// Why an argument was refused (boxed inside [`ReplicaError::BadArgument`]).
#[derive(Debug, thiserror::Error)]
#[error(
    "argument {position} of `{signature}` ({param}: {ty}) is not valid: {detail} \
     (got `{text}`; values are written in WAVE, e.g. 5, \"text\", [1, 2], {{a: 1}})"
)]
pub struct ArgumentProblem {
    /// The method's WIT signature.
    pub signature: String,
    /// 1-based position.
    pub position: usize,
    /// Parameter name.
    pub param: String,
    /// Parameter type.
    pub ty: String,
    /// The text given.
    pub text: String,
    /// Parser's explanation.
    pub detail: String,
}

/// Counters a replica keeps about itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicaStats {
    /// Events applied (accepted by the object).
    pub events_applied: u64,
    /// Events the object rejected.
    pub events_rejected: u64,
    /// Events refused because delivering them trapped or hit a limit.
    pub events_failed: u64,
    /// Times the replica was rebuilt after a trap.
    pub recoveries: u64,
    /// Multicasts the object originated from method calls (updates).
    pub multicasts_from_calls: u64,
    /// Multicasts it originated while applying events or views: how a chain
    /// reaction across replicas spreads.
    pub multicasts_from_events: u64,
    /// Bytes of every multicast it originated.
    pub multicast_bytes: u64,
    /// `deliver-batch` calls whose events stood (each applied several events).
    pub batches: u64,
    /// Times it hibernated (gave back its sandbox until the next call or event).
    pub hibernations: u64,
    /// Times its replicated state may have changed: every `init`, applied or
    /// rejected event and view change (what a digest of its state must follow).
    pub state_changes: u64,
}

/// An object's memory against its cap: the cap covers its sandbox's linear
/// memory and what the host holds for it (checkpoints, queued work, snapshots in
/// flight) together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryUse {
    /// Bytes of linear memory granted to its sandbox.
    pub sandbox: usize,
    /// Bytes the replica itself keeps on the host side (its rollback checkpoint).
    pub host: usize,
    /// The cap on both together.
    pub cap: usize,
}

pub(crate) struct ReplicaState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    identity: ReplicaIdentity,
    view: View,
    multicast_max_bytes: usize,
    multicast_max_per_call: usize,
    outbox: Vec<Vec<u8>>,
    notifications: Vec<Notification>,
    dropped_notifications: usize,
    clock: EventClock,
    random: SeededRandom,
    watch: BatchWatch,
    stderr: StderrTail,
}

impl WasiView for ReplicaState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

fn clip(mut text: String) -> String {
    if text.len() > MAX_GUEST_TEXT {
        let mut cut = MAX_GUEST_TEXT;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

impl super::bindings::liveobjects::object0_1_0::types::Host for ReplicaState {}

impl super::bindings::liveobjects::object0_1_0::host::Host for ReplicaState {
    fn multicast(&mut self, payload: Vec<u8>) -> wasmtime::Result<()> {
        if payload.len() > self.multicast_max_bytes {
            return Err(wasmtime::Error::new(Limit::MulticastSize {
                limit: self.multicast_max_bytes,
                size: payload.len(),
            }));
        }
        if self.outbox.len() >= self.multicast_max_per_call {
            return Err(wasmtime::Error::new(Limit::MulticastCount {
                limit: self.multicast_max_per_call,
            }));
        }
        self.outbox.push(payload);
        Ok(())
    }

    fn self_id(&mut self) -> wasmtime::Result<String> {
        Ok(self.identity.member.clone())
    }

    fn current_view(&mut self) -> wasmtime::Result<View> {
        Ok(self.view.clone())
    }

    fn notify(&mut self, topic: String, detail: String) -> wasmtime::Result<()> {
        if self.notifications.len() >= MAX_NOTIFICATIONS_PER_CALL {
            self.dropped_notifications += 1;
        } else {
            self.notifications.push(Notification {
                topic: clip(topic),
                detail: clip(detail),
            });
        }
        Ok(())
    }

    fn log(&mut self, level: LogLevel, message: String) -> wasmtime::Result<()> {
        let object = &self.identity.object;
        let message = clip(message);
        match level {
            LogLevel::Trace => tracing::trace!(object, "{message}"),
            LogLevel::Debug => tracing::debug!(object, "{message}"),
            LogLevel::Info => tracing::info!(object, "{message}"),
            LogLevel::Warn => tracing::warn!(object, "{message}"),
            LogLevel::Error => tracing::error!(object, "{message}"),
        }
        Ok(())
    }
}

/// Each event's rejection reason from what `deliver-batch` returned, or `None` if
/// that names an event outside the batch or one twice (a broken guest: its batch
/// is redone one by one).
fn sort_rejections(rejections: Vec<Rejection>, events: usize) -> Option<Vec<Option<String>>> {
    let mut rejected = vec![None; events];
    for Rejection { index, reason } in rejections {
        let slot = rejected.get_mut(usize::try_from(index).ok()?)?;
        if slot.replace(reason).is_some() {
            return None;
        }
    }
    Some(rejected)
}

/// What a call's random stream is seeded from: the object's name plus this.
/// Everything but `Call` is identical on every replica.
enum Seed<'a> {
    Init,
    Event(&'a Event),
    View(u64),
    Snapshot,
    /// Replaying a batch (which read no randomness the first time).
    Batch,
    /// A local method call (n-th on this replica): only this replica runs it.
    Call(u64),
}

/// What the replay log holds: everything that changed the state since the checkpoint,
/// with what the guest could observe at the time (the view, and the clock for views).
#[derive(Clone)]
enum Applied {
    Event(Event),
    /// Events applied in one `deliver-batch` call that read no clock or
    /// randomness (otherwise it would have been redone one by one): replayed as
    /// the same batch.
    Batch(lifecycle::EventBatch),
    View {
        view: View,
        time_ms: u64,
    },
}

impl Applied {
    /// How many state changes the entry stands for.
    fn changes(&self) -> usize {
        match self {
            Applied::Batch(batch) => batch.events.len(),
            Applied::Event(_) | Applied::View { .. } => 1,
        }
    }
}

/// A log that grows past this many entries because snapshots keep failing stops the
/// replica: it could neither recover cheaply nor hand its state to a joiner.
const MAX_LOG_ENTRIES: usize = 64 * CHECKPOINT_EVERY;

/// One sandboxed replica of an object. Not thread-safe by itself; drivers run each
/// replica on one worker at a time.
pub struct Replica {
    logic: Arc<Logic>,
    engine: Engine,
    identity: ReplicaIdentity,
    limits: Limits,
    /// The wasmtime store and instance; `None` while the replica hibernates
    /// (its state is then all in `checkpoint`).
    sandbox: Option<Sandbox>,
    initialized: bool,
    /// Why events go one by one even though the object takes batches, once a
    /// batch had to be redone one by one (see [`Replica::deliver_batch`]).
    batching_off: Option<&'static str>,
    /// Set when the replica could not be rolled back; it refuses all further work.
    broken: Option<String>,
    checkpoint: Option<Vec<u8>>,
    /// The view the guest saw when the checkpoint was taken.
    checkpoint_view: View,
    since_checkpoint: Vec<Applied>,
    /// State changes in `since_checkpoint` (a batch entry holds many).
    log_len: usize,
    next_checkpoint_at: usize,
    last_event_ms: u64,
    calls: u64,
    stats: ReplicaStats,
    /// Where each applied event is announced, if anyone listens ([`AppliedEvent`]).
    applied_tap: Option<super::AppliedTap>,
    /// The flight recorder, if the node records ([`super::recorder`]).
    recorder: Option<Box<Recorder>>,
}

/// An event the replica applied (or rejected), as a watcher sees it: who sent it,
/// its place in the sender's sequence, and its size (the payload is the object's
/// own encoding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedEvent {
    /// The member that multicast it.
    pub sender: String,
    /// The sender's sequence number.
    pub seq: u64,
    /// The sender's timestamp (ms since the Unix epoch).
    pub timestamp_ms: u64,
    /// The payload's size in bytes.
    pub bytes: usize,
    /// The object's reason if it rejected the event.
    pub rejected: Option<String>,
}

impl Replica {
    /// Announce every event applied from now on on `tap` (only while it has
    /// receivers: an unwatched replica pays one atomic load per event).
    pub fn tap_applied(&mut self, tap: super::AppliedTap) {
        self.applied_tap = Some(tap);
    }

    pub(crate) fn new(
        engine: &Engine,
        logic: Arc<Logic>,
        identity: ReplicaIdentity,
        limits: Limits,
    ) -> Result<Self, ReplicaError> {
        let sandbox = instantiate(
            engine,
            &logic,
            &identity,
            &limits,
            View {
                id: 0,
                members: vec![identity.member.clone()],
            },
        )?;
        Ok(Replica {
            logic,
            engine: engine.clone(),
            identity,
            limits,
            sandbox: Some(sandbox),
            initialized: false,
            batching_off: None,
            broken: None,
            checkpoint: None,
            checkpoint_view: View {
                id: 0,
                members: Vec::new(),
            },
            since_checkpoint: Vec::new(),
            log_len: 0,
            next_checkpoint_at: CHECKPOINT_EVERY,
            last_event_ms: 0,
            calls: 0,
            stats: ReplicaStats::default(),
            applied_tap: None,
            recorder: None,
        })
    }

    /// Record everything this replica applies from its next `init` on.
    pub fn record_to(&mut self, recorder: Recorder) {
        self.recorder = Some(Box::new(recorder));
    }

    /// Set what a replay must begin with before its `init`: the view the guest
    /// sees, the clock of view changes and the number of local calls made so far
    /// (see [`super::replay`]).
    pub(crate) fn resume_at(&mut self, view: View, last_event_ms: u64, calls: u64) {
        if let Some(sandbox) = &mut self.sandbox {
            sandbox.store.data_mut().view = view.clone();
        }
        self.checkpoint_view = view;
        self.last_event_ms = last_event_ms;
        self.calls = calls;
    }

    /// Local calls made so far (each seeds its call's random stream).
    pub(crate) fn calls_made(&self) -> u64 {
        self.calls
    }

    /// Forget calls made since `calls` (a replay's own queries must not shift the
    /// random seeds of the recorded calls after them).
    pub(crate) fn rewind_calls(&mut self, calls: u64) {
        self.calls = calls;
    }

    fn start_frame(&self, reason: StartReason, snapshot: Option<Vec<u8>>) -> Start {
        let view = self.view();
        Start {
            version: super::recorder::FORMAT_VERSION,
            reason,
            object: self.identity.object.clone(),
            member: self.identity.member.clone(),
            logic_hash: self.logic.hash().0,
            logic_name: self.logic.name().to_string(),
            fuel_per_call: self.limits.fuel_per_call,
            memory_bytes: self.limits.memory_bytes as u64,
            table_elements: self.limits.table_elements as u64,
            multicast_max_bytes: self.limits.multicast_max_bytes as u64,
            multicast_max_per_call: self.limits.multicast_max_per_call as u64,
            view_id: view.id,
            view_members: view.members,
            last_event_ms: self.last_event_ms,
            calls: self.calls,
            events: 0,
            snapshot,
            recorded_at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        }
    }

    /// Begin a new recording segment from `snapshot`.
    fn record_start(&mut self, reason: StartReason, snapshot: Option<Vec<u8>>) {
        if self.recorder.is_none() {
            return;
        }
        let start = self.start_frame(reason, snapshot);
        if let Some(recorder) = &mut self.recorder {
            recorder.begin(start);
        }
    }

    /// Record an event given to the guest and what became of it.
    fn record_event(&mut self, event: &Event, outcome: Outcome) {
        if let Some(recorder) = &mut self.recorder {
            recorder.count_event();
            recorder.write(&Frame::Event(RecordedEvent {
                sender: event.sender.clone(),
                seq: event.seq,
                timestamp_ms: event.timestamp_ms,
                payload: event.payload.clone(),
                outcome,
            }));
        }
    }

    /// The logic this replica runs.
    pub fn logic(&self) -> &Arc<Logic> {
        &self.logic
    }

    /// Who this replica is.
    pub fn identity(&self) -> &ReplicaIdentity {
        &self.identity
    }

    /// Counters.
    pub fn stats(&self) -> ReplicaStats {
        self.stats
    }

    /// The memory it uses now, against its cap ([`Limits::memory_bytes`]).
    pub fn memory(&self) -> MemoryUse {
        MemoryUse {
            sandbox: self
                .sandbox
                .as_ref()
                .map_or(0, |sb| sb.store.data().limiter.granted),
            host: self.checkpoint.as_ref().map_or(0, Vec::len),
            cap: self.limits.memory_bytes,
        }
    }

    /// Start the replica from scratch or from a snapshot.
    pub fn init(&mut self, snapshot: Option<&[u8]>) -> Result<(), ReplicaError> {
        if self.initialized {
            // A state transfer replaces the state: start it in a fresh instance,
            // so nothing the old one held (its heap, its globals) survives, as on
            // every other replica and in a replay.
            self.sandbox = None;
        }
        if self.sandbox.is_none() {
            // Hibernating: whatever it held is replaced, so start from a new sandbox
            // (and if there is none to be had, it holds no state any more).
            self.initialized = false;
            let view = self.view();
            self.sandbox = Some(instantiate(
                &self.engine,
                &self.logic,
                &self.identity,
                &self.limits,
                view,
            )?);
        }
        self.prepare_call(Seed::Init, 0);
        let result = self.sb().init(snapshot);
        match result {
            Ok(Ok(())) => {
                self.stats.state_changes += 1;
                self.initialized = true;
                self.checkpoint = snapshot.map(<[u8]>::to_vec);
                self.checkpoint_view = self.view();
                self.clear_log();
                self.take_side_effects();
                self.record_start(StartReason::Init, snapshot.map(<[u8]>::to_vec));
                Ok(())
            }
            Ok(Err(message)) => {
                self.rebuild_empty()?;
                Err(ReplicaError::InitRejected {
                    object: self.identity.object.clone(),
                    message,
                })
            }
            Err(trap) => {
                let err = self.classify(trap, "init".to_string());
                self.rebuild_empty()?;
                Err(err)
            }
        }
    }

    /// Run `logic` from the next [`init`](Self::init) on, whose state replaces
    /// whatever this replica holds (a state transfer from a member that runs
    /// other logic than the one this replica was made with).
    pub fn replace_logic(&mut self, logic: Arc<Logic>) {
        self.logic = logic;
        self.sandbox = None;
        self.batching_off = None;
    }

    /// Switch this replica to `logic` (a live upgrade to record version
    /// `to_version` from `from_version`): take the current logic's snapshot, run the
    /// new logic's `migrate(from_version, snapshot)` if it exports one (0.3's
    /// `evolve`), and `init` the new logic with the result in a fresh sandbox,
    /// each under the limits of one call. Returns the state the new logic starts
    /// from. If any step fails (a refusal, a trap, a limit) the replica keeps its
    /// current logic and state, and the error says which step and why; every step
    /// is deterministic, so every replica comes to the same outcome.
    pub fn upgrade(
        &mut self,
        logic: Arc<Logic>,
        from_version: u64,
        to_version: u64,
    ) -> Result<Vec<u8>, ReplicaError> {
        let snapshot = self.snapshot()?;
        let fresh = instantiate(
            &self.engine,
            &logic,
            &self.identity,
            &self.limits,
            self.view(),
        )?;
        let old_sandbox = self.sandbox.replace(fresh);
        let old_logic = std::mem::replace(&mut self.logic, logic);
        let refused = |replica: &mut Replica, message: String| ReplicaError::UpgradeRefused {
            object: replica.identity.object.clone(),
            version: to_version,
            message,
        };
        // The clock reads 0 in `migrate` and `init`, as in every `init`: the
        // last event's time is not part of the state, so a replica that was
        // sent its state (or restarted from it) would read another time than
        // its group and could migrate to another state.
        let outcome = (|| {
            self.prepare_call(Seed::Init, 0);
            let migrated = match self.sb().migrate(from_version, &snapshot) {
                None => snapshot.clone(),
                Some(Ok(Ok(migrated))) => migrated,
                Some(Ok(Err(message))) => {
                    return Err(refused(self, format!("its migrate refused: {message}")));
                }
                Some(Err(trap)) => return Err(self.classify(trap, "migrate".to_string())),
            };
            self.prepare_call(Seed::Init, 0);
            match self.sb().init(Some(&migrated)) {
                Ok(Ok(())) => Ok(migrated),
                Ok(Err(message)) => Err(refused(
                    self,
                    format!("its init refused the migrated state: {message}"),
                )),
                Err(trap) => Err(self.classify(trap, "init after migrate".to_string())),
            }
        })();
        match outcome {
            Ok(migrated) => {
                self.stats.state_changes += 1;
                self.initialized = true;
                self.batching_off = None;
                self.checkpoint = Some(migrated.clone());
                self.checkpoint_view = self.view();
                self.clear_log();
                self.take_side_effects();
                self.record_start(StartReason::Init, Some(migrated.clone()));
                Ok(migrated)
            }
            Err(error) => {
                self.sandbox = old_sandbox;
                self.logic = old_logic;
                Err(error)
            }
        }
    }

    /// Apply one event (the object's `deliver`). On a trap the event is refused, the
    /// replica is rolled back and the error says why; since limits and the sandbox are
    /// deterministic, every replica refuses the same event.
    pub fn deliver(&mut self, event: &Event) -> Result<Delivery, ReplicaError> {
        self.ensure_initialized()?;
        self.prepare_call(Seed::Event(event), event.timestamp_ms);
        let result = self.sb().deliver(event);
        match result {
            Ok(outcome) => {
                let (multicasts, notifications) = self.take_side_effects();
                self.count_originated(&multicasts, false);
                let rejected = outcome.err();
                self.log(Applied::Event(event.clone()));
                self.record_applied(event, rejected.clone());
                self.maybe_checkpoint();
                Ok(Delivery {
                    rejected,
                    multicasts,
                    notifications,
                })
            }
            Err(trap) => {
                self.stats.events_failed += 1;
                let during = format!("deliver of event {} from {}", event.seq, event.sender);
                let error = self.fail_and_recover(trap, during);
                self.record_event(event, Outcome::Failed(error.to_string()));
                self.rotate_recording_if_due();
                Err(self.out_of_service_after_deadline(error))
            }
        }
    }

    fn log(&mut self, entry: Applied) {
        self.log_len += entry.changes();
        self.since_checkpoint.push(entry);
    }

    fn clear_log(&mut self) {
        self.since_checkpoint.clear();
        self.log_len = 0;
    }

    /// The bookkeeping of one event the guest applied or rejected (the caller
    /// logs it).
    fn record_applied(&mut self, event: &Event, rejected: Option<String>) {
        if self.recorder.is_some() {
            let outcome = rejected.clone().map_or(Outcome::Applied, Outcome::Rejected);
            self.record_event(event, outcome);
        }
        self.last_event_ms = self.last_event_ms.max(event.timestamp_ms);
        self.stats.state_changes += 1;
        if rejected.is_some() {
            self.stats.events_rejected += 1;
        } else {
            self.stats.events_applied += 1;
        }
        if let Some(tap) = self.applied_tap.as_ref().and_then(|tap| tap.get())
            && tap.receiver_count() > 0
        {
            let _ = tap.send(AppliedEvent {
                sender: event.sender.clone(),
                seq: event.seq,
                timestamp_ms: event.timestamp_ms,
                bytes: event.payload.len(),
                rejected,
            });
        }
    }

    /// Apply consecutive events, with the same outcome, event by event, as calling
    /// [`deliver`](Self::deliver) for each: the result has one entry per event.
    ///
    /// An object built for 0.2 of the contract gets them in calls of `deliver-batch`
    /// (at most [`MAX_BATCH_EVENTS`] events and [`MAX_BATCH_BYTES`] of payload
    /// each), which saves the per-call cost; others get one `deliver` per event.
    /// Batch boundaries differ between replicas, so a batch must not change what
    /// any event does. The host makes sure of it:
    /// - a batch runs under the limits of one call (fuel, multicasts, deadline);
    ///   one that hits a limit is rolled back and its events delivered one by one,
    ///   each under its own limits, so an event is refused exactly when it would
    ///   have been alone;
    /// - a batch during which the guest reads a clock or randomness (whose values
    ///   depend on the event, which the host cannot tell in a batch) is rolled
    ///   back and redone one by one too.
    ///
    /// After such a redo this replica delivers one by one from then on: an object
    /// that reads the clock while applying events, or whose events are too heavy
    /// to batch, would pay a rollback for every batch. A redo that takes more than
    /// ten call deadlines in all takes the replica out of service (as a deadline
    /// does), so a run of heavy events cannot hold an executor worker for long.
    ///
    /// What batching cannot make identical is the guest's heap: a batch's buffers
    /// grow linear memory more than one event does. An object that runs within a
    /// few hundred KiB of its memory cap may hit it on one replica and not
    /// another, as it already may after a rollback; keep objects clear of the cap.
    ///
    /// Multicasts and notifications raised during a batch are reported on its
    /// last event's [`Delivery`] (in the order they were made).
    pub fn deliver_batch(&mut self, events: &[Event]) -> Vec<Result<Delivery, ReplicaError>> {
        let mut outcomes = Vec::with_capacity(events.len());
        let mut rest = events;
        while !rest.is_empty() {
            let mut count = 0;
            let mut bytes = 0;
            while count < rest.len()
                && count < MAX_BATCH_EVENTS
                && (count == 0 || bytes + rest[count].payload.len() <= MAX_BATCH_BYTES)
            {
                bytes += rest[count].payload.len();
                count += 1;
            }
            let (chunk, tail) = rest.split_at(count);
            self.deliver_chunk(chunk, &mut outcomes);
            rest = tail;
        }
        outcomes
    }

    /// Whether this replica delivers events in batches now.
    pub fn batching(&self) -> bool {
        self.logic.interface().lifecycle == Some(super::LIFECYCLE_INTERFACE_0_2)
            && self.batching_off.is_none()
    }

    fn deliver_one_by_one(
        &mut self,
        events: &[Event],
        outcomes: &mut Vec<Result<Delivery, ReplicaError>>,
    ) {
        outcomes.extend(events.iter().map(|event| self.deliver(event)));
    }

    fn deliver_chunk(
        &mut self,
        events: &[Event],
        outcomes: &mut Vec<Result<Delivery, ReplicaError>>,
    ) {
        if events.len() < 2 || !self.batching() || self.ensure_initialized().is_err() {
            return self.deliver_one_by_one(events, outcomes);
        }
        let Some(batch) = lifecycle::pack(events) else {
            return self.deliver_one_by_one(events, outcomes);
        };
        self.prepare_call(Seed::Event(&events[0]), events[0].timestamp_ms);
        self.sb().store.data().watch.open();
        let result = self
            .sb()
            .deliver_batch(&batch)
            .expect("only objects that take batches get one");
        let read_clock_or_random = self.sb().store.data().watch.close();
        let redo = match result {
            Ok(_) if read_clock_or_random => {
                Some(("it reads a clock or randomness while applying events", None))
            }
            // One by one each event has the per-call allowance of notifications.
            Ok(_) if self.sb().store.data().dropped_notifications > 0 => Some((
                "its events raise more notifications than one call may",
                None,
            )),
            Ok(rejections) => match sort_rejections(rejections, events.len()) {
                Some(rejected) => {
                    let (multicasts, notifications) = self.take_side_effects();
                    self.count_originated(&multicasts, false);
                    self.stats.batches += 1;
                    let last = events.len() - 1;
                    let mut side_effects = Some((multicasts, notifications));
                    for (i, (event, rejected)) in events.iter().zip(rejected).enumerate() {
                        self.record_applied(event, rejected.clone());
                        let (multicasts, notifications) = if i == last {
                            side_effects.take().unwrap_or_default()
                        } else {
                            Default::default()
                        };
                        outcomes.push(Ok(Delivery {
                            rejected,
                            multicasts,
                            notifications,
                        }));
                    }
                    self.log(Applied::Batch(batch));
                    self.maybe_checkpoint();
                    return;
                }
                None => Some((
                    "its deliver-batch returned rejections that do not match the batch",
                    None,
                )),
            },
            Err(trap) => Some(("a batch of its events hit a limit or trapped", Some(trap))),
        };
        let (reason, trap) = redo.expect("every other case returned");
        tracing::debug!(
            object = %self.identity.object,
            error = ?trap.map(|t| format!("{t:#}")),
            "{reason}: rolling the batch back and delivering one by one from now on"
        );
        self.batching_off = Some(reason);
        if let Err(reason) = self.rebuild() {
            let reason =
                format!("after a batch of events was refused, rolling back failed: {reason}");
            tracing::error!(object = %self.identity.object, "{reason}");
            self.broken = Some(reason);
        }
        // One by one, each event may take a whole call's time; a run of heavy ones
        // must not hold its worker for up to MAX_BATCH_EVENTS calls. Past the bound
        // the replica goes out of service, as after a deadline (wall-clock time is
        // not deterministic, so refusing the remaining events would diverge).
        let bound = self.limits.call_deadline * REDO_DEADLINES;
        let started = std::time::Instant::now();
        for event in events {
            if self.broken.is_none() && started.elapsed() > bound {
                self.broken = Some(format!(
                    "applying a batch of its events one by one took more than {bound:?}"
                ));
            }
            outcomes.push(self.deliver(event));
        }
    }

    /// Tell the object its membership changed. Like [`deliver`](Self::deliver), what
    /// the object multicasts or notifies in response comes back to the caller.
    pub fn view_changed(&mut self, view: &View) -> Result<Delivery, ReplicaError> {
        self.ensure_initialized()?;
        let previous = std::mem::replace(&mut self.sb().store.data_mut().view, view.clone());
        let time_ms = self.last_event_ms;
        self.prepare_call(Seed::View(view.id), time_ms);
        let result = self.sb().view_changed(view);
        match result {
            Ok(()) => {
                self.record_view(view, time_ms, Outcome::Applied);
                self.log(Applied::View {
                    view: view.clone(),
                    time_ms,
                });
                let (multicasts, notifications) = self.take_side_effects();
                self.count_originated(&multicasts, false);
                self.stats.state_changes += 1;
                self.maybe_checkpoint();
                Ok(Delivery {
                    rejected: None,
                    multicasts,
                    notifications,
                })
            }
            Err(trap) => {
                // The refused view never happened: roll the guest's view back too.
                self.sb().store.data_mut().view = previous;
                let error = self.fail_and_recover(trap, format!("view change to {}", view.id));
                self.record_view(view, time_ms, Outcome::Failed(error.to_string()));
                Err(self.out_of_service_after_deadline(error))
            }
        }
    }

    fn record_view(&mut self, view: &View, time_ms: u64, outcome: Outcome) {
        if let Some(recorder) = &mut self.recorder {
            recorder.write(&Frame::View {
                id: view.id,
                members: view.members.clone(),
                time_ms,
                outcome,
            });
        }
    }

    /// The object's snapshot of its replicated state.
    pub fn snapshot(&mut self) -> Result<Vec<u8>, ReplicaError> {
        if self.sandbox.is_none()
            && self.broken.is_none()
            && let Some(checkpoint) = &self.checkpoint
        {
            // Hibernating: its state is the snapshot it went to sleep with.
            return Ok(checkpoint.clone());
        }
        self.ensure_initialized()?;
        self.prepare_call(Seed::Snapshot, self.last_event_ms);
        let result = self.sb().snapshot();
        match result {
            Ok(bytes) => {
                self.take_side_effects();
                Ok(bytes)
            }
            Err(trap) => {
                let error = self.fail_and_recover(trap, "snapshot".to_string());
                Err(self.out_of_service_after_deadline(error))
            }
        }
    }

    /// Resolve a method name (see [`ObjectInterface::find`](super::ObjectInterface::find)).
    pub fn method(&self, name: &str) -> Result<Method, ReplicaError> {
        use super::interface::MethodLookupError;
        match self.logic.interface().find(name) {
            Ok(m) => Ok(m.clone()),
            Err(MethodLookupError::NotFound) => Err(ReplicaError::NoSuchMethod {
                object: self.identity.object.clone(),
                method: name.to_string(),
                available: self.logic.interface().method_names().join(", "),
            }),
            Err(MethodLookupError::Ambiguous(c)) => Err(ReplicaError::AmbiguousMethod {
                object: self.identity.object.clone(),
                method: name.to_string(),
                candidates: c.join(", "),
            }),
        }
    }

    /// Parse WAVE text arguments against the method's parameter types.
    pub fn parse_args(&self, method: &Method, args: &[&str]) -> Result<Vec<Val>, ReplicaError> {
        if args.len() != method.params.len() {
            return Err(ReplicaError::ArgumentCount {
                object: self.identity.object.clone(),
                signature: method.signature(),
                expected: method.params.len(),
                got: args.len(),
            });
        }
        method
            .params
            .iter()
            .zip(args)
            .enumerate()
            .map(|(i, ((name, ty), text))| {
                wasmtime::component::wasm_wave::from_str::<Val>(ty, text).map_err(|e| {
                    ReplicaError::BadArgument(Box::new(ArgumentProblem {
                        signature: method.signature(),
                        position: i + 1,
                        param: name.clone(),
                        ty: super::type_name(ty),
                        text: text.to_string(),
                        detail: e.to_string(),
                    }))
                })
            })
            .collect()
    }

    /// Call a method of the object's natural interface by name, with arguments in
    /// WAVE text form.
    pub fn call_wave(&mut self, method: &str, args: &[&str]) -> Result<CallOutcome, ReplicaError> {
        let method = self.method(method)?;
        let args = self.parse_args(&method, args)?;
        self.call(&method, &args)
    }

    /// Call a method with typed values. A query's results come back; an update's
    /// multicasts come back in [`CallOutcome::multicasts`] for the driver to send.
    pub fn call(&mut self, method: &Method, args: &[Val]) -> Result<CallOutcome, ReplicaError> {
        let result = self.call_unrecorded(method, args);
        if let Some(recorder) = &mut self.recorder {
            recorder.write(&Frame::Call(Box::new(RecordedCall {
                method: method.name.clone(),
                args: args.iter().map(val_to_wave).collect(),
                number: self.calls,
                time_ms: self.last_event_ms,
                result: match &result {
                    Ok(outcome) => Ok(outcome.results_wave()),
                    Err(e) => Err(e.to_string()),
                },
            })));
            self.rotate_recording_if_due();
        }
        result
    }

    /// Start a new recording segment if the current one is over its share of the
    /// budget (calls and failed events reach no checkpoint, which is where
    /// segments turn otherwise).
    fn rotate_recording_if_due(&mut self) {
        if !self
            .recorder
            .as_ref()
            .is_some_and(|r| r.wants_new_segment())
            || !self.initialized
        {
            return;
        }
        match self.snapshot() {
            Ok(snapshot) => self.record_snapshot(&snapshot),
            Err(e) => tracing::debug!(object = %self.identity.object, "no recording rotation: {e}"),
        }
    }

    /// Record the digest of `snapshot` (the state now) and, if the segment holds
    /// its share of the budget, start the next one from it.
    fn record_snapshot(&mut self, snapshot: &[u8]) {
        let rotate = self.recorder.as_mut().is_some_and(|recorder| {
            recorder.digest(snapshot);
            recorder.wants_new_segment()
        });
        if rotate {
            self.record_start(StartReason::Rotation, Some(snapshot.to_vec()));
        }
    }

    fn call_unrecorded(
        &mut self,
        method: &Method,
        args: &[Val],
    ) -> Result<CallOutcome, ReplicaError> {
        self.ensure_initialized()?;
        self.calls += 1;
        self.prepare_call(Seed::Call(self.calls), self.last_event_ms);
        let sandbox = self
            .sandbox
            .as_mut()
            .expect("awake after ensure_initialized");
        let func = sandbox
            .instance
            .get_func(&mut sandbox.store, method.index)
            .ok_or_else(|| ReplicaError::NoSuchMethod {
                object: self.identity.object.clone(),
                method: method.name.clone(),
                available: self.logic.interface().method_names().join(", "),
            })?;
        let mut results = vec![Val::Bool(false); method.results.len()];
        match func.call(&mut sandbox.store, args, &mut results) {
            Ok(()) => {
                let (multicasts, notifications) = self.take_side_effects();
                self.count_originated(&multicasts, true);
                Ok(CallOutcome {
                    results,
                    multicasts,
                    notifications,
                })
            }
            Err(trap) => Err(self.fail_and_recover(trap, format!("call `{}`", method.name))),
        }
    }

    fn count_originated(&mut self, multicasts: &[Vec<u8>], from_call: bool) {
        let n = multicasts.len() as u64;
        if from_call {
            self.stats.multicasts_from_calls += n;
        } else {
            self.stats.multicasts_from_events += n;
        }
        self.stats.multicast_bytes += multicasts.iter().map(|m| m.len() as u64).sum::<u64>();
    }

    /// A deadline is wall-clock time, so unlike fuel another replica may not hit it on
    /// the same event. Refusing the event here alone would let this replica diverge;
    /// instead it goes out of service (the host quarantines it; rejoining starts it
    /// afresh from a member's snapshot).
    fn out_of_service_after_deadline(&mut self, error: ReplicaError) -> ReplicaError {
        if let ReplicaError::LimitExceeded {
            limit: Limit::Deadline { .. },
            ..
        } = &error
            && self.broken.is_none()
        {
            self.broken = Some(error.to_string());
        }
        error
    }

    /// Whether the replica refuses all further work, and why.
    pub fn out_of_service(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    /// Ready for a guest call: in service, initialised, and awake (a hibernating
    /// replica wakes here).
    fn ensure_initialized(&mut self) -> Result<(), ReplicaError> {
        if let Some(reason) = &self.broken {
            return Err(ReplicaError::Broken {
                object: self.identity.object.clone(),
                reason: reason.clone(),
            });
        }
        if !self.initialized {
            return Err(ReplicaError::NotInitialized {
                object: self.identity.object.clone(),
            });
        }
        if self.sandbox.is_none() {
            self.wake()?;
        }
        Ok(())
    }

    /// The store and instance of an awake replica.
    fn sb(&mut self) -> &mut Sandbox {
        self.sandbox
            .as_mut()
            .expect("guest calls run on an awake replica (ensure_initialized wakes it)")
    }

    /// The view the guest sees (kept with the checkpoint while it hibernates).
    fn view(&self) -> View {
        match &self.sandbox {
            Some(sandbox) => sandbox.store.data().view.clone(),
            None => self.checkpoint_view.clone(),
        }
    }

    /// Whether the replica hibernates now (its sandbox given back, its state held
    /// as a snapshot).
    pub fn hibernating(&self) -> bool {
        self.sandbox.is_none()
    }

    /// Give back the sandbox (its instance, linear memory and pool slot), keeping
    /// the state as a snapshot; the next call, event or view change wakes the
    /// replica from it, which costs an instantiation and an `init`. What the guest
    /// sees is the same as if it had stayed awake, since a replica's state is its
    /// snapshot. Returns whether it went to sleep (not if it is out of service,
    /// not initialised or already asleep, or if its snapshot fails).
    pub fn hibernate(&mut self) -> bool {
        if self.broken.is_some() || !self.initialized || self.sandbox.is_none() {
            return false;
        }
        let snapshot = match self.snapshot() {
            Ok(snapshot) => snapshot,
            Err(e) => {
                tracing::debug!(object = %self.identity.object, "not hibernating: {e}");
                return false;
            }
        };
        self.checkpoint_view = self.view();
        self.checkpoint = Some(snapshot);
        self.clear_log();
        self.next_checkpoint_at = CHECKPOINT_EVERY;
        self.sandbox = None;
        self.stats.hibernations += 1;
        true
    }

    /// Instantiate afresh and start from the checkpoint taken when hibernating.
    fn wake(&mut self) -> Result<(), ReplicaError> {
        let restored = self.restore();
        if let Err(reason) = restored {
            let reason = format!("waking from hibernation failed: {reason}");
            tracing::error!(object = %self.identity.object, "{reason}");
            self.broken = Some(reason.clone());
            return Err(ReplicaError::Broken {
                object: self.identity.object.clone(),
                reason,
            });
        }
        Ok(())
    }

    /// Reset the per-call sandbox inputs: fuel, clock, random seed, buffers.
    fn prepare_call(&mut self, seed: Seed<'_>, time_ms: u64) {
        // Fuel can only fail to set if fuel is disabled in the engine, which it never is.
        let fuel = self.limits.fuel_per_call;
        let ticks = super::deadline_ticks(&self.limits);
        let sandbox = self
            .sandbox
            .as_mut()
            .expect("a call runs on an awake replica");
        let _ = sandbox.store.set_fuel(fuel);
        sandbox.store.set_epoch_deadline(ticks);
        let object = self.identity.object.as_bytes();
        let data = sandbox.store.data_mut();
        data.clock.set_ms(time_ms);
        match seed {
            Seed::Init => data.random.reseed(&[b"init", object]),
            Seed::Event(e) => {
                data.random
                    .reseed(&[b"event", object, e.sender.as_bytes(), &e.seq.to_le_bytes()])
            }
            Seed::View(id) => data.random.reseed(&[b"view", object, &id.to_le_bytes()]),
            Seed::Snapshot => data.random.reseed(&[b"snapshot", object]),
            Seed::Batch => data.random.reseed(&[b"batch", object]),
            Seed::Call(n) => data.random.reseed(&[
                b"call",
                object,
                self.identity.member.as_bytes(),
                &n.to_le_bytes(),
            ]),
        }
        data.outbox.clear();
        data.notifications.clear();
        data.dropped_notifications = 0;
        data.stderr.take();
    }

    fn take_side_effects(&mut self) -> (Vec<Vec<u8>>, Vec<Notification>) {
        let data = self.sb().store.data_mut();
        if data.dropped_notifications > 0 {
            tracing::warn!(
                object = %data.identity.object,
                "dropped {} notifications over the per-call limit",
                data.dropped_notifications
            );
        }
        (
            std::mem::take(&mut data.outbox),
            std::mem::take(&mut data.notifications),
        )
    }

    fn classify(&mut self, err: wasmtime::Error, during: String) -> ReplicaError {
        let object = self.identity.object.clone();
        let limit = err.downcast_ref::<Limit>().cloned().or_else(|| {
            err.chain()
                .find_map(|cause| cause.downcast_ref::<Limit>().cloned())
        });
        if let Some(limit) = limit {
            return ReplicaError::LimitExceeded {
                object,
                limit,
                during,
            };
        }
        let out_of_fuel = err.downcast_ref::<Trap>() == Some(&Trap::OutOfFuel)
            || err
                .chain()
                .any(|c| c.downcast_ref::<Trap>() == Some(&Trap::OutOfFuel));
        if out_of_fuel {
            return ReplicaError::LimitExceeded {
                object,
                limit: Limit::Cpu {
                    fuel: self.limits.fuel_per_call,
                },
                during,
            };
        }
        let interrupted = err.downcast_ref::<Trap>() == Some(&Trap::Interrupt)
            || err
                .chain()
                .any(|c| c.downcast_ref::<Trap>() == Some(&Trap::Interrupt));
        if interrupted {
            return ReplicaError::LimitExceeded {
                object,
                limit: Limit::Deadline {
                    ms: self.limits.call_deadline.as_millis() as u64,
                },
                during,
            };
        }
        let stderr = self.sb().store.data().stderr.take();
        let trap = err
            .downcast_ref::<Trap>()
            .map(|t| t.to_string())
            .unwrap_or_else(|| format!("{err:#}"));
        let message = if stderr.is_empty() {
            trap
        } else {
            format!("{trap}; the object printed: {stderr}")
        };
        ReplicaError::Trap {
            object,
            during,
            message,
        }
    }

    fn fail_and_recover(&mut self, err: wasmtime::Error, during: String) -> ReplicaError {
        let error = self.classify(err, during);
        tracing::debug!(object = %self.identity.object, "{error}; rolling back");
        if let Err(reason) = self.rebuild() {
            let reason = format!("after `{error}`, rolling back failed: {reason}");
            tracing::error!(object = %self.identity.object, "{reason}");
            self.broken = Some(reason.clone());
            return ReplicaError::Broken {
                object: self.identity.object.clone(),
                reason,
            };
        }
        error
    }

    /// Re-instantiate from the checkpoint and replay the log since, giving the guest
    /// the same view, clock and random seed each entry had the first time.
    fn rebuild(&mut self) -> Result<(), String> {
        self.stats.recoveries += 1;
        self.restore()
    }

    /// A new sandbox from the checkpoint, with the log since replayed.
    fn restore(&mut self) -> Result<(), String> {
        let sandbox = instantiate(
            &self.engine,
            &self.logic,
            &self.identity,
            &self.limits,
            self.checkpoint_view.clone(),
        )
        .map_err(|e| e.to_string())?;
        self.sandbox = Some(sandbox);
        self.prepare_call(Seed::Init, 0);
        // The checkpoint was this replica's own state: a slower moment (a loaded
        // machine, a colder heap) must not make restoring it fail, which would
        // take the replica out of service.
        let fuel = self
            .limits
            .fuel_per_call
            .saturating_mul(u64::from(REDO_DEADLINES));
        let ticks = super::deadline_ticks(&self.limits).saturating_mul(u64::from(REDO_DEADLINES));
        let store = &mut self.sb().store;
        let _ = store.set_fuel(fuel);
        store.set_epoch_deadline(ticks);
        let checkpoint = self.checkpoint.clone();
        match self.sb().init(checkpoint.as_deref()) {
            Ok(Ok(())) => {}
            Ok(Err(refusal)) => return Err(format!("init refused the checkpoint: {refusal}")),
            Err(trap) => return Err(format!("init trapped: {trap:#}")),
        }
        let log = std::mem::take(&mut self.since_checkpoint);
        let mut outcome = Ok(());
        for (i, entry) in log.iter().enumerate() {
            let result = match entry {
                Applied::Event(event) => {
                    self.prepare_call(Seed::Event(event), event.timestamp_ms);
                    self.sb().deliver(event).map(|_| ())
                }
                Applied::Batch(batch) => {
                    let first_ms = batch.events.first().map_or(0, |e| e.timestamp_ms);
                    self.prepare_call(Seed::Batch, first_ms);
                    // The batch was accepted under one call's limits, but a rebuilt
                    // heap or a loaded machine may take it a little over them now:
                    // give the replay what its events would have had one by one.
                    let events = batch.events.len() as u64;
                    let fuel = self.limits.fuel_per_call.saturating_mul(events);
                    let ticks = super::deadline_ticks(&self.limits).saturating_mul(events);
                    let store = &mut self.sb().store;
                    let _ = store.set_fuel(fuel);
                    store.set_epoch_deadline(ticks);
                    match self.sb().deliver_batch(batch) {
                        Some(result) => result.map(|_| ()),
                        None => Err(wasmtime::Error::msg("a batch logged for a 0.1 object")),
                    }
                }
                Applied::View { view, time_ms } => {
                    self.sb().store.data_mut().view = view.clone();
                    self.prepare_call(Seed::View(view.id), *time_ms);
                    self.sb().view_changed(view)
                }
            };
            if let Err(trap) = result {
                outcome = Err(format!("replaying log entry {i} trapped: {trap:#}"));
                break;
            }
        }
        self.since_checkpoint = log;
        // Side effects of the replay were already sent the first time.
        self.take_side_effects();
        outcome
    }

    /// After a failed `init`: a fresh instance that is not initialised yet.
    fn rebuild_empty(&mut self) -> Result<(), ReplicaError> {
        let view = self.view();
        let sandbox = instantiate(
            &self.engine,
            &self.logic,
            &self.identity,
            &self.limits,
            view,
        )?;
        self.sandbox = Some(sandbox);
        self.initialized = false;
        Ok(())
    }

    fn maybe_checkpoint(&mut self) {
        let checkpoint_due = self.log_len >= self.next_checkpoint_at;
        let digest_due = self.recorder.as_ref().is_some_and(|r| r.digest_due());
        if !checkpoint_due && !digest_due {
            return;
        }
        match self.snapshot() {
            Ok(snapshot) => {
                self.record_snapshot(&snapshot);
                if checkpoint_due {
                    self.checkpoint = Some(snapshot);
                    self.checkpoint_view = self.view();
                    self.clear_log();
                    self.next_checkpoint_at = CHECKPOINT_EVERY;
                }
            }
            Err(e) => {
                // Keep the log (the replica stays correct, only slower to recover) and
                // back off, so a snapshot that always fails is not retried every event.
                tracing::warn!("cannot checkpoint: {e}");
                if let Some(recorder) = &mut self.recorder {
                    recorder.skip_digest();
                }
                if !checkpoint_due {
                    return;
                }
                self.next_checkpoint_at = self.log_len + CHECKPOINT_EVERY;
                if self.log_len > MAX_LOG_ENTRIES && self.broken.is_none() {
                    self.broken = Some(format!(
                        "its snapshot has failed for {} events in a row: {e}",
                        self.log_len
                    ));
                }
            }
        }
    }
}

fn instantiate(
    engine: &Engine,
    logic: &Logic,
    identity: &ReplicaIdentity,
    limits: &Limits,
    view: View,
) -> Result<Sandbox, ReplicaError> {
    let watch = BatchWatch::default();
    let clock = EventClock::new(&watch);
    let random = SeededRandom::new(identity.object.as_bytes(), &watch);
    let stderr = StderrTail::default();
    let insecure_seed = u128::from_le_bytes(
        super::LogicHash::of(identity.object.as_bytes()).0[..16]
            .try_into()
            .expect("16 bytes"),
    );
    let state = ReplicaState {
        wasi: sandbox::wasi_context(&clock, &random, insecure_seed, &stderr),
        table: ResourceTable::new(),
        limiter: MemoryLimiter {
            memory_bytes: limits.memory_bytes,
            table_elements: limits.table_elements,
            granted: 0,
        },
        identity: identity.clone(),
        view,
        multicast_max_bytes: limits.multicast_max_bytes,
        multicast_max_per_call: limits.multicast_max_per_call,
        outbox: Vec::new(),
        notifications: Vec::new(),
        dropped_notifications: 0,
        clock,
        random,
        watch,
        stderr,
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limiter);
    let _ = store.set_fuel(limits.fuel_per_call);
    store.set_epoch_deadline(super::deadline_ticks(limits));
    let instance =
        logic
            .instance_pre
            .instantiate(&mut store)
            .map_err(|e| ReplicaError::Instantiate {
                object: identity.object.clone(),
                message: super::explain_pool_limit(format!("{e:#}")),
            })?;
    let bindings =
        logic
            .indices
            .load(&mut store, &instance)
            .map_err(|e| ReplicaError::Instantiate {
                object: identity.object.clone(),
                message: format!("{e:#}"),
            })?;
    let migrate = match logic.interface.migrate {
        None => None,
        Some(index) => Some(instance.get_typed_func(&mut store, index).map_err(|e| {
            ReplicaError::Instantiate {
                object: identity.object.clone(),
                message: format!("its `migrate` does not have the type 0.3 gives it: {e:#}"),
            }
        })?),
    };
    Ok(Sandbox {
        store,
        bindings,
        instance,
        migrate,
    })
}

/// 0.3's `evolve.migrate`, typed.
type MigrateFunc = wasmtime::component::TypedFunc<(u64, Vec<u8>), (Result<Vec<u8>, String>,)>;

/// A replica's wasmtime store and instance: what hibernation gives back.
struct Sandbox {
    store: Store<ReplicaState>,
    bindings: Lifecycle,
    instance: Instance,
    /// The new logic's upgrade step, if it exports one.
    migrate: Option<MigrateFunc>,
}

impl Sandbox {
    fn init(&mut self, snapshot: Option<&[u8]>) -> wasmtime::Result<Result<(), String>> {
        self.bindings.init(&mut self.store, snapshot)
    }

    fn deliver(&mut self, event: &Event) -> wasmtime::Result<Result<(), String>> {
        self.bindings.deliver(&mut self.store, event)
    }

    fn deliver_batch(
        &mut self,
        batch: &lifecycle::EventBatch,
    ) -> Option<wasmtime::Result<Vec<Rejection>>> {
        self.bindings.deliver_batch(&mut self.store, batch)
    }

    fn view_changed(&mut self, view: &View) -> wasmtime::Result<()> {
        self.bindings.view_changed(&mut self.store, view)
    }

    fn snapshot(&mut self) -> wasmtime::Result<Vec<u8>> {
        self.bindings.snapshot(&mut self.store)
    }

    /// `migrate`, if the logic exports it.
    fn migrate(
        &mut self,
        from_version: u64,
        snapshot: &[u8],
    ) -> Option<wasmtime::Result<Result<Vec<u8>, String>>> {
        let func = self.migrate?;
        Some(
            func.call(&mut self.store, (from_version, snapshot.to_vec()))
                .map(|(result,)| result),
        )
    }
}
