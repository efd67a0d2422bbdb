//! Re-executing a flight recording ([`super::recorder`]): a replica of the same
//! logic, given the same identity, limits, view, clock and random seeds, applies
//! the recorded events one by one; every outcome, call result and state digest is
//! checked against what the recording says. Since a replica is deterministic, a
//! replay on any machine reaches byte-identical states, and the first step where
//! it does not is reported as the point where it *parts* from the recording.
//!
//! [`diff`] replays two replicas' recordings side by side from their first common
//! event and reports the first event after which their states differ: where a
//! diverged replica went its own way.
//!
//! Events are applied one by one even where the recorded replica applied them in
//! batches: by the contract of `deliver-batch` the outcome is the same.

use super::recorder::{
    self, Frame, Outcome, RecordedCall, RecordedEvent, RecordingError, Segment, Start, StartReason,
};
use super::{Event, Limits, Logic, Replica, ReplicaError, ReplicaIdentity, Runtime, View};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How long one replayed call may run: generous, since the machine replaying may
/// be slower than the one that recorded (fuel still bounds it exactly).
const REPLAY_CALL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// Why a replay could not go on.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The recording could not be read.
    #[error(transparent)]
    Recording(#[from] RecordingError),
    /// The logic the recording ran is not at hand.
    #[error(
        "the recording ran logic {hash}, which is not at {path}: pass the component with \
         --logic FILE"
    )]
    NoLogic {
        /// Where it was looked for.
        path: PathBuf,
        /// Its SHA-256.
        hash: String,
    },
    /// The logic given is not the logic the recording ran.
    #[error(
        "{path} is not the logic the recording ran (its sha256 is {found}, the recording's {expected})"
    )]
    WrongLogic {
        /// The component given.
        path: PathBuf,
        /// Its SHA-256.
        found: String,
        /// The recording's.
        expected: String,
    },
    /// The logic could not be loaded.
    #[error("loading {path}: {message}")]
    Load {
        /// The component.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The replica could not be started from the recording.
    #[error("starting the replica from {path}: {source}")]
    Start {
        /// The segment.
        path: PathBuf,
        /// Why.
        source: ReplicaError,
    },
    /// The replay did something other than what was recorded.
    #[error("the replay parts from the recording {path} at event {event}: {what}")]
    Parted {
        /// The segment.
        path: PathBuf,
        /// Events applied by then (as the recording counts them).
        event: u64,
        /// What differs.
        what: String,
    },
}

/// One step of a replay, as it happened.
#[derive(Debug, Clone)]
pub enum Step {
    /// An event, numbered as the recording counts them (from the replica's first).
    Event {
        /// Its number.
        number: u64,
        /// The event as recorded.
        event: RecordedEvent,
        /// What became of it in the replay (the same as recorded).
        outcome: Outcome,
    },
    /// A view change.
    View {
        /// Its id.
        id: u64,
        /// Its members.
        members: Vec<String>,
        /// What became of it.
        outcome: Outcome,
    },
    /// A method call, re-run.
    Call {
        /// The call as recorded.
        call: RecordedCall,
    },
    /// A recorded state digest the replay's state matched.
    Digest {
        /// After this many events.
        events: u64,
        /// The SHA-256 both have.
        sha256: [u8; 32],
    },
    /// A new segment began: a state transfer (the replay starts over from its
    /// snapshot) or a rotation (the replay's state matched its snapshot).
    Segment {
        /// The segment file.
        path: PathBuf,
        /// Why it begins.
        reason: StartReason,
    },
}

/// A recording being replayed: its frames and the replica re-executing them.
pub struct Replay {
    engine: wasmtime::Engine,
    logic: Arc<Logic>,
    /// The logic of every segment, by hash, as far as it was found (a live
    /// upgrade starts a segment with other logic).
    logics: std::collections::HashMap<[u8; 32], Arc<Logic>>,
    /// Where the recording keeps its logic (`logic/` beside the replica folders).
    root: PathBuf,
    /// (segment path, frame) in order; every segment's start is a frame too.
    frames: Vec<(Arc<PathBuf>, Frame)>,
    at: usize,
    replica: Replica,
    events: u64,
    digests: u64,
    truncated: bool,
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay")
            .field("at", &self.at)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

/// Where the logic of a recording is kept: `logic/` beside the replica folders.
fn recording_root(path: &Path) -> PathBuf {
    let folder = if path.is_dir() {
        path.to_path_buf()
    } else {
        path.parent().map(Path::to_path_buf).unwrap_or_default()
    };
    folder.parent().map(Path::to_path_buf).unwrap_or_default()
}

impl Replay {
    /// Open the recording at `path` (a replica's folder or one segment), with the
    /// logic it ran (`logic`, or the copy the recording node kept), and start the
    /// replica from its first segment.
    pub fn open(
        runtime: &Runtime,
        path: &Path,
        logic: Option<&Path>,
        truncated_ok: bool,
    ) -> Result<Self, ReplayError> {
        let segments = recorder::read_recording(path, truncated_ok)?;
        let first = &segments[0].start;
        let logic_file = match logic {
            Some(file) => file.to_path_buf(),
            None => {
                let file = recorder::logic_path(&recording_root(path), &first.logic_hash);
                if !file.exists() {
                    return Err(ReplayError::NoLogic {
                        path: file,
                        hash: hex::encode(first.logic_hash),
                    });
                }
                file
            }
        };
        let loaded = runtime
            .load_file(&logic_file)
            .map_err(|e| ReplayError::Load {
                path: logic_file.clone(),
                message: e.to_string(),
            })?;
        if loaded.hash().0 != first.logic_hash {
            return Err(ReplayError::WrongLogic {
                path: logic_file,
                found: loaded.hash().to_hex(),
                expected: hex::encode(first.logic_hash),
            });
        }
        let root = recording_root(path);
        let mut logics = std::collections::HashMap::from([(first.logic_hash, loaded.clone())]);
        for segment in &segments {
            let hash = segment.start.logic_hash;
            let file = recorder::logic_path(&root, &hash);
            if logics.contains_key(&hash) || !file.exists() {
                continue;
            }
            let logic = runtime.load_file(&file).map_err(|e| ReplayError::Load {
                path: file.clone(),
                message: e.to_string(),
            })?;
            logics.insert(hash, logic);
        }
        let truncated = segments.last().is_some_and(|s| s.truncated);
        let frames = flatten(segments);
        let (path, Frame::Start(start)) = &frames[0] else {
            unreachable!("read_segment checks every segment begins with its start");
        };
        let replica = start_replica(runtime.engine(), &loaded, start, path)?;
        Ok(Replay {
            engine: runtime.engine().clone(),
            logic: loaded,
            logics,
            root,
            events: start.events,
            frames,
            at: 1,
            replica,
            digests: 0,
            truncated,
        })
    }

    /// Events applied so far, counted as the recording counts them.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Recorded digests the replay has matched so far.
    pub fn digests_matched(&self) -> u64 {
        self.digests
    }

    /// Whether the recording's last segment was torn and its tail left out.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// The object and member of the recording.
    pub fn identity(&self) -> &ReplicaIdentity {
        self.replica.identity()
    }

    /// The next recorded event, if any remains (without applying anything).
    pub fn next_event(&self) -> Option<&RecordedEvent> {
        self.frames[self.at..].iter().find_map(|(_, f)| match f {
            Frame::Event(e) => Some(e),
            _ => None,
        })
    }

    /// Whether the next frame is an event.
    pub fn at_event(&self) -> bool {
        matches!(self.frames.get(self.at), Some((_, Frame::Event(_))))
    }

    /// The replayed state now.
    pub fn state(&mut self) -> Result<Vec<u8>, ReplayError> {
        let path = self.path();
        self.replica
            .snapshot()
            .map_err(|e| self.parted(&path, e.to_string()))
    }

    /// Call a method on the replayed state, as `lo call` would (its multicasts go
    /// nowhere), without shifting the random seeds of the recorded calls.
    pub fn query(&mut self, method: &str, args: &[&str]) -> Result<Vec<String>, ReplicaError> {
        let calls = self.replica.calls_made();
        let result = self.replica.call_wave(method, args);
        self.replica.rewind_calls(calls);
        result.map(|outcome| outcome.results_wave())
    }

    fn path(&self) -> Arc<PathBuf> {
        self.frames[self.at.min(self.frames.len() - 1)].0.clone()
    }

    fn parted(&self, path: &Path, what: String) -> ReplayError {
        ReplayError::Parted {
            path: path.to_path_buf(),
            event: self.events,
            what,
        }
    }

    /// Apply the next frame; `None` at the end of the recording.
    pub fn step(&mut self) -> Result<Option<Step>, ReplayError> {
        let Some((path, frame)) = self.frames.get(self.at).cloned() else {
            return Ok(None);
        };
        self.at += 1;
        let step = match frame {
            Frame::Start(start) => self.begin_segment(&path, &start)?,
            Frame::Event(event) => self.event(&path, event)?,
            Frame::View {
                id,
                members,
                time_ms: _,
                outcome: recorded,
            } => {
                let view = View {
                    id,
                    members: members.clone(),
                };
                let outcome = match self.replica.view_changed(&view) {
                    Ok(_) => Outcome::Applied,
                    Err(e) => Outcome::Failed(e.to_string()),
                };
                if !outcome.agrees_with(&recorded) {
                    return Err(self.parted(
                        &path,
                        format!("view change to {id}: recorded {recorded}, replayed {outcome}"),
                    ));
                }
                Step::View {
                    id,
                    members,
                    outcome,
                }
            }
            Frame::Call(call) => self.call(&path, *call)?,
            Frame::Digest { events, sha256 } => {
                if events != self.events {
                    return Err(self.parted(
                        &path,
                        format!(
                            "the recording has a state digest after event {events} where the \
                             replay is at event {}",
                            self.events
                        ),
                    ));
                }
                let state = self.state()?;
                let ours: [u8; 32] = Sha256::digest(&state).into();
                if ours != sha256 {
                    return Err(self.parted(
                        &path,
                        format!(
                            "the recorded state has sha256 {}, the replayed state {} ({} bytes)",
                            hex::encode(sha256),
                            hex::encode(ours),
                            state.len()
                        ),
                    ));
                }
                self.digests += 1;
                Step::Digest { events, sha256 }
            }
        };
        Ok(Some(step))
    }

    fn event(&mut self, path: &Path, recorded: RecordedEvent) -> Result<Step, ReplayError> {
        let event = Event {
            sender: recorded.sender.clone(),
            seq: recorded.seq,
            timestamp_ms: recorded.timestamp_ms,
            payload: recorded.payload.clone(),
        };
        let outcome = match self.replica.deliver(&event) {
            Ok(delivery) => delivery
                .rejected
                .map_or(Outcome::Applied, Outcome::Rejected),
            Err(e) => Outcome::Failed(e.to_string()),
        };
        self.events += 1;
        if !outcome.agrees_with(&recorded.outcome) {
            return Err(self.parted(
                path,
                format!(
                    "event {} from {}: recorded {}, replayed {outcome}",
                    recorded.seq, recorded.sender, recorded.outcome
                ),
            ));
        }
        Ok(Step::Event {
            number: self.events,
            event: recorded,
            outcome,
        })
    }

    fn call(&mut self, path: &Path, recorded: RecordedCall) -> Result<Step, ReplayError> {
        if recorded.result.is_ok() {
            // The call's number seeds its random stream.
            self.replica.rewind_calls(recorded.number.saturating_sub(1));
        }
        let args: Vec<&str> = recorded.args.iter().map(String::as_str).collect();
        let result = self
            .replica
            .call_wave(&recorded.method, &args)
            .map(|outcome| outcome.results_wave())
            .map_err(|e| e.to_string());
        let agrees = match (&result, &recorded.result) {
            (Ok(ours), Ok(theirs)) => ours == theirs,
            (Err(_), Err(_)) => true,
            _ => false,
        };
        if !agrees {
            return Err(self.parted(
                path,
                format!(
                    "call {}({}): recorded {:?}, replayed {:?}",
                    recorded.method,
                    recorded.args.join(", "),
                    recorded.result,
                    result
                ),
            ));
        }
        Ok(Step::Call { call: recorded })
    }

    fn begin_segment(&mut self, path: &Arc<PathBuf>, start: &Start) -> Result<Step, ReplayError> {
        // A segment that starts over from a snapshot may run other logic (a live
        // upgrade switched it): replay it with that logic.
        if start.logic_hash != self.logic.hash().0 && start.reason == StartReason::Init {
            match self.logics.get(&start.logic_hash) {
                Some(logic) => self.logic = logic.clone(),
                None => {
                    return Err(ReplayError::NoLogic {
                        path: recorder::logic_path(&self.root, &start.logic_hash),
                        hash: hex::encode(start.logic_hash),
                    });
                }
            }
        }
        if start.logic_hash != self.logic.hash().0 {
            return Err(self.parted(
                path,
                format!(
                    "the segment runs logic {}, the replay {}",
                    hex::encode(start.logic_hash),
                    self.logic.hash()
                ),
            ));
        }
        match start.reason {
            StartReason::Init => {
                self.replica = start_replica(&self.engine, &self.logic, start, path)?;
                self.events = start.events;
            }
            StartReason::Rotation => {
                if start.events != self.events {
                    return Err(self.parted(
                        path,
                        format!(
                            "the segment starts after event {}, the one before it ends at {}",
                            start.events, self.events
                        ),
                    ));
                }
                let state = self.state()?;
                if start.snapshot.as_deref() != Some(&state[..]) {
                    return Err(self.parted(
                        path,
                        "the segment starts from a state other than the one the previous \
                         segment ends in"
                            .to_string(),
                    ));
                }
            }
        }
        Ok(Step::Segment {
            path: path.to_path_buf(),
            reason: start.reason,
        })
    }
}

fn flatten(segments: Vec<Segment>) -> Vec<(Arc<PathBuf>, Frame)> {
    let mut frames = Vec::new();
    for segment in segments {
        let path = Arc::new(segment.path);
        frames.push((path.clone(), Frame::Start(Box::new(segment.start))));
        frames.extend(segment.frames.into_iter().map(|f| (path.clone(), f)));
    }
    frames
}

fn start_replica(
    engine: &wasmtime::Engine,
    logic: &Arc<Logic>,
    start: &Start,
    path: &Path,
) -> Result<Replica, ReplayError> {
    let failed = |source| ReplayError::Start {
        path: path.to_path_buf(),
        source,
    };
    let limits = Limits {
        memory_bytes: usize::try_from(start.memory_bytes).unwrap_or(usize::MAX),
        table_elements: usize::try_from(start.table_elements).unwrap_or(usize::MAX),
        fuel_per_call: start.fuel_per_call,
        multicast_max_bytes: usize::try_from(start.multicast_max_bytes).unwrap_or(usize::MAX),
        multicast_max_per_call: usize::try_from(start.multicast_max_per_call).unwrap_or(usize::MAX),
        call_deadline: REPLAY_CALL_DEADLINE,
    };
    let identity = ReplicaIdentity {
        object: start.object.clone(),
        member: start.member.clone(),
    };
    let mut replica = Replica::new(engine, logic.clone(), identity, limits).map_err(failed)?;
    replica.resume_at(
        View {
            id: start.view_id,
            members: start.view_members.clone(),
        },
        start.last_event_ms,
        start.calls,
    );
    replica.init(start.snapshot.as_deref()).map_err(failed)?;
    Ok(replica)
}

/// Where two replicas' recordings part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    /// They applied the same events with the same outcomes and states.
    None {
        /// Common events compared.
        events: u64,
    },
    /// Neither recording contains an event of the other.
    NothingInCommon,
    /// Their states differ before their first common event.
    Before {
        /// The first common event (sender, seq).
        sender: String,
        /// Its sequence number.
        seq: u64,
        /// SHA-256 of each state there.
        states: [String; 2],
    },
    /// After agreeing, they were given different events (the same position in
    /// the order holds another event).
    Order {
        /// Common events compared before.
        agreed: u64,
        /// What each was given next (sender, seq).
        next: [(String, u64); 2],
    },
    /// Both applied the same event and came out different.
    Event {
        /// Common events they agreed on before it.
        agreed: u64,
        /// The event's sender.
        sender: String,
        /// Its sequence number.
        seq: u64,
        /// Each one's event number (as its recording counts).
        numbers: [u64; 2],
        /// What became of it at each.
        outcomes: [Outcome; 2],
        /// SHA-256 of each state after it.
        states: [String; 2],
    },
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Difference::None { events } => write!(
                f,
                "the replicas agree on all {events} events they have in common"
            ),
            Difference::NothingInCommon => write!(
                f,
                "the recordings have no event in common: they cover different stretches \
                 of the object's history"
            ),
            Difference::Before {
                sender,
                seq,
                states,
            } => write!(
                f,
                "the replicas already differ before their first common event ({sender} \
                 seq {seq}): state sha256 {} vs {}",
                states[0], states[1]
            ),
            Difference::Order { agreed, next } => write!(
                f,
                "after {agreed} common events the replicas were given different events: \
                 {} seq {} vs {} seq {}",
                next[0].0, next[0].1, next[1].0, next[1].1
            ),
            Difference::Event {
                agreed,
                sender,
                seq,
                numbers,
                outcomes,
                states,
            } => write!(
                f,
                "the replicas part at the event from {sender} seq {seq} (event {} of the \
                 first recording, {} of the second), after agreeing on {agreed} common \
                 events: first {}, state sha256 {}; second {}, state sha256 {}",
                numbers[0], numbers[1], outcomes[0], states[0], outcomes[1], states[1]
            ),
        }
    }
}

fn state_hex(replay: &mut Replay) -> Result<String, ReplayError> {
    Ok(hex::encode(Sha256::digest(replay.state()?)))
}

/// Apply frames until the next one is an event (or the end); `false` at the end.
fn run_to_event(replay: &mut Replay) -> Result<bool, ReplayError> {
    while !replay.at_event() {
        if replay.step()?.is_none() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Replay two recordings of the same object side by side from their first common
/// event, comparing outcomes and states after every event.
pub fn diff(a: &mut Replay, b: &mut Replay) -> Result<Difference, ReplayError> {
    // Bring the one that starts earlier up to the other's first event.
    let key = |e: &RecordedEvent| (e.sender.clone(), e.seq);
    let first_b = b.next_event().map(key);
    let first_a = a.next_event().map(key);
    let contains = |r: &Replay, k: &(String, u64)| {
        r.frames[r.at..]
            .iter()
            .any(|(_, f)| matches!(f, Frame::Event(e) if e.sender == k.0 && e.seq == k.1))
    };
    let (behind, target) = match (first_a, first_b) {
        (Some(ka), Some(kb)) => {
            if contains(a, &kb) {
                (&mut *a, kb)
            } else if contains(b, &ka) {
                (&mut *b, ka)
            } else {
                return Ok(Difference::NothingInCommon);
            }
        }
        _ => return Ok(Difference::NothingInCommon),
    };
    loop {
        run_to_event(behind)?;
        if behind.next_event().map(key).as_ref() == Some(&target) {
            break;
        }
        behind.step()?;
    }
    run_to_event(a)?;
    run_to_event(b)?;
    let states = [state_hex(a)?, state_hex(b)?];
    if states[0] != states[1] {
        return Ok(Difference::Before {
            sender: target.0,
            seq: target.1,
            states,
        });
    }
    let mut agreed = 0;
    loop {
        if !run_to_event(a)? || !run_to_event(b)? {
            return Ok(Difference::None { events: agreed });
        }
        let (ka, kb) = (
            a.next_event().map(key).expect("at an event"),
            b.next_event().map(key).expect("at an event"),
        );
        if ka != kb {
            return Ok(Difference::Order {
                agreed,
                next: [ka, kb],
            });
        }
        let steps = [a.step()?, b.step()?];
        let states = [state_hex(a)?, state_hex(b)?];
        let outcomes = steps.map(|step| match step {
            Some(Step::Event { outcome, .. }) => outcome,
            other => unreachable!("stepped onto an event, got {other:?}"),
        });
        if states[0] != states[1] || !outcomes[0].agrees_with(&outcomes[1]) {
            return Ok(Difference::Event {
                agreed,
                sender: ka.0,
                seq: ka.1,
                numbers: [a.events(), b.events()],
                outcomes,
                states,
            });
        }
        agreed += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::recorder::{RecordSettings, Recorder, segments_in};
    use crate::runtime::{RuntimeConfig, replica::CallOutcome};

    const OBJECT: &str = "lo://acme/tests/hostile";

    struct Group {
        runtime: Runtime,
        replicas: Vec<Replica>,
        seq: u64,
        root: tempfile::TempDir,
    }

    impl Group {
        /// Two recorded hostile replicas, m1 and m2.
        fn new(budget_bytes: u64) -> Self {
            let root = tempfile::tempdir().unwrap();
            let mut runtime = Runtime::new(RuntimeConfig::default()).unwrap();
            runtime.set_recording(Some(RecordSettings {
                dir: root.path().to_path_buf(),
                budget_bytes,
                digest_every: 1,
            }));
            let logic = runtime
                .load_file(liveobjects_objects::HOSTILE.as_ref())
                .unwrap();
            let replicas = ["m1", "m2"]
                .into_iter()
                .map(|member| {
                    let mut replica = runtime
                        .instantiate(&logic, ReplicaIdentity::local(OBJECT, member))
                        .unwrap();
                    replica.init(None).unwrap();
                    replica
                })
                .collect();
            Group {
                runtime,
                replicas,
                seq: 0,
                root,
            }
        }

        /// Call `method` at m1 and deliver what it multicast to both, in order.
        fn update(&mut self, method: &str, args: &[&str]) {
            let CallOutcome { multicasts, .. } = self.replicas[0].call_wave(method, args).unwrap();
            for payload in multicasts {
                self.seq += 1;
                let event = Event {
                    sender: "m1".into(),
                    seq: self.seq,
                    timestamp_ms: 1_700_000_000_000 + self.seq * 7,
                    payload,
                };
                for replica in &mut self.replicas {
                    let _ = replica.deliver(&event);
                }
            }
        }

        fn folder(&self, member: &str) -> PathBuf {
            self.root
                .path()
                .join(recorder::replica_folder(OBJECT, member))
        }
    }

    fn replay_all(runtime: &Runtime, path: &Path) -> Result<Replay, ReplayError> {
        let mut replay = Replay::open(runtime, path, None, false)?;
        while replay.step()?.is_some() {}
        Ok(replay)
    }

    /// A recorded replica replays step by step to byte-identical states (its
    /// digests, one per event, all match), including events it rejected, one
    /// that failed, a view change, reads of the clock and randomness, and calls;
    /// `diff` finds the event where a replica went its own way.
    #[test]
    fn a_recording_replays_byte_for_byte_and_diff_finds_the_planted_divergence() {
        let mut group = Group::new(64 << 20);
        group.update("add", &["5"]);
        group.update("add-then-refuse", &["2"]);
        group.update("observe", &[]);
        let view = View {
            id: 2,
            members: vec!["m1".into(), "m2".into()],
        };
        for replica in &mut group.replicas {
            replica.view_changed(&view).unwrap();
        }
        group.update("many-multicasts", &["4"]);
        group.update("bomb-in-deliver", &[]);
        assert_eq!(
            group.replicas[0]
                .call_wave("total", &[])
                .unwrap()
                .results_wave(),
            ["13"]
        );
        group.update("diverge", &[]);
        group.update("add", &["1"]);
        let events = group.seq;
        let totals: Vec<_> = group
            .replicas
            .iter_mut()
            .map(|r| r.call_wave("total", &[]).unwrap().results_wave())
            .collect();
        assert_ne!(
            totals[0], totals[1],
            "the planted divergence did not diverge"
        );
        let states: Vec<Vec<u8>> = group
            .replicas
            .iter_mut()
            .map(|r| r.snapshot().unwrap())
            .collect();
        drop(std::mem::take(&mut group.replicas));

        let mut replay = replay_all(&group.runtime, &group.folder("m1")).unwrap();
        assert_eq!(replay.events(), events);
        // A digest after every event but the one that failed (rolled back, it
        // took no snapshot).
        assert_eq!(replay.digests_matched(), events - 1);
        assert_eq!(replay.state().unwrap(), states[0]);
        assert_eq!(replay.query("total", &[]).unwrap(), totals[0]);

        // Stepping to an event and asking the state there.
        let mut partial = Replay::open(&group.runtime, &group.folder("m1"), None, false).unwrap();
        while partial.events() < 1 {
            partial.step().unwrap();
        }
        assert_eq!(partial.query("total", &[]).unwrap(), ["5"]);

        let mut a = Replay::open(&group.runtime, &group.folder("m1"), None, false).unwrap();
        let mut b = Replay::open(&group.runtime, &group.folder("m2"), None, false).unwrap();
        match diff(&mut a, &mut b).unwrap() {
            Difference::Event {
                agreed,
                sender,
                seq,
                states,
                ..
            } => {
                assert_eq!((sender.as_str(), seq), ("m1", events - 1));
                assert_eq!(agreed, events - 2);
                assert_ne!(states[0], states[1]);
            }
            other => panic!("diff found {other:?}"),
        }
        let mut a = Replay::open(&group.runtime, &group.folder("m1"), None, false).unwrap();
        let mut a2 = Replay::open(&group.runtime, &group.folder("m1"), None, false).unwrap();
        assert_eq!(diff(&mut a, &mut a2).unwrap(), Difference::None { events });
    }

    /// A replica upgraded live (counter to counter-v2) records a segment that
    /// starts from the migrated state with the new logic; the replay switches
    /// logic there and goes on checking every digest.
    #[test]
    fn a_recording_replays_across_a_live_upgrade() {
        const COUNTER: &str = "lo://acme/tests/counter";
        let root = tempfile::tempdir().unwrap();
        let mut runtime = Runtime::new(RuntimeConfig::default()).unwrap();
        runtime.set_recording(Some(RecordSettings {
            dir: root.path().to_path_buf(),
            budget_bytes: 64 << 20,
            digest_every: 1,
        }));
        let v1 = runtime
            .load_file(liveobjects_objects::COUNTER.as_ref())
            .unwrap();
        let v2 = runtime
            .load_file(liveobjects_objects::COUNTER_V2.as_ref())
            .unwrap();
        let mut replica = runtime
            .instantiate(&v1, ReplicaIdentity::local(COUNTER, "m1"))
            .unwrap();
        replica.init(None).unwrap();
        let mut seq = 0;
        let mut add = |replica: &mut Replica, n: &str| {
            for payload in replica.call_wave("add", &[n]).unwrap().multicasts {
                seq += 1;
                let event = Event {
                    sender: "m1".into(),
                    seq,
                    timestamp_ms: 1_700_000_000_000 + seq,
                    payload,
                };
                replica.deliver(&event).unwrap();
            }
        };
        add(&mut replica, "3");
        add(&mut replica, "4");
        replica.upgrade(v2, 1, 2).unwrap();
        add(&mut replica, "5");
        let state = replica.snapshot().unwrap();
        drop(replica);

        let folder = root.path().join(recorder::replica_folder(COUNTER, "m1"));
        let mut replay = replay_all(&runtime, &folder).unwrap();
        assert_eq!(replay.events(), 3);
        assert_eq!(replay.state().unwrap(), state);
        assert_eq!(replay.query("upgraded-from", &[]).unwrap(), ["1"]);
        assert_eq!(replay.query("get", &[]).unwrap(), ["12"]);
    }

    /// A recording that says something the replay does not do is refused at
    /// that step: a changed digest, and a changed outcome, each re-sealed with a
    /// valid checksum so only the replay can tell.
    #[test]
    fn a_replay_that_parts_from_its_recording_says_where() {
        let mut group = Group::new(64 << 20);
        for n in 1..=4 {
            group.update("add", &[&n.to_string()]);
        }
        drop(std::mem::take(&mut group.replicas));
        let segment = segments_in(&group.folder("m1")).unwrap().remove(0);
        let original = recorder::read_segment(&segment, false).unwrap();
        let logic = recorder::logic_path(group.root.path(), &original.start.logic_hash);

        let rewrite = |name: &str, change: &dyn Fn(&mut Vec<Frame>)| -> PathBuf {
            let root = tempfile::tempdir().unwrap().keep();
            let mut forged = Recorder::open(
                &RecordSettings {
                    dir: root.clone(),
                    budget_bytes: 1 << 20,
                    digest_every: 0,
                },
                name,
                "m1",
            )
            .unwrap();
            forged.begin(original.start.clone());
            let mut frames = original.frames.clone();
            change(&mut frames);
            for frame in &frames {
                forged.write(frame);
            }
            forged.dir().to_path_buf()
        };

        let digest = rewrite("digest", &|frames| {
            for frame in frames.iter_mut() {
                if let Frame::Digest { events: 3, sha256 } = frame {
                    sha256[0] ^= 1;
                }
            }
        });
        let mut replay = Replay::open(&group.runtime, &digest, Some(&logic), false).unwrap();
        let err = std::iter::from_fn(|| replay.step().transpose())
            .find_map(Result::err)
            .expect("the forged digest was accepted");
        let text = err.to_string();
        assert!(
            matches!(err, ReplayError::Parted { event: 3, .. }),
            "{text}"
        );
        assert!(
            text.contains("sha256") && text.contains("seg-000001"),
            "{text}"
        );

        let outcome = rewrite("outcome", &|frames| {
            for frame in frames.iter_mut() {
                if let Frame::Event(e) = frame
                    && e.seq == 2
                {
                    e.outcome = Outcome::Rejected("made up".into());
                }
            }
        });
        let mut replay = Replay::open(&group.runtime, &outcome, Some(&logic), false).unwrap();
        let err = std::iter::from_fn(|| replay.step().transpose())
            .find_map(Result::err)
            .expect("the forged outcome was accepted");
        assert!(
            err.to_string()
                .contains("recorded rejected: made up, replayed applied"),
            "{err}"
        );

        // The wrong logic is refused by hash, naming the file.
        let counter = group.root.path().join("counter.wasm");
        std::fs::write(&counter, liveobjects_objects::COUNTER_BYTES).unwrap();
        let err = Replay::open(&group.runtime, &group.folder("m1"), Some(&counter), false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("counter.wasm") && err.contains("not the logic"),
            "{err}"
        );
    }

    /// Past its budget a replica's recording keeps its newest segments; a replay
    /// of what is left starts from the oldest kept snapshot and checks each
    /// rotation's snapshot against the state it reached.
    #[test]
    fn a_bounded_recording_rotates_and_still_replays() {
        let budget = 24 << 10;
        let mut group = Group::new(budget);
        for _ in 0..40 {
            group.update("blobs", &["200", "5"]);
        }
        group.update("add", &["9"]);
        let total = group.replicas[0]
            .call_wave("total", &[])
            .unwrap()
            .results_wave();
        drop(std::mem::take(&mut group.replicas));
        let files = segments_in(&group.folder("m1")).unwrap();
        assert!(files.len() >= 2, "{files:?}");
        let first = recorder::read_segment(&files[0], false).unwrap();
        assert_eq!(
            first.start.reason,
            StartReason::Rotation,
            "nothing was pruned"
        );
        let bytes: u64 = files
            .iter()
            .map(|f| std::fs::metadata(f).unwrap().len())
            .sum();
        assert!(bytes <= budget + budget / 2, "{bytes} bytes kept");
        let mut replay = replay_all(&group.runtime, &group.folder("m1")).unwrap();
        assert_eq!(replay.events(), group.seq);
        assert!(replay.events() > first.start.events);
        assert_eq!(replay.query("total", &[]).unwrap(), total);
    }
}
