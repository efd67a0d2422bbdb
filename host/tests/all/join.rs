//! Joining by name: a directory server and mesh hosts on loopback (real QUIC), the
//! record's type and access policy enforced by the joiner and by the members.

use liveobjects_directory::client::{Client, Resolver};
use liveobjects_directory::keys::Identity;
use liveobjects_directory::record::{AccessPolicy, Grant, ObjectRecord, Reliability, Signed};
use liveobjects_directory::server::{Server, ServerConfig, unix_now};
use liveobjects_host::group::Admission;
use liveobjects_host::join::{JoinError, JoinOptions, join};
use liveobjects_host::mesh::group::MeshNode;
use liveobjects_host::runtime::{Runtime, RuntimeConfig};
use liveobjects_protocols::mesh::{Config, Liveness};
use std::time::Duration;

struct World {
    server: Server,
    root: liveobjects_directory::keys::PublicKey,
    acme: Identity,
    runtime: Runtime,
    _dir: tempfile::TempDir,
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let root = Identity::generate();
    let root_public = root.public();
    let server = Server::start(ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        db_path: dir.path().join("dir.redb"),
        root,
        max_blob_bytes: 1 << 20,
        registration: liveobjects_directory::server::Registration::Open,
        options: Default::default(),
    })
    .unwrap();
    let acme = Identity::generate();
    Client::connect(server.local_addr(), root_public)
        .await
        .unwrap()
        .create_zone("lo://acme/", &acme)
        .await
        .unwrap();
    World {
        server,
        root: root_public,
        acme,
        runtime: Runtime::new(RuntimeConfig::default()).unwrap(),
        _dir: dir,
    }
}

fn node(identity: &Identity) -> MeshNode {
    MeshNode::start(
        identity,
        "127.0.0.1:0".parse().unwrap(),
        Config {
            heartbeat: 100,
            suspect_after: 1_500,
            retry: 200,
            liveness: Liveness::PerPeer,
            ..Config::default()
        },
    )
    .unwrap()
}

impl World {
    async fn publish(&self, name: &str, seed: &MeshNode, edit: impl FnOnce(&mut ObjectRecord)) {
        let logic = std::fs::read(liveobjects_objects::CHAT).unwrap();
        let mut record = ObjectRecord::new(name, 1, &logic, unix_now(), 3600);
        record.object_type.interface = "liveobjects:chat/chat@0.1.0".into();
        record.object_type.reliability = Reliability::TotalOrder;
        record.driver.options.insert(
            "seeds".into(),
            format!("{}@{}", seed.me().key, seed.me().addr),
        );
        edit(&mut record);
        let client = Client::connect(self.server.local_addr(), self.root)
            .await
            .unwrap();
        client
            .publish(Signed::sign(&record, &self.acme), Some(logic))
            .await
            .unwrap();
    }

    async fn resolver(&self) -> Resolver {
        Resolver::new(
            Client::connect(self.server.local_addr(), self.root)
                .await
                .unwrap(),
            self.root,
            None,
        )
    }
}

fn founding() -> JoinOptions {
    JoinOptions {
        found_if_alone: true,
        ..JoinOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_join_by_name_and_share_the_object() {
    let w = world().await;
    let (alice, bob) = (Identity::generate(), Identity::generate());
    let (na, nb) = (node(&alice), node(&bob));
    w.publish("lo://acme/rooms/lobby", &na, |_| {}).await;
    let r = w.resolver().await;
    let (ga, record) = join(&na, &w.runtime, &r, "lo://acme/rooms/lobby", &founding())
        .await
        .unwrap();
    assert_eq!(record.record.version, 1);
    let options = JoinOptions {
        require: "total-order,replicated-state".parse().unwrap(),
        ..JoinOptions::default()
    };
    let (gb, _) = join(&nb, &w.runtime, &r, "lo://acme/rooms/lobby", &options)
        .await
        .unwrap();
    gb.call("post", &["\"hello from bob\""]).await.unwrap();
    ga.call("post", &["\"hi bob\""]).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let a = ga.call("count", &[]).await.unwrap();
        let b = gb.call("count", &[]).await.unwrap();
        if a == ["2"] && b == ["2"] {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "counts {a:?} {b:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ga.snapshot().await.unwrap(), gb.snapshot().await.unwrap());
    na.shutdown();
    nb.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_type_that_does_not_fit_is_refused_with_the_reason() {
    let w = world().await;
    let alice = Identity::generate();
    let na = node(&alice);
    w.publish("lo://acme/ledger", &na, |r| {
        r.object_type.reliability = Reliability::Durable
    })
    .await;
    w.publish("lo://acme/open", &na, |_| {}).await;
    let r = w.resolver().await;
    let err = join(&na, &w.runtime, &r, "lo://acme/ledger", &founding())
        .await
        .unwrap_err();
    assert!(matches!(err, JoinError::Type { .. }), "{err}");
    assert!(err.to_string().contains("needs durable"), "{err}");
    let options = JoinOptions {
        require: "encrypted,interface=liveobjects:counter/counter@0.1.0"
            .parse()
            .unwrap(),
        found_if_alone: true,
        ..JoinOptions::default()
    };
    let err = join(&na, &w.runtime, &r, "lo://acme/open", &options)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("you require"), "{err}");
    assert!(
        "fast"
            .parse::<liveobjects_host::join::Requirements>()
            .is_err()
    );
    na.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_not_on_the_list_are_refused_by_joiner_and_members_alike() {
    let w = world().await;
    let (alice, bob, mallory) = (
        Identity::generate(),
        Identity::generate(),
        Identity::generate(),
    );
    let (na, nb, nm) = (node(&alice), node(&bob), node(&mallory));
    let policy = AccessPolicy::Keys(vec![alice.public(), bob.public()]);
    w.publish("lo://acme/private", &na, |r| r.policy = policy.clone())
        .await;
    let r = w.resolver().await;
    let (ga, _) = join(&na, &w.runtime, &r, "lo://acme/private", &founding())
        .await
        .unwrap();
    ga.call("post", &["\"secret\""]).await.unwrap();
    join(
        &nb,
        &w.runtime,
        &r,
        "lo://acme/private",
        &JoinOptions::default(),
    )
    .await
    .unwrap();

    let err = join(
        &nm,
        &w.runtime,
        &r,
        "lo://acme/private",
        &JoinOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, JoinError::NotAllowed { .. }), "{err}");

    // Mallory skips her own check and asks a member directly: the member refuses, so
    // she never becomes a member and never sees the state.
    let logic = w
        .runtime
        .load_file(liveobjects_objects::CHAT.as_ref())
        .unwrap();
    let gm = nm
        .join(
            &w.runtime,
            &logic,
            "lo://acme/private",
            na.me(),
            Admission::default(),
        )
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!gm.status().await.unwrap().member);
    let refused = gm.call("history", &["10"]).await.unwrap_err();
    assert!(refused.to_string().contains("still joining"), "{refused}");
    assert_eq!(ga.status().await.unwrap().members.len(), 2);
    for n in [na, nb, nm] {
        n.shutdown();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_signed_by_the_issuer_admit_forged_and_expired_ones_do_not() {
    let w = world().await;
    let (alice, dave, eve) = (
        Identity::generate(),
        Identity::generate(),
        Identity::generate(),
    );
    let (na, nd, ne) = (node(&alice), node(&dave), node(&eve));
    let issuer = w.acme.public();
    w.publish("lo://acme/club", &na, |r| {
        r.policy = AccessPolicy::Grants(issuer)
    })
    .await;
    let grant = |member: &Identity, signer: &Identity, expires_at: u64| {
        Signed::sign(
            &Grant {
                object: "lo://acme/club".into(),
                member: member.public(),
                expires_at,
            },
            signer,
        )
    };
    let r = w.resolver().await;
    let later = unix_now() + 3600;
    let with_grant = |g| JoinOptions {
        grant: Some(g),
        found_if_alone: true,
        ..JoinOptions::default()
    };
    let (ga, _) = join(
        &na,
        &w.runtime,
        &r,
        "lo://acme/club",
        &with_grant(grant(&alice, &w.acme, later)),
    )
    .await
    .unwrap();
    let (gd, _) = join(
        &nd,
        &w.runtime,
        &r,
        "lo://acme/club",
        &with_grant(grant(&dave, &w.acme, later)),
    )
    .await
    .unwrap();
    assert!(gd.status().await.unwrap().member);

    let forged = join(
        &ne,
        &w.runtime,
        &r,
        "lo://acme/club",
        &with_grant(grant(&eve, &eve, later)),
    )
    .await
    .unwrap_err();
    assert!(forged.to_string().contains("not signed by"), "{forged}");
    let expired = join(
        &ne,
        &w.runtime,
        &r,
        "lo://acme/club",
        &with_grant(grant(&eve, &w.acme, 1)),
    )
    .await
    .unwrap_err();
    assert!(expired.to_string().contains("expired"), "{expired}");

    // Eve presents the forged grant straight to a member: refused there too.
    let logic = w
        .runtime
        .load_file(liveobjects_objects::CHAT.as_ref())
        .unwrap();
    let admission = Admission {
        policy: AccessPolicy::Open,
        grant: Some(grant(&eve, &eve, later)),
    };
    let ge = ne
        .join(&w.runtime, &logic, "lo://acme/club", na.me(), admission)
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!ge.status().await.unwrap().member);
    assert_eq!(ga.status().await.unwrap().members.len(), 2);
    for n in [na, nd, ne] {
        n.shutdown();
    }
}
