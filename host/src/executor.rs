//! The object executor: where every guest call of a node runs.
//!
//! Protocol and network tasks never call a guest. They hand work for an object to
//! its [`ObjectRef`] (a mailbox bounded in bytes) and get the results back on their
//! own channels; a bounded pool of worker threads runs the objects.
//!
//! - **Fair.** A worker takes the object at the head of the ready queue, runs its
//!   jobs for at most one [`ExecutorConfig::slice`] (or [`JOBS_PER_SLICE`] jobs), and
//!   puts it back at the tail if it has more: a busy object cannot starve the others.
//!   A single call is bounded by fuel and by its wall-clock deadline
//!   ([`Limits::call_deadline`](crate::runtime::Limits::call_deadline)).
//! - **Back-pressure, never a silent drop.** [`ObjectRef::submit`] refuses a job
//!   when the mailbox holds more than [`ExecutorConfig::mailbox_bytes`]; the caller
//!   keeps it and waits for [`ObjectRef::credit`] (the mailbox drained below half).
//! - **Budgets** ([`Budgets`]): multicasts and bytes an object originates per
//!   second (and, separately, multicasts made while applying events, which is how a
//!   chain reaction spreads across replicas) and CPU time per second. An object over
//!   a budget is throttled: it is not scheduled again until its budget refills. One
//!   held back for at least half of a window of [`Budgets::grace`] (it asks for
//!   about twice its budget or more, without letting up), or whose replica went out of
//!   service (a deadline hit while applying an event), is **quarantined**: its
//!   replica is dropped, every queued and later job is answered with
//!   [`ReplicaError::Quarantined`] naming the limit, and the driver is told (it
//!   leaves the object's group, so the cascade stops at its source).
//! - **Status as data.** Each object publishes [`ObjectMetrics`] (applied events,
//!   queue, CPU, multicasts, a recent snapshot digest, quarantine) that the control
//!   API reads without waiting on the object's queue. The digest is refreshed when
//!   the object goes idle after applying events (at most every
//!   [`DIGEST_INTERVAL`], or 20 snapshot-times for objects with large state).

use crate::runtime::{MemoryUse, Replica, ReplicaError, ReplicaStats};
use serde::{Deserialize, Serialize};
use std::collections::{BinaryHeap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Most jobs a worker runs for one object before it moves on to the next.
pub const JOBS_PER_SLICE: usize = 64;
/// Shortest time between two snapshot digests of one object.
pub const DIGEST_INTERVAL: Duration = Duration::from_millis(50);
/// Longest: an object with a slow snapshot is digested at most every 20
/// snapshot-times, but at least this often while it changes.
pub const MAX_DIGEST_INTERVAL: Duration = Duration::from_secs(2);

/// What an object may use per second on this node. Node defaults; a record may
/// override them (see [`Budgets::with_overrides`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Budgets {
    /// Multicasts per second the object may originate (calls and events together).
    pub multicasts_per_sec: u64,
    /// Multicasts per second it may originate while applying events or views.
    pub event_multicasts_per_sec: u64,
    /// Bytes per second of multicast payload it may originate.
    pub bytes_per_sec: u64,
    /// Milliseconds of worker time per second it may use.
    pub cpu_ms_per_sec: u64,
    /// The window over which throttling is judged: an object held back for at
    /// least half of one is quarantined.
    pub grace: Duration,
}

impl Default for Budgets {
    fn default() -> Self {
        Budgets {
            multicasts_per_sec: 200_000,
            event_multicasts_per_sec: 2_000,
            bytes_per_sec: 256 << 20,
            cpu_ms_per_sec: 900,
            grace: Duration::from_secs(3),
        }
    }
}

/// The most a record may raise a node's budget: this many times the node's value.
/// A record is signed by the object's publisher, not by the node's operator, so it
/// may tighten a node's budgets freely but widen them only this far.
pub const RECORD_BUDGET_CEILING: u64 = 16;

impl Budgets {
    /// These budgets with a record's driver options applied: `budget.multicasts`,
    /// `budget.event-multicasts`, `budget.bytes`, `budget.cpu-ms` (per second) and
    /// `budget.grace-ms`. Values above [`RECORD_BUDGET_CEILING`] times the node's
    /// are clamped; a value that is not a number is an error naming the option.
    pub fn with_overrides(
        &self,
        options: &std::collections::BTreeMap<String, String>,
    ) -> Result<Budgets, String> {
        let mut out = self.clone();
        let fields: [(&str, &mut u64, u64); 4] = [
            (
                "budget.multicasts",
                &mut out.multicasts_per_sec,
                self.multicasts_per_sec,
            ),
            (
                "budget.event-multicasts",
                &mut out.event_multicasts_per_sec,
                self.event_multicasts_per_sec,
            ),
            ("budget.bytes", &mut out.bytes_per_sec, self.bytes_per_sec),
            (
                "budget.cpu-ms",
                &mut out.cpu_ms_per_sec,
                self.cpu_ms_per_sec,
            ),
        ];
        for (key, field, node) in fields {
            if let Some(text) = options.get(key) {
                let value: u64 = text.parse().map_err(|_| {
                    format!("driver option {key}={text} is not a whole number per second")
                })?;
                *field = value.min(node.saturating_mul(RECORD_BUDGET_CEILING)).max(1);
            }
        }
        if let Some(text) = options.get("budget.grace-ms") {
            let ms: u64 = text
                .parse()
                .map_err(|_| format!("driver option budget.grace-ms={text} is not a number"))?;
            let ceiling = self.grace.saturating_mul(RECORD_BUDGET_CEILING as u32);
            out.grace = Duration::from_millis(ms).min(ceiling);
        }
        Ok(out)
    }
}

/// How a node's executor runs.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// Worker threads.
    pub workers: usize,
    /// Bytes of queued work one object's mailbox may hold before it refuses more.
    pub mailbox_bytes: usize,
    /// Longest one object runs before a worker moves on to the next.
    pub slice: Duration,
    /// Default budgets per object.
    pub budgets: Budgets,
    /// Hibernate an object idle this long: give back its sandbox and keep its
    /// state as a snapshot until its next job ([`Hosted::hibernate`]). `None`:
    /// objects stay awake.
    pub hibernate_after: Option<Duration>,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig {
            workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
                .clamp(2, 16),
            mailbox_bytes: 8 << 20,
            slice: Duration::from_millis(2),
            budgets: Budgets::default(),
            hibernate_after: None,
        }
    }
}

/// A unit of work for one object. It is called exactly once: with the replica (or
/// whatever the object is, `H`), or with the reason the object cannot run
/// (quarantined), so every reply is answered.
pub type Job<H = Replica> = Box<dyn FnOnce(Result<&mut H, ReplicaError>) + Send>;

/// What the executor runs for an object: a replica, or a gossip aggregate
/// (`crate::gossip::node_driver`). Everything it runs is charged to the object's
/// budgets from these counters.
pub trait Hosted: Send + 'static {
    /// The object's name.
    fn object_name(&self) -> &str;
    /// Its counters now (multicasts originated, events applied, state changes).
    fn usage(&self) -> ReplicaStats;
    /// Why it can no longer run, if it cannot: it is quarantined then.
    fn out_of_service(&self) -> Option<&str>;
    /// The bytes whose digest `lo status` shows (a replica's snapshot).
    fn digest_bytes(&mut self) -> Result<Vec<u8>, String>;
    /// Its memory against its cap; `None` if it is not capped this way.
    fn memory(&self) -> Option<MemoryUse> {
        None
    }
    /// Announce the events it applies on `tap` (objects that apply none ignore it).
    fn tap_applied(&mut self, _tap: crate::runtime::AppliedTap) {}
    /// Give back what it holds while idle, to take it again on its next job;
    /// whether it did. Default: nothing to give back.
    fn hibernate(&mut self) -> bool {
        false
    }
    /// Whether it hibernates now.
    fn hibernating(&self) -> bool {
        false
    }
    /// Whether it can hibernate at all (the executor keeps no sleep timer for
    /// what cannot).
    fn can_hibernate(&self) -> bool {
        false
    }
}

impl Hosted for Replica {
    fn object_name(&self) -> &str {
        &self.identity().object
    }

    fn usage(&self) -> ReplicaStats {
        self.stats()
    }

    fn out_of_service(&self) -> Option<&str> {
        Replica::out_of_service(self)
    }

    fn digest_bytes(&mut self) -> Result<Vec<u8>, String> {
        self.snapshot().map_err(|e| e.to_string())
    }

    fn memory(&self) -> Option<MemoryUse> {
        Some(Replica::memory(self))
    }

    fn tap_applied(&mut self, tap: crate::runtime::AppliedTap) {
        Replica::tap_applied(self, tap);
    }

    fn hibernate(&mut self) -> bool {
        Replica::hibernate(self)
    }

    fn hibernating(&self) -> bool {
        Replica::hibernating(self)
    }

    fn can_hibernate(&self) -> bool {
        true
    }
}

/// What the executor publishes about one object, readable at any time without
/// waiting on it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ObjectMetrics {
    /// Events the object applied.
    pub events_applied: u64,
    /// Jobs waiting in its mailbox.
    pub queued_jobs: u64,
    /// Bytes waiting in its mailbox (host memory held for it).
    pub queued_bytes: u64,
    /// Worker time it used, in microseconds.
    pub cpu_us: u64,
    /// Multicasts it originated (calls and events).
    pub multicasts: u64,
    /// Whether it is throttled right now (over a budget).
    pub throttled: bool,
    /// How many times it was throttled so far (a status polled now and then
    /// can miss the moments it is).
    pub times_throttled: u64,
    /// Size of its last snapshot digest's snapshot, in bytes.
    pub state_bytes: u64,
    /// SHA-256 (hex) of a recent snapshot; empty before the first.
    pub state_digest: String,
    /// Why it was quarantined on this node, if it was.
    pub quarantined: Option<String>,
    /// Memory it uses against its cap: its sandbox's and what the host holds for
    /// it (its checkpoint, mailbox and what its driver queued for it), in bytes.
    pub memory_bytes: u64,
    /// Whether it hibernates (its sandbox given back until its next job).
    #[serde(default)]
    pub hibernating: bool,
    /// `deliver-batch` calls that applied several of its events at once.
    #[serde(default)]
    pub batches: u64,
}

/// Token bucket per budget: refilled at `rate` per second up to one second's worth.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    level: f64,
}

impl Bucket {
    fn new(rate: u64) -> Self {
        Bucket {
            rate: rate as f64,
            level: rate as f64,
        }
    }

    fn refill(&mut self, seconds: f64) {
        self.level = (self.level + self.rate * seconds).min(self.rate);
    }

    /// Time until the level is back to zero (nothing if it is not below).
    fn deficit(&self) -> Duration {
        if self.level >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.level / self.rate)
        }
    }
}

#[derive(Debug)]
struct Meter {
    multicasts: Bucket,
    event_multicasts: Bucket,
    bytes: Bucket,
    cpu_us: Bucket,
    refilled: Instant,
    /// The current window of `grace` and how long the object was held back in it.
    window_start: Instant,
    held_back: Duration,
    /// The budget it last exceeded, as users read it.
    last_exceeded: Option<String>,
    grace: Duration,
}

impl Meter {
    fn new(b: &Budgets) -> Self {
        Meter {
            multicasts: Bucket::new(b.multicasts_per_sec),
            event_multicasts: Bucket::new(b.event_multicasts_per_sec),
            bytes: Bucket::new(b.bytes_per_sec),
            cpu_us: Bucket::new(b.cpu_ms_per_sec.saturating_mul(1000)),
            refilled: Instant::now(),
            window_start: Instant::now(),
            held_back: Duration::ZERO,
            last_exceeded: None,
            grace: b.grace,
        }
    }

    fn refill(&mut self, now: Instant) {
        let seconds = now.duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        for b in self.buckets_mut() {
            b.refill(seconds);
        }
    }

    fn buckets_mut(&mut self) -> [&mut Bucket; 4] {
        [
            &mut self.multicasts,
            &mut self.event_multicasts,
            &mut self.bytes,
            &mut self.cpu_us,
        ]
    }

    /// The budget most over, as users read it, and how long until it refills.
    fn worst(&self) -> Option<(String, Duration)> {
        // Checked before every job: the names are formatted only for a budget that
        // is over (float formatting showed up in profiles of busy objects).
        let deficits = [
            self.multicasts.deficit(),
            self.event_multicasts.deficit(),
            self.bytes.deficit(),
            self.cpu_us.deficit(),
        ];
        let (worst, deficit) = deficits
            .into_iter()
            .enumerate()
            .filter(|(_, d)| !d.is_zero())
            .max_by_key(|(_, d)| *d)?;
        let name = match worst {
            0 => format!("{} multicasts/s", group(self.multicasts.rate)),
            1 => format!(
                "{} multicasts/s made while applying events (a chain reaction?)",
                group(self.event_multicasts.rate)
            ),
            2 => format!("{} multicast bytes/s", group(self.bytes.rate)),
            _ => format!("{} ms of CPU per second", group(self.cpu_us.rate / 1000.0)),
        };
        Some((name, deficit))
    }
}

/// `2000` as `2,000`.
fn group(n: f64) -> String {
    let digits = format!("{:.0}", n);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

struct Mailbox<H> {
    jobs: VecDeque<(usize, Job<H>)>,
    bytes: usize,
    /// In the ready queue, the timer heap, or running on a worker.
    scheduled: bool,
}

/// Called once, with the reason, when an object is quarantined.
type QuarantineHook = Box<dyn FnOnce(String) + Send>;

/// One object on the executor.
struct Cell<H> {
    name: String,
    mailbox: Mutex<Mailbox<H>>,
    /// Held only by the worker running the object (one at a time: `scheduled`).
    replica: Mutex<Option<H>>,
    meter: Mutex<Meter>,
    metrics: Mutex<ObjectMetrics>,
    /// The object ended on this node (quarantined, left, or the executor
    /// stopped): nothing runs any more.
    quarantined: AtomicBool,
    /// Why it ended: what its jobs are answered with.
    end_reason: Mutex<String>,
    credit: tokio::sync::Notify,
    on_quarantine: Mutex<Option<QuarantineHook>>,
    /// The digest reflects every applied event.
    digest_fresh: AtomicBool,
    last_digest: Mutex<(Instant, Duration)>,
    /// When its last job ended (for hibernation).
    last_job: Mutex<Instant>,
    /// When its pending hibernation wake-up fires, if one is on the timer heap
    /// (one at most: later jobs only move the deadline, checked when it fires).
    sleep_timer: Mutex<Option<Instant>>,
    mailbox_bytes: usize,
    /// What the object used after its last job (sandbox and its own host side).
    memory: Mutex<Option<MemoryUse>>,
    /// Bytes its driver holds for it outside the mailbox ([`ObjectRef::hold`]).
    held: AtomicUsize,
    /// Where the object's applied events are announced ([`ObjectRef::applied`]).
    applied: crate::runtime::AppliedTap,
}

/// Applied events a watcher may fall behind by before it misses some (it is
/// told, and its stream ends).
const APPLIED_QUEUE: usize = 4096;

struct Timed {
    at: Instant,
    seq: u64,
    cell: Runnable,
    /// A digest wake-up of an idle object: it does not hold the object's
    /// `scheduled` claim, so a job arriving meanwhile schedules it at once; when it
    /// fires it claims the object only if nothing else did.
    claim: bool,
}

/// A cell as the queues see it, whatever it hosts.
trait Schedulable: Send + Sync {
    /// Run a slice on this worker.
    fn run(self: Arc<Self>, shared: &Shared);
    /// End it because the executor stopped.
    fn stop(&self);
    /// Mark it scheduled; returns whether it already was.
    fn claim(&self) -> bool;
}

impl<H: Hosted> Schedulable for Cell<H> {
    fn run(self: Arc<Self>, shared: &Shared) {
        run_slice(shared, self);
    }

    fn stop(&self) {
        end(self, STOPPED.to_string(), Ending::Left);
    }

    fn claim(&self) -> bool {
        std::mem::replace(&mut lock(&self.mailbox).scheduled, true)
    }
}

type Runnable = Arc<dyn Schedulable>;

impl PartialEq for Timed {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Timed {}
impl PartialOrd for Timed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Timed {
    // Earliest first in a max-heap.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

#[derive(Default)]
struct Queues {
    ready: VecDeque<Runnable>,
    timed: BinaryHeap<Timed>,
    seq: u64,
    stop: bool,
}

struct Shared {
    queues: Mutex<Queues>,
    wake: Condvar,
    config: ExecutorConfig,
    objects: AtomicU64,
}

/// A node's pool of worker threads running its objects. Dropping it stops the
/// workers once they finish their current job.
pub struct Executor {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("workers", &self.shared.config.workers)
            .field("objects", &self.shared.objects.load(Ordering::Relaxed))
            .finish()
    }
}

impl Executor {
    /// Start `config.workers` worker threads.
    pub fn start(config: ExecutorConfig) -> Executor {
        let shared = Arc::new(Shared {
            queues: Mutex::new(Queues::default()),
            wake: Condvar::new(),
            config,
            objects: AtomicU64::new(0),
        });
        for i in 0..shared.config.workers.max(1) {
            let shared = shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("lo-worker-{i}"))
                .spawn(move || worker(&shared));
            if let Err(e) = spawned {
                tracing::error!("cannot start executor worker {i}: {e}");
            }
        }
        Executor { shared }
    }

    /// The node's default budgets.
    pub fn budgets(&self) -> &Budgets {
        &self.shared.config.budgets
    }

    /// How it was configured.
    pub fn config(&self) -> &ExecutorConfig {
        &self.shared.config
    }

    /// Put `replica` (already initialised, or to be initialised by the first job)
    /// on the executor under `budgets`. `on_quarantine` is called once, from a
    /// worker, if the object is quarantined.
    pub fn spawn<H: Hosted>(
        &self,
        mut replica: H,
        budgets: &Budgets,
        on_quarantine: impl FnOnce(String) + Send + 'static,
    ) -> ObjectRef<H> {
        self.shared.objects.fetch_add(1, Ordering::Relaxed);
        let applied = crate::runtime::AppliedTap::default();
        replica.tap_applied(applied.clone());
        let memory = replica.memory();
        let cell = Arc::new(Cell {
            memory: Mutex::new(memory),
            held: AtomicUsize::new(0),
            name: replica.object_name().to_string(),
            mailbox: Mutex::new(Mailbox {
                jobs: VecDeque::new(),
                bytes: 0,
                scheduled: false,
            }),
            replica: Mutex::new(Some(replica)),
            meter: Mutex::new(Meter::new(budgets)),
            metrics: Mutex::new(ObjectMetrics::default()),
            quarantined: AtomicBool::new(false),
            end_reason: Mutex::new(String::new()),
            credit: tokio::sync::Notify::new(),
            on_quarantine: Mutex::new(Some(Box::new(on_quarantine))),
            digest_fresh: AtomicBool::new(false),
            last_digest: Mutex::new((Instant::now() - DIGEST_INTERVAL, Duration::ZERO)),
            last_job: Mutex::new(Instant::now()),
            sleep_timer: Mutex::new(None),
            mailbox_bytes: self.shared.config.mailbox_bytes,
            applied,
        });
        ObjectRef {
            cell,
            shared: self.shared.clone(),
        }
    }
}

impl Drop for Executor {
    /// Stop the workers once they finish their current job, and answer every job
    /// still queued, and every later one, with "stopped": a caller blocked on a
    /// job (openraft's apply, a call) must not wait forever on a node that is
    /// shutting down.
    fn drop(&mut self) {
        let waiting: Vec<Runnable> = {
            let mut q = lock(&self.shared.queues);
            q.stop = true;
            let mut cells: Vec<Runnable> = q.ready.drain(..).collect();
            cells.extend(q.timed.drain().map(|t| t.cell));
            cells
        };
        self.shared.wake.notify_all();
        for cell in waiting {
            cell.stop();
        }
    }
}

/// Why jobs submitted to an executor that has stopped fail.
const STOPPED: &str = "the node's object executor has stopped";

/// A job the mailbox refused because it is full; submit it again after
/// [`ObjectRef::credit`].
pub struct Full<H = Replica>(pub Job<H>);

impl<H> std::fmt::Debug for Full<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Full(..)")
    }
}

/// A handle on one object on the executor: submit work, read its metrics.
pub struct ObjectRef<H = Replica> {
    cell: Arc<Cell<H>>,
    shared: Arc<Shared>,
}

impl<H> Clone for ObjectRef<H> {
    fn clone(&self) -> Self {
        ObjectRef {
            cell: self.cell.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<H> std::fmt::Debug for ObjectRef<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectRef")
            .field("object", &self.cell.name)
            .finish()
    }
}

impl<H: Hosted> ObjectRef<H> {
    /// The events the object applies from now on, in the order it applies them.
    pub fn applied(&self) -> tokio::sync::broadcast::Receiver<crate::runtime::AppliedEvent> {
        self.cell
            .applied
            .get_or_init(|| tokio::sync::broadcast::channel(APPLIED_QUEUE).0)
            .subscribe()
    }

    /// Queue `job`, which holds about `bytes` bytes (its event, its arguments). An
    /// empty mailbox always takes one job, whatever its size. A quarantined object's
    /// job is answered at once, on this thread.
    pub fn submit(&self, bytes: usize, job: Job<H>) -> Result<(), Full<H>> {
        let schedule = {
            let mut mailbox = lock(&self.cell.mailbox);
            // Checked under the mailbox lock: `quarantine` sets the flag before it
            // drains the mailbox under this lock, so no job is left unanswered.
            if self.cell.quarantined.load(Ordering::Acquire) {
                drop(mailbox);
                job(Err(self.quarantine_error()));
                return Ok(());
            }
            if !mailbox.jobs.is_empty() && mailbox.bytes + bytes > self.cell.mailbox_bytes {
                return Err(Full(job));
            }
            mailbox.bytes += bytes;
            mailbox.jobs.push_back((bytes, job));
            let mut m = lock(&self.cell.metrics);
            m.queued_jobs = mailbox.jobs.len() as u64;
            m.queued_bytes = mailbox.bytes as u64;
            drop(m);
            !std::mem::replace(&mut mailbox.scheduled, true)
        };
        if schedule {
            push_ready(&self.shared, self.cell.clone());
        }
        Ok(())
    }

    /// Queue `job`; if the mailbox is full, wait for credit and try again.
    pub async fn submit_waiting(&self, bytes: usize, mut job: Job<H>) {
        loop {
            let credit = self.cell.credit.notified();
            tokio::pin!(credit);
            credit.as_mut().enable();
            match self.submit(bytes, job) {
                Ok(()) => return,
                Err(Full(back)) => {
                    job = back;
                    credit.await;
                }
            }
        }
    }

    /// Notified when the mailbox drains below half (after a [`Full`]) or the object
    /// is quarantined. Create and `enable` the `notified()` future before calling
    /// [`submit`](Self::submit), or a notification may come in between.
    pub fn credit(&self) -> &tokio::sync::Notify {
        &self.cell.credit
    }

    /// The object's metrics now.
    pub fn metrics(&self) -> ObjectMetrics {
        lock(&self.cell.metrics).clone()
    }

    /// Why the object was quarantined, if it was.
    pub fn quarantined(&self) -> Option<String> {
        lock(&self.cell.metrics).quarantined.clone()
    }

    /// Take the object off this node because it left (or was excluded): queued
    /// and later jobs are answered with `reason`, the replica is dropped. It is
    /// not reported as quarantined, and the driver is not told (it asked).
    pub fn retire(&self, reason: &str) {
        end(&self.cell, reason.to_string(), Ending::Left);
    }

    /// Quarantine the object for a limit its driver saw exceeded (host memory the
    /// driver holds for it): as a budget the executor enforces would, it is
    /// reported with `reason` and the driver's quarantine hook runs.
    pub fn quarantine(&self, reason: &str) {
        end(&self.cell, reason.to_string(), Ending::Quarantined);
    }

    /// Count `bytes` its driver now holds for the object outside the mailbox
    /// (events it could not queue yet) against the object's memory cap. Past the
    /// cap the object is quarantined (its hook runs) and the reason returned; what
    /// `what` says the bytes are appears in it.
    pub fn hold(&self, bytes: usize, what: &str) -> Result<(), String> {
        self.cell.held.fetch_add(bytes, Ordering::AcqRel);
        match over_memory_cap(&self.cell, what) {
            Some(reason) => {
                end(&self.cell, reason.clone(), Ending::Quarantined);
                Err(reason)
            }
            None => Ok(()),
        }
    }

    /// The driver no longer holds `bytes` of [`hold`](Self::hold) (it queued them).
    pub fn release(&self, bytes: usize) {
        let _ = self
            .cell
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                Some(held.saturating_sub(bytes))
            });
    }

    fn quarantine_error(&self) -> ReplicaError {
        ended(&self.cell.name, lock(&self.cell.end_reason).clone())
    }
}

impl<H> Drop for Cell<H> {
    fn drop(&mut self) {
        // Answer whatever is still queued (a handle dropped with work pending).
        let jobs = std::mem::take(&mut lock(&self.mailbox).jobs);
        for (_, job) in jobs {
            job(Err(ended(
                &self.name,
                "the object was removed from this node".into(),
            )));
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic in a job (a host bug) must not take every other object down with it.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn push_ready(shared: &Shared, cell: Runnable) {
    let mut q = lock(&shared.queues);
    if q.stop {
        drop(q);
        cell.stop();
        return;
    }
    q.ready.push_back(cell);
    drop(q);
    shared.wake.notify_one();
}

fn push_timed(shared: &Shared, cell: Runnable, at: Instant, claim: bool) {
    let mut q = lock(&shared.queues);
    if q.stop {
        drop(q);
        cell.stop();
        return;
    }
    q.seq += 1;
    let seq = q.seq;
    q.timed.push(Timed {
        at,
        seq,
        cell,
        claim,
    });
    drop(q);
    shared.wake.notify_one();
}

fn worker(shared: &Shared) {
    loop {
        let cell = {
            let mut q = lock(&shared.queues);
            loop {
                if q.stop {
                    return;
                }
                let now = Instant::now();
                while q.timed.peek().is_some_and(|t| t.at <= now) {
                    let t = q.timed.pop().expect("peeked");
                    if t.claim && t.cell.claim() {
                        // Already scheduled by a job; that run refreshes the digest.
                        continue;
                    }
                    q.ready.push_back(t.cell);
                }
                if let Some(cell) = q.ready.pop_front() {
                    break cell;
                }
                q = match q.timed.peek().map(|t| t.at) {
                    Some(at) => {
                        shared
                            .wake
                            .wait_timeout(q, at.saturating_duration_since(now))
                            .unwrap_or_else(|p| p.into_inner())
                            .0
                    }
                    None => shared.wake.wait(q).unwrap_or_else(|p| p.into_inner()),
                };
            }
        };
        cell.run(shared);
    }
}

/// Run one object for a slice, then reschedule it: at the tail of the ready queue
/// if it has more work, on the timer heap if it is throttled or its digest is due,
/// or not at all if it is idle.
fn run_slice<H: Hosted>(shared: &Shared, cell: Arc<Cell<H>>) {
    let started = Instant::now();
    let mut ran = 0;
    let mut replica_slot = lock(&cell.replica);
    loop {
        if cell.quarantined.load(Ordering::Acquire) {
            break;
        }
        if let Some(wait) = throttle(&cell, Instant::now()) {
            drop(replica_slot);
            {
                let mut metrics = lock(&cell.metrics);
                metrics.throttled = true;
                metrics.times_throttled += 1;
            }
            push_timed(shared, cell, Instant::now() + wait, false);
            return;
        }
        let next = {
            let mut mailbox = lock(&cell.mailbox);
            let next = mailbox.jobs.pop_front();
            if let Some((bytes, _)) = &next {
                mailbox.bytes -= bytes;
                if mailbox.bytes < cell.mailbox_bytes / 2 {
                    cell.credit.notify_waiters();
                }
            }
            let mut m = lock(&cell.metrics);
            m.queued_jobs = mailbox.jobs.len() as u64;
            m.queued_bytes = mailbox.bytes as u64;
            next
        };
        let Some((_, job)) = next else { break };
        let Some(replica) = replica_slot.as_mut() else {
            job(Err(ended(
                &cell.name,
                "the object is no longer on this node".into(),
            )));
            continue;
        };
        let before = replica.usage();
        let t0 = Instant::now();
        let was_asleep = replica.hibernating();
        job(Ok(replica));
        let used = t0.elapsed();
        if shared.config.hibernate_after.is_some() {
            *lock(&cell.last_job) = Instant::now();
        }
        if was_asleep && !replica.hibernating() {
            lock(&cell.metrics).hibernating = false;
        }
        let after = replica.usage();
        *lock(&cell.memory) = replica.memory();
        let broken = replica
            .out_of_service()
            .map(str::to_string)
            .or_else(|| over_memory_cap(&cell, "its queued work"));
        charge(&cell, before, after, used);
        if let Some(reason) = broken {
            drop(replica_slot);
            end(&cell, reason, Ending::Quarantined);
            return;
        }
        ran += 1;
        if ran >= JOBS_PER_SLICE || started.elapsed() >= shared.config.slice {
            break;
        }
    }
    if cell.quarantined.load(Ordering::Acquire) {
        // `end` drained the mailbox (and `submit` queues nothing after it); the
        // replica is dropped here if `end` could not take it from this worker.
        replica_slot.take();
        return;
    }
    // Refresh the digest if the object is idle and its last one is stale.
    let idle = lock(&cell.mailbox).jobs.is_empty();
    if idle && !cell.digest_fresh.load(Ordering::Acquire) {
        let (last, took) = *lock(&cell.last_digest);
        let due = last + DIGEST_INTERVAL.max(took * 20).min(MAX_DIGEST_INTERVAL);
        if Instant::now() >= due {
            if let Some(replica) = replica_slot.as_mut() {
                refresh_digest(&cell, replica);
                if let Some(reason) = replica.out_of_service().map(str::to_string) {
                    drop(replica_slot);
                    end(&cell, reason, Ending::Quarantined);
                    return;
                }
            }
        } else {
            drop(replica_slot);
            let mut mailbox = lock(&cell.mailbox);
            if mailbox.jobs.is_empty() {
                // Idle until the digest is due: give up the claim (a new job
                // schedules the object at once) and ask for a wake-up.
                mailbox.scheduled = false;
                drop(mailbox);
                push_timed(shared, cell, due, true);
            } else {
                drop(mailbox);
                push_ready(shared, cell);
            }
            return;
        }
    }
    // Idle with a fresh digest: hibernate once it has been idle long enough, or
    // ask to be woken then.
    let mut sleep_at = None;
    if let Some(after) = shared.config.hibernate_after
        && let Some(replica) = replica_slot.as_mut()
        && replica.can_hibernate()
        && !replica.hibernating()
        && lock(&cell.mailbox).jobs.is_empty()
    {
        let due = *lock(&cell.last_job) + after;
        let now = Instant::now();
        // A wake-up that is due now has fired (or is about to): it is not pending.
        let pending = {
            let mut timer = lock(&cell.sleep_timer);
            if timer.is_some_and(|at| now >= at) {
                *timer = None;
            }
            timer.is_some()
        };
        if now >= due {
            let t0 = Instant::now();
            if replica.hibernate() {
                *lock(&cell.memory) = replica.memory();
                lock(&cell.metrics).hibernating = true;
                // Publishes the smaller total (it cannot be over the cap now).
                let _ = over_memory_cap(&cell, "its queued work");
            }
            lock(&cell.metrics).cpu_us += t0.elapsed().as_micros() as u64;
            // Its snapshot may have hit a deadline or failed a rollback.
            if let Some(reason) = replica.out_of_service().map(str::to_string) {
                drop(replica_slot);
                end(&cell, reason, Ending::Quarantined);
                return;
            }
        } else if !pending {
            sleep_at = Some(due);
        }
    }
    drop(replica_slot);
    lock(&cell.metrics).throttled = false;
    let mut mailbox = lock(&cell.mailbox);
    if mailbox.jobs.is_empty() {
        mailbox.scheduled = false;
        drop(mailbox);
        if let Some(at) = sleep_at {
            // A wake-up that claims the object only if no job did meanwhile.
            *lock(&cell.sleep_timer) = Some(at);
            push_timed(shared, cell, at, true);
        }
    } else {
        drop(mailbox);
        push_ready(shared, cell);
    }
}

fn refresh_digest<H: Hosted>(cell: &Cell<H>, replica: &mut H) {
    let t0 = Instant::now();
    match replica.digest_bytes() {
        Ok(snapshot) => {
            let took = t0.elapsed();
            *lock(&cell.last_digest) = (Instant::now(), took);
            cell.digest_fresh.store(true, Ordering::Release);
            let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&snapshot));
            let mut m = lock(&cell.metrics);
            m.state_bytes = snapshot.len() as u64;
            m.state_digest = digest;
            m.cpu_us += took.as_micros() as u64;
        }
        Err(e) => {
            *lock(&cell.last_digest) = (Instant::now(), t0.elapsed());
            tracing::warn!(object = %cell.name, "cannot take a snapshot for status: {e}");
        }
    }
}

/// Why the object is over its memory cap, if it is: its sandbox, the host side it
/// keeps itself, its mailbox and what its driver holds (`held`, described by
/// `what`) count together. Publishes the total in its metrics.
fn over_memory_cap<H>(cell: &Cell<H>, what: &str) -> Option<String> {
    let memory = (*lock(&cell.memory))?;
    let mailbox = lock(&cell.mailbox).bytes;
    let held = cell.held.load(Ordering::Acquire);
    let host = memory.host + mailbox + held;
    let total = memory.sandbox + host;
    lock(&cell.metrics).memory_bytes = total as u64;
    (total > memory.cap).then(|| {
        format!(
            "exceeded its memory cap of {} MiB: {} MiB in its sandbox and {} MiB held by \
             the host for it ({} MiB of {what})",
            memory.cap >> 20,
            memory.sandbox >> 20,
            host >> 20,
            held >> 20
        )
    })
}

/// Charge one job's use to the object's budgets and publish its counters.
fn charge<H>(cell: &Cell<H>, before: ReplicaStats, after: ReplicaStats, used: Duration) {
    let calls = after.multicasts_from_calls - before.multicasts_from_calls;
    let events = after.multicasts_from_events - before.multicasts_from_events;
    let bytes = after.multicast_bytes - before.multicast_bytes;
    {
        let mut meter = lock(&cell.meter);
        meter.multicasts.level -= (calls + events) as f64;
        meter.event_multicasts.level -= events as f64;
        meter.bytes.level -= bytes as f64;
        meter.cpu_us.level -= used.as_micros() as f64;
    }
    // Not only events: an `init` from a snapshot (a lagging member catching up)
    // changes the state too.
    if after.state_changes != before.state_changes {
        cell.digest_fresh.store(false, Ordering::Release);
    }
    let mut m = lock(&cell.metrics);
    m.events_applied = after.events_applied;
    m.batches = after.batches;
    m.cpu_us += used.as_micros() as u64;
    m.multicasts = after.multicasts_from_calls + after.multicasts_from_events;
}

/// How long the object must wait before it may run again, or `None` if it may run
/// now. At the end of each window of `grace`, an object that was held back for at
/// least half of it (one that asks for about twice its budget or more, without
/// letting up) is quarantined; one that is merely busy is only slowed.
fn throttle<H>(cell: &Cell<H>, now: Instant) -> Option<Duration> {
    let mut meter = lock(&cell.meter);
    meter.refill(now);
    if now.duration_since(meter.window_start) >= meter.grace {
        let held_back = std::mem::take(&mut meter.held_back);
        meter.window_start = now;
        if held_back * 2 >= meter.grace
            && let Some(budget) = meter.last_exceeded.clone()
        {
            drop(meter);
            end(cell, format!("exceeded {budget}"), Ending::Quarantined);
            return None;
        }
    }
    let (budget, wait) = meter.worst()?;
    let wait = wait.min(Duration::from_millis(100));
    meter.held_back += wait;
    meter.last_exceeded = Some(budget);
    Some(wait)
}

/// The error every job of an object that ended on this node is answered with.
fn ended(object: &str, reason: String) -> ReplicaError {
    ReplicaError::Quarantined {
        object: object.to_string(),
        reason,
    }
}

/// Why an object ends on this node.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// A limit: reported in its metrics, logged, and its driver's hook runs.
    Quarantined,
    /// It left, was excluded, or the executor stopped: nothing to report.
    Left,
}

fn end<H>(cell: &Cell<H>, reason: String, how: Ending) {
    // Flag, reason and an empty mailbox become visible together (mailbox lock, then
    // metrics lock, as everywhere): whoever sees the reason sees no queued work, and
    // `submit` (which checks the flag under the mailbox lock) never queues more.
    let jobs = {
        let mut mailbox = lock(&cell.mailbox);
        if cell.quarantined.load(Ordering::Acquire) {
            return;
        }
        cell.quarantined.store(true, Ordering::Release);
        *lock(&cell.end_reason) = reason.clone();
        mailbox.bytes = 0;
        let jobs = std::mem::take(&mut mailbox.jobs);
        let mut m = lock(&cell.metrics);
        if how == Ending::Quarantined {
            m.quarantined = Some(reason.clone());
        }
        m.queued_jobs = 0;
        m.queued_bytes = 0;
        jobs
    };
    if how == Ending::Quarantined {
        tracing::warn!(object = %cell.name, "quarantined on this node: {reason}");
    }
    // The replica may be held by the worker that called us (it is dropped after
    // the slice) or by nobody (dropped now).
    if let Ok(mut slot) = cell.replica.try_lock() {
        slot.take();
    }
    for (_, job) in jobs {
        job(Err(ended(&cell.name, reason.clone())));
    }
    cell.credit.notify_waiters();
    let notify = lock(&cell.on_quarantine).take();
    if let (Ending::Quarantined, Some(notify)) = (how, notify) {
        notify(reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::runtime::{Event, ReplicaIdentity, Runtime, RuntimeConfig};

    fn on_executor(runtime: &Runtime, path: &str, name: &str) -> ObjectRef {
        let logic = runtime.load_file(std::path::Path::new(path)).unwrap();
        let mut replica = runtime
            .instantiate(&logic, ReplicaIdentity::local(name, "m1"))
            .unwrap();
        replica.init(None).unwrap();
        runtime
            .executor()
            .spawn(replica, runtime.executor().budgets(), |_| {})
    }

    /// Run `job` and wait for what it returns.
    fn run<R: Send + 'static>(
        object: &ObjectRef,
        job: impl FnOnce(Result<&mut Replica, ReplicaError>) -> R + Send + 'static,
    ) -> R {
        let (tx, rx) = std::sync::mpsc::channel();
        object
            .submit(0, Box::new(move |r| tx.send(job(r)).unwrap()))
            .unwrap();
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the job ran within 10 s")
    }

    #[test]
    fn an_idle_object_hibernates_and_its_next_job_wakes_it_with_its_state() {
        let runtime = Runtime::new(RuntimeConfig {
            executor: ExecutorConfig {
                hibernate_after: Some(Duration::from_millis(500)),
                ..ExecutorConfig::default()
            },
            ..RuntimeConfig::default()
        })
        .unwrap();
        let counter = on_executor(&runtime, liveobjects_objects::COUNTER, "t:sleepy");
        // The counter's own `add` makes the events (a call multicasts, applies nothing).
        let payload = |n: i64| {
            run(&counter, move |r| {
                r.unwrap().call_wave("add", &[&n.to_string()]).unwrap()
            })
            .multicasts
            .remove(0)
        };
        for seq in 1..=50u64 {
            let event = Event {
                sender: "m1".into(),
                seq,
                timestamp_ms: seq,
                payload: payload(seq as i64),
            };
            run(&counter, move |r| r.unwrap().deliver(&event).unwrap());
        }
        let awake = counter.metrics();
        assert!(!awake.hibernating);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !counter.metrics().hibernating {
            assert!(Instant::now() < deadline, "not hibernated within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        let asleep = counter.metrics();
        assert!(
            asleep.memory_bytes < awake.memory_bytes / 4,
            "asleep {} bytes, awake {}",
            asleep.memory_bytes,
            awake.memory_bytes
        );
        // A query wakes it, with every event applied.
        let (got, stats) = run(&counter, |r| {
            let r = r.unwrap();
            assert!(r.hibernating());
            let got = r.call_wave("get", &[]).unwrap().results_wave();
            (got, r.stats())
        });
        assert_eq!(got, [(1..=50).sum::<i64>().to_string()]);
        // `lo status` showed the digest of the state it slept with, which is the
        // state it woke to.
        let snapshot = run(&counter, |r| r.unwrap().snapshot().unwrap());
        let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&snapshot));
        assert_eq!(asleep.state_digest, digest);
        assert_eq!(stats.hibernations, 1);
        assert_eq!(stats.recoveries, 0, "waking is not a recovery");
        // And it goes back to sleep once idle again.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !counter.metrics().hibernating {
            assert!(
                Instant::now() < deadline,
                "not hibernated again within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn host_memory_held_for_an_object_counts_against_its_memory_cap() {
        let runtime = Runtime::new(RuntimeConfig {
            limits: crate::runtime::Limits {
                memory_bytes: 16 << 20,
                ..crate::runtime::Limits::default()
            },
            ..RuntimeConfig::default()
        })
        .unwrap();
        let counter = on_executor(&runtime, liveobjects_objects::COUNTER, "t:held");
        run(&counter, |r| r.unwrap().call_wave("add", &["1"]).unwrap());
        // Holding nothing publishes what it uses now: its sandbox and checkpoint.
        counter.hold(0, "nothing").unwrap();
        let sandbox = counter.metrics().memory_bytes;
        assert!(sandbox > 0 && sandbox < 16 << 20, "{sandbox}");
        // Within the cap: counted, and released again (up to the cap exactly).
        counter.hold(4 << 20, "test events").unwrap();
        assert_eq!(counter.metrics().memory_bytes, sandbox + (4 << 20));
        counter.release(4 << 20);
        counter
            .hold((16 << 20) - sandbox as usize, "test events")
            .unwrap();
        counter.release((16 << 20) - sandbox as usize);
        // Past it (with the sandbox's share): quarantined, with the numbers.
        let err = counter
            .hold((16 << 20) - sandbox as usize + 1, "test events")
            .unwrap_err();
        assert!(
            err.starts_with("exceeded its memory cap of 16 MiB")
                && err.contains("held by the host for it")
                && err.contains("of test events"),
            "{err}"
        );
        assert_eq!(counter.quarantined(), Some(err.clone()));
        let answered = run(&counter, |r| r.err().map(|e| e.to_string()));
        assert!(
            answered.as_deref().is_some_and(|a| a.contains(&err)),
            "{answered:?}"
        );
    }

    #[test]
    fn a_job_for_an_idle_object_runs_at_once_while_its_digest_waits() {
        let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
        let counter = on_executor(&runtime, liveobjects_objects::COUNTER, "t:counter");
        let add = run(&counter, |r| r.unwrap().call_wave("add", &["1"]).unwrap())
            .multicasts
            .remove(0);
        let started = Instant::now();
        // Each event applied leaves the object idle with a stale digest; the next
        // job must not wait for the digest's timer.
        for seq in 1..=50 {
            let event = Event {
                sender: "m1".into(),
                seq,
                timestamp_ms: seq,
                payload: add.clone(),
            };
            run(&counter, move |r| r.unwrap().deliver(&event).unwrap());
        }
        let took = started.elapsed();
        assert!(
            took < DIGEST_INTERVAL * 25,
            "50 sequential jobs took {took:?}: jobs waited for digest timers"
        );
        assert_eq!(
            run(&counter, |r| r
                .unwrap()
                .call_wave("get", &[])
                .unwrap()
                .results_wave()),
            ["50"]
        );
        // The digest catches up once the object is idle.
        let deadline = Instant::now() + Duration::from_secs(10);
        while counter.metrics().state_digest.is_empty() {
            assert!(Instant::now() < deadline, "no digest after 10 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(counter.metrics().events_applied, 50);
    }

    #[test]
    fn a_chain_reaction_is_quarantined_and_every_job_is_answered() {
        let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
        let chain = on_executor(&runtime, liveobjects_objects::HOSTILE, "t:chain");
        let first = run(&chain, |r| r.unwrap().call_wave("chain", &[]).unwrap()).multicasts;
        // Feed every event's multicasts back as new events, as a group would.
        let (tx, rx) = std::sync::mpsc::channel::<Vec<Vec<u8>>>();
        tx.send(first).unwrap();
        let mut seq = 0;
        let deadline = Instant::now() + Duration::from_secs(20);
        while chain.quarantined().is_none() {
            assert!(Instant::now() < deadline, "not quarantined within 20 s");
            let Ok(payloads) = rx.recv_timeout(Duration::from_millis(100)) else {
                continue;
            };
            for payload in payloads {
                seq += 1;
                let event = Event {
                    sender: "m1".into(),
                    seq,
                    timestamp_ms: seq,
                    payload,
                };
                let tx = tx.clone();
                let mut job: Job = Box::new(move |r| {
                    if let Ok(d) = r.and_then(|r| r.deliver(&event)) {
                        let _ = tx.send(d.multicasts);
                    }
                });
                while let Err(Full(back)) = chain.submit(64, job) {
                    job = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        let reason = chain.quarantined().unwrap();
        assert!(
            reason.contains("2,000 multicasts/s made while applying events"),
            "{reason}"
        );
        // Later work is answered at once with the reason.
        let err = run(&chain, |r| r.err().map(|e| e.to_string())).unwrap();
        assert!(
            err.contains("t:chain") && err.contains("quarantined"),
            "{err}"
        );
        assert_eq!(chain.metrics().queued_jobs, 0);
    }

    #[test]
    fn jobs_queued_when_the_executor_stops_are_answered() {
        let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
        let counter = on_executor(&runtime, liveobjects_objects::COUNTER, "t:stopping");
        drop(runtime);
        let (tx, rx) = std::sync::mpsc::channel();
        counter
            .submit(
                0,
                Box::new(move |r| tx.send(r.err().map(|e| e.to_string())).unwrap()),
            )
            .unwrap();
        let err = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("a job on a stopped executor is answered")
            .expect("with an error");
        assert!(err.contains("stopped"), "{err}");
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(group(2000.0), "2,000");
        assert_eq!(group(200.0), "200");
        assert_eq!(group(1234567.0), "1,234,567");
    }

    #[test]
    fn record_overrides_are_clamped_to_the_ceiling() {
        let node = Budgets::default();
        let mut options = std::collections::BTreeMap::new();
        options.insert("budget.event-multicasts".to_string(), "10".to_string());
        options.insert("budget.cpu-ms".to_string(), "99999999".to_string());
        let b = node.with_overrides(&options).unwrap();
        assert_eq!(b.event_multicasts_per_sec, 10);
        assert_eq!(
            b.cpu_ms_per_sec,
            node.cpu_ms_per_sec * RECORD_BUDGET_CEILING
        );
        options.insert("budget.bytes".to_string(), "lots".to_string());
        let err = node.with_overrides(&options).unwrap_err();
        assert!(err.contains("budget.bytes=lots"), "{err}");
    }

    #[test]
    fn a_bucket_in_deficit_says_how_long_until_it_refills() {
        let mut b = Bucket::new(1000);
        b.level = -500.0;
        assert_eq!(b.deficit(), Duration::from_millis(500));
        b.refill(1.0);
        assert_eq!(b.level, 500.0);
        assert_eq!(b.deficit(), Duration::ZERO);
    }
}
