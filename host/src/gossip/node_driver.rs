//! Gossip as a node's [`Driver`] (`lo node --gossip ADDR`): the node's gossip
//! agent (SWIM membership, Cyclon sampling, cards for discovery) and the gossip
//! aggregates it joins (`lo join lo://zone/census`), one of which, the shipped
//! census, it always runs.
//!
//! An aggregate's code never runs on the agent's network task: each joined
//! aggregate is an [`Aggregation`] on the object executor ([`HostedAggregate`]),
//! under the object's budgets like any replica. The agent hands it the shares peers
//! send and its epoch ends as jobs; the aggregation publishes back the state the
//! agent gossips and answers exchanges with. A mailbox that is full sheds shares
//! (gossip tolerates loss; the next exchange brings the same information) and
//! counts them; nothing else is ever dropped. `lo status` reads what the
//! aggregation last published, never waiting on it.
//!
//! Calls: `estimate` (the last finished epoch's value), `current` (the running
//! epoch's value so far, a job on the executor) and `set-input VALUE` (this host's
//! number from the next epoch on; it starts at 1, so a census counts hosts).

use super::agent::{AgentStatus, Feed, GossipAgent, Hosting, Published};
use super::core::{DomainSecret, Estimate, Event, MAX_CARD};
use super::net::GossipSocket;
use super::{Aggregation, GossipConfig, GossipNode, HostId};
use crate::driver::{
    BoxFuture, Discovery, Driver, DriverInfo, JoinRequest, JoinedObject, ObjectReport,
};
use crate::executor::{Hosted, ObjectRef};
use crate::group::{GroupError, GroupNotice};
use crate::join::JoinError;
use crate::runtime::{AggregateInstance, AggregateLogic, ReplicaError, ReplicaStats, Runtime};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, oneshot};

/// The name of the census every gossiping node runs (`lo status` shows it).
pub const NODE_CENSUS: &str = "census";

/// How long `lo status` waits for the agent (which never runs object code).
const STATUS_WAIT: Duration = Duration::from_millis(300);

/// `lo node`'s gossip settings.
#[derive(clap::Args, Debug, Clone)]
pub struct GossipArgs {
    /// Also gossip on this UDP address: the node then runs SWIM membership and the
    /// census, publishes which objects it hosts (and finds members that way when
    /// the seeds a record lists do not answer), and can join gossip aggregates.
    #[arg(long, value_name = "ADDR")]
    pub gossip: Option<SocketAddr>,
    /// Gossip hosts to join through (repeat or separate with commas).
    #[arg(long = "gossip-seed", value_delimiter = ',', value_name = "ADDR")]
    pub gossip_seeds: Vec<SocketAddr>,
    /// The gossip domain's shared secret (64 hex digits; see `lo gossip --secret`).
    #[arg(long, env = "LO_GOSSIP_SECRET", value_name = "HEX", value_parser = parse_secret)]
    pub gossip_secret: Option<DomainSecret>,
}

/// Parse a domain secret: 64 hex digits (32 bytes).
pub fn parse_secret(text: &str) -> Result<DomainSecret, String> {
    let bytes =
        hex::decode(text.trim()).map_err(|e| format!("a gossip secret is 64 hex digits: {e}"))?;
    bytes.try_into().map_err(|b: Vec<u8>| {
        format!(
            "a gossip secret is 32 bytes (64 hex digits), not {}",
            b.len()
        )
    })
}

/// Milliseconds since the Unix epoch: grows across restarts, so a restarted host
/// wins over its old identity.
pub fn boot_number() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(1)
        .max(1)
}

/// The gossip driver of a node.
pub struct GossipDriver {
    agent: GossipAgent,
    addr: SocketAddr,
    census: Arc<AggregateObject>,
    joined: tokio::sync::Mutex<BTreeMap<String, Arc<AggregateObject>>>,
}

impl GossipDriver {
    /// Start gossiping as `args` say, with the shipped census on `runtime`'s
    /// executor; `None` if `args` names no address.
    pub async fn start(
        args: &GossipArgs,
        runtime: &Arc<Runtime>,
    ) -> Result<Option<GossipDriver>, String> {
        let Some(listen) = args.gossip else {
            return Ok(None);
        };
        let socket = tokio::net::UdpSocket::bind(listen)
            .await
            .map_err(|e| format!("cannot bind gossip UDP {listen}: {e}"))?;
        let addr = socket
            .local_addr()
            .map_err(|e| format!("gossip socket {listen}: {e}"))?;
        let now = Instant::now();
        let boot = boot_number();
        let mut config = GossipConfig::lan(16);
        config.secret = args.gossip_secret;
        let mut node = GossipNode::new(
            HostId { addr, boot },
            config,
            boot ^ u64::from(addr.port()),
            now,
        );
        node.join(&args.gossip_seeds, now);
        let agent = GossipAgent::spawn(GossipSocket::new(socket, node), Vec::new());
        let bytes = liveobjects_objects::shipped(NODE_CENSUS)
            .ok_or("the census object is not shipped in this build")?;
        let logic = runtime
            .load_aggregate_bytes(NODE_CENSUS, bytes)
            .map_err(|e| format!("loading the census: {e}"))?;
        let budgets = runtime.executor().budgets().clone();
        let census = AggregateObject::start(&agent, runtime, NODE_CENSUS, &logic, &budgets)
            .await
            .map_err(|e| format!("starting the census: {e}"))?;
        Ok(Some(GossipDriver {
            agent,
            addr,
            census,
            joined: tokio::sync::Mutex::new(BTreeMap::new()),
        }))
    }

    /// The UDP address it gossips on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The agent, for discovery (publishing this node's card, asking for others').
    pub fn discovery(&self) -> Arc<dyn Discovery> {
        Arc::new(AgentDiscovery(self.agent.clone()))
    }
}

struct AgentDiscovery(GossipAgent);

impl Discovery for AgentDiscovery {
    fn max_card(&self) -> usize {
        MAX_CARD
    }

    fn publish_card(&self, card: Vec<u8>) -> BoxFuture<'_, ()> {
        Box::pin(self.0.set_card(card))
    }

    fn cards(&self, limit: usize, wait: Duration) -> BoxFuture<'_, Vec<Vec<u8>>> {
        Box::pin(async move {
            self.0
                .cards(limit, wait)
                .await
                .into_iter()
                .map(|(_, card)| card)
                .collect()
        })
    }
}

impl Driver for GossipDriver {
    fn info(&self) -> &'static DriverInfo {
        crate::driver::driver("gossip").expect("gossip is in the table")
    }

    fn join<'a>(
        &'a self,
        request: JoinRequest<'a>,
    ) -> BoxFuture<'a, Result<Arc<dyn JoinedObject>, JoinError>> {
        Box::pin(async move {
            let name = request.name;
            if name == NODE_CENSUS {
                return Err(JoinError::Type {
                    name: name.to_string(),
                    reason: format!("`{NODE_CENSUS}` is the node's own census"),
                });
            }
            let logic = request.prepared.aggregate_logic(name)?;
            let budgets =
                crate::join::budgets_for(request.runtime, name, &request.prepared.verified.record)?;
            let object =
                AggregateObject::start(&self.agent, request.runtime, name, logic, &budgets).await?;
            self.joined
                .lock()
                .await
                .insert(name.to_string(), object.clone());
            Ok(object as Arc<dyn JoinedObject>)
        })
    }

    fn leave<'a>(&'a self, name: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Some(object) = self.joined.lock().await.remove(name) {
                self.agent.unhost(name).await;
                object.executor.retire("it left this node");
            }
        })
    }

    fn report(&self) -> BoxFuture<'_, Vec<String>> {
        Box::pin(async move {
            let census = self
                .census
                .board()
                .estimate
                .map(|e| format!("{:.0}", e.value))
                .unwrap_or_else(|| "(first epoch running)".into());
            match tokio::time::timeout(STATUS_WAIT, self.agent.status()).await {
                Ok(Some(status)) => vec![format!(
                    "gossip {}  {} other live host(s)  census {census}  sent {} datagrams, \
                     dropped {} bad ones",
                    status.addr,
                    status.members,
                    status.stats.datagrams_sent,
                    status.stats.datagrams_dropped
                )],
                Ok(None) => vec![format!("gossip {} (stopped)", self.addr)],
                Err(_) => vec![format!(
                    "gossip {} (busy: no status within {STATUS_WAIT:?})",
                    self.addr
                )],
            }
        })
    }
}

/// What a hosted aggregate last published for readers (`lo status`, calls).
#[derive(Debug, Clone, Default)]
struct Board {
    estimate: Option<Estimate>,
    epoch: u64,
    state: Option<Vec<u8>>,
    last_error: Option<String>,
}

/// A gossip aggregate as the executor runs it.
pub struct HostedAggregate {
    name: String,
    state: Running,
    hosting: Hosting,
    board: Arc<Mutex<Board>>,
    notices: crate::group::Notices,
    events: VecDeque<Event>,
}

enum Running {
    /// Not started yet: the first job contributes (object code, so on a worker).
    Starting(AggregateInstance),
    Started(Box<Aggregation<AggregateInstance>>),
    /// Only while a job replaces `Starting`.
    Gone,
}

impl HostedAggregate {
    fn aggregation(&mut self) -> &mut Aggregation<AggregateInstance> {
        if let Running::Starting(_) = self.state
            && let Running::Starting(code) = std::mem::replace(&mut self.state, Running::Gone)
        {
            self.state = Running::Started(Box::new(Aggregation::new(
                &self.name,
                code,
                1.0,
                self.hosting.seeds,
                self.hosting.epoch_length,
                Instant::now(),
                &mut self.events,
            )));
        }
        match &mut self.state {
            Running::Started(aggregation) => aggregation,
            _ => unreachable!("started above"),
        }
    }

    /// Apply `feed`, then publish.
    fn feed(&mut self, feed: Feed) {
        let now = Instant::now();
        let mut events = std::mem::take(&mut self.events);
        let aggregation = self.aggregation();
        let goes_on = match feed {
            Feed::Share(share) => {
                aggregation.absorb(share.epoch, &share.state, now, &mut events);
                true
            }
            Feed::EpochDue => aggregation.handle_timeout(now, &mut events),
        };
        self.events.append(&mut events);
        self.publish();
        if !goes_on {
            // Its epochs are exhausted (only a bug gets there): the failure is
            // reported, and it gossips nothing more.
            self.hosting.publication.publish(Published::default());
        }
    }

    /// The aggregation, if the first job started it.
    fn started(&self) -> Option<&Aggregation<AggregateInstance>> {
        match &self.state {
            Running::Started(aggregation) => Some(aggregation),
            _ => None,
        }
    }

    /// Publish the state to the agent and the board, and pass events on.
    fn publish(&mut self) {
        let aggregation = self.aggregation();
        let published = Published {
            epoch: aggregation.epoch(),
            state: aggregation.state().map(<[u8]>::to_vec),
            deadline: Some(aggregation.deadline()),
        };
        let estimate = aggregation.estimate();
        {
            let mut board = self.board.lock().unwrap_or_else(|p| p.into_inner());
            board.estimate = estimate;
            board.epoch = published.epoch;
            board.state = published.state.clone();
            for event in &self.events {
                if let Event::AggregateFailed { error, .. } = event {
                    board.last_error = Some(error.clone());
                }
            }
        }
        self.hosting.publication.publish(published);
        for event in self.events.drain(..) {
            match event {
                Event::Estimate { epoch, value, .. } => {
                    let _ = self.notices.send(GroupNotice::Notification {
                        topic: "estimate".into(),
                        detail: format!("epoch {epoch}: {value}"),
                    });
                }
                Event::AggregateFailed { object, error } => {
                    tracing::warn!(%object, "gossip aggregate failed: {error}");
                }
                _ => {}
            }
        }
    }
}

impl Hosted for HostedAggregate {
    fn object_name(&self) -> &str {
        &self.name
    }

    fn usage(&self) -> ReplicaStats {
        let merges = self.started().map_or(0, Aggregation::merges);
        // Its multicasts are the agent's gossip, bounded by the protocol (one
        // exchange per round); what it can overdo is CPU, which the executor meters.
        ReplicaStats {
            events_applied: merges,
            state_changes: merges,
            ..ReplicaStats::default()
        }
    }

    fn out_of_service(&self) -> Option<&str> {
        // A trap costs a fresh instance (the functions are pure), never the object.
        None
    }

    fn digest_bytes(&mut self) -> Result<Vec<u8>, String> {
        Ok(self
            .started()
            .and_then(Aggregation::state)
            .map(<[u8]>::to_vec)
            .unwrap_or_default())
    }
}

/// A joined gossip aggregate.
pub struct AggregateObject {
    name: String,
    executor: ObjectRef<HostedAggregate>,
    board: Arc<Mutex<Board>>,
    notices: crate::group::Notices,
    shed: Arc<AtomicU64>,
    agent: GossipAgent,
}

impl std::fmt::Debug for AggregateObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AggregateObject")
            .field("name", &self.name)
            .finish()
    }
}

impl AggregateObject {
    async fn start(
        agent: &GossipAgent,
        runtime: &Arc<Runtime>,
        name: &str,
        logic: &Arc<AggregateLogic>,
        budgets: &crate::executor::Budgets,
    ) -> Result<Arc<AggregateObject>, JoinError> {
        let instance = logic.instantiate().map_err(|e| JoinError::Type {
            name: name.to_string(),
            reason: e.to_string(),
        })?;
        // The agent needs the executor handle to feed the object, and the object
        // needs the agent's hosting to publish: what arrives before the handle is
        // set is shed like a share to a full mailbox.
        let target: Arc<OnceLock<ObjectRef<HostedAggregate>>> = Arc::new(OnceLock::new());
        let shed = Arc::new(AtomicU64::new(0));
        let feed = {
            let target = target.clone();
            let shed = shed.clone();
            move |feed: Feed| {
                let Some(object) = target.get() else {
                    shed.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let bytes = match &feed {
                    Feed::Share(share) => share.state.len() + share.object.len(),
                    Feed::EpochDue => 0,
                };
                let job: crate::executor::Job<HostedAggregate> = Box::new(move |hosted| {
                    if let Ok(hosted) = hosted {
                        hosted.feed(feed);
                    }
                });
                if object.submit(bytes, job).is_err() {
                    shed.fetch_add(1, Ordering::Relaxed);
                }
            }
        };
        let hosting = agent
            .host(name, feed)
            .await
            .ok_or_else(|| JoinError::Group(GroupError::Gone(name.to_string())))?;
        let board = Arc::new(Mutex::new(Board::default()));
        let notices = crate::group::Notices::default();
        let hosted = HostedAggregate {
            name: name.to_string(),
            state: Running::Starting(instance),
            hosting,
            board: board.clone(),
            notices: notices.clone(),
            events: VecDeque::new(),
        };
        let quarantined = {
            let agent = agent.clone();
            let notices = notices.clone();
            let name = name.to_string();
            let rt = tokio::runtime::Handle::current();
            move |reason: String| {
                let _ = notices.send(GroupNotice::Quarantined(reason));
                rt.spawn(async move { agent.unhost(&name).await });
            }
        };
        let executor = runtime.executor().spawn(hosted, budgets, quarantined);
        let _ = target.set(executor.clone());
        // The first job contributes this host's number: the object is up once it
        // ran (or failed, which the board then says).
        let (done, started) = oneshot::channel();
        executor
            .submit_waiting(
                0,
                Box::new(move |hosted| {
                    let result = hosted.map(|h| h.publish()).map_err(GroupError::from);
                    let _ = done.send(result);
                }),
            )
            .await;
        started
            .await
            .map_err(|_| JoinError::Group(GroupError::Gone(name.to_string())))??;
        Ok(Arc::new(AggregateObject {
            name: name.to_string(),
            executor,
            board,
            notices,
            shed,
            agent: agent.clone(),
        }))
    }

    fn board(&self) -> Board {
        self.board.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn run<R: Send + 'static>(
        &self,
        job: impl FnOnce(&mut HostedAggregate) -> R + Send + 'static,
    ) -> Result<R, GroupError> {
        let (done, result) = oneshot::channel();
        self.executor
            .submit_waiting(
                64,
                Box::new(move |hosted| {
                    let _ = done.send(hosted.map(job));
                }),
            )
            .await;
        result
            .await
            .map_err(|_| GroupError::Gone(self.name.clone()))?
            .map_err(GroupError::from)
    }
}

fn no_such_method(object: &str, method: &str) -> GroupError {
    GroupError::Replica(ReplicaError::NoSuchMethod {
        object: object.to_string(),
        method: method.to_string(),
        available: "estimate, current, set-input(value: f64)".into(),
    })
}

impl JoinedObject for AggregateObject {
    fn call<'a>(
        &'a self,
        method: &'a str,
        args: &'a [&'a str],
    ) -> BoxFuture<'a, Result<Vec<String>, GroupError>> {
        Box::pin(async move {
            let unavailable = |reason: String| GroupError::Unavailable {
                object: self.name.clone(),
                reason,
            };
            match (method, args) {
                ("estimate", []) => match self.board().estimate {
                    Some(e) => Ok(vec![format!("{}", e.value)]),
                    None => Err(unavailable(
                        "no epoch has finished on this host yet; try `current`".into(),
                    )),
                },
                ("current", []) => {
                    let current = self.run(|h| h.aggregation().current()).await?;
                    match current {
                        Some(e) => Ok(vec![format!("{}", e.value)]),
                        None => Err(unavailable("it has no state this epoch".into())),
                    }
                }
                ("set-input", [value]) => {
                    let value: f64 = value.trim().parse().map_err(|_| {
                        unavailable(format!("set-input takes a number, not {value:?}"))
                    })?;
                    self.run(move |h| h.aggregation().set_input(value)).await?;
                    Ok(Vec::new())
                }
                ("estimate" | "current" | "set-input", _) => {
                    Err(GroupError::Replica(ReplicaError::ArgumentCount {
                        object: self.name.clone(),
                        signature: if method == "set-input" {
                            "set-input(value: f64)".into()
                        } else {
                            format!("{method}()")
                        },
                        expected: usize::from(method == "set-input"),
                        got: args.len(),
                    }))
                }
                _ => Err(no_such_method(&self.name, method)),
            }
        })
    }

    fn report(&self) -> BoxFuture<'_, ObjectReport> {
        Box::pin(async move {
            let board = self.board();
            let metrics = self.executor.metrics();
            let hosts: Vec<String> =
                match tokio::time::timeout(STATUS_WAIT, self.agent.status()).await {
                    Ok(Some(AgentStatus { addr, hosts, .. })) => std::iter::once(addr)
                        .chain(hosts.iter().map(|h| h.addr))
                        .map(|a| format!("gossip@{a}"))
                        .collect(),
                    _ => Vec::new(),
                };
            let shed = self.shed.load(Ordering::Relaxed);
            let mut value = match board.estimate {
                Some(e) => format!("estimate {} (epoch {})", e.value, e.epoch),
                None => format!("epoch {} running, none finished yet", board.epoch),
            };
            if shed > 0 {
                value.push_str(&format!(
                    ", {shed} share(s) shed while its mailbox was full"
                ));
            }
            if let Some(error) = &board.last_error {
                value.push_str(&format!(", last failure: {error}"));
            }
            ObjectReport {
                value: Some(value),
                ..ObjectReport::from_metrics(hosts, &metrics)
            }
        })
    }

    fn snapshot(&self) -> BoxFuture<'_, Result<Vec<u8>, GroupError>> {
        Box::pin(async move { Ok(self.board().state.unwrap_or_default()) })
    }

    fn subscribe(&self) -> broadcast::Receiver<GroupNotice> {
        self.notices.subscribe()
    }
}
