//! qsm datagrams: a clear header, a body sealed with AES-256-GCM, and the checks a
//! receiver makes before it believes anything.
//!
//! ```text
//! magic "LQ" | version | kind | domain u32 | sender u32 | region u64 | counter u64 | body.. | tag (16)
//! ```
//!
//! - The header (28 bytes, all integers big-endian) is the AEAD's associated data; the
//!   nonce is `sender || counter`. Each host numbers every datagram it seals with one
//!   counter, so no (key, nonce) pair repeats.
//! - Which key opens a datagram follows from its kind: data from a stream's
//!   sender, and acks to it, use that *stream's key* (held by the sender
//!   and the region's members only); tokens and repairs between members use the
//!   *region key* (members only). Both are derived from the region's master secret,
//!   which the membership service hands to the region's members (see
//!   [`derive_key`]). A sender thus reads nothing but its own stream, even though one
//!   datagram may batch messages of many objects.
//! - After the tag verifies, a per-sender sliding window over counters drops
//!   replays ([`ReplayWindow`]); only then is the body decoded, with every length
//!   bounded by the datagram itself.
//!
//! Trust: the keys are symmetric, so a *member* of a region can seal anything any
//! other member or sender could (forge their messages, or jump their counter so
//! their datagrams look replayed). Members are trusted, as in every group-key
//! scheme; outsiders, including hosts of other regions and senders into this one
//! for other streams, can do neither. Signing every datagram would close that gap
//! at the cost of an ed25519 signature per datagram.
//!
//! Bodies are postcard ([`Body`]). Payloads are not copied out of the received
//! buffer: [`Message`]s hold [`Bytes`] slices of it.

use bytes::{Bytes, BytesMut};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use serde::{Deserialize, Serialize};

/// A host's number in a qsm domain, given by the membership service when the host
/// registers (a restarted host gets a new one).
pub type HostNum = u32;
/// An object's number in a qsm domain, given by the membership service.
pub type ObjectNum = u32;
/// A region view's id: every change to a region's members makes a new one.
pub type RegionId = u64;

/// First bytes of every qsm datagram.
pub const MAGIC: [u8; 2] = *b"LQ";
/// Wire format version.
pub const VERSION: u8 = 2;
/// Bytes of the clear header.
pub const HEADER_LEN: usize = 28;
/// Bytes of the AEAD tag.
pub const TAG_LEN: usize = 16;
/// Largest datagram accepted or sent (IPv4/IPv6 UDP payload limit, minus headers).
pub const MAX_DATAGRAM: usize = 65_000;
/// Counters this far behind the highest seen from a sender are refused as stale.
pub const REPLAY_WINDOW: u64 = 4096;

/// What a datagram is; decides the key that opens it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum Kind {
    /// Messages of a sender's stream into a region, multicast (stream key).
    Data = 1,
    /// The same, travelling the overlay tree: each receiver forwards the bytes to
    /// its children (stream key).
    Overlay = 2,
    /// The repair token of a ring (region key).
    Token = 3,
    /// Messages one member forwards to another that lacks them (region key).
    Repair = 4,
    /// A region leader's acknowledgement and loss report to a sender (stream key).
    Ack = 5,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Data,
            2 => Kind::Overlay,
            3 => Kind::Token,
            4 => Kind::Repair,
            5 => Kind::Ack,
            _ => return None,
        })
    }

    /// Whether the stream key (rather than the region key) seals this kind.
    pub fn uses_stream_key(self) -> bool {
        !matches!(self, Kind::Token | Kind::Repair)
    }
}

/// The clear header of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// What it is.
    pub kind: Kind,
    /// The qsm domain (so two domains on one network never mix).
    pub domain: u32,
    /// The host that sealed it. For data and overlay datagrams: the stream's
    /// sender. For acks: the region leader (the stream is the receiver's own).
    pub sender: HostNum,
    /// The region view.
    pub region: RegionId,
    /// The sender's datagram counter (nonce).
    pub counter: u64,
}

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..2].copy_from_slice(&MAGIC);
        h[2] = VERSION;
        h[3] = self.kind as u8;
        h[4..8].copy_from_slice(&self.domain.to_be_bytes());
        h[8..12].copy_from_slice(&self.sender.to_be_bytes());
        h[12..20].copy_from_slice(&self.region.to_be_bytes());
        h[20..28].copy_from_slice(&self.counter.to_be_bytes());
        h
    }

    /// Read the clear header (nothing in it is authenticated yet).
    pub fn decode(bytes: &[u8]) -> Result<Header, WireError> {
        if bytes.len() < HEADER_LEN + TAG_LEN {
            return Err(WireError::Truncated(bytes.len()));
        }
        if bytes.len() > MAX_DATAGRAM {
            return Err(WireError::TooLarge(bytes.len()));
        }
        if bytes[0..2] != MAGIC || bytes[2] != VERSION {
            return Err(WireError::NotQsm);
        }
        let kind = Kind::from_byte(bytes[3]).ok_or(WireError::Malformed("unknown kind"))?;
        let u32_at = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_be_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        Ok(Header {
            kind,
            domain: u32_at(4),
            sender: u32_at(8),
            region: u64_at(12),
            counter: u64_at(20),
        })
    }

    fn nonce(&self) -> Nonce {
        let mut n = [0u8; 12];
        n[0..4].copy_from_slice(&self.sender.to_be_bytes());
        n[4..12].copy_from_slice(&self.counter.to_be_bytes());
        Nonce::assume_unique_for_key(n)
    }
}

/// Why a datagram was dropped. Nothing in a dropped datagram reaches the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than a header and a tag.
    #[error("datagram of {0} bytes is too short for a header and a tag")]
    Truncated(usize),
    /// Larger than [`MAX_DATAGRAM`].
    #[error("datagram of {0} bytes exceeds the limit of {MAX_DATAGRAM}")]
    TooLarge(usize),
    /// Wrong magic or version: not ours.
    #[error("not a qsm datagram (magic or version)")]
    NotQsm,
    /// Another qsm domain.
    #[error("datagram of another qsm domain")]
    OtherDomain,
    /// No key for its region and kind (a region this host does not know, or no
    /// longer knows).
    #[error("no key for region {0}")]
    UnknownRegion(RegionId),
    /// The tag did not verify: forged, corrupted or sealed with another key.
    #[error("datagram tag does not verify (forged or corrupted)")]
    Forged,
    /// The counter was seen before or is too old.
    #[error("replayed datagram")]
    Replayed,
    /// The body does not decode or does not fit its kind.
    #[error("malformed body: {0}")]
    Malformed(&'static str),
}

/// Counts of dropped datagrams, by reason (for `lo status` and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropCounts {
    /// Too short, too long, or a body that does not decode.
    pub malformed: u64,
    /// Tag did not verify.
    pub forged: u64,
    /// Replayed or too old.
    pub replayed: u64,
    /// Not ours, another domain, or a region we do not know.
    pub foreign: u64,
}

impl DropCounts {
    /// Count one drop.
    pub fn count(&mut self, error: &WireError) {
        match error {
            WireError::Truncated(_) | WireError::TooLarge(_) | WireError::Malformed(_) => {
                self.malformed += 1
            }
            WireError::Forged => self.forged += 1,
            WireError::Replayed => self.replayed += 1,
            WireError::NotQsm | WireError::OtherDomain | WireError::UnknownRegion(_) => {
                self.foreign += 1
            }
        }
    }

    /// All drops.
    pub fn total(&self) -> u64 {
        self.malformed + self.forged + self.replayed + self.foreign
    }
}

/// A symmetric key for sealing datagrams.
#[derive(Clone)]
pub struct Key(std::sync::Arc<LessSafeKey>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// A key from 32 secret bytes.
    pub fn new(bytes: &[u8; 32]) -> Key {
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).expect("32 bytes is an AES-256 key");
        Key(std::sync::Arc::new(LessSafeKey::new(unbound)))
    }
}

/// What a key derived from a region's master secret is for.
#[derive(Debug, Clone, Copy)]
pub enum KeyUse {
    /// Tokens and repairs among the region's members.
    Region,
    /// The stream of this sender into the region (data, status, acks).
    Stream(HostNum),
}

/// Derive a key from a region's master secret with HKDF-SHA256.
pub fn derive_key(master: &[u8; 32], region: RegionId, purpose: KeyUse) -> [u8; 32] {
    use ring::hkdf::{HKDF_SHA256, KeyType, Prk, Salt};
    struct Len32;
    impl KeyType for Len32 {
        fn len(&self) -> usize {
            32
        }
    }
    let prk: Prk = Salt::new(HKDF_SHA256, b"liveobjects qsm v1").extract(master);
    let mut info = Vec::with_capacity(24);
    info.extend_from_slice(&region.to_be_bytes());
    match purpose {
        KeyUse::Region => info.extend_from_slice(b"region"),
        KeyUse::Stream(sender) => {
            info.extend_from_slice(b"stream");
            info.extend_from_slice(&sender.to_be_bytes());
        }
    }
    let info = [info.as_slice()];
    let okm = prk
        .expand(&info, Len32)
        .expect("32 bytes is a valid HKDF length");
    let mut out = [0u8; 32];
    okm.fill(&mut out).expect("length matches");
    out
}

/// Seal `body` (postcard) into a datagram.
pub fn seal(header: &Header, body: &Body<'_>, key: &Key) -> Vec<u8> {
    let head = header.encode();
    let mut out = Vec::with_capacity(HEADER_LEN + 64);
    out.extend_from_slice(&head);
    let mut out = postcard::to_extend(body, out).expect("encoding to a Vec cannot fail");
    let tag = key
        .0
        .seal_in_place_separate_tag(header.nonce(), Aad::from(head), &mut out[HEADER_LEN..])
        .expect("AES-GCM seals any length we send");
    out.extend_from_slice(tag.as_ref());
    out
}

/// Open a datagram whose header was read with [`Header::decode`], with `key`.
/// Returns the plaintext body (a [`Bytes`] that message payloads will share).
pub fn open(datagram: &[u8], header: &Header, key: &Key) -> Result<Bytes, WireError> {
    let mut buf = BytesMut::from(&datagram[HEADER_LEN..]);
    let aad: [u8; HEADER_LEN] = datagram[..HEADER_LEN].try_into().expect("checked length");
    let plain_len = key
        .0
        .open_in_place(header.nonce(), Aad::from(aad), &mut buf)
        .map_err(|_| WireError::Forged)?
        .len();
    buf.truncate(plain_len);
    Ok(buf.freeze())
}

/// Decode an opened body and check it fits the header's kind.
pub fn decode_body(kind: Kind, plain: &Bytes) -> Result<Body<'_>, WireError> {
    let body: Body<'_> =
        postcard::from_bytes(plain).map_err(|_| WireError::Malformed("body does not decode"))?;
    let fits = matches!(
        (kind, &body),
        (Kind::Data | Kind::Overlay, Body::Data { .. })
            | (Kind::Token, Body::Token(_))
            | (Kind::Repair, Body::Repair { .. })
            | (Kind::Ack, Body::Ack(_))
    );
    if !fits {
        return Err(WireError::Malformed("body does not fit the datagram kind"));
    }
    Ok(body)
}

/// Drops datagrams whose counter was already seen from their sender, or that are
/// more than [`REPLAY_WINDOW`] behind the newest one (IPsec-style sliding window).
#[derive(Debug, Default, Clone)]
pub struct ReplayWindow {
    highest: u64,
    /// Bit i set: counter `highest - i` seen.
    seen: Vec<u64>,
}

impl ReplayWindow {
    const WORDS: usize = (REPLAY_WINDOW / 64) as usize;

    /// Record `counter`; false if it is a replay or too old.
    pub fn accept(&mut self, counter: u64) -> bool {
        if self.seen.is_empty() {
            self.seen = vec![0; Self::WORDS];
            self.highest = counter;
            self.seen[0] = 1;
            return true;
        }
        if counter > self.highest {
            let shift = counter - self.highest;
            self.shift(shift);
            self.highest = counter;
            self.seen[0] |= 1;
            return true;
        }
        let back = self.highest - counter;
        if back >= REPLAY_WINDOW {
            return false;
        }
        let (word, bit) = ((back / 64) as usize, back % 64);
        if self.seen[word] & (1 << bit) != 0 {
            return false;
        }
        self.seen[word] |= 1 << bit;
        true
    }

    /// Move the window forward by `by` counters (bit i becomes bit i + by).
    fn shift(&mut self, by: u64) {
        if by >= REPLAY_WINDOW {
            self.seen.iter_mut().for_each(|w| *w = 0);
            return;
        }
        let (words, bits) = ((by / 64) as usize, (by % 64) as u32);
        for i in (0..Self::WORDS).rev() {
            let lower = i.checked_sub(words).map(|j| self.seen[j]).unwrap_or(0);
            let carry = if bits == 0 {
                0
            } else {
                i.checked_sub(words + 1)
                    .map(|j| self.seen[j] >> (64 - bits))
                    .unwrap_or(0)
            };
            self.seen[i] = (lower << bits) | carry;
        }
    }
}

/// One message of a sender's stream: an object's event, or a view marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The object.
    pub object: ObjectNum,
    /// What it carries.
    pub body: MessageBody,
}

/// The content of a [`Message`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageBody {
    /// An application event: the sender's `seq`-th event of this object.
    Event {
        /// The sender's sequence number for the object (1, 2, 3, ...).
        seq: u64,
        /// The sender's clock when it multicast.
        timestamp_ms: u64,
        /// The object's bytes.
        payload: Bytes,
    },
    /// The sender adopted the object's membership view `view`: its events from
    /// `first` on go to every member of that view, and belong to logic epoch
    /// `epoch`. A member serving a snapshot to a joiner of `view` waits for these
    /// (see the core's join protocol); a member switching to a new epoch holds
    /// the sender's events from `first` on until it has switched (its upgrades).
    Marker {
        /// The membership view id.
        view: u64,
        /// The sender's first event seq sent under it.
        first: u64,
        /// The logic epoch its events from `first` on belong to.
        epoch: u64,
    },
    /// The sender's verdict on the upgrade that starts logic epoch `epoch`: whether
    /// its replica took the new logic at its cut (see the core's upgrades).
    Vote {
        /// The epoch the upgrade starts.
        epoch: u64,
        /// Whether the sender's replica took it.
        ok: bool,
    },
}

impl Message {
    /// Upper bound of its encoded size, for packing datagrams.
    pub fn encoded_bound(&self) -> usize {
        match &self.body {
            MessageBody::Event { payload, .. } => 32 + payload.len(),
            MessageBody::Marker { .. } | MessageBody::Vote { .. } => 32,
        }
    }

    fn to_wire(&self) -> WireMessage<'_> {
        WireMessage {
            object: self.object,
            body: match &self.body {
                MessageBody::Event {
                    seq,
                    timestamp_ms,
                    payload,
                } => WireBody::Event {
                    seq: *seq,
                    timestamp_ms: *timestamp_ms,
                    payload,
                },
                MessageBody::Marker { view, first, epoch } => WireBody::Marker {
                    view: *view,
                    first: *first,
                    epoch: *epoch,
                },
                MessageBody::Vote { epoch, ok } => WireBody::Vote {
                    epoch: *epoch,
                    ok: *ok,
                },
            },
        }
    }
}

/// A [`Message`] as encoded: the payload borrows the datagram.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireMessage<'a> {
    /// The object.
    pub object: ObjectNum,
    /// What it carries.
    #[serde(borrow)]
    pub body: WireBody<'a>,
}

/// The encoded form of [`MessageBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireBody<'a> {
    /// See [`MessageBody::Event`].
    Event {
        /// Sequence number.
        seq: u64,
        /// Sender's clock.
        timestamp_ms: u64,
        /// Bytes.
        #[serde(borrow)]
        payload: &'a [u8],
    },
    /// See [`MessageBody::Marker`].
    Marker {
        /// View id.
        view: u64,
        /// First seq.
        first: u64,
        /// Logic epoch.
        epoch: u64,
    },
    /// See [`MessageBody::Vote`].
    Vote {
        /// Epoch.
        epoch: u64,
        /// Verdict.
        ok: bool,
    },
}

impl WireMessage<'_> {
    /// Own the message; the payload becomes a slice of `plain` (no copy).
    pub fn to_message(&self, plain: &Bytes) -> Message {
        Message {
            object: self.object,
            body: match &self.body {
                WireBody::Event {
                    seq,
                    timestamp_ms,
                    payload,
                } => MessageBody::Event {
                    seq: *seq,
                    timestamp_ms: *timestamp_ms,
                    payload: plain.slice_ref(payload),
                },
                WireBody::Marker { view, first, epoch } => MessageBody::Marker {
                    view: *view,
                    first: *first,
                    epoch: *epoch,
                },
                WireBody::Vote { epoch, ok } => MessageBody::Vote {
                    epoch: *epoch,
                    ok: *ok,
                },
            },
        }
    }
}

/// Per-stream state a token carries around a ring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamSummary {
    /// The stream's sender.
    pub sender: HostNum,
    /// Lowest "consumed everything up to" among the hosts visited.
    pub ack: u64,
    /// Highest sequence number any visited host has heard of.
    pub max: u64,
    /// Messages the visited hosts reported missing for the first time this round.
    pub missing: u32,
    /// Largest backlog (received but not yet consumed) among the hosts visited.
    pub backlog: u32,
}

/// A request for messages a host lacks, carried by a token until some host
/// forwards them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nak {
    /// Who lacks them.
    pub node: HostNum,
    /// Whose stream.
    pub sender: HostNum,
    /// First missing sequence number.
    pub from: u64,
    /// Last missing sequence number (inclusive).
    pub to: u64,
    /// Hosts that saw this request and could not serve it.
    pub visits: u16,
}

/// A ring's token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// Level in the tree of rings (0: rings of members).
    pub level: u8,
    /// Which ring of that level.
    pub ring: u32,
    /// Round number (a host ignores rounds older than the newest it saw).
    pub round: u64,
    /// Per-stream acknowledgement and loss state.
    pub streams: Vec<StreamSummary>,
    /// Open repair requests.
    pub naks: Vec<Nak>,
    /// Region-wide stable point per stream, flowing down from the region leader:
    /// every member has consumed these, so they can be forgotten.
    pub stable: Vec<(HostNum, u64)>,
}

/// A region leader's report to a sender, once per round of the top ring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// Every member consumed the stream up to here.
    pub ack: u64,
    /// The highest sequence number any member had heard of: a sender learns that
    /// the region lost everything after it.
    pub max: u64,
    /// Ranges no host of the region has: re-multicast them.
    pub lost: Vec<(u64, u64)>,
    /// Messages reported missing in the last round (a loss signal for the rate).
    pub missing: u32,
    /// Largest receive backlog of any member (a slow-consumer signal).
    pub backlog: u32,
}

/// The body of a datagram.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body<'a> {
    /// Consecutive messages of the sender's stream, the first numbered `first`.
    Data {
        /// Stream sequence number of the first message.
        first: u64,
        /// Highest stream sequence number the sender has sent so far.
        last: u64,
        /// The messages.
        #[serde(borrow)]
        messages: Vec<WireMessage<'a>>,
    },
    /// A ring token.
    Token(Token),
    /// Messages of `stream` forwarded by a member, with their stream numbers.
    Repair {
        /// The stream's sender.
        stream: HostNum,
        /// (stream seq, message).
        #[serde(borrow)]
        messages: Vec<(u64, WireMessage<'a>)>,
    },
    /// A leader's acknowledgement.
    Ack(Ack),
}

/// Encode a data datagram's body from owned messages.
pub fn data_body<'a>(first: u64, last: u64, messages: &'a [Message]) -> Body<'a> {
    Body::Data {
        first,
        last,
        messages: messages.iter().map(Message::to_wire).collect(),
    }
}

/// Encode a repair datagram's body.
pub fn repair_body<'a>(stream: HostNum, messages: &'a [(u64, Message)]) -> Body<'a> {
    Body::Repair {
        stream,
        messages: messages.iter().map(|(s, m)| (*s, m.to_wire())).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: Kind, counter: u64) -> Header {
        Header {
            kind,
            domain: 7,
            sender: 3,
            region: 11,
            counter,
        }
    }

    fn event(object: u32, seq: u64, payload: &'static [u8]) -> Message {
        Message {
            object,
            body: MessageBody::Event {
                seq,
                timestamp_ms: 5,
                payload: Bytes::from_static(payload),
            },
        }
    }

    #[test]
    fn a_sealed_data_datagram_opens_with_its_key_only() {
        let master = [9u8; 32];
        let key = Key::new(&derive_key(&master, 11, KeyUse::Stream(3)));
        let other = Key::new(&derive_key(&master, 11, KeyUse::Stream(4)));
        let msgs = vec![event(1, 1, b"hello"), event(2, 9, b"")];
        let bytes = seal(&header(Kind::Data, 1), &data_body(5, 6, &msgs), &key);
        let h = Header::decode(&bytes).unwrap();
        assert_eq!(h, header(Kind::Data, 1));
        assert_eq!(open(&bytes, &h, &other), Err(WireError::Forged));
        let plain = open(&bytes, &h, &key).unwrap();
        let Body::Data {
            first,
            last,
            messages,
        } = decode_body(Kind::Data, &plain).unwrap()
        else {
            panic!("not data")
        };
        assert_eq!((first, last), (5, 6));
        let owned: Vec<Message> = messages.iter().map(|m| m.to_message(&plain)).collect();
        assert_eq!(owned, msgs);
    }

    #[test]
    fn any_flipped_byte_or_cut_is_refused() {
        let key = Key::new(&[1u8; 32]);
        let msgs = vec![event(1, 1, b"payload")];
        let bytes = seal(&header(Kind::Data, 1), &data_body(1, 1, &msgs), &key);
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            // A changed header fails too: it is the tag's associated data.
            let outcome = Header::decode(&b).and_then(|h| open(&b, &h, &key).map(|_| ()));
            assert!(outcome.is_err(), "flipping byte {i} went unnoticed");
        }
        for len in 0..bytes.len() {
            let cut = &bytes[..len];
            let outcome = Header::decode(cut).and_then(|h| open(cut, &h, &key).map(|_| ()));
            assert!(
                outcome.is_err(),
                "a datagram cut to {len} bytes was accepted"
            );
        }
    }

    #[test]
    fn a_body_of_the_wrong_kind_is_malformed() {
        let key = Key::new(&[1u8; 32]);
        let bytes = seal(
            &header(Kind::Token, 1),
            &Body::Ack(Ack {
                ack: 1,
                lost: vec![],
                max: 1,
                missing: 0,
                backlog: 0,
            }),
            &key,
        );
        let h = Header::decode(&bytes).unwrap();
        let plain = open(&bytes, &h, &key).unwrap();
        assert!(matches!(
            decode_body(h.kind, &plain),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn replay_window_accepts_each_counter_once_and_refuses_stale_ones() {
        let mut w = ReplayWindow::default();
        assert!(w.accept(10));
        assert!(!w.accept(10));
        assert!(w.accept(12));
        assert!(w.accept(11));
        assert!(!w.accept(11));
        assert!(w.accept(5));
        assert!(w.accept(10 + REPLAY_WINDOW));
        assert!(!w.accept(10), "now outside the window");
        assert!(w.accept(12 + 64), "inside the window, not seen");
        assert!(!w.accept(12 + 64));
        assert!(w.accept(u64::MAX / 2));
        assert!(!w.accept(12 + 64));
    }

    #[test]
    fn replay_window_matches_a_set_model() {
        use std::collections::BTreeSet;
        let mut w = ReplayWindow::default();
        let mut seen = BTreeSet::new();
        let mut highest = 0u64;
        let mut x = 12345u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let c = 100_000 + (x % 9000);
            let expect = seen.is_empty()
                || c > highest
                || (highest - c < REPLAY_WINDOW && !seen.contains(&c));
            assert_eq!(w.accept(c), expect, "counter {c}");
            if expect {
                seen.insert(c);
                highest = highest.max(c);
            }
        }
    }
}
