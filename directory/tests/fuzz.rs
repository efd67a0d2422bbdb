//! Property tests standing in for fuzzing: decoders of bytes from the network or the
//! database never panic, and whatever decodes is handled without panicking.

use liveobjects_directory::keys::Identity;
use liveobjects_directory::protocol::{decode_request, decode_response};
use liveobjects_directory::record::{Delegation, ObjectRecord, Signed};
use liveobjects_directory::server::Directory;
use liveobjects_directory::store::Store;
use proptest::prelude::*;

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
    fn request_bytes_are_decoded_and_handled_without_panicking(
        bytes in proptest::collection::vec(any::<u8>(), 0..600)
    ) {
        thread_local! {
            static DIR: (tempfile::TempDir, Directory) = {
                let dir = tempfile::tempdir().unwrap();
                let store = Store::open(&dir.path().join("fuzz.redb")).unwrap();
                let directory = Directory::new(store, Identity::generate(), 4096);
                (dir, directory)
            };
        }
        if let Ok(request) = decode_request(&bytes) {
            DIR.with(|(_, d)| { let _ = d.handle(request, 1_800_000_000); });
        }
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
