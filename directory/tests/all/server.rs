//! The directory over real QUIC on loopback: writes are checked, reads verify, and
//! tampering with stored bytes is caught by the client.

use liveobjects_directory::client::{Client, ClientError, ResolveError, Resolver, SeenVersions};
use liveobjects_directory::keys::Identity;
use liveobjects_directory::protocol::{ErrorCode, Request};
use liveobjects_directory::record::{Delegation, ObjectRecord, Reliability, Signed};
use liveobjects_directory::server::{Registration, Server, ServerConfig, unix_now};
use liveobjects_directory::verify::VerifyError;

struct Fixture {
    server: Server,
    root: liveobjects_directory::keys::PublicKey,
    acme: Identity,
    _dir: tempfile::TempDir,
}

async fn fixture(max_blob_bytes: usize) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = Identity::generate();
    let root_public = root.public();
    let server = Server::start(ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        db_path: dir.path().join("dir.redb"),
        root,
        max_blob_bytes,
        registration: Registration::Open,
        options: Default::default(),
    })
    .unwrap();
    let acme = Identity::generate();
    let client = Client::connect(server.local_addr(), root_public)
        .await
        .unwrap();
    client.create_zone("lo://acme/", &acme).await.unwrap();
    Fixture {
        server,
        root: root_public,
        acme,
        _dir: dir,
    }
}

fn record(name: &str, version: u64, logic: &[u8]) -> ObjectRecord {
    let mut r = ObjectRecord::new(name, version, logic, unix_now(), 3600);
    r.object_type.interface = "liveobjects:chat/chat@0.1.0".into();
    r.object_type.reliability = Reliability::TotalOrder;
    r
}

fn refused(err: ClientError) -> ErrorCode {
    match err {
        ClientError::Refused { code, .. } => code,
        other => panic!("expected a refusal, got {other}"),
    }
}

async fn resolver(f: &Fixture) -> Resolver {
    Resolver::new(
        Client::connect(f.server.local_addr(), f.root)
            .await
            .unwrap(),
        f.root,
        None,
    )
}

#[tokio::test]
async fn publish_resolve_list_fetch_and_republish() {
    let f = fixture(1 << 20).await;
    let client = Client::connect(f.server.local_addr(), f.root)
        .await
        .unwrap();
    let logic = b"component bytes v1".to_vec();
    let signed = Signed::sign(&record("lo://acme/rooms/lobby", 1, &logic), &f.acme);
    client.publish(signed, Some(logic.clone())).await.unwrap();

    let r = resolver(&f).await;
    let v = r.resolve("lo://acme/rooms/lobby").await.unwrap();
    assert_eq!(v.record.version, 1);
    assert_eq!(v.chain.deepest().1, f.acme.public());
    assert_eq!(r.fetch_logic(&v).await.unwrap(), logic);

    let top = r.list("lo://acme/").await.unwrap();
    assert_eq!(top.folders, ["lo://acme/rooms/"]);
    assert!(top.records.is_empty());
    let rooms = r.list("lo://acme/rooms/").await.unwrap();
    assert_eq!(rooms.records.len(), 1);

    // Re-publish: same logic (no blob needed), higher version.
    let signed = Signed::sign(&record("lo://acme/rooms/lobby", 2, &logic), &f.acme);
    client.publish(signed, None).await.unwrap();
    assert_eq!(
        r.resolve_fresh("lo://acme/rooms/lobby")
            .await
            .unwrap()
            .record
            .version,
        2
    );
}

#[tokio::test]
async fn bad_writes_are_refused_and_change_nothing() {
    let f = fixture(1024).await;
    let client = Client::connect(f.server.local_addr(), f.root)
        .await
        .unwrap();
    let logic = b"good logic".to_vec();
    let good = Signed::sign(&record("lo://acme/x", 5, &logic), &f.acme);
    client.publish(good, Some(logic.clone())).await.unwrap();

    // Unsigned (empty signature) and wrongly signed.
    let r = record("lo://acme/x", 6, &logic);
    let mut unsigned = Signed::sign(&r, &f.acme);
    unsigned.signature.clear();
    assert_eq!(
        refused(client.publish(unsigned, None).await.unwrap_err()),
        ErrorCode::BadSignature
    );
    let mut tampered = Signed::sign(&r, &f.acme);
    tampered.body[3] ^= 1;
    let code = refused(client.publish(tampered, None).await.unwrap_err());
    assert!(
        matches!(code, ErrorCode::BadSignature | ErrorCode::Malformed),
        "{code:?}"
    );

    // A key that does not own the zone; a name in no zone.
    let mallory = Identity::generate();
    let forged = Signed::sign(&r, &mallory);
    assert_eq!(
        refused(client.publish(forged, None).await.unwrap_err()),
        ErrorCode::NotZoneOwner
    );
    let nowhere = Signed::sign(&record("lo://nozone/x", 1, &logic), &mallory);
    assert_eq!(
        refused(client.publish(nowhere, None).await.unwrap_err()),
        ErrorCode::NoSuchZone
    );

    // Stale version, wrong blob, missing blob, oversized blob.
    let stale = Signed::sign(&record("lo://acme/x", 5, &logic), &f.acme);
    assert_eq!(
        refused(client.publish(stale, None).await.unwrap_err()),
        ErrorCode::StaleVersion
    );
    let wrong = Signed::sign(&record("lo://acme/y", 1, b"other"), &f.acme);
    assert_eq!(
        refused(
            client
                .publish(wrong.clone(), Some(logic.clone()))
                .await
                .unwrap_err()
        ),
        ErrorCode::BlobMismatch
    );
    assert_eq!(
        refused(client.publish(wrong, None).await.unwrap_err()),
        ErrorCode::BlobMissing
    );
    let big = vec![1u8; 2048];
    let big_record = Signed::sign(&record("lo://acme/big", 1, &big), &f.acme);
    assert_eq!(
        refused(client.publish(big_record, Some(big)).await.unwrap_err()),
        ErrorCode::BlobTooLarge
    );
    let huge = vec![1u8; 200 * 1024];
    let huge_record = Signed::sign(&record("lo://acme/huge", 1, &huge), &f.acme);
    assert_eq!(
        refused(client.publish(huge_record, Some(huge)).await.unwrap_err()),
        ErrorCode::TooLarge
    );

    // Someone else's top-level zone, a zone that exists, a non-top-level create.
    assert_eq!(
        refused(
            client
                .create_zone("lo://acme/", &mallory)
                .await
                .unwrap_err()
        ),
        ErrorCode::ZoneExists
    );
    assert_eq!(
        refused(
            client
                .create_zone("lo://acme/sub/", &mallory)
                .await
                .unwrap_err()
        ),
        ErrorCode::Malformed
    );

    // Malformed bytes: refused, connection and server still fine.
    let raw = client
        .request_raw(b"\xff\xff\xff\xff garbage")
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&raw).contains("does not decode"));

    // Nothing changed: the good record is still version 5 and verifies.
    let r = resolver(&f).await;
    let v = r.resolve("lo://acme/x").await.unwrap();
    assert_eq!(v.record.version, 5);
    assert_eq!(r.fetch_logic(&v).await.unwrap(), logic);
    assert!(matches!(
        r.resolve("lo://acme/y").await.unwrap_err(),
        ResolveError::Client(ClientError::Refused {
            code: ErrorCode::NotFound,
            ..
        })
    ));
}

#[tokio::test]
async fn delegated_zones_belong_to_their_new_owner_only() {
    let f = fixture(1 << 20).await;
    let client = Client::connect(f.server.local_addr(), f.root)
        .await
        .unwrap();
    let games = Identity::generate();
    let now = unix_now();
    let delegation = Delegation::new("lo://acme/games/", games.public(), 1, now, 3600);
    // Only acme's owner may delegate inside acme.
    let stranger = Identity::generate();
    assert_eq!(
        refused(
            client
                .delegate(Signed::sign(&delegation, &stranger))
                .await
                .unwrap_err()
        ),
        ErrorCode::NotZoneOwner
    );
    client
        .delegate(Signed::sign(&delegation, &f.acme))
        .await
        .unwrap();

    let logic = b"chess".to_vec();
    let by_games = Signed::sign(&record("lo://acme/games/chess", 1, &logic), &games);
    client.publish(by_games, Some(logic)).await.unwrap();
    // The parent zone's owner can no longer write inside the delegated zone.
    let by_acme = Signed::sign(&record("lo://acme/games/chess", 2, b"chess"), &f.acme);
    assert_eq!(
        refused(client.publish(by_acme, None).await.unwrap_err()),
        ErrorCode::NotZoneOwner
    );

    let r = resolver(&f).await;
    let v = r.resolve("lo://acme/games/chess").await.unwrap();
    assert_eq!(v.chain.delegations.len(), 2);
    assert_eq!(
        r.list("lo://acme/").await.unwrap().folders,
        ["lo://acme/games/"]
    );
}

#[tokio::test]
async fn a_flipped_byte_in_a_stored_record_is_caught_by_the_client() {
    let f = fixture(1 << 20).await;
    let client = Client::connect(f.server.local_addr(), f.root)
        .await
        .unwrap();
    let signed = Signed::sign(&record("lo://acme/x", 1, b"l"), &f.acme);
    client
        .publish(signed.clone(), Some(b"l".to_vec()))
        .await
        .unwrap();
    let mut bad = signed.clone();
    let last = bad.body.len() - 1;
    bad.body[last] ^= 0x01;
    let store = f.server.directory().store();
    store
        .raw_set_record("lo://acme/x", &bad.to_bytes())
        .unwrap();
    let err = resolver(&f).await.resolve("lo://acme/x").await.unwrap_err();
    assert!(
        matches!(err, ResolveError::Verify(VerifyError::BadSignature { .. })),
        "{err}"
    );
}

#[tokio::test]
async fn a_flipped_byte_in_a_stored_blob_is_caught_by_the_client() {
    let f = fixture(1 << 20).await;
    let client = Client::connect(f.server.local_addr(), f.root)
        .await
        .unwrap();
    let logic = b"the real component".to_vec();
    let rec = record("lo://acme/x", 1, &logic);
    client
        .publish(Signed::sign(&rec, &f.acme), Some(logic.clone()))
        .await
        .unwrap();
    let mut bad = logic.clone();
    bad[0] ^= 0x80;
    f.server
        .directory()
        .store()
        .raw_set_blob(&rec.logic.hash, &bad)
        .unwrap();
    let r = resolver(&f).await;
    let v = r.resolve("lo://acme/x").await.unwrap();
    let err = r.fetch_logic(&v).await.unwrap_err();
    assert!(
        matches!(err, ResolveError::Verify(VerifyError::HashMismatch { .. })),
        "{err}"
    );
}

#[tokio::test]
async fn a_record_forged_with_another_key_is_refused_by_the_client() {
    let f = fixture(1 << 20).await;
    let mallory = Identity::generate();
    let forged = Signed::sign(&record("lo://acme/x", 9, b"evil"), &mallory);
    f.server
        .directory()
        .store()
        .raw_set_record("lo://acme/x", &forged.to_bytes())
        .unwrap();
    let err = resolver(&f).await.resolve("lo://acme/x").await.unwrap_err();
    assert!(
        matches!(err, ResolveError::Verify(VerifyError::WrongSigner { .. })),
        "{err}"
    );
}

#[tokio::test]
async fn an_older_version_replayed_after_a_newer_one_is_refused_across_runs() {
    let f = fixture(1 << 20).await;
    let seen_dir = tempfile::tempdir().unwrap();
    let seen_path = seen_dir.path().join("seen.redb");
    let client = Client::connect(f.server.local_addr(), f.root)
        .await
        .unwrap();
    let v1 = Signed::sign(&record("lo://acme/x", 1, b"l"), &f.acme);
    client
        .publish(v1.clone(), Some(b"l".to_vec()))
        .await
        .unwrap();
    client
        .publish(Signed::sign(&record("lo://acme/x", 2, b"l"), &f.acme), None)
        .await
        .unwrap();
    {
        let r = Resolver::new(
            Client::connect(f.server.local_addr(), f.root)
                .await
                .unwrap(),
            f.root,
            Some(SeenVersions::open(&seen_path).unwrap()),
        );
        assert_eq!(r.resolve("lo://acme/x").await.unwrap().record.version, 2);
    }
    // The store is rolled back to version 1 (a replay of an old, validly signed record).
    f.server
        .directory()
        .store()
        .raw_set_record("lo://acme/x", &v1.to_bytes())
        .unwrap();
    let r = Resolver::new(
        Client::connect(f.server.local_addr(), f.root)
            .await
            .unwrap(),
        f.root,
        Some(SeenVersions::open(&seen_path).unwrap()),
    );
    let err = r.resolve("lo://acme/x").await.unwrap_err();
    assert!(
        matches!(
            err,
            ResolveError::Verify(VerifyError::Rollback {
                seen: 2,
                got: 1,
                ..
            })
        ),
        "{err}"
    );
}

#[tokio::test]
async fn an_expired_record_is_refused() {
    let f = fixture(1 << 20).await;
    let client = Client::connect(f.server.local_addr(), f.root)
        .await
        .unwrap();
    let rec = record("lo://acme/x", 1, b"l");
    let expires = rec.expires_at;
    client
        .publish(Signed::sign(&rec, &f.acme), Some(b"l".to_vec()))
        .await
        .unwrap();
    let r = resolver(&f).await.with_clock(move || expires + 1);
    let err = r.resolve("lo://acme/x").await.unwrap_err();
    assert!(
        matches!(
            err,
            ResolveError::Verify(VerifyError::Expired { what: "record", .. })
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_delegation_to_a_key_the_parent_did_not_authorize_is_refused() {
    let f = fixture(1 << 20).await;
    let mallory = Identity::generate();
    let now = unix_now();
    let rogue = Delegation::new("lo://acme/games/", mallory.public(), 1, now, 3600);
    let store = f.server.directory().store();
    store
        .raw_set_delegation(
            "lo://acme/games/",
            &Signed::sign(&rogue, &mallory).to_bytes(),
        )
        .unwrap();
    let rec = Signed::sign(&record("lo://acme/games/chess", 1, b"l"), &mallory);
    store
        .raw_set_record("lo://acme/games/chess", &rec.to_bytes())
        .unwrap();
    let err = resolver(&f)
        .await
        .resolve("lo://acme/games/chess")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ResolveError::Verify(VerifyError::DelegationNotAuthorized { .. })
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_client_trusting_another_root_refuses_everything() {
    let f = fixture(1 << 20).await;
    let client = Client::connect(f.server.local_addr(), f.root)
        .await
        .unwrap();
    client
        .publish(
            Signed::sign(&record("lo://acme/x", 1, b"l"), &f.acme),
            Some(b"l".to_vec()),
        )
        .await
        .unwrap();
    let other_root = Identity::generate().public();
    let r = Resolver::new(
        Client::connect(f.server.local_addr(), f.root)
            .await
            .unwrap(),
        other_root,
        None,
    );
    assert!(matches!(
        r.resolve("lo://acme/x").await.unwrap_err(),
        ResolveError::Verify(VerifyError::DelegationNotAuthorized { .. })
    ));
    // Hello tells the real root, for display; it is never trusted implicitly.
    assert_eq!(client.hello().await.unwrap().0, f.root);
    let _ = Request::Hello;
}

#[tokio::test]
async fn a_chain_cut_short_after_a_delegation_was_seen_is_refused() {
    let f = fixture(1 << 20).await;
    let client = Client::connect(f.server.local_addr(), f.root)
        .await
        .unwrap();
    let games = Identity::generate();
    let now = unix_now();
    let delegation = Delegation::new("lo://acme/games/", games.public(), 1, now, 3600);
    client
        .delegate(Signed::sign(&delegation, &f.acme))
        .await
        .unwrap();
    let logic = b"chess".to_vec();
    client
        .publish(
            Signed::sign(&record("lo://acme/games/chess", 1, &logic), &games),
            Some(logic),
        )
        .await
        .unwrap();
    let r = resolver(&f).await;
    r.resolve("lo://acme/games/chess").await.unwrap();
    // The server (or anyone on the path) drops the delegation and serves a record
    // signed by the parent zone's key: valid on its own, but the chain is cut short.
    let store = f.server.directory().store();
    store.raw_remove_delegation("lo://acme/games/").unwrap();
    let hijack = Signed::sign(&record("lo://acme/games/chess", 2, b"chess"), &f.acme);
    store
        .raw_set_record("lo://acme/games/chess", &hijack.to_bytes())
        .unwrap();
    let err = r.resolve_fresh("lo://acme/games/chess").await.unwrap_err();
    assert!(
        matches!(
            err,
            ResolveError::Verify(VerifyError::MissingDelegation { .. })
        ),
        "{err}"
    );
    // A client that never saw the delegation cannot tell; that is what the version
    // memory is for, and why `lo` keeps it on disk.
}

#[tokio::test]
async fn concurrent_creations_of_one_zone_give_it_to_exactly_one_owner() {
    let f = fixture(1 << 20).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (addr, root) = (f.server.local_addr(), f.root);
        tasks.push(tokio::spawn(async move {
            let client = Client::connect(addr, root).await.unwrap();
            client
                .create_zone("lo://contested/", &Identity::generate())
                .await
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => won += 1,
            Err(e) => assert_eq!(refused(e), ErrorCode::ZoneExists),
        }
    }
    assert_eq!(won, 1);
}

/// The client pins the server's key (the root key for the root server): a
/// server holding another key is refused during the handshake, before any
/// request is sent, with an error that says so; the right key connects.
#[tokio::test]
async fn a_client_refuses_a_server_that_does_not_hold_the_pinned_key() {
    let f = fixture(1 << 20).await;
    let impostor = Identity::generate().public();
    let err = match Client::connect(f.server.local_addr(), impostor).await {
        Ok(_) => panic!("a server without the pinned key was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(&format!(
            "presented key {}, not the pinned {}",
            f.root.short(),
            impostor.short()
        )),
        "{err}"
    );
    let client = Client::connect(f.server.local_addr(), f.root)
        .await
        .unwrap();
    client
        .create_zone("lo://pinned/", &Identity::generate())
        .await
        .unwrap();
}

/// Who may create top-level zones: closed (the default) admits only the root
/// key, `keys:` the root key and the listed keys, open any key; a refusal says
/// which key and what to do, and creates nothing.
#[tokio::test]
async fn registration_decides_who_creates_top_level_zones() {
    let dir = tempfile::tempdir().unwrap();
    let root = Identity::generate();
    let root_public = root.public();
    let invited = Identity::generate();
    let stranger = Identity::generate();
    let policy: Registration = format!("keys:{}", invited.public()).parse().unwrap();
    assert_eq!(policy, Registration::Keys(vec![invited.public()]));
    assert_eq!("closed".parse::<Registration>(), Ok(Registration::Closed));
    assert!(
        "everyone"
            .parse::<Registration>()
            .unwrap_err()
            .contains("closed, open or keys:")
    );
    assert!("keys:nonsense".parse::<Registration>().is_err());
    assert_eq!(Registration::default(), Registration::Closed);
    for (policy, stranger_may) in [
        (Registration::Closed, false),
        (policy, false),
        (Registration::Open, true),
    ] {
        let server = Server::start(ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            db_path: dir
                .path()
                .join(format!("{policy:?}.redb").replace([':', ' ', '[', ']', '(', ')'], "")),
            root: root.clone(),
            max_blob_bytes: 1 << 20,
            registration: policy.clone(),
            options: Default::default(),
        })
        .unwrap();
        let client = Client::connect(server.local_addr(), root_public)
            .await
            .unwrap();
        client
            .create_zone("lo://operator/", &root.clone())
            .await
            .unwrap();
        let invited_may = policy != Registration::Closed;
        let answer = client.create_zone("lo://invited/", &invited).await;
        assert_eq!(answer.is_ok(), invited_may, "{policy:?}: {answer:?}");
        let answer = client.create_zone("lo://stranger/", &stranger).await;
        assert_eq!(answer.is_ok(), stranger_may, "{policy:?}: {answer:?}");
        if let Err(e) = answer {
            assert!(
                e.to_string().contains(&format!(
                    "does not let key {} create top-level zones",
                    stranger.public().short()
                )),
                "{e}"
            );
            assert_eq!(refused(e), ErrorCode::RegistrationClosed);
            // Nothing was created: the zone is still free (for the operator).
            client
                .create_zone("lo://stranger/", &root.clone())
                .await
                .unwrap_or_else(|e| panic!("{policy:?}: {e}"));
        }
    }
}
