//! Mirrors, freshness statements and failover over real QUIC on loopback, in one
//! process: a primary and mirrors with their own databases and keys.

use liveobjects_directory::client::{
    Client, ClientError, ResolveError, Resolver, ServerAddr, check_freshness,
};
use liveobjects_directory::fresh::FreshnessError;
use liveobjects_directory::keys::{Identity, PublicKey};
use liveobjects_directory::protocol::{ErrorCode, Request, Response};
use liveobjects_directory::record::{ObjectRecord, Reliability, Signed};
use liveobjects_directory::server::{
    MirrorOf, Registration, ServeOptions, Server, ServerConfig, unix_now,
};
use std::path::Path;
use std::time::{Duration, Instant};

fn record(name: &str, version: u64, logic: &[u8]) -> ObjectRecord {
    let mut r = ObjectRecord::new(name, version, logic, unix_now(), 3600);
    r.object_type.interface = "liveobjects:chat/chat@0.1.0".into();
    r.object_type.reliability = Reliability::TotalOrder;
    r
}

fn primary(db: &Path, root: &Identity, freshness_secs: u64) -> Server {
    Server::start(ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        db_path: db.to_path_buf(),
        root: root.clone(),
        max_blob_bytes: 1 << 20,
        registration: Registration::Open,
        options: ServeOptions {
            freshness_secs,
            ..Default::default()
        },
    })
    .unwrap()
}

/// A primary (statements valid for `freshness_secs`) in a temporary directory,
/// with the zone lo://acme/ owned by `acme` and a client of it.
struct Acme {
    dir: tempfile::TempDir,
    root: Identity,
    primary: Server,
    acme: Identity,
    writer: Client,
}

async fn acme_on_a_primary(freshness_secs: u64) -> Acme {
    let dir = tempfile::tempdir().unwrap();
    let root = Identity::generate();
    let primary = primary(&dir.path().join("primary.redb"), &root, freshness_secs);
    let acme = Identity::generate();
    let writer = Client::connect(primary.local_addr(), root.public())
        .await
        .unwrap();
    writer.create_zone("lo://acme/", &acme).await.unwrap();
    Acme {
        dir,
        root,
        primary,
        acme,
        writer,
    }
}

fn mirror(db: &Path, primary: &Server, root: PublicKey) -> (Server, ServerAddr) {
    let key = Identity::generate();
    let public = key.public();
    let server = Server::start(ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        db_path: db.to_path_buf(),
        root: key,
        max_blob_bytes: 1 << 20,
        registration: Registration::Closed,
        options: ServeOptions {
            mirror_of: Some(MirrorOf {
                primary: primary.local_addr(),
                root,
                refresh: Duration::from_millis(100),
            }),
            ..Default::default()
        },
    })
    .unwrap();
    let addr = ServerAddr {
        addr: server.local_addr(),
        key: public,
    };
    (server, addr)
}

async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn version_through(server: ServerAddr, root: PublicKey, name: &str) -> Option<u64> {
    let client = Client::connect_any(&[server]).await.ok()?;
    let resolver = Resolver::new(client, root, None);
    resolver
        .resolve_fresh(name)
        .await
        .ok()
        .map(|r| r.record.version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_pull_incrementally_serve_verified_answers_and_refuse_writes() {
    let Acme {
        dir,
        root,
        primary,
        acme,
        writer,
    } = acme_on_a_primary(300).await;
    for i in 0..30 {
        let name = format!("lo://acme/rooms/r{i}");
        writer
            .publish(
                Signed::sign(&record(&name, 1, b"chat"), &acme),
                Some(b"chat".to_vec()),
            )
            .await
            .unwrap();
    }
    // Enough more that the first pull takes several transfers (2,000 entries each).
    let bulk: Vec<_> = (0..2_500)
        .map(|i| Signed::sign(&record(&format!("lo://acme/bulk/b{i}"), 1, b"chat"), &acme))
        .collect();
    primary.directory().store().import_records(&bulk).unwrap();
    let (m1, m1_addr) = mirror(&dir.path().join("m1.redb"), &primary, root.public());
    eventually("the mirror's first pull", || async {
        version_through(m1_addr, root.public(), "lo://acme/rooms/r29")
            .await
            .is_some()
    })
    .await;
    assert_eq!(
        m1.directory().store().serial().unwrap(),
        primary.directory().store().serial().unwrap()
    );
    assert_eq!(
        version_through(m1_addr, root.public(), "lo://acme/bulk/b2499").await,
        Some(1)
    );
    // Through the mirror: a verified listing and the logic, checked by hash.
    let resolver = Resolver::new(
        Client::connect_any(&[m1_addr]).await.unwrap(),
        root.public(),
        None,
    );
    let listing = resolver.list("lo://acme/rooms/").await.unwrap();
    assert_eq!(listing.records.len(), 30);
    let record = resolver.resolve("lo://acme/rooms/r3").await.unwrap();
    assert_eq!(resolver.fetch_logic(&record).await.unwrap(), b"chat");

    // A new version reaches the mirror; a transfer from the serial it had carries
    // only the entry that changed.
    let before = m1.directory().store().serial().unwrap();
    writer
        .publish(
            Signed::sign(&record_v("lo://acme/rooms/r3", 2), &acme),
            None,
        )
        .await
        .unwrap();
    eventually("the new version on the mirror", || async {
        version_through(m1_addr, root.public(), "lo://acme/rooms/r3").await == Some(2)
    })
    .await;
    match writer
        .request(&Request::Transfer { since: before })
        .await
        .unwrap()
    {
        Response::Transfer {
            changes,
            complete,
            statement,
            ..
        } => {
            assert_eq!(changes.len(), 1, "{changes:?}");
            assert!(complete && statement.is_some());
        }
        other => panic!("{other:?}"),
    }

    // Writes to a mirror are refused, naming the primary.
    let to_mirror = Client::connect_any(&[m1_addr]).await.unwrap();
    let err = to_mirror
        .publish(
            Signed::sign(&record_v("lo://acme/rooms/r4", 2), &acme),
            None,
        )
        .await
        .unwrap_err();
    match err {
        ClientError::Refused { code, message } => {
            assert_eq!(code, ErrorCode::ReadOnly);
            assert!(
                message.contains(&primary.local_addr().to_string()),
                "{message}"
            );
        }
        other => panic!("expected a refusal, got {other}"),
    }
}

fn record_v(name: &str, version: u64) -> ObjectRecord {
    record(name, version, b"chat")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_fails_over_to_a_mirror_and_refuses_it_once_its_statement_expires() {
    // Statements valid for 6 s, re-signed when 3 s are left.
    let Acme {
        dir,
        root,
        primary,
        acme,
        writer,
    } = acme_on_a_primary(6).await;
    writer
        .publish(
            Signed::sign(&record_v("lo://acme/x", 1), &acme),
            Some(b"chat".to_vec()),
        )
        .await
        .unwrap();
    let (_m1, m1_addr) = mirror(&dir.path().join("m1.redb"), &primary, root.public());
    eventually("the mirror's first pull", || async {
        version_through(m1_addr, root.public(), "lo://acme/x")
            .await
            .is_some()
    })
    .await;
    let both = [
        ServerAddr {
            addr: primary.local_addr(),
            key: root.public(),
        },
        m1_addr,
    ];
    let resolver = Resolver::new(
        Client::connect_any(&both).await.unwrap(),
        root.public(),
        None,
    );
    assert_eq!(
        resolver
            .resolve_fresh("lo://acme/x")
            .await
            .unwrap()
            .record
            .version,
        1
    );
    assert_eq!(resolver.client().current().await, Some(both[0]));
    // Longer than a statement lasts, with the primary up: the mirror keeps passing
    // on fresh statements.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(
        version_through(m1_addr, root.public(), "lo://acme/x").await,
        Some(1)
    );

    primary.shutdown().await;
    let started = Instant::now();
    assert_eq!(
        resolver
            .resolve_fresh("lo://acme/x")
            .await
            .unwrap()
            .record
            .version,
        1
    );
    assert_eq!(resolver.client().current().await, Some(m1_addr));
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "{:?}",
        started.elapsed()
    );

    // Cut off from its primary, the mirror's last statement expires.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let err = resolver.resolve_fresh("lo://acme/x").await.unwrap_err();
    assert!(
        matches!(err, ResolveError::Stale(FreshnessError::Expired { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("expired"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_that_serves_an_old_or_forged_record_is_refused() {
    let Acme {
        dir,
        root,
        primary,
        acme,
        writer,
    } = acme_on_a_primary(300).await;
    let v1 = Signed::sign(&record_v("lo://acme/x", 1), &acme);
    writer
        .publish(v1.clone(), Some(b"chat".to_vec()))
        .await
        .unwrap();
    writer
        .publish(Signed::sign(&record_v("lo://acme/x", 2), &acme), None)
        .await
        .unwrap();
    let (m1, m1_addr) = mirror(&dir.path().join("m1.redb"), &primary, root.public());
    eventually("version 2 on the mirror", || async {
        version_through(m1_addr, root.public(), "lo://acme/x").await == Some(2)
    })
    .await;
    // The mirror replays version 1, validly signed by the zone's owner: a client
    // that never saw version 2 still refuses it, because the primary's statement
    // does not vouch for it.
    m1.directory()
        .store()
        .raw_set_record("lo://acme/x", &v1.to_bytes())
        .unwrap();
    let fresh_client = Resolver::new(
        Client::connect_any(&[m1_addr]).await.unwrap(),
        root.public(),
        None,
    );
    let err = fresh_client.resolve_fresh("lo://acme/x").await.unwrap_err();
    assert!(
        matches!(err, ResolveError::Stale(FreshnessError::NotIncluded { .. })),
        "{err}"
    );
    // A record forged with another key is refused as well.
    let forged = Signed::sign(&record_v("lo://acme/x", 9), &Identity::generate());
    m1.directory()
        .store()
        .raw_set_record("lo://acme/x", &forged.to_bytes())
        .unwrap();
    let err = fresh_client.resolve_fresh("lo://acme/x").await.unwrap_err();
    assert!(matches!(err, ResolveError::Verify(_)), "{err}");

    // The proofs bind each entry: the primary's own answer, with one record swapped
    // for the old one, does not check out.
    let (record, chain, vouched) = writer.resolve_vouched("lo://acme/x").await.unwrap();
    assert!(
        check_freshness(
            vouched.as_deref(),
            root.public(),
            unix_now(),
            &chain,
            &[record]
        )
        .is_ok()
    );
    assert!(matches!(
        check_freshness(vouched.as_deref(), root.public(), unix_now(), &chain, &[v1]),
        Err(FreshnessError::NotIncluded { .. })
    ));
    assert_eq!(
        check_freshness(None, root.public(), unix_now(), &chain, &[]),
        Err(FreshnessError::Missing)
    );
    // One proof short: the last entry is not vouched for.
    let (record, ..) = writer.resolve_vouched("lo://acme/x").await.unwrap();
    let mut short = *vouched.clone().unwrap();
    short.proofs.pop();
    assert!(matches!(
        check_freshness(
            Some(&short),
            root.public(),
            unix_now(),
            &chain,
            std::slice::from_ref(&record)
        ),
        Err(FreshnessError::NotIncluded { .. })
    ));
    // The statement must be the root's.
    let mut foreign = *vouched.unwrap();
    foreign.statement = Signed::sign(&foreign.statement.open().unwrap(), &acme);
    assert!(matches!(
        check_freshness(Some(&foreign), root.public(), unix_now(), &chain, &[record]),
        Err(FreshnessError::WrongSigner { .. })
    ));
}

#[tokio::test]
async fn a_statement_much_older_than_one_seen_is_refused() {
    let seen = liveobjects_directory::client::SeenVersions::in_memory().unwrap();
    let root = Identity::generate().public();
    let other_root = Identity::generate().public();
    let at = |serial, issued_at| liveobjects_directory::fresh::Freshness {
        serial,
        root: [0; 32],
        entries: 0,
        issued_at,
        expires_at: issued_at + 300,
    };
    seen.check_statement(&root, &at(10, 1_000)).unwrap();
    // Older contents from a mirror a little behind: fine.
    seen.check_statement(&root, &at(9, 1_000 - 30)).unwrap();
    // The same contents signed long before (a mirror that has not pulled the
    // re-signed statement yet): fine.
    seen.check_statement(&root, &at(10, 1_000 - 200)).unwrap();
    // Older contents, signed well before: a replay.
    let err = seen.check_statement(&root, &at(9, 1_000 - 61)).unwrap_err();
    assert!(err.to_string().contains("well before one"), "{err}");
    // Another directory's statements are judged on their own.
    seen.check_statement(&other_root, &at(1, 500)).unwrap();
    seen.check_statement(&root, &at(11, 2_000)).unwrap();
    assert!(seen.check_statement(&root, &at(10, 1_000)).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_restored_from_an_old_backup_neither_signs_nor_writes_until_told() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("primary.redb");
    let root = Identity::generate();
    let acme = Identity::generate();
    let server = primary(&db, &root, 2);
    let writer = Client::connect(server.local_addr(), root.public())
        .await
        .unwrap();
    writer.create_zone("lo://acme/", &acme).await.unwrap();
    writer
        .publish(
            Signed::sign(&record_v("lo://acme/x", 1), &acme),
            Some(b"chat".to_vec()),
        )
        .await
        .unwrap();
    // Signs a statement for version 1.
    assert_eq!(
        version_through(
            ServerAddr {
                addr: server.local_addr(),
                key: root.public()
            },
            root.public(),
            "lo://acme/x"
        )
        .await,
        Some(1)
    );
    writer.close().await;
    server.shutdown().await;
    wait_closed(&db).await;
    std::fs::copy(&db, dir.path().join("backup.redb")).unwrap();

    let server = reopen(&db, &root, false).await;
    let addr = ServerAddr {
        addr: server.local_addr(),
        key: root.public(),
    };
    let writer = Client::connect_any(&[addr]).await.unwrap();
    writer
        .publish(Signed::sign(&record_v("lo://acme/x", 2), &acme), None)
        .await
        .unwrap();
    assert_eq!(
        version_through(addr, root.public(), "lo://acme/x").await,
        Some(2)
    );
    writer.close().await;
    server.shutdown().await;
    wait_closed(&db).await;

    // The operator restores the old file; the serial file beside it remains.
    std::fs::copy(dir.path().join("backup.redb"), &db).unwrap();
    let server = reopen(&db, &root, false).await;
    let reason = server.directory().restored().expect("noticed the restore");
    assert!(reason.contains("restored from an"), "{reason}");
    let addr = ServerAddr {
        addr: server.local_addr(),
        key: root.public(),
    };
    let writer = Client::connect_any(&[addr]).await.unwrap();
    let err = writer
        .publish(Signed::sign(&record_v("lo://acme/y", 1), &acme), None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Refused {
                code: ErrorCode::Restored,
                ..
            }
        ),
        "{err}"
    );
    // A client that never saw version 2 gets version 1 only while the old statement
    // lasts; then it is refused.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let fresh_client = Resolver::new(
        Client::connect_any(&[addr]).await.unwrap(),
        root.public(),
        None,
    );
    let err = fresh_client.resolve_fresh("lo://acme/x").await.unwrap_err();
    assert!(
        matches!(err, ResolveError::Stale(FreshnessError::Expired { .. })),
        "{err}"
    );
    writer.close().await;
    server.shutdown().await;

    // Told to accept it, the server signs it again under serials above the old ones.
    let server = reopen(&db, &root, true).await;
    assert!(server.directory().restored().is_none());
    let addr = ServerAddr {
        addr: server.local_addr(),
        key: root.public(),
    };
    assert_eq!(
        version_through(addr, root.public(), "lo://acme/x").await,
        Some(1)
    );
    assert!(server.directory().store().serial().unwrap() > 3);
}

/// Wait until the last server on `db` let go of it (its connection tasks end
/// after the endpoint closes): copying over a file redb still holds open would
/// be overwritten when it closes.
async fn wait_closed(db: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match liveobjects_directory::store::Store::open(db) {
            Ok(store) => {
                drop(store);
                return;
            }
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "{} stays open: {e}",
                    db.display()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Start a primary on `db` again (the previous server's last tasks may still hold
/// the file for a moment).
async fn reopen(db: &Path, root: &Identity, accept_restored: bool) -> Server {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let started = Server::start(ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            db_path: db.to_path_buf(),
            root: root.clone(),
            max_blob_bytes: 1 << 20,
            registration: Registration::Open,
            options: ServeOptions {
                freshness_secs: 2,
                accept_restored,
                mirror_of: None,
            },
        });
        match started {
            Ok(server) => return server,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_rollover_the_new_key_repairs_what_the_old_one_signed() {
    use liveobjects_directory::record::Delegation;
    let dir = tempfile::tempdir().unwrap();
    let root = Identity::generate();
    let primary = primary(&dir.path().join("primary.redb"), &root, 300);
    let (a, b, games) = (
        Identity::generate(),
        Identity::generate(),
        Identity::generate(),
    );
    let client = Client::connect(primary.local_addr(), root.public())
        .await
        .unwrap();
    client.create_zone("lo://acme/", &a).await.unwrap();
    let now = unix_now();
    client
        .delegate(Signed::sign(
            &Delegation::new("lo://acme/games/", games.public(), 1, now, 3600),
            &a,
        ))
        .await
        .unwrap();
    // A hands the zone to B with 2 s of grace, then (still in grace) publishes a
    // record at a huge version, as whoever stole A's key might.
    client
        .rollover_zone(&root.public(), "lo://acme/", 1, b.public(), 2, &a)
        .await
        .unwrap();
    client
        .publish(
            Signed::sign(&record_v("lo://acme/blocked", u64::MAX - 1), &a),
            Some(b"chat".to_vec()),
        )
        .await
        .unwrap();
    // A proof made for another directory (another root) is refused.
    let replayed = client
        .rollover_zone(
            &Identity::generate().public(),
            "lo://acme/",
            2,
            a.public(),
            0,
            &b,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            replayed,
            ClientError::Refused {
                code: ErrorCode::NotZoneOwner,
                ..
            }
        ),
        "{replayed}"
    );
    // Revoking a key that is not in grace is refused, not a silent no-op.
    let err = client
        .revoke_key(&root.public(), "lo://acme/", 2, games.public(), &b)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Refused { .. }), "{err}");
    tokio::time::sleep(Duration::from_millis(2_500)).await;

    // A's record no longer holds its version: B publishes over it at version 2.
    client
        .publish(Signed::sign(&record_v("lo://acme/blocked", 2), &b), None)
        .await
        .unwrap();
    // The games zone, delegated by A, no longer verifies; B re-signs it.
    client
        .publish(
            Signed::sign(&record_v("lo://acme/games/chess", 1), &games),
            None,
        )
        .await
        .unwrap_err();
    client
        .delegate(Signed::sign(
            &Delegation::new("lo://acme/games/", games.public(), 2, unix_now(), 3600),
            &b,
        ))
        .await
        .unwrap();
    client
        .publish(
            Signed::sign(&record_v("lo://acme/games/chess", 1), &games),
            None,
        )
        .await
        .unwrap();
    let addr = ServerAddr {
        addr: primary.local_addr(),
        key: root.public(),
    };
    assert_eq!(
        version_through(addr, root.public(), "lo://acme/blocked").await,
        Some(2)
    );
    assert_eq!(
        version_through(addr, root.public(), "lo://acme/games/chess").await,
        Some(1)
    );
}
