//! The flight recorder: what one replica applied, written to disk as it happens,
//! so that `lo replay` can re-execute it on any machine, step by step, byte for
//! byte.
//!
//! A replica's state is a function of the snapshot it started from and of what
//! each guest call saw: the event (sender, sequence number, payload), the view,
//! the clock (the event's timestamp) and the random stream (seeded from the
//! object's name and the event, or for a local call from this member and the
//! call's number). A recording keeps all of them, plus each outcome (applied,
//! rejected and why, failed) and, at checkpoints, the SHA-256 of the state, so a
//! replay checks itself as it goes.
//!
//! # Layout
//! `DIR/<object>-<member>/seg-NNNNNN.lorec` holds the segments of one replica,
//! oldest first; `DIR/logic/<sha256>.wasm` the logic they ran (the node writes it
//! when it loads the logic). A segment is [`MAGIC`] followed by frames: a
//! little-endian `u32` body length, the body's CRC-32, and the body (a postcard
//! [`Frame`]). Its first frame is a [`Start`]: identity, limits, view, counters
//! and the snapshot the segment starts from; the replica's later changes follow.
//!
//! # Bounds
//! A replica's segments together stay within a budget (`lo node --record-mib`): a
//! new segment starts at the first checkpoint after the current one holds a
//! quarter of it, and the oldest segments are deleted while the total is over it.
//! The last frames of a replica that crashed may be missing or torn (writes are
//! buffered and flushed at each state digest); the loader refuses a torn frame
//! with the path and offset unless asked to stop before it.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// The first bytes of every segment: the format's name and version.
pub const MAGIC: &[u8; 8] = b"LOREC\x00\x01\n";
/// The format version in [`MAGIC`] and in every [`Start`].
pub const FORMAT_VERSION: u16 = 1;
/// Largest frame body the loader accepts (a snapshot of a replica at its memory
/// cap fits with room to spare); a longer length is corruption.
pub const MAX_FRAME_BYTES: u32 = 1 << 30;
/// The extension of segment files.
pub const SEGMENT_EXTENSION: &str = "lorec";

/// Where and how much a node records (`lo node --record DIR`).
#[derive(Debug, Clone)]
pub struct RecordSettings {
    /// The recordings' root directory.
    pub dir: PathBuf,
    /// Most bytes one replica's segments may take together.
    pub budget_bytes: u64,
    /// Also write a state digest every this many events (each costs a snapshot);
    /// 0: only at the replica's checkpoints (every 1,024 state changes).
    pub digest_every: u64,
}

/// One record of a segment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Frame {
    /// The start of a segment: everything a replay needs to begin.
    Start(Box<Start>),
    /// An event the replica was given, and what became of it.
    Event(RecordedEvent),
    /// A view change.
    View {
        /// The view's id.
        id: u64,
        /// Its members.
        members: Vec<String>,
        /// The clock the guest saw (the last event's timestamp).
        time_ms: u64,
        /// What became of it.
        outcome: Outcome,
    },
    /// A method call (local to this replica: its multicasts come back as events).
    Call(Box<RecordedCall>),
    /// The SHA-256 of the replica's snapshot after `events` events.
    Digest {
        /// Events given to the replica by then, counted as [`Start::events`].
        events: u64,
        /// SHA-256 of the snapshot.
        sha256: [u8; 32],
    },
}

/// Why a segment starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StartReason {
    /// The replica was initialised (founded, joined with a state transfer, or
    /// re-initialised): a replay starts over from the snapshot.
    Init,
    /// The previous segment grew past its share of the budget: the snapshot is
    /// the state the previous segment ends in, and a replay checks that.
    Rotation,
}

/// The first frame of a segment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Start {
    /// [`FORMAT_VERSION`].
    pub version: u16,
    /// Why the segment starts here.
    pub reason: StartReason,
    /// The object's name.
    pub object: String,
    /// The member that ran the replica (what `self-id` returned).
    pub member: String,
    /// SHA-256 of the logic's component.
    pub logic_hash: [u8; 32],
    /// The name the logic was loaded under.
    pub logic_name: String,
    /// The replica's limits (fuel decides which calls run out, deterministically).
    pub fuel_per_call: u64,
    /// Linear memory cap, bytes.
    pub memory_bytes: u64,
    /// Table elements cap.
    pub table_elements: u64,
    /// Largest multicast payload.
    pub multicast_max_bytes: u64,
    /// Most multicasts per call.
    pub multicast_max_per_call: u64,
    /// The view the guest saw at this point.
    pub view_id: u64,
    /// Its members.
    pub view_members: Vec<String>,
    /// The newest event timestamp applied before (the clock of view changes).
    pub last_event_ms: u64,
    /// Local calls made before (seeds the next call's random stream).
    pub calls: u64,
    /// Events given to the replica before this segment.
    pub events: u64,
    /// The state to start from (`None`: the object's initial state).
    pub snapshot: Option<Vec<u8>>,
    /// When the segment was started (ms since the Unix epoch).
    pub recorded_at_ms: u64,
}

/// An event and its outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent {
    /// Who multicast it.
    pub sender: String,
    /// The sender's sequence number.
    pub seq: u64,
    /// The sender's timestamp (the clock the guest saw).
    pub timestamp_ms: u64,
    /// The object's own encoding of the event.
    pub payload: Vec<u8>,
    /// What became of it.
    pub outcome: Outcome,
}

/// What became of an event or view change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Applied.
    Applied,
    /// The object refused it, for this reason; its state is unchanged.
    Rejected(String),
    /// The guest trapped or hit a limit; its state was rolled back.
    Failed(String),
}

impl Outcome {
    /// Whether two outcomes agree: the same kind, and for a refusal the same
    /// reason (a failure's message may name a wall-clock deadline, so only its
    /// kind is compared).
    pub fn agrees_with(&self, other: &Outcome) -> bool {
        match (self, other) {
            (Outcome::Applied, Outcome::Applied) => true,
            (Outcome::Rejected(a), Outcome::Rejected(b)) => a == b,
            (Outcome::Failed(_), Outcome::Failed(_)) => true,
            _ => false,
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Applied => write!(f, "applied"),
            Outcome::Rejected(reason) => write!(f, "rejected: {reason}"),
            Outcome::Failed(message) => write!(f, "failed: {message}"),
        }
    }
}

/// A method call and its outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedCall {
    /// The method.
    pub method: String,
    /// Its arguments, as WAVE text.
    pub args: Vec<String>,
    /// The call's number on this replica (seeds its random stream).
    pub number: u64,
    /// The clock it saw.
    pub time_ms: u64,
    /// Its results as WAVE text, or the error.
    pub result: Result<Vec<String>, String>,
}

/// Why a recording could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Not a recording, or of a version this build does not read.
    #[error(
        "{path} is not a liveobjects recording of format {FORMAT_VERSION} (its first bytes \
         are not the recording magic): pass a .{SEGMENT_EXTENSION} file or a replica's \
         recording folder"
    )]
    NotARecording {
        /// The file.
        path: PathBuf,
    },
    /// A frame is damaged: its checksum or encoding is wrong.
    #[error("{path} is corrupt at byte {offset}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where the bad frame starts.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The file ends inside a frame (the recorder was stopped mid-write, or the
    /// file was cut short).
    #[error(
        "{path} is truncated: it ends inside the frame at byte {offset} (the node may \
         have been killed mid-write); `lo replay --truncated-ok` replays the {frames} \
         whole frames before it"
    )]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Where the torn frame starts.
        offset: u64,
        /// Whole frames before it.
        frames: usize,
    },
    /// A segment does not start with a [`Start`] frame, or has a second one.
    #[error("{path}: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> RecordingError + '_ {
    move |source| RecordingError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A replica's folder name: its object's name made safe for a path, and a short
/// hash of the member, so that several replicas share a recording root.
pub fn replica_folder(object: &str, member: &str) -> String {
    let mut slug: String = object
        .trim_start_matches("lo://")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(80)
        .collect();
    if slug.is_empty() {
        slug.push('_');
    }
    let id = Sha256::new()
        .chain_update(object.as_bytes())
        .chain_update([0])
        .chain_update(member.as_bytes())
        .finalize();
    format!("{slug}-{}", hex::encode(&id[..4]))
}

/// Where the logic with `hash` is kept under a recording root.
pub fn logic_path(root: &Path, hash: &[u8; 32]) -> PathBuf {
    root.join("logic")
        .join(format!("{}.wasm", hex::encode(hash)))
}

/// Keep a copy of logic the node loaded under a recording root (once per hash).
pub fn save_logic(root: &Path, hash: &[u8; 32], bytes: &[u8]) -> Result<(), RecordingError> {
    let path = logic_path(root, hash);
    if path.exists() {
        return Ok(());
    }
    let dir = path.parent().expect("logic_path has a parent");
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let temp = path.with_extension(format!("wasm.{}.tmp", std::process::id()));
    std::fs::write(&temp, bytes).map_err(io_error(&temp))?;
    std::fs::rename(&temp, &path).map_err(io_error(&path))
}

/// Writes one replica's recording (see the module docs). It never fails the
/// replica: a write error is logged once and recording stops for that replica.
pub struct Recorder {
    dir: PathBuf,
    budget: u64,
    digest_every: u64,
    out: Option<BufWriter<File>>,
    current: Option<(PathBuf, u64)>,
    closed: VecDeque<(PathBuf, u64)>,
    next_segment: u64,
    events: u64,
    next_digest_at: u64,
    stopped: bool,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("dir", &self.dir)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

impl Recorder {
    /// Open (or continue, after a restart) the recording of `member`'s replica of
    /// `object` under `settings.dir`.
    pub fn open(
        settings: &RecordSettings,
        object: &str,
        member: &str,
    ) -> Result<Self, RecordingError> {
        let dir = settings.dir.join(replica_folder(object, member));
        std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        let closed: VecDeque<_> = segments_in(&dir)?
            .into_iter()
            .map(|path| {
                let size = std::fs::metadata(&path).map_or(0, |m| m.len());
                (path, size)
            })
            .collect();
        let next_segment = closed
            .back()
            .and_then(|(path, _)| segment_number(path))
            .map_or(1, |n| n + 1);
        Ok(Recorder {
            dir,
            budget: settings.budget_bytes.max(1),
            digest_every: settings.digest_every,
            out: None,
            current: None,
            closed,
            next_segment,
            events: 0,
            next_digest_at: settings.digest_every,
            stopped: false,
            scratch: Vec::new(),
        })
    }

    /// The replica's recording folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Events given to the replica so far (what [`Start::events`] and
    /// [`Frame::Digest`] count).
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Count one more event.
    pub fn count_event(&mut self) {
        self.events += 1;
    }

    /// Whether a state digest is due (every [`RecordSettings::digest_every`] events).
    pub fn digest_due(&self) -> bool {
        self.digest_every > 0 && self.events >= self.next_digest_at && self.recording()
    }

    /// Whether frames are being written (a segment is open and no write failed).
    pub fn recording(&self) -> bool {
        self.out.is_some() && !self.stopped
    }

    /// Whether the current segment holds its share of the budget, so the next
    /// snapshot should start a new one.
    pub fn wants_new_segment(&self) -> bool {
        self.current
            .as_ref()
            .is_some_and(|(_, bytes)| *bytes >= self.budget / 4)
    }

    /// Start a new segment with `start` (its `events` is set here).
    pub fn begin(&mut self, mut start: Start) {
        if self.stopped {
            return;
        }
        self.close_segment();
        start.events = self.events;
        let path = self
            .dir
            .join(format!("seg-{:06}.{SEGMENT_EXTENSION}", self.next_segment));
        self.next_segment += 1;
        let opened = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .and_then(|file| {
                let mut out = BufWriter::with_capacity(64 << 10, file);
                out.write_all(MAGIC)?;
                Ok(out)
            });
        match opened {
            Ok(out) => {
                self.out = Some(out);
                self.current = Some((path, MAGIC.len() as u64));
                self.write(&Frame::Start(Box::new(start)));
                self.flush();
                self.prune();
            }
            Err(e) => self.stop(&path, &e),
        }
    }

    /// Append a frame to the current segment.
    pub fn write(&mut self, frame: &Frame) {
        if !self.recording() {
            return;
        }
        self.scratch.clear();
        self.scratch.extend_from_slice(&[0; 8]);
        let encoded = postcard::to_extend(frame, std::mem::take(&mut self.scratch));
        let mut buffer = match encoded {
            Ok(buffer) => buffer,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), "cannot encode a recording frame: {e}");
                return;
            }
        };
        let body_len = buffer.len() - 8;
        let crc = crc32fast::hash(&buffer[8..]);
        buffer[..4].copy_from_slice(&(body_len as u32).to_le_bytes());
        buffer[4..8].copy_from_slice(&crc.to_le_bytes());
        let written = self
            .out
            .as_mut()
            .expect("recording() checked")
            .write_all(&buffer);
        match written {
            Ok(()) => {
                if let Some((_, bytes)) = &mut self.current {
                    *bytes += buffer.len() as u64;
                }
            }
            Err(e) => {
                let path = self.current_path();
                self.stop(&path, &e);
            }
        }
        self.scratch = buffer;
    }

    /// Write the digest of `snapshot` (the state after [`events`](Self::events)
    /// events) and flush, so a crash loses at most what came after it.
    pub fn digest(&mut self, snapshot: &[u8]) {
        self.write(&Frame::Digest {
            events: self.events,
            sha256: Sha256::digest(snapshot).into(),
        });
        if self.digest_every > 0 {
            self.next_digest_at = self.events + self.digest_every;
        }
        self.flush();
    }

    /// The snapshot for a due digest failed: try again after the next
    /// [`RecordSettings::digest_every`] events rather than at every event.
    pub fn skip_digest(&mut self) {
        if self.digest_every > 0 {
            self.next_digest_at = self.events + self.digest_every;
        }
    }

    /// Push buffered frames to the file.
    pub fn flush(&mut self) {
        if let Some(out) = &mut self.out
            && !self.stopped
            && let Err(e) = out.flush()
        {
            let path = self.current_path();
            self.stop(&path, &e);
        }
    }

    fn current_path(&self) -> PathBuf {
        self.current
            .as_ref()
            .map_or_else(|| self.dir.clone(), |(path, _)| path.clone())
    }

    fn stop(&mut self, path: &Path, error: &std::io::Error) {
        tracing::error!(
            "the flight recorder stops for this replica: cannot write {}: {error}",
            path.display()
        );
        self.stopped = true;
        self.out = None;
    }

    fn close_segment(&mut self) {
        self.flush();
        self.out = None;
        if let Some(done) = self.current.take() {
            self.closed.push_back(done);
        }
    }

    /// Delete the oldest closed segments while the replica's total is over budget.
    fn prune(&mut self) {
        let current = self.current.as_ref().map_or(0, |(_, bytes)| *bytes);
        let mut total = current + self.closed.iter().map(|(_, bytes)| bytes).sum::<u64>();
        while total > self.budget
            && let Some((path, bytes)) = self.closed.pop_front()
        {
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!("cannot delete old recording {}: {e}", path.display());
            }
            total -= bytes;
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.flush();
    }
}

fn segment_number(path: &Path) -> Option<u64> {
    path.file_stem()?
        .to_str()?
        .strip_prefix("seg-")?
        .parse()
        .ok()
}

/// The segment files of a replica's folder, oldest first.
pub fn segments_in(dir: &Path) -> Result<Vec<PathBuf>, RecordingError> {
    let mut segments: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .map_err(io_error(dir))?
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let is_segment = path.extension().is_some_and(|e| e == SEGMENT_EXTENSION);
            Some((segment_number(&path).filter(|_| is_segment)?, path))
        })
        .collect();
    segments.sort();
    Ok(segments.into_iter().map(|(_, path)| path).collect())
}

/// A segment read back: its start and the frames after it.
#[derive(Debug, Clone)]
pub struct Segment {
    /// The file.
    pub path: PathBuf,
    /// Its first frame.
    pub start: Start,
    /// The frames after it, in order.
    pub frames: Vec<Frame>,
    /// Whether it ended in a torn frame that was left out (`truncated_ok`).
    pub truncated: bool,
}

/// Read and verify one segment. A torn last frame is an error unless
/// `truncated_ok`, which keeps the whole frames before it.
pub fn read_segment(path: &Path, truncated_ok: bool) -> Result<Segment, RecordingError> {
    let bytes = std::fs::read(path).map_err(io_error(path))?;
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(RecordingError::NotARecording {
            path: path.to_path_buf(),
        });
    }
    let mut frames = Vec::new();
    let mut at = MAGIC.len();
    let mut truncated = false;
    while at < bytes.len() {
        let offset = at as u64;
        let torn = || RecordingError::Truncated {
            path: path.to_path_buf(),
            offset,
            frames: frames.len(),
        };
        let Some(header) = bytes.get(at..at + 8) else {
            if truncated_ok {
                truncated = true;
                break;
            }
            return Err(torn());
        };
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        if len > MAX_FRAME_BYTES {
            return Err(RecordingError::Corrupt {
                path: path.to_path_buf(),
                offset,
                reason: format!("a frame claims {len} bytes (at most {MAX_FRAME_BYTES})"),
            });
        }
        let Some(body) = bytes.get(at + 8..at + 8 + len as usize) else {
            if truncated_ok {
                truncated = true;
                break;
            }
            return Err(torn());
        };
        if crc32fast::hash(body) != crc {
            return Err(RecordingError::Corrupt {
                path: path.to_path_buf(),
                offset,
                reason: "its checksum does not match".to_string(),
            });
        }
        let frame: Frame = postcard::from_bytes(body).map_err(|e| RecordingError::Corrupt {
            path: path.to_path_buf(),
            offset,
            reason: format!("its frame does not decode: {e}"),
        })?;
        frames.push(frame);
        at += 8 + len as usize;
    }
    let mut frames = frames.into_iter();
    let start = match frames.next() {
        Some(Frame::Start(start)) => *start,
        _ => {
            return Err(RecordingError::Malformed {
                path: path.to_path_buf(),
                reason: "the segment does not begin with its start frame".to_string(),
            });
        }
    };
    if start.version != FORMAT_VERSION {
        return Err(RecordingError::Malformed {
            path: path.to_path_buf(),
            reason: format!(
                "recorded in format {}, this build reads {FORMAT_VERSION}",
                start.version
            ),
        });
    }
    let frames: Vec<Frame> = frames.collect();
    if frames.iter().any(|f| matches!(f, Frame::Start(_))) {
        return Err(RecordingError::Malformed {
            path: path.to_path_buf(),
            reason: "a second start frame inside the segment".to_string(),
        });
    }
    Ok(Segment {
        path: path.to_path_buf(),
        start,
        frames,
        truncated,
    })
}

/// Read a recording: one segment file, or a replica's folder (every segment, in
/// order). Only the last segment may be torn (with `truncated_ok`).
pub fn read_recording(path: &Path, truncated_ok: bool) -> Result<Vec<Segment>, RecordingError> {
    let meta = std::fs::metadata(path).map_err(io_error(path))?;
    if !meta.is_dir() {
        return Ok(vec![read_segment(path, truncated_ok)?]);
    }
    let files = segments_in(path)?;
    if files.is_empty() {
        return Err(RecordingError::Malformed {
            path: path.to_path_buf(),
            reason: format!(
                "no seg-*.{SEGMENT_EXTENSION} files here: pass a replica's folder (under \
                 the node's --record directory) or one of its segments"
            ),
        });
    }
    // A node killed mid-write and restarted leaves a torn segment followed by
    // one that starts over (Init): read up to the tear. Otherwise only the last
    // segment may be torn, and only when asked.
    let mut segments: Vec<Segment> = Vec::with_capacity(files.len());
    for (i, file) in files.iter().enumerate() {
        let last = i + 1 == files.len();
        match read_segment(file, truncated_ok && last) {
            Ok(segment) => segments.push(segment),
            Err(
                err @ (RecordingError::Truncated { .. } | RecordingError::NotARecording { .. }),
            ) if !last => {
                let restarted = read_segment(&files[i + 1], true)
                    .is_ok_and(|next| next.start.reason == StartReason::Init);
                if !restarted {
                    return Err(err);
                }
                if let Ok(kept) = read_segment(file, true) {
                    segments.push(kept);
                }
            }
            Err(err) => return Err(err),
        }
    }
    if segments.is_empty() {
        return Err(RecordingError::Malformed {
            path: path.to_path_buf(),
            reason: "none of its segments holds a whole start frame".to_string(),
        });
    }
    Ok(segments)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(reason: StartReason) -> Start {
        Start {
            version: FORMAT_VERSION,
            reason,
            object: "lo://acme/counters/hits".into(),
            member: "m1".into(),
            logic_hash: [7; 32],
            logic_name: "counter".into(),
            fuel_per_call: 1000,
            memory_bytes: 1 << 20,
            table_elements: 10,
            multicast_max_bytes: 100,
            multicast_max_per_call: 4,
            view_id: 3,
            view_members: vec!["m1".into(), "m2".into()],
            last_event_ms: 5,
            calls: 2,
            events: 0,
            snapshot: Some(vec![1, 2, 3]),
            recorded_at_ms: 9,
        }
    }

    fn event(seq: u64) -> Frame {
        Frame::Event(RecordedEvent {
            sender: "m2".into(),
            seq,
            timestamp_ms: seq * 10,
            payload: vec![seq as u8; 40],
            outcome: if seq.is_multiple_of(3) {
                Outcome::Rejected("no".into())
            } else {
                Outcome::Applied
            },
        })
    }

    fn settings(dir: &Path, budget_bytes: u64) -> RecordSettings {
        RecordSettings {
            dir: dir.to_path_buf(),
            budget_bytes,
            digest_every: 0,
        }
    }

    #[test]
    fn frames_round_trip_and_counters_continue_across_segments() {
        let root = tempfile::tempdir().unwrap();
        let mut recorder =
            Recorder::open(&settings(root.path(), 1 << 20), "lo://a/b", "m1").unwrap();
        recorder.begin(start(StartReason::Init));
        for seq in 1..=5 {
            recorder.count_event();
            recorder.write(&event(seq));
        }
        recorder.digest(b"state");
        recorder.begin(start(StartReason::Rotation));
        recorder.count_event();
        recorder.write(&event(6));
        let dir = recorder.dir().to_path_buf();
        drop(recorder);
        let segments = read_recording(&dir, false).unwrap();
        assert_eq!(segments.len(), 2);
        assert_eq!(segments[0].start.events, 0);
        assert_eq!(segments[0].frames.len(), 6);
        assert_eq!(segments[0].frames[4], event(5));
        assert!(matches!(
            segments[0].frames[5],
            Frame::Digest { events: 5, .. }
        ));
        assert_eq!(segments[1].start.events, 5);
        assert_eq!(segments[1].start.reason, StartReason::Rotation);
        assert_eq!(segments[1].frames, vec![event(6)]);
    }

    #[test]
    fn a_restarted_recorder_numbers_on_and_old_segments_go_past_the_budget() {
        let root = tempfile::tempdir().unwrap();
        let budget = 4_000;
        let mut dir = PathBuf::new();
        for _ in 0..2 {
            let mut recorder =
                Recorder::open(&settings(root.path(), budget), "lo://a/b", "m1").unwrap();
            for round in 0..10 {
                recorder.begin(start(if round == 0 {
                    StartReason::Init
                } else {
                    StartReason::Rotation
                }));
                for seq in 0..10 {
                    recorder.count_event();
                    recorder.write(&event(seq));
                }
            }
            dir = recorder.dir().to_path_buf();
        }
        let files = segments_in(&dir).unwrap();
        let total: u64 = files
            .iter()
            .map(|f| std::fs::metadata(f).unwrap().len())
            .sum();
        assert!(total <= budget + 1_000, "{total} bytes in {files:?}");
        assert_eq!(segment_number(files.last().unwrap()), Some(20), "{files:?}");
        assert!(files.len() < 20, "{files:?}");
    }

    #[test]
    fn corrupt_torn_and_foreign_files_are_refused_with_their_path() {
        let root = tempfile::tempdir().unwrap();
        let mut recorder =
            Recorder::open(&settings(root.path(), 1 << 20), "lo://a/b", "m1").unwrap();
        recorder.begin(start(StartReason::Init));
        for seq in 1..=3 {
            recorder.write(&event(seq));
        }
        let dir = recorder.dir().to_path_buf();
        drop(recorder);
        let file = segments_in(&dir).unwrap().remove(0);
        let good = std::fs::read(&file).unwrap();
        let name = file.display().to_string();

        let mut flipped = good.clone();
        let last = flipped.len() - 3;
        flipped[last] ^= 0x40;
        std::fs::write(&file, &flipped).unwrap();
        let err = read_segment(&file, true).unwrap_err().to_string();
        assert!(err.contains(&name) && err.contains("checksum"), "{err}");

        std::fs::write(&file, &good[..good.len() - 5]).unwrap();
        let err = read_segment(&file, false).unwrap_err().to_string();
        assert!(err.contains(&name) && err.contains("truncated"), "{err}");
        let kept = read_segment(&file, true).unwrap();
        assert!(kept.truncated);
        assert_eq!(kept.frames, vec![event(1), event(2)]);

        let mut huge = good[..MAGIC.len()].to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&[0; 4]);
        std::fs::write(&file, &huge).unwrap();
        let err = read_segment(&file, true).unwrap_err().to_string();
        assert!(err.contains("claims"), "{err}");

        std::fs::write(&file, b"\0asm\x0d\0\x01\0").unwrap();
        let err = read_segment(&file, false).unwrap_err().to_string();
        assert!(
            err.contains(&name) && err.contains("not a liveobjects recording"),
            "{err}"
        );

        // A segment must begin with its start frame.
        let mut recorder = Recorder::open(&settings(root.path(), 1 << 20), "lo://c", "m1").unwrap();
        recorder.begin(start(StartReason::Init));
        let other = segments_in(recorder.dir()).unwrap().remove(0);
        drop(recorder);
        let bytes = std::fs::read(&other).unwrap();
        let mut headless = MAGIC.to_vec();
        let mut rest = good[MAGIC.len()..].to_vec();
        let first_len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        rest.drain(..8 + first_len);
        headless.extend_from_slice(&rest);
        std::fs::write(&other, &headless).unwrap();
        let err = read_segment(&other, false).unwrap_err().to_string();
        assert!(err.contains("does not begin with its start frame"), "{err}");
        assert!(bytes.len() > MAGIC.len());
    }

    #[test]
    fn a_segment_torn_by_a_crash_before_a_restart_still_reads() {
        let root = tempfile::tempdir().unwrap();
        let settings = settings(root.path(), 1 << 20);
        let mut recorder = Recorder::open(&settings, "lo://a/b", "m1").unwrap();
        recorder.begin(start(StartReason::Init));
        for seq in 1..=3 {
            recorder.write(&event(seq));
        }
        let dir = recorder.dir().to_path_buf();
        drop(recorder);
        let torn = segments_in(&dir).unwrap().remove(0);
        let bytes = std::fs::read(&torn).unwrap();
        std::fs::write(&torn, &bytes[..bytes.len() - 4]).unwrap();
        // Refused alone, and when nothing starts over after it.
        assert!(read_recording(&dir, false).is_err());
        let mut restarted = Recorder::open(&settings, "lo://a/b", "m1").unwrap();
        restarted.begin(start(StartReason::Init));
        restarted.write(&event(9));
        drop(restarted);
        let segments = read_recording(&dir, false).unwrap();
        assert_eq!(segments.len(), 2);
        assert_eq!(segments[0].frames, vec![event(1), event(2)]);
        assert_eq!(segments[1].frames, vec![event(9)]);
        // A rotation after a tear would hide lost events: refused.
        let mut rotated = Recorder::open(&settings, "lo://a/b", "m1").unwrap();
        rotated.begin(start(StartReason::Rotation));
        drop(rotated);
        let second = segments_in(&dir).unwrap().remove(1);
        let bytes = std::fs::read(&second).unwrap();
        std::fs::write(&second, &bytes[..bytes.len() - 2]).unwrap();
        let err = read_recording(&dir, false).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
    }

    #[test]
    fn folder_names_are_safe_and_tell_replicas_apart() {
        let a = replica_folder("lo://acme/rooms/lobby", "m1");
        let b = replica_folder("lo://acme/rooms/lobby", "m2");
        assert!(a.starts_with("acme_rooms_lobby-"), "{a}");
        assert_ne!(a, b);
        assert!(!replica_folder("../../etc", "m").contains('/'));
    }
}
