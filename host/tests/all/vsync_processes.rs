//! Real processes on loopback: five `lo node` daemons run a durable `ledger` on the
//! vsync driver. Four clients make concurrent transfers and reads through random
//! nodes while nodes are killed with SIGKILL and restarted; then every node is
//! killed at once and all five restart from their disks. Afterwards:
//! - the total is conserved on every replica;
//! - every transfer a client saw committed is applied on every replica, and every
//!   transfer it saw refused is applied nowhere;
//! - all replicas' snapshots are identical (same SHA-256);
//! - the client-visible history of transfers and reads is linearizable against
//!   a sequential ledger (a Wing-Gong search with memoisation; operations whose
//!   outcome the client never learned may take effect or not).

use crate::common;

use common::{Daemon, DirectoryProcess, Home, eventually};
use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const LEDGER: &str = "lo://bank/ledger";
const NODES: usize = 5;
const ACCOUNTS: [&str; 4] = ["alice", "bob", "carol", "dave"];
const INITIAL: u64 = 1000;
const CLIENTS: usize = 4;
const OPS_PER_CLIENT: usize = 60;
/// A client's pause between operations, so the run spans several kills.
const THINK: Duration = Duration::from_millis(100);

struct Cluster {
    home: Home,
    directory: DirectoryProcess,
    ports: Vec<u16>,
    nodes: Mutex<Vec<Option<Daemon>>>,
}

/// A UDP port free on loopback now (for an endpoint a node must keep across
/// restarts).
pub(crate) fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    fn control(&self, n: usize) -> String {
        self.home
            .path(&format!("n{n}.sock"))
            .to_str()
            .unwrap()
            .to_string()
    }

    fn start(&self, n: usize) {
        let mut cmd = self.home.lo();
        cmd.args(["node", "--listen", "127.0.0.1:0"])
            .args(["--vsync-listen", &format!("127.0.0.1:{}", self.ports[n])])
            .args(["--vsync-snapshot-every", "25"])
            .args(["--directory", &self.directory.addr])
            .args(["--root", &self.directory.root])
            .arg("--key")
            .arg(self.home.path(&format!("n{n}.key")))
            .args(["--control", &self.control(n)]);
        let daemon = Daemon::start(cmd, &["node listening on ", "control socket "]);
        self.nodes.lock().unwrap()[n] = Some(daemon);
    }

    fn join(&self, n: usize, found: bool) {
        let control = self.control(n);
        let mut args = vec!["join", LEDGER, "--no-interactive", "--control", &control];
        if found {
            args.push("--found");
        }
        self.home.ok(&args);
    }

    fn kill(&self, n: usize) {
        let daemon = self.nodes.lock().unwrap()[n].take();
        if let Some(mut d) = daemon {
            d.kill9();
        }
    }

    /// `lo call` through node `n`: Ok(stdout) or Err(stderr).
    fn call(&self, n: usize, method: &str, args: &[&str]) -> Result<String, String> {
        let control = self.control(n);
        let mut all = vec!["call", LEDGER, method];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--control", &control]);
        let out = self.home.run(&all);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// [`Self::call`], again while it fails (a group settling after restarts may
    /// be electing, or re-admitting members), for at most a minute.
    fn settled_call(&self, n: usize, method: &str, args: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.call(n, method, args) {
                Ok(out) => return out,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("node {n}: {method}: {e}; again");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("node {n}: {method} keeps failing: {e}"),
            }
        }
    }

    /// The ledger's entry in node `n`'s `lo status --json`.
    fn ledger_status(&self, n: usize) -> Option<serde_json::Value> {
        let out = self
            .home
            .run(&["status", "--json", "--control", &self.control(n)]);
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        status["objects"]
            .as_array()?
            .iter()
            .find(|o| o["name"] == LEDGER)
            .cloned()
    }

    /// The ledger's state digest at node `n`.
    fn digest(&self, n: usize) -> Option<String> {
        self.ledger_status(n)?["state_digest"]
            .as_str()
            .map(str::to_string)
    }
}

fn parse_balance(text: &str) -> Option<u64> {
    text.trim()
        .strip_prefix("some(")?
        .strip_suffix(')')?
        .parse()
        .ok()
}

/// What a client asked, and what it learned.
#[derive(Debug, Clone)]
enum Op {
    Transfer {
        id: String,
        from: usize,
        to: usize,
        amount: u64,
    },
    Read {
        account: usize,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// The transfer committed.
    Done,
    /// The ledger refused it (an abort at every replica).
    Refused,
    /// A read's answer.
    Balance(u64),
    /// The client never learned (node killed, timeout): it may or may not have
    /// taken effect.
    Unknown,
}

#[derive(Debug, Clone)]
struct Record {
    op: Op,
    invoked: Instant,
    returned: Option<Instant>,
    outcome: Outcome,
}

fn client(cluster: &Cluster, c: usize) -> Vec<Record> {
    let mut rng = 0x9E37_79B9u64.wrapping_mul(c as u64 + 1);
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut history = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    for k in 0..OPS_PER_CLIENT {
        if Instant::now() > deadline {
            break;
        }
        // A node may be down (or die during the call): the client then never
        // learns the outcome, as a real client would not.
        let node = (next() % NODES as u64) as usize;
        let op = if next() % 3 == 0 {
            Op::Read {
                account: (next() % 4) as usize,
            }
        } else {
            let from = (next() % 4) as usize;
            Op::Transfer {
                id: format!("c{c}-{k}"),
                from,
                to: (from + 1 + (next() % 3) as usize) % 4,
                amount: 1 + next() % 400,
            }
        };
        std::thread::sleep(THINK);
        let invoked = Instant::now();
        let result = match &op {
            Op::Transfer {
                id,
                from,
                to,
                amount,
            } => cluster.call(
                node,
                "transfer",
                &[
                    &format!("{id:?}"),
                    &format!("{:?}", ACCOUNTS[*from]),
                    &format!("{:?}", ACCOUNTS[*to]),
                    &amount.to_string(),
                ],
            ),
            Op::Read { account } => {
                cluster.call(node, "balance", &[&format!("{:?}", ACCOUNTS[*account])])
            }
        };
        let returned = Instant::now();
        let outcome = match (&op, result) {
            (Op::Transfer { .. }, Ok(_)) => Outcome::Done,
            (Op::Transfer { .. }, Err(e)) if e.contains("aborted at every replica") => {
                Outcome::Refused
            }
            (Op::Read { .. }, Ok(text)) => match parse_balance(&text) {
                Some(b) => Outcome::Balance(b),
                None => panic!("unexpected balance answer {text:?}"),
            },
            // The node's control socket refused the connection: the request was
            // never sent, so it cannot have taken effect.
            (_, Err(e)) if e.contains("cannot reach the node") => continue,
            (_, Err(e)) => {
                eprintln!("client {c}: node {node}: {e}");
                Outcome::Unknown
            }
        };
        history.push(Record {
            returned: (outcome != Outcome::Unknown).then_some(returned),
            op,
            invoked,
            outcome,
        });
    }
    history
}

/// The sequential ledger the history must be explained by.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Model {
    balances: [u64; 4],
}

impl Model {
    /// Apply `op`; `None` if its recorded outcome contradicts the model.
    fn step(&self, op: &Op, outcome: &Outcome) -> Option<Model> {
        match op {
            Op::Read { account } => match outcome {
                Outcome::Balance(b) if *b == self.balances[*account] => Some(self.clone()),
                _ => None,
            },
            Op::Transfer {
                from, to, amount, ..
            } => {
                let ok = self.balances[*from] >= *amount;
                match outcome {
                    Outcome::Done if ok => {
                        let mut next = self.clone();
                        next.balances[*from] -= amount;
                        next.balances[*to] += amount;
                        Some(next)
                    }
                    Outcome::Refused if !ok => Some(self.clone()),
                    _ => None,
                }
            }
        }
    }
}

/// Words of the checker's bitset of linearized operations.
const WORDS: usize = 4;
type Bits = [u64; WORDS];

fn has(bits: &Bits, i: usize) -> bool {
    bits[i / 64] & (1 << (i % 64)) != 0
}

fn with(mut bits: Bits, i: usize) -> Bits {
    bits[i / 64] |= 1 << (i % 64);
    bits
}

/// Wing and Gong's search: linearize, one at a time, an operation that no
/// unlinearized operation finished before; memoise (linearized set, model).
/// Unknown outcomes may take effect (as done, or refused) at any point after
/// their invocation, or never.
fn linearizable(history: &[Record]) -> Result<(), String> {
    let n = history.len();
    assert!(
        n <= 64 * WORDS,
        "the checker's bitset holds {} operations",
        64 * WORDS
    );
    let mut seen: HashSet<(Bits, Model)> = HashSet::new();
    let mut required: Bits = [0; WORDS];
    for (i, r) in history.iter().enumerate() {
        if r.outcome != Outcome::Unknown {
            required = with(required, i);
        }
    }
    let start = Model {
        balances: [INITIAL; 4],
    };
    let mut stack = vec![([0u64; WORDS], start)];
    let mut explored = 0u64;
    while let Some((done, model)) = stack.pop() {
        if (0..WORDS).all(|w| done[w] & required[w] == required[w]) {
            return Ok(());
        }
        if !seen.insert((done, model.clone())) {
            continue;
        }
        explored += 1;
        if explored > 5_000_000 {
            return Err("search too large".into());
        }
        // The earliest return among operations not yet linearized bounds which
        // ones may go next.
        let horizon = history
            .iter()
            .enumerate()
            .filter(|(i, _)| !has(&done, *i))
            .filter_map(|(_, r)| r.returned)
            .min();
        for (i, r) in history.iter().enumerate() {
            if has(&done, i) || horizon.is_some_and(|h| r.invoked > h) {
                continue;
            }
            let outcomes: Vec<Outcome> = match (&r.op, &r.outcome) {
                (Op::Transfer { .. }, Outcome::Unknown) => vec![Outcome::Done, Outcome::Refused],
                // A read nobody saw the answer of constrains nothing.
                (Op::Read { .. }, Outcome::Unknown) => continue,
                (_, o) => vec![o.clone()],
            };
            for o in outcomes {
                if let Some(next) = model.step(&r.op, &o) {
                    stack.push((with(done, i), next));
                }
            }
        }
    }
    Err(format!(
        "no sequential order of the {n} operations explains what the clients saw"
    ))
}

#[test]
fn durable_ledger_survives_kill_9_of_every_node_with_a_linearizable_history() {
    let home = Home::new();
    home.keygen("root.key");
    home.keygen("bank.key");
    let keys: Vec<String> = (0..NODES)
        .map(|n| home.keygen_named(&format!("n{n}.key"), &format!("node{n}")))
        .collect();
    let directory = DirectoryProcess::start(&home, &home.path("root.key"), &home.path("dir.redb"));
    let bank_key = home.path("bank.key");
    let bank = bank_key.to_str().unwrap();
    home.ok_owned(directory.args(&["zone", "create", "lo://bank/", "--key", bank]));
    let ports: Vec<u16> = (0..NODES).map(|_| free_udp_port()).collect();
    let seeds: Vec<String> = (0..NODES)
        .map(|n| format!("{}@127.0.0.1:{}", keys[n], ports[n]))
        .collect();
    home.ok_owned(directory.args(&[
        "publish",
        liveobjects_objects::LEDGER,
        "--name",
        LEDGER,
        "--driver",
        "vsync",
        "--reliability",
        "durable",
        "--driver-opt",
        &format!("seeds={}", seeds.join(",")),
        "--key",
        bank,
    ]));
    let cluster = Cluster {
        home,
        directory,
        ports,
        nodes: Mutex::new((0..NODES).map(|_| None).collect()),
    };
    for n in 0..NODES {
        cluster.start(n);
    }
    cluster.join(0, true);
    for n in 1..NODES {
        cluster.join(n, false);
    }
    for account in ACCOUNTS {
        cluster
            .call(0, "open", &[&format!("{account:?}"), &INITIAL.to_string()])
            .unwrap();
    }

    // Clients run while a killer takes one node at a time down with SIGKILL and
    // brings it back.
    let finished = AtomicUsize::new(0);
    let kills = AtomicUsize::new(0);
    let history: Vec<Record> = std::thread::scope(|s| {
        let killer = s.spawn(|| {
            let mut victim = 1;
            let deadline = Instant::now() + Duration::from_secs(240);
            while finished.load(Ordering::SeqCst) < CLIENTS && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(500));
                victim = (victim * 3 + 1) % NODES;
                cluster.kill(victim);
                kills.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(700));
                cluster.start(victim);
                cluster.join(victim, false);
            }
        });
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let (cluster, finished) = (&cluster, &finished);
                s.spawn(move || {
                    let records = client(cluster, c);
                    finished.fetch_add(1, Ordering::SeqCst);
                    records
                })
            })
            .collect();
        let mut all = Vec::new();
        for c in clients {
            all.extend(c.join().unwrap());
        }
        killer.join().unwrap();
        all
    });

    // Every node at once, then all back from their disks.
    for n in 0..NODES {
        cluster.kill(n);
    }
    for n in 0..NODES {
        cluster.start(n);
    }
    for n in 0..NODES {
        cluster.join(n, false);
    }
    let committed: Vec<&str> = history
        .iter()
        .filter_map(|r| match (&r.op, &r.outcome) {
            (Op::Transfer { id, .. }, Outcome::Done) => Some(id.as_str()),
            _ => None,
        })
        .collect();
    let refused: Vec<&str> = history
        .iter()
        .filter_map(|r| match (&r.op, &r.outcome) {
            (Op::Transfer { id, .. }, Outcome::Refused) => Some(id.as_str()),
            _ => None,
        })
        .collect();
    let kills = kills.load(Ordering::SeqCst);
    println!(
        "{kills} nodes killed with SIGKILL during the run; \
         {} operations: {} transfers committed, {} refused, {} unknown",
        history.len(),
        committed.len(),
        refused.len(),
        history
            .iter()
            .filter(|r| r.outcome == Outcome::Unknown)
            .count()
    );
    assert!(
        committed.len() >= 10,
        "too few transfers committed to mean anything"
    );
    assert!(kills >= 3, "only {kills} nodes were killed during the run");
    for n in 0..NODES {
        assert_eq!(
            cluster.settled_call(n, "total", &[]),
            (INITIAL * 4).to_string(),
            "node {n}: the total is not conserved"
        );
        for id in &committed {
            assert_eq!(
                cluster.settled_call(n, "applied", &[&format!("{id:?}")]),
                "true",
                "node {n} lost committed transfer {id}"
            );
        }
        for id in &refused {
            assert_eq!(
                cluster.settled_call(n, "applied", &[&format!("{id:?}")]),
                "false",
                "node {n} applied refused transfer {id}"
            );
        }
    }
    // Identical snapshots once every replica applied the same log.
    eventually(60, "all replicas' snapshots are identical", || {
        let digests: Vec<Option<String>> = (0..NODES).map(|n| cluster.digest(n)).collect();
        digests.iter().all(|d| d.is_some() && *d == digests[0])
    });
    // Members are shown by their names, kept with the membership on disk.
    eventually(60, "every member named at every node", || {
        (0..NODES).all(|n| {
            let members = cluster
                .ledger_status(n)
                .map(|s| s["members"].to_string())
                .unwrap_or_default();
            (0..NODES).all(|m| members.contains(&format!("node{m} (")))
        })
    });
    if let Err(e) = linearizable(&history) {
        for r in &history {
            eprintln!("{r:?}");
        }
        panic!("{e}");
    }
}

/// The checker itself: it must refuse what no sequential ledger explains, and
/// accept overlapping operations in either order.
#[test]
fn the_history_checker_refuses_a_stale_read_and_accepts_overlaps() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let transfer = |id: &str, invoked, returned, outcome| Record {
        op: Op::Transfer {
            id: id.into(),
            from: 0,
            to: 1,
            amount: 600,
        },
        invoked,
        returned,
        outcome,
    };
    let read = |invoked, returned, balance| Record {
        op: Op::Read { account: 0 },
        invoked,
        returned: Some(returned),
        outcome: Outcome::Balance(balance),
    };
    // A read that starts after a committed transfer returned must see it.
    let stale = [
        transfer("a", at(0), Some(at(10)), Outcome::Done),
        read(at(20), at(30), INITIAL),
    ];
    assert!(linearizable(&stale).is_err());
    // Overlapping, the read may come first.
    let overlapping = [
        transfer("a", at(0), Some(at(10)), Outcome::Done),
        read(at(5), at(30), INITIAL),
    ];
    assert!(linearizable(&overlapping).is_ok());
    // Two transfers of 600 from 1,000: one must be refused, in some order.
    let both_done = [
        transfer("a", at(0), Some(at(10)), Outcome::Done),
        transfer("b", at(20), Some(at(30)), Outcome::Done),
    ];
    assert!(linearizable(&both_done).is_err());
    // A transfer whose outcome is unknown may explain a later read, or not.
    let unknown = [
        transfer("a", at(0), None, Outcome::Unknown),
        read(at(20), at(30), INITIAL - 600),
        read(at(40), at(50), INITIAL - 600),
    ];
    assert!(linearizable(&unknown).is_ok());
    let flip_flop = [
        transfer("a", at(0), None, Outcome::Unknown),
        read(at(20), at(30), INITIAL - 600),
        read(at(40), at(50), INITIAL),
    ];
    assert!(linearizable(&flip_flop).is_err());
}
