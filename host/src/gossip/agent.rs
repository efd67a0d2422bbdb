//! A gossip node running in its own tokio task, driven through a handle: how the
//! node daemon (`lo node --gossip ADDR`) uses gossip for discovery.

use super::HostId;
use super::core::{Estimate, Event, GossipStats};
use super::net::GossipSocket;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

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
}

enum Command {
    SetCard(Vec<u8>),
    Cards {
        limit: usize,
        wait: Duration,
        reply: oneshot::Sender<Vec<(HostId, Vec<u8>)>>,
    },
    Status(oneshot::Sender<AgentStatus>),
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
}

impl GossipAgent {
    /// Run `shell` in a task of the current tokio runtime; `objects` are the
    /// aggregates whose estimates [`Self::status`] reports.
    pub fn spawn(mut shell: GossipSocket, objects: Vec<String>) -> Self {
        let (commands, mut receiver) = mpsc::channel::<Command>(64);
        tokio::spawn(async move {
            let mut collectors: Vec<Collector> = Vec::new();
            loop {
                let next_due = collectors.iter().map(|c| c.deadline).min();
                let wake = tokio::select! {
                    result = shell.step() => Wake::Stepped(result),
                    command = receiver.recv(), if collectors.len() < MAX_COLLECTORS => Wake::Command(command),
                    _ = sleep_until(next_due) => Wake::CollectorDue,
                };
                match wake {
                    Wake::Stepped(Ok(())) | Wake::CollectorDue => {}
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
                        let _ = reply.send(AgentStatus {
                            addr,
                            members: node.swim_members().len(),
                            view: node.view().len(),
                            estimates,
                            stats: node.stats(),
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
