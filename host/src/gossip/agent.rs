//! A gossip node running in its own tokio task, driven through a handle: how the
//! node daemon (`lo node --gossip ADDR`) uses gossip for discovery and runs
//! aggregates. The task never calls object code: aggregates it *hosts* for others
//! ([`GossipAgent::host`]) are computed elsewhere (the node's executor), fed the
//! shares and epoch ends this task sees, and publish back the state to gossip.

use super::HostId;
use super::core::{EpochSeeds, Estimate, Event, GossipStats, Share};
use super::net::GossipSocket;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

/// Work for an aggregate hosted elsewhere.
#[derive(Debug)]
pub enum Feed {
    /// A peer's state for it.
    Share(Share),
    /// Its epoch's deadline passed.
    EpochDue,
}

/// What an aggregate hosted elsewhere gossips: its current epoch and state, and
/// when that epoch ends.
#[derive(Debug, Clone, Default)]
pub struct Published {
    /// The epoch.
    pub epoch: u64,
    /// This host's partial aggregate for it (`None`: nothing to send).
    pub state: Option<Vec<u8>>,
    /// When the epoch ends (the agent then feeds [`Feed::EpochDue`]).
    pub deadline: Option<std::time::Instant>,
}

/// Where whatever computes a hosted aggregate publishes its state, from any
/// thread; the agent picks it up at once.
#[derive(Debug)]
pub struct Publication {
    latest: Mutex<Published>,
    changed: AtomicBool,
    wake: Arc<Notify>,
}

impl Publication {
    /// Publish `published` (replacing what was there).
    pub fn publish(&self, published: Published) {
        *self.latest.lock().unwrap_or_else(|p| p.into_inner()) = published;
        self.changed.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    fn take(&self) -> Option<Published> {
        self.changed.swap(false, Ordering::AcqRel).then(|| {
            self.latest
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        })
    }
}

/// What a hosted aggregate needs to compute its states as this host would.
#[derive(Debug, Clone)]
pub struct Hosting {
    /// Where to publish its state.
    pub publication: Arc<Publication>,
    /// The seeds of this host's contributions.
    pub seeds: EpochSeeds,
    /// How long an epoch lasts.
    pub epoch_length: Duration,
}

type FeedFn = Box<dyn Fn(Feed) + Send>;

struct Remote {
    feed: FeedFn,
    publication: Arc<Publication>,
    deadline: Option<std::time::Instant>,
    /// The deadline an [`Feed::EpochDue`] was sent for (not sent again).
    due_sent: Option<std::time::Instant>,
}

/// What the agent reports about itself.
#[derive(Debug, Clone)]
pub struct AgentStatus {
    /// Its UDP address.
    pub addr: SocketAddr,
    /// Hosts SWIM considers alive (not counting this one).
    pub members: usize,
    /// Entries of its partial view.
    pub view: usize,
    /// Last finished value of each aggregate it runs.
    pub estimates: BTreeMap<String, Estimate>,
    /// Counters.
    pub stats: GossipStats,
    /// Some of the live hosts (at most 64).
    pub hosts: Vec<HostId>,
}

enum Command {
    SetCard(Vec<u8>),
    Cards {
        limit: usize,
        wait: Duration,
        reply: oneshot::Sender<Vec<(HostId, Vec<u8>)>>,
    },
    Status(oneshot::Sender<AgentStatus>),
    Host {
        object: String,
        feed: FeedFn,
        reply: oneshot::Sender<Hosting>,
    },
    Unhost(String),
}

/// A handle to a gossip node running in a task. Dropping every handle stops it.
#[derive(Clone)]
pub struct GossipAgent {
    commands: mpsc::Sender<Command>,
}

/// Cards being collected for one [`GossipAgent::cards`] call.
struct Collector {
    deadline: Instant,
    /// The hosts asked: answers from anyone else are ignored.
    asked: std::collections::HashSet<SocketAddr>,
    cards: BTreeMap<SocketAddr, (HostId, Vec<u8>)>,
    reply: oneshot::Sender<Vec<(HostId, Vec<u8>)>>,
}

/// Most concurrent card collections; more wait for a slot (commands queue).
const MAX_COLLECTORS: usize = 16;

enum Wake {
    Stepped(std::io::Result<()>),
    Command(Option<Command>),
    CollectorDue,
    Published,
    EpochDue,
}

impl GossipAgent {
    /// Run `shell` in a task of the current tokio runtime; `objects` are the
    /// aggregates whose estimates [`Self::status`] reports.
    pub fn spawn(mut shell: GossipSocket, objects: Vec<String>) -> Self {
        let (commands, mut receiver) = mpsc::channel::<Command>(64);
        let published = Arc::new(Notify::new());
        tokio::spawn(async move {
            let mut collectors: Vec<Collector> = Vec::new();
            let mut remotes: BTreeMap<String, Remote> = BTreeMap::new();
            loop {
                let next_due = collectors.iter().map(|c| c.deadline).min();
                let next_epoch = remotes
                    .values()
                    .filter(|r| r.due_sent != r.deadline)
                    .filter_map(|r| r.deadline)
                    .min()
                    .map(Instant::from_std);
                let wake = tokio::select! {
                    result = shell.step() => Wake::Stepped(result),
                    command = receiver.recv(), if collectors.len() < MAX_COLLECTORS => Wake::Command(command),
                    _ = sleep_until(next_due) => Wake::CollectorDue,
                    _ = published.notified() => Wake::Published,
                    _ = sleep_until(next_epoch) => Wake::EpochDue,
                };
                match wake {
                    Wake::Stepped(Ok(())) | Wake::CollectorDue => {}
                    Wake::Published => {
                        for (object, remote) in &mut remotes {
                            if let Some(p) = remote.publication.take() {
                                remote.deadline = p.deadline;
                                shell.node().publish(object, p.epoch, p.state);
                            }
                        }
                    }
                    Wake::EpochDue => {
                        let now = std::time::Instant::now();
                        for remote in remotes.values_mut() {
                            if let Some(deadline) = remote.deadline
                                && deadline <= now
                                && remote.due_sent != Some(deadline)
                            {
                                remote.due_sent = Some(deadline);
                                (remote.feed)(Feed::EpochDue);
                            }
                        }
                    }
                    Wake::Command(Some(Command::Host {
                        object,
                        feed,
                        reply,
                    })) => {
                        shell.node().host_elsewhere(&object);
                        let publication = Arc::new(Publication {
                            latest: Mutex::new(Published::default()),
                            changed: AtomicBool::new(false),
                            wake: published.clone(),
                        });
                        let _ = reply.send(Hosting {
                            publication: publication.clone(),
                            seeds: shell.node().epoch_seeds(),
                            epoch_length: shell.node().epoch_length(),
                        });
                        remotes.insert(
                            object,
                            Remote {
                                feed,
                                publication,
                                deadline: None,
                                due_sent: None,
                            },
                        );
                    }
                    Wake::Command(Some(Command::Unhost(object))) => {
                        shell.node().remove_aggregate(&object);
                        remotes.remove(&object);
                    }
                    Wake::Stepped(Err(e)) => {
                        tracing::error!("gossip socket failed, gossip stops: {e}");
                        break;
                    }
                    Wake::Command(None) => break,
                    Wake::Command(Some(Command::SetCard(card))) => {
                        if let Err(e) = shell.node().set_card(card) {
                            tracing::warn!("gossip card not published: {e}");
                        }
                    }
                    Wake::Command(Some(Command::Cards { limit, wait, reply })) => {
                        let asked = shell.node().request_cards(limit).into_iter().collect();
                        collectors.push(Collector {
                            deadline: Instant::now() + wait,
                            asked,
                            cards: BTreeMap::new(),
                            reply,
                        });
                    }
                    Wake::Command(Some(Command::Status(reply))) => {
                        let addr = shell
                            .local_addr()
                            .unwrap_or_else(|_| shell.node().id().addr);
                        let node = shell.node();
                        let estimates = objects
                            .iter()
                            .filter_map(|o| Some((o.clone(), node.estimate(o)?)))
                            .collect();
                        let mut hosts = node.swim_members();
                        if hosts.is_empty() {
                            hosts = node.view().iter().map(|e| e.id).collect();
                        }
                        hosts.truncate(64);
                        let _ = reply.send(AgentStatus {
                            addr,
                            members: node.swim_members().len(),
                            view: node.view().len(),
                            estimates,
                            stats: node.stats(),
                            hosts,
                        });
                    }
                }
                while let Some(event) = shell.node().poll_event() {
                    match event {
                        Event::Card { host, card } => {
                            for collector in &mut collectors {
                                if collector.asked.contains(&host.addr) {
                                    collector.cards.insert(host.addr, (host, card.clone()));
                                }
                            }
                        }
                        Event::MemberDown(host) => {
                            tracing::info!(host = %host.addr, "gossip: host down")
                        }
                        Event::MemberUp(host) => {
                            tracing::debug!(host = %host.addr, "gossip: host up")
                        }
                        Event::AggregateFailed { object, error } => {
                            tracing::warn!(%object, "gossip aggregate failed: {error}")
                        }
                        Event::Estimate { .. } => {}
                        Event::Share(share) => {
                            if let Some(remote) = remotes.get(&share.object) {
                                (remote.feed)(Feed::Share(share));
                            }
                        }
                    }
                }
                let now = Instant::now();
                let (due, pending): (Vec<_>, Vec<_>) =
                    collectors.into_iter().partition(|c| c.deadline <= now);
                collectors = pending;
                for collector in due {
                    let _ = collector
                        .reply
                        .send(collector.cards.into_values().collect());
                }
            }
        });
        GossipAgent { commands }
    }

    /// Gossip `object`, computed elsewhere: `feed` gets the shares peers send for
    /// it and its epoch ends (it must not block: it runs on the agent's task), and
    /// the returned [`Hosting`] says where to publish its states. `None` if the
    /// agent stopped.
    pub async fn host(
        &self,
        object: &str,
        feed: impl Fn(Feed) + Send + 'static,
    ) -> Option<Hosting> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Host {
                object: object.to_string(),
                feed: Box::new(feed),
                reply,
            })
            .await
            .ok()?;
        answer.await.ok()
    }

    /// Stop gossiping `object`.
    pub async fn unhost(&self, object: &str) {
        let _ = self
            .commands
            .send(Command::Unhost(object.to_string()))
            .await;
    }

    /// Publish this host's card (see [`super::GossipNode::set_card`]).
    pub async fn set_card(&self, card: Vec<u8>) {
        let _ = self.commands.send(Command::SetCard(card)).await;
    }

    /// Ask up to `limit` live hosts for their cards and collect the answers (from
    /// those hosts only, one per host) that arrive within `wait`. Empty if the
    /// agent stopped.
    pub async fn cards(&self, limit: usize, wait: Duration) -> Vec<(HostId, Vec<u8>)> {
        let (reply, answer) = oneshot::channel();
        if self
            .commands
            .send(Command::Cards { limit, wait, reply })
            .await
            .is_err()
        {
            return Vec::new();
        }
        answer.await.unwrap_or_default()
    }

    /// The agent's status, or `None` if it stopped.
    pub async fn status(&self) -> Option<AgentStatus> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Status(reply)).await.ok()?;
        answer.await.ok()
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
