//! Property tests standing in for fuzzing: decoders of bytes from the network or the
//! database never panic, and whatever decodes is handled without panicking.

use liveobjects_directory::client::check_freshness;
use liveobjects_directory::fresh::{
    EntryKey, Freshness, MerkleTree, Vouched, leaf_hash, verify_statement,
};
use liveobjects_directory::keys::Identity;
use liveobjects_directory::protocol::{Response, decode_request, decode_response};
use liveobjects_directory::record::{Delegation, ObjectRecord, Signed};
use liveobjects_directory::server::{Directory, Registration};
use liveobjects_directory::store::Change;
use liveobjects_directory::store::Store;
use proptest::prelude::*;

const NOW: u64 = 1_800_000_000;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn record_decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(signed) = Signed::<ObjectRecord>::from_bytes(&bytes) {
            let _ = signed.open();
            let _ = signed.signature_valid();
        }
        if let Ok(signed) = Signed::<Delegation>::from_bytes(&bytes) {
            let _ = signed.open();
            let _ = signed.signature_valid();
        }
        let _ = decode_response(&bytes);
    }

    #[test]
    fn a_proof_verifies_only_its_own_entry_in_its_own_tree(
        n in 1usize..40,
        pick in any::<usize>(),
        flip_step in any::<usize>(),
        flip_bit in 0u8..8,
    ) {
        let entries: Vec<(EntryKey, Vec<u8>)> = (0..n)
            .map(|i| (EntryKey::Record(format!("lo://z/{i}")), vec![i as u8; 5]))
            .collect();
        let tree = MerkleTree::new(entries.iter().map(|(k, v)| leaf_hash(k, v)).collect());
        let i = pick % n;
        let proof = tree.proof(i);
        prop_assert!(proof.verifies(&entries[i].0, &entries[i].1, &tree.root()));
        let other = (i + 1) % n;
        if other != i {
            prop_assert!(!proof.verifies(&entries[other].0, &entries[other].1, &tree.root()));
        }
        if !proof.steps.is_empty() {
            let step = flip_step % proof.steps.len();
            let mut damaged = proof.clone();
            damaged.steps[step].sibling[0] ^= 1 << flip_bit;
            prop_assert!(!damaged.verifies(&entries[i].0, &entries[i].1, &tree.root()));
            let mut swapped = proof.clone();
            swapped.steps[step].sibling_on_left = !swapped.steps[step].sibling_on_left;
            prop_assert!(!swapped.verifies(&entries[i].0, &entries[i].1, &tree.root()));
        }
    }

    #[test]
    fn freshness_and_transfer_decoders_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..600)
    ) {
        if let Ok(signed) = Signed::<Freshness>::from_bytes(&bytes) {
            let _ = signed.open();
            let _ = verify_statement(&signed, Identity::generate().public(), NOW);
        }
        if let Ok(vouched) = postcard::from_bytes::<Vouched>(&bytes) {
            let _ = check_freshness(Some(&vouched), vouched.statement.signer, NOW, &[], &[]);
            for proof in &vouched.proofs {
                let _ = proof.verifies(&EntryKey::Record("lo://a/b".into()), &bytes, &[0; 32]);
            }
        }
        let _ = postcard::from_bytes::<Change>(&bytes);
        if let Ok(Response::Transfer { changes, .. }) = decode_response(&bytes) {
            for change in changes {
                let _ = Signed::<ObjectRecord>::from_bytes(&change.value).map(|s| s.open());
            }
        }
    }

    #[test]
    fn request_bytes_are_decoded_and_handled_without_panicking(
        bytes in proptest::collection::vec(any::<u8>(), 0..600)
    ) {
        thread_local! {
            static DIR: (tempfile::TempDir, Directory) = {
                let dir = tempfile::tempdir().unwrap();
                let store = Store::open(&dir.path().join("fuzz.redb")).unwrap();
                // Open: random zone creations reach the checks behind registration.
                let directory = Directory::new(store, Identity::generate(), 4096)
                    .with_registration(Registration::Open);
                (dir, directory)
            };
        }
        if let Ok(request) = decode_request(&bytes) {
            DIR.with(|(_, d)| { let _ = d.handle(request, 1_800_000_000); });
        }
    }

    #[test]
    fn signed_writes_with_arbitrary_fields_are_checked_not_trusted(
        suffix in "[a-z0-9]{1,8}",
        version in 0u64..5,
        ttl in 0u64..100,
        logic in proptest::collection::vec(any::<u8>(), 0..64),
        send_blob in any::<bool>(),
        by_owner in any::<bool>(),
        delegate in any::<bool>(),
    ) {
        thread_local! {
            static ZONED: (tempfile::TempDir, Directory, Identity) = {
                let dir = tempfile::tempdir().unwrap();
                let store = Store::open(&dir.path().join("zoned.redb")).unwrap();
                let root = Identity::generate();
                let directory =
                    Directory::new(store, root, 4096).with_registration(Registration::Open);
                let owner = Identity::generate();
                let proof = owner.sign(
                    &liveobjects_directory::protocol::create_zone_message("lo://acme/"),
                );
                let answer = directory.handle(
                    liveobjects_directory::protocol::Request::CreateZone {
                        zone: "lo://acme/".into(),
                        owner: owner.public(),
                        proof,
                    },
                    NOW,
                );
                assert!(matches!(answer, liveobjects_directory::protocol::Response::Stored));
                (dir, directory, owner)
            };
        }
        ZONED.with(|(_, directory, owner)| {
            let stranger = Identity::generate();
            let signer = if by_owner { owner } else { &stranger };
            let request = if delegate {
                let d = Delegation::new(
                    &format!("lo://acme/{suffix}/"), stranger.public(), version, NOW, ttl,
                );
                liveobjects_directory::protocol::Request::Delegate(Signed::sign(&d, signer))
            } else {
                let name = format!("lo://acme/{suffix}");
                let before = directory.store().get_record(&name).unwrap()
                    .map(|r| r.open().unwrap().version);
                let r = ObjectRecord::new(&name, version, &logic, NOW, ttl);
                let request = liveobjects_directory::protocol::Request::Publish {
                    record: Signed::sign(&r, signer),
                    blob: send_blob.then(|| logic.clone()),
                };
                let answer = directory.handle(request, NOW);
                let after = directory.store().get_record(&name).unwrap()
                    .map(|r| r.open().unwrap().version);
                // Versions never go back, and only the owner's records are stored.
                prop_assert!(after >= before);
                if let liveobjects_directory::protocol::Response::Stored = answer {
                    prop_assert!(by_owner && ttl > 0 && Some(version) == after);
                }
                return Ok(());
            };
            let _ = directory.handle(request, NOW);
            Ok(())
        })?;
    }

    #[test]
    fn mutated_valid_records_never_panic_and_never_verify_as_altered(
        flip in 0usize..400, bit in 0u8..8
    ) {
        let id = Identity::generate();
        let record = ObjectRecord::new("lo://acme/rooms/lobby", 3, b"logic", 1, 2_000_000_000);
        let mut bytes = Signed::sign(&record, &id).to_bytes();
        let i = flip % bytes.len();
        bytes[i] ^= 1 << bit;
        if let Ok(signed) = Signed::<ObjectRecord>::from_bytes(&bytes) {
            // Either the signature fails, or the flip hit framing that decodes to the
            // very same signed content.
            if signed.signature_valid() {
                prop_assert_eq!(signed.open().unwrap(), record);
                prop_assert_eq!(signed.signer, id.public());
            }
        }
    }
}
