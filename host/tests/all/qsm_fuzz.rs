//! Property tests standing in for fuzzing the qsm decoders: bytes from the network
//! never panic a host, and neither do well-sealed but hostile bodies from a member
//! of the region (who holds its keys): absurd sequence numbers, ranges, counters.
//! Afterwards the host still delivers genuine traffic.

use bytes::Bytes;
use liveobjects_protocols::qsm::core::QsmConfig;
use liveobjects_protocols::qsm::membership::MembershipConfig;
use liveobjects_protocols::qsm::sim::{NetConfig, Sim};
use liveobjects_protocols::qsm::wire::{
    self, Ack, Body, Header, Key, KeyUse, Kind, Message, MessageBody, Nak, StreamSummary, Token,
};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn datagram_decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let key = Key::new(&[7; 32]);
        if let Ok(header) = Header::decode(&bytes) {
            let _ = wire::open(&bytes, &header, &key);
        }
        let plain = Bytes::from(bytes);
        for kind in [Kind::Data, Kind::Overlay, Kind::Token, Kind::Repair, Kind::Ack] {
            match wire::decode_body(kind, &plain) {
                Ok(Body::Data { messages, .. }) => {
                    for m in &messages {
                        let _ = m.to_message(&plain);
                    }
                }
                Ok(Body::Repair { messages, .. }) => {
                    for (_, m) in &messages {
                        let _ = m.to_message(&plain);
                    }
                }
                _ => {}
            }
        }
    }
}

fn arb_message() -> impl Strategy<Value = Message> {
    (
        any::<u32>(),
        any::<u64>(),
        any::<u64>(),
        any::<bool>(),
        0..64usize,
    )
        .prop_map(|(object, seq, t, marker, len)| Message {
            object: object % 4,
            body: if marker {
                match len % 3 {
                    0 => MessageBody::Vote {
                        epoch: seq,
                        ok: t % 2 == 0,
                    },
                    _ => MessageBody::Marker {
                        view: seq,
                        first: t,
                        epoch: t % 5,
                    },
                }
            } else {
                MessageBody::Event {
                    seq: seq % 1_000_000,
                    timestamp_ms: t,
                    payload: Bytes::from(vec![0xAB; len]),
                }
            },
        })
}

fn arb_u64() -> impl Strategy<Value = u64> {
    prop_oneof![0..100u64, any::<u64>(), Just(u64::MAX), Just(u64::MAX - 1)]
}

#[derive(Debug, Clone)]
enum Hostile {
    Data(u64, u64, Vec<Message>),
    Repair(u32, Vec<(u64, Message)>),
    Token(Token),
    Ack(Ack),
}

fn arb_hostile() -> impl Strategy<Value = Hostile> {
    let nak = (0..8u32, 0..8u32, arb_u64(), arb_u64(), any::<u16>()).prop_map(
        |(node, sender, from, to, visits)| Nak {
            node,
            sender,
            from,
            to,
            visits,
        },
    );
    let summary = (0..8u32, arb_u64(), arb_u64(), any::<u32>(), any::<u32>()).prop_map(
        |(sender, ack, max, missing, backlog)| StreamSummary {
            sender,
            ack,
            max,
            missing,
            backlog,
        },
    );
    prop_oneof![
        (
            arb_u64(),
            arb_u64(),
            proptest::collection::vec(arb_message(), 0..8)
        )
            .prop_map(|(f, l, m)| Hostile::Data(f, l, m)),
        (
            0..8u32,
            proptest::collection::vec((arb_u64(), arb_message()), 0..8)
        )
            .prop_map(|(s, m)| Hostile::Repair(s, m)),
        (
            0..3u8,
            0..3u32,
            arb_u64(),
            proptest::collection::vec(summary, 0..8),
            proptest::collection::vec(nak, 0..16),
            proptest::collection::vec((0..8u32, arb_u64()), 0..8),
        )
            .prop_map(|(level, ring, round, streams, naks, stable)| {
                Hostile::Token(Token {
                    level,
                    ring,
                    round,
                    streams,
                    naks,
                    stable,
                })
            }),
        (
            arb_u64(),
            arb_u64(),
            proptest::collection::vec((arb_u64(), arb_u64()), 0..8)
        )
            .prop_map(|(ack, max, lost)| Hostile::Ack(Ack {
                ack,
                max,
                lost,
                missing: 0,
                backlog: 0
            })),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn a_host_survives_hostile_bodies_sealed_by_a_member(
        attacks in proptest::collection::vec((arb_hostile(), 0..3usize), 1..30)
    ) {
        let mut sim = Sim::new(3, 3, MembershipConfig::default(), QsmConfig::default(), NetConfig::default());
        for i in 0..3 {
            sim.join(i, "a");
        }
        sim.run_for(300_000);
        let core = sim.hosts[0].core.as_ref().unwrap();
        let (region, master, members) = core.region_secret_for_tests().unwrap();
        let domain = core.domain();
        // The attacker claims to be any member but host 1, whose traffic is checked
        // afterwards: a member holds the region's keys and so can forge any other
        // member's datagrams (the symmetric-key trust model, see `qsm::wire`).
        let genuine = sim.hosts[1].core.as_ref().unwrap().me();
        let claimable: Vec<u32> = members.iter().copied().filter(|m| *m != genuine).collect();
        for (n, (attack, sender)) in attacks.into_iter().enumerate() {
            let sender = claimable[sender % claimable.len()];
            let header = |kind| Header { kind, domain, sender, region, counter: 1_000_000 + n as u64 };
            let stream_key = Key::new(&wire::derive_key(&master, region, KeyUse::Stream(sender)));
            let region_key = Key::new(&wire::derive_key(&master, region, KeyUse::Region));
            let bytes = match &attack {
                Hostile::Data(first, last, msgs) => {
                    wire::seal(&header(Kind::Data), &wire::data_body(*first, *last, msgs), &stream_key)
                }
                Hostile::Repair(stream, msgs) => {
                    let stream = claimable[*stream as usize % claimable.len()];
                    wire::seal(&header(Kind::Repair), &wire::repair_body(stream, msgs), &region_key)
                }
                Hostile::Token(t) => wire::seal(&header(Kind::Token), &Body::Token(t.clone()), &region_key),
                Hostile::Ack(a) => wire::seal(&header(Kind::Ack), &Body::Ack(a.clone()), &stream_key),
            };
            for i in 0..3 {
                sim.inject(i, &bytes);
            }
        }
        sim.run_for(2_000_000);
        // Genuine traffic still reaches every host.
        let before = sim.report.deliveries;
        sim.send(1, "a", 10);
        sim.run_for(3_000_000);
        prop_assert!(sim.report.deliveries >= before + 3);
        for h in &sim.hosts {
            prop_assert!(h.max_retained < 200_000);
        }
    }
}
