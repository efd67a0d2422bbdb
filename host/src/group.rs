//! What every driver's objects share: the errors a call on a joined object can
//! fail with, the notices a local application can watch, the status a driver
//! publishes for one object, the access policy a group enforces on joiners, and
//! how events reach a replica in batches.
//! Drivers (`mesh`, `qsm`, `vsync`, `gossip`) speak this vocabulary to the node and
//! the CLI, which never name a driver.

use crate::executor::ObjectRef;
use crate::mesh::net::Peer;
use crate::runtime::{
    Event, MAX_BATCH_BYTES, MAX_BATCH_EVENTS, Notification, Replica, ReplicaError,
};
use liveobjects_directory::record::{AccessPolicy, Grant, Signed};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Something a local application may want to see.
#[derive(Debug, Clone)]
pub enum GroupNotice {
    /// The object raised a notification.
    Notification {
        /// What changed.
        topic: String,
        /// Free text.
        detail: String,
    },
    /// The membership changed.
    View(Vec<Peer>),
    /// This replica is no longer a member.
    Excluded,
    /// The host quarantined the object on this node (the limit it exceeded).
    Quarantined(String),
}

/// Where a group's notices go: a broadcast channel made on the first
/// subscription. A tokio broadcast channel preallocates its whole queue (about
/// 80 KiB for 1,024 notices), which every idle object would otherwise pay for;
/// notices sent before anyone subscribed reach no one, as before.
#[derive(Clone, Default)]
pub struct Notices(Arc<std::sync::OnceLock<tokio::sync::broadcast::Sender<GroupNotice>>>);

/// Notices a subscriber may fall behind by before it misses some (and is told).
const NOTICE_QUEUE: usize = 1024;

impl Notices {
    /// Send `notice` to the current subscribers; whether there were any.
    pub fn send(&self, notice: GroupNotice) -> bool {
        self.0.get().is_some_and(|tx| tx.send(notice).is_ok())
    }

    /// Receive the notices sent from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<GroupNotice> {
        self.0
            .get_or_init(|| tokio::sync::broadcast::channel(NOTICE_QUEUE).0)
            .subscribe()
    }
}

impl std::fmt::Debug for Notices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notices")
            .field(
                "subscribers",
                &self.0.get().map_or(0, |tx| tx.receiver_count()),
            )
            .finish()
    }
}

/// Who may join a group, and this host's own credential.
#[derive(Debug, Clone)]
pub struct Admission {
    /// The object's access policy (from its record); members enforce it on joiners.
    pub policy: AccessPolicy,
    /// This host's grant, presented when it joins (for `grants:` policies).
    pub grant: Option<Signed<Grant>>,
}

impl Default for Admission {
    fn default() -> Self {
        Admission {
            policy: AccessPolicy::Open,
            grant: None,
        }
    }
}

/// A snapshot of a group's state, for `lo status`.
#[derive(Debug, Clone, Default)]
pub struct GroupStatus {
    /// Current members.
    pub members: Vec<Peer>,
    /// Highest position of the total order delivered here.
    pub delivered: u64,
    /// Whether this replica has state and takes part.
    pub member: bool,
    /// Whether this host orders the group's events.
    pub sequencer: bool,
    /// Events the object applied.
    pub events_applied: u64,
    /// Why the group refused this joiner, if it did (it will not become a member).
    pub refused: Option<String>,
    /// The latest divergence check this replica agreed with, if any.
    pub check: Option<String>,
    /// The latest divergence found here (and its repair), or why the object was
    /// stopped for lack of a majority.
    pub divergence: Option<String>,
    /// The logic's record version here, since when, and the last live upgrade.
    pub logic: Option<String>,
    /// The record version of the logic running here.
    pub logic_version: Option<u64>,
    /// The highest version a live upgrade was tried to here (switched, aborted
    /// or refused), if above the one running.
    pub upgrade_tried: Option<u64>,
    /// The object's methods, if a live upgrade changed them since it was joined.
    pub interface: Option<std::sync::Arc<crate::runtime::ObjectInterface>>,
}

impl GroupStatus {
    /// Show `in_force`: its line, its version, and the version an upgrade was
    /// last tried to if that one is not running.
    pub fn show_logic(&mut self, in_force: &crate::driver::LogicInForce) {
        self.logic = Some(in_force.line());
        self.logic_version = Some(in_force.version);
        self.upgrade_tried = (in_force.attempted > in_force.version).then_some(in_force.attempted);
    }
}

impl GroupError {
    /// Why calls on `object` fail once its replica's task ended: the replica's
    /// quarantine (naming the limit), or that this host left.
    pub fn ended(object: &str, replica: Option<&crate::executor::ObjectRef>) -> GroupError {
        match replica.and_then(crate::executor::ObjectRef::quarantined) {
            Some(reason) => GroupError::Replica(crate::runtime::ReplicaError::Quarantined {
                object: object.to_string(),
                reason,
            }),
            None => GroupError::Gone(object.to_string()),
        }
    }
}

/// Why a call on a group failed.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// The replica refused or failed.
    #[error(transparent)]
    Replica(#[from] crate::runtime::ReplicaError),
    /// The group task is gone (left, or excluded).
    #[error("this host no longer takes part in {0}")]
    Gone(String),
    /// The replica has no state yet (joining).
    #[error("{0} is still joining (waiting for its state)")]
    Joining(String),
    /// The object rejected an event of the update (every replica rejects it
    /// alike: objects are deterministic). That event changed nothing; on drivers
    /// without transactions the update's other events were applied.
    #[error("{object} rejected the update: {reason}")]
    Rejected {
        /// The object.
        object: String,
        /// The object's reason (or the failure of its `deliver`).
        reason: String,
    },
    /// The object refused an update (a transaction): it aborted at every replica
    /// and changed nothing.
    #[error("transaction on {object} aborted at every replica: {reason}")]
    Aborted {
        /// The object.
        object: String,
        /// The object's reason.
        reason: String,
    },
    /// The group could not order or confirm the request in time (for vsync: no
    /// majority reachable); an update may or may not have committed.
    #[error("{object}: {reason}")]
    Unavailable {
        /// The object.
        object: String,
        /// What happened.
        reason: String,
    },
    /// No member the joiner knows of answered, and it was not allowed to found
    /// the group.
    #[error("no member of {object} answered (tried {tried}); is any host running it?")]
    NoMembers {
        /// The object.
        object: String,
        /// Members tried.
        tried: usize,
    },
    /// The driver or its membership service refused the join.
    #[error("cannot join {object}: {reason}")]
    Refused {
        /// The object.
        object: String,
        /// Why.
        reason: String,
    },
}

/// Where a call's results go: its caller.
pub type CallReply = tokio::sync::oneshot::Sender<Result<Vec<String>, GroupError>>;

/// Update calls waiting for their own events to be applied at this replica, so a
/// following query sees them. Each is answered once its last event is applied:
/// with its results, or with the object's reason if it rejected one of them.
/// Positions number this host's own events of the object in the order it sent
/// them (the mesh's sequence numbers, qsm's count of own multicasts).
#[derive(Default)]
pub(crate) struct WaitingCalls {
    calls: Vec<WaitingCall>,
}

struct WaitingCall {
    first: u64,
    last: u64,
    results: Vec<String>,
    reply: CallReply,
    rejected: Option<String>,
}

impl WaitingCalls {
    /// A call whose events are at positions `first..=last`.
    pub(crate) fn push(&mut self, first: u64, last: u64, results: Vec<String>, reply: CallReply) {
        self.calls.push(WaitingCall {
            first,
            last,
            results,
            reply,
            rejected: None,
        });
    }

    /// This host's event at `position` was applied here, or rejected for
    /// `rejected`: answer the calls it completes.
    pub(crate) fn applied(&mut self, object: &str, position: u64, rejected: Option<String>) {
        if let Some(reason) = rejected
            && let Some(call) = self
                .calls
                .iter_mut()
                .find(|c| (c.first..=c.last).contains(&position))
        {
            call.rejected.get_or_insert(reason);
        }
        let (done, waiting) = std::mem::take(&mut self.calls)
            .into_iter()
            .partition(|c| c.last <= position);
        self.calls = waiting;
        for call in done {
            let _ = call.reply.send(match call.rejected {
                Some(reason) => Err(GroupError::Rejected {
                    object: object.to_string(),
                    reason,
                }),
                None => Ok(call.results),
            });
        }
    }

    /// Answer every waiting call with `error()` (the object ended here).
    pub(crate) fn fail_all(&mut self, error: impl Fn() -> GroupError) {
        for call in self.calls.drain(..) {
            let _ = call.reply.send(Err(error()));
        }
    }
}

/// Events a driver hands its replica in batches ([`Replica::deliver_batch`]):
/// while the job that will apply a run of events waits in the replica's mailbox,
/// events that arrive join that run instead of queueing a job each. A replica that
/// keeps up gets runs of one; one that falls behind gets up to
/// [`MAX_BATCH_EVENTS`] per job, which is when the saving matters.
///
/// Each event carries a tag of the driver's (which call it answers, say). A run
/// is closed by any other job the driver queues, so nothing overtakes it. Events
/// join runs only while the replica takes batches (the job reports it through
/// [`Run::set_batching`]): one by one, a run of heavy events would hold an executor
/// worker for many calls, past the executor's checks between jobs.
///
/// [`Replica::deliver_batch`]: crate::runtime::Replica::deliver_batch
/// [`MAX_BATCH_EVENTS`]: crate::runtime::MAX_BATCH_EVENTS
pub(crate) struct DeliveryRuns<T> {
    open: Option<OpenRun<T>>,
    /// Whether the replica took batches at its last delivery job.
    batching: Arc<AtomicBool>,
}

struct OpenRun<T> {
    shared: Arc<Mutex<Option<RunContents<T>>>>,
    events: usize,
    bytes: usize,
}

struct RunContents<T> {
    events: Vec<(T, Event)>,
    /// Bytes of the events after the first, which the driver held for the run.
    held: usize,
}

/// The job's end of a run: what it applies.
pub(crate) struct Run<T> {
    shared: Arc<Mutex<Option<RunContents<T>>>>,
    batching: Arc<AtomicBool>,
}

impl<T> Run<T> {
    /// Tell the driver whether the replica takes batches (call after applying).
    pub(crate) fn set_batching(&self, batching: bool) {
        self.batching.store(batching, Ordering::Relaxed);
    }

    /// Take the run's events (once: later events go to a new run) and the bytes
    /// the driver held for them, which the caller releases.
    pub(crate) fn take(&self) -> (Vec<(T, Event)>, usize) {
        match self.shared.lock().expect("delivery run").take() {
            Some(contents) => (contents.events, contents.held),
            None => (Vec::new(), 0),
        }
    }
}

impl<T> Default for DeliveryRuns<T> {
    fn default() -> Self {
        DeliveryRuns {
            open: None,
            batching: Arc::default(),
        }
    }
}

impl<T> DeliveryRuns<T> {
    /// Add `event` (`bytes` for budgets) to the open run if the replica takes
    /// batches, the run has room and its job has not started; otherwise hand it
    /// back, to start a new run. The caller has held `bytes` (against the object's
    /// memory cap) before: the job releases them when it takes the run.
    pub(crate) fn join(&mut self, tag: T, event: Event, bytes: usize) -> Result<(), (T, Event)> {
        if !self.batching.load(Ordering::Relaxed) {
            return Err((tag, event));
        }
        let Some(open) = &mut self.open else {
            return Err((tag, event));
        };
        if open.events >= MAX_BATCH_EVENTS || open.bytes + bytes > MAX_BATCH_BYTES {
            return Err((tag, event));
        }
        let mut shared = open.shared.lock().expect("delivery run");
        let Some(contents) = shared.as_mut() else {
            drop(shared);
            self.open = None;
            return Err((tag, event));
        };
        contents.events.push((tag, event));
        contents.held += bytes;
        open.events += 1;
        open.bytes += bytes;
        Ok(())
    }

    /// Start a run with `event`; queue a job that applies the returned [`Run`], then
    /// call [`opened`](Self::opened) with the other half.
    pub(crate) fn start(&self, tag: T, event: Event, bytes: usize) -> (Run<T>, OpenedRun<T>) {
        let shared = Arc::new(Mutex::new(Some(RunContents {
            events: vec![(tag, event)],
            held: 0,
        })));
        (
            Run {
                shared: shared.clone(),
                batching: self.batching.clone(),
            },
            OpenedRun(OpenRun {
                shared,
                events: 1,
                bytes,
            }),
        )
    }

    /// The run whose job was just queued takes the events that follow.
    pub(crate) fn opened(&mut self, run: OpenedRun<T>) {
        self.open = Some(run.0);
    }

    /// Another job was queued: later events go to a new run.
    pub(crate) fn close(&mut self) {
        self.open = None;
    }
}

/// The driver's end of a run just started (see [`DeliveryRuns::start`]).
pub(crate) struct OpenedRun<T>(OpenRun<T>);

/// What one event of a run came to at this replica: its tag, and the object's
/// refusal, multicasts and notifications.
pub(crate) struct RunOutcome<T> {
    pub tag: T,
    pub rejected: Option<String>,
    pub multicasts: Vec<Vec<u8>>,
    pub notifications: Vec<Notification>,
}

/// The body of a delivery job: take `run` (releasing what the driver held for it
/// on `budget`), apply it, and hand each event's outcome to `each`, in order.
///
/// A refusal is deterministic (every replica refuses the same event alike) and
/// reported as a rejection. Nothing more is reported once the replica is out of
/// service here alone (quarantined, a deadline, a failed rollback): the executor
/// quarantines it and the driver fails the calls still waiting, since the group
/// applied these events.
pub(crate) fn apply_run<T>(
    replica: Result<&mut Replica, ReplicaError>,
    run: &Run<T>,
    budget: &ObjectRef,
    object: &str,
    mut each: impl FnMut(RunOutcome<T>),
) {
    let (events, held) = run.take();
    budget.release(held);
    let (tags, events): (Vec<T>, Vec<Event>) = events.into_iter().unzip();
    let outcomes = match replica {
        Ok(replica) => {
            let outcomes = replica.deliver_batch(&events);
            run.set_batching(replica.batching());
            outcomes
        }
        // The executor hands a job an error only when the object is quarantined.
        Err(_) => return,
    };
    for (tag, outcome) in tags.into_iter().zip(outcomes) {
        let (rejected, multicasts, notifications) = match outcome {
            Ok(d) => (d.rejected, d.multicasts, d.notifications),
            Err(ReplicaError::Quarantined { .. } | ReplicaError::Broken { .. }) => return,
            Err(e) => {
                tracing::warn!("{object}: {e}");
                (Some(e.to_string()), Vec::new(), Vec::new())
            }
        };
        each(RunOutcome {
            tag,
            rejected,
            multicasts,
            notifications,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64) -> Event {
        Event {
            sender: "s".into(),
            seq,
            timestamp_ms: seq,
            payload: vec![0; 10],
        }
    }

    fn seqs(events: &[(u64, Event)]) -> Vec<u64> {
        events.iter().map(|(tag, e)| e.seq + 100 * tag).collect()
    }

    #[test]
    fn events_join_the_waiting_run_only_while_the_replica_batches() {
        let mut runs = DeliveryRuns::default();
        // Before any job said the replica batches: every event starts a run.
        assert!(runs.join(0, event(1), 10).is_err());
        let (first, opened) = runs.start(0, event(1), 10);
        runs.opened(opened);
        assert!(
            runs.join(0, event(2), 10).is_err(),
            "not known to batch yet"
        );
        first.set_batching(true);
        // Now events join until the job takes the run; held bytes go with them.
        runs.join(1, event(2), 10).unwrap();
        runs.join(0, event(3), 10).unwrap();
        let (events, held) = first.take();
        assert_eq!(seqs(&events), [1, 102, 3]);
        assert_eq!(held, 20, "the first event's bytes are the job's own");
        // Taken: the next event is handed back for a new run, which later
        // events join; a queued job of another kind closes it.
        let (tag, back) = runs.join(0, event(4), 10).unwrap_err();
        let (second, opened) = runs.start(tag, back, 10);
        runs.opened(opened);
        runs.join(0, event(5), 10).unwrap();
        runs.close();
        assert!(runs.join(0, event(6), 10).is_err());
        assert_eq!(seqs(&second.take().0), [4, 5]);
        assert!(second.take().0.is_empty(), "a run is taken once");
        // A replica that stops batching stops runs from growing.
        second.set_batching(false);
        let (_third, opened) = runs.start(0, event(6), 10);
        runs.opened(opened);
        assert!(runs.join(0, event(7), 10).is_err());
    }

    use crate::executor::ObjectRef;
    use crate::runtime::{Limits, ReplicaIdentity, Runtime, RuntimeConfig};
    use std::sync::mpsc;
    use std::time::Duration;

    /// A driver's side of runs over a real executor: events joined into runs or
    /// started as jobs, every other job closing the open run, as mesh and qsm do.
    struct Driver {
        object: ObjectRef,
        runs: DeliveryRuns<u64>,
        outcomes: mpsc::Sender<RunOutcome<u64>>,
    }

    impl Driver {
        fn deliver(&mut self, tag: u64, event: Event) {
            let bytes = event.payload.len() + 64;
            self.object.hold(bytes, "test events").unwrap();
            let (tag, event) = match self.runs.join(tag, event, bytes) {
                Ok(()) => return,
                Err(back) => back,
            };
            self.object.release(bytes);
            let (run, opened) = self.runs.start(tag, event, bytes);
            let (budget, outcomes) = (self.object.clone(), self.outcomes.clone());
            self.submit(
                bytes,
                Box::new(move |replica| {
                    apply_run(replica, &run, &budget, "test", |outcome| {
                        outcomes.send(outcome).unwrap();
                    });
                }),
            );
            self.runs.opened(opened);
        }

        fn other(&mut self, job: crate::executor::Job) {
            self.runs.close();
            self.submit(0, job);
        }

        fn submit(&self, bytes: usize, mut job: crate::executor::Job) {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while let Err(crate::executor::Full(back)) = self.object.submit(bytes, job) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "mailbox full for 30 s"
                );
                job = back;
                std::thread::sleep(Duration::from_millis(1));
            }
        }

        /// Hold the replica's worker until the returned sender is dropped, so
        /// that what follows queues up behind it.
        fn block(&mut self) -> mpsc::Sender<()> {
            let (release, blocked) = mpsc::channel::<()>();
            self.other(Box::new(move |_| {
                let _ = blocked.recv();
            }));
            release
        }
    }

    fn driver(runtime: &Runtime, path: &str) -> (Driver, mpsc::Receiver<RunOutcome<u64>>) {
        let logic = runtime.load_file(std::path::Path::new(path)).unwrap();
        let mut replica = runtime
            .instantiate(&logic, ReplicaIdentity::local("t:runs", "m1"))
            .unwrap();
        replica.init(None).unwrap();
        let object = runtime
            .executor()
            .spawn(replica, runtime.executor().budgets(), |_| {});
        let (outcomes, received) = mpsc::channel();
        let driver = Driver {
            object,
            runs: DeliveryRuns::default(),
            outcomes,
        };
        (driver, received)
    }

    /// A scratch replica whose calls' multicasts are the events to deliver.
    fn scratch(runtime: &Runtime, path: &str) -> crate::runtime::Replica {
        let logic = runtime.load_file(std::path::Path::new(path)).unwrap();
        let mut scratch = runtime
            .instantiate(&logic, ReplicaIdentity::local("t:scratch", "m1"))
            .unwrap();
        scratch.init(None).unwrap();
        scratch
    }

    /// The one payload `method(args)` multicasts.
    fn payload(scratch: &mut crate::runtime::Replica, method: &str, args: &[&str]) -> Vec<u8> {
        scratch
            .call_wave(method, args)
            .unwrap()
            .multicasts
            .remove(0)
    }

    fn event_of(seq: u64, payload: Vec<u8>) -> Event {
        Event {
            sender: "m1".into(),
            seq,
            timestamp_ms: 1_000 + seq,
            payload,
        }
    }

    /// Seeded interleavings of deliveries, other jobs and pauses on the real
    /// executor: every event is answered once, in order, the chat's history is the
    /// events in order, and runs did form (the worker was held while some queued).
    #[test]
    fn runs_on_the_executor_keep_order_and_answer_each_event_once() {
        let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
        let chat = liveobjects_objects::CHAT;
        let mut maker = scratch(&runtime, chat);
        let count = 400u64;
        let posts: Vec<Vec<u8>> = (1..=count)
            .map(|seq| payload(&mut maker, "post", &[&format!("\"m{seq}\"")]))
            .collect();
        for seed in 1..=4u64 {
            let (mut driver, outcomes) = driver(&runtime, chat);
            let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let mut next = || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng
            };
            let mut blocked = None;
            for seq in 1..=count {
                match next() % 20 {
                    0 => blocked = Some(driver.block()),
                    1 => drop(blocked.take()),
                    2 => driver.other(Box::new(|r| {
                        r.unwrap().call_wave("history", &["5"]).unwrap();
                    })),
                    3 => std::thread::sleep(Duration::from_micros(next() % 500)),
                    _ => {}
                }
                driver.deliver(seq, event_of(seq, posts[seq as usize - 1].clone()));
            }
            drop(blocked);
            let answered: Vec<u64> = (0..count)
                .map(|_| {
                    let outcome = outcomes.recv_timeout(Duration::from_secs(30)).unwrap();
                    assert_eq!(outcome.rejected, None, "seed {seed}");
                    outcome.tag
                })
                .collect();
            assert_eq!(answered, (1..=count).collect::<Vec<_>>(), "seed {seed}");
            let (history, stats) = {
                let (tx, rx) = mpsc::channel();
                driver.other(Box::new(move |r| {
                    let r = r.unwrap();
                    let history = r.call_wave("history", &["1000"]).unwrap().results_wave();
                    tx.send((history, r.stats())).unwrap();
                }));
                rx.recv_timeout(Duration::from_secs(30)).unwrap()
            };
            let order: Vec<usize> = (1..=count)
                .map(|seq| {
                    history[0]
                        .find(&format!("\"m{seq}\""))
                        .expect("every message")
                })
                .collect();
            assert!(
                order.windows(2).all(|w| w[0] < w[1]),
                "seed {seed}: out of order"
            );
            assert_eq!(stats.events_applied, count);
            assert!(stats.batches > 0, "seed {seed}: no run formed ({stats:?})");
        }
    }

    /// An event that runs out of fuel inside a run is refused alone; the run's
    /// other events apply, in order, each answered once.
    #[test]
    fn an_event_that_fails_inside_a_run_is_refused_alone() {
        let runtime = Runtime::new(RuntimeConfig {
            limits: Limits {
                fuel_per_call: 50_000_000,
                ..Limits::default()
            },
            ..RuntimeConfig::default()
        })
        .unwrap();
        let hostile = liveobjects_objects::HOSTILE;
        let (mut driver, outcomes) = driver(&runtime, hostile);
        let mut maker = scratch(&runtime, hostile);
        let mut add = |n: &str| payload(&mut maker, "add", &[n]);
        let events = [add("1"), add("2"), add("3"), add("4")];
        let spin = payload(&mut scratch(&runtime, hostile), "spin-in-deliver", &[]);
        let [one, two, three, four] = events;
        // The first job tells the driver the replica batches; then, with the
        // worker held, the rest queue up as one run.
        driver.deliver(1, event_of(1, one));
        let first = outcomes.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!((first.tag, first.rejected), (1, None));
        let held = driver.block();
        for (seq, payload) in (2..).zip([two, spin, three, four]) {
            driver.deliver(seq, event_of(seq, payload));
        }
        drop(held);
        let answered: Vec<(u64, bool)> = (0..4)
            .map(|_| {
                let outcome = outcomes.recv_timeout(Duration::from_secs(60)).unwrap();
                (outcome.tag, outcome.rejected.is_some())
            })
            .collect();
        assert_eq!(answered, [(2, false), (3, true), (4, false), (5, false)]);
        let (tx, rx) = mpsc::channel();
        driver.other(Box::new(move |r| {
            let r = r.unwrap();
            let total = r.call_wave("total", &[]).unwrap().results_wave();
            tx.send((total, r.batching())).unwrap();
        }));
        let (total, batching) = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(total, ["10"]);
        assert!(!batching, "a run that hit a limit was redone one by one");
    }

    #[test]
    fn a_run_stops_growing_at_the_batch_caps() {
        let mut runs = DeliveryRuns::default();
        let (run, opened) = runs.start(0u64, event(0), 64);
        run.set_batching(true);
        runs.opened(opened);
        let mut joined = 1;
        while runs.join(0, event(joined), 64).is_ok() {
            joined += 1;
        }
        assert_eq!(joined as usize, MAX_BATCH_EVENTS);
        let (events, _) = run.take();
        assert_eq!(events.len(), MAX_BATCH_EVENTS);
        let (run, opened) = runs.start(0, event(0), MAX_BATCH_BYTES - 100);
        runs.opened(opened);
        run.set_batching(true);
        assert!(runs.join(0, event(1), 101).is_err(), "over the byte cap");
        runs.join(0, event(1), 100).unwrap();
    }
}
