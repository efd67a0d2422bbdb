//! `lo node`, `lo join`, `lo status`, `lo leave`, and `lo call lo://...`.

use super::directory::{DirectoryTarget, KeyArg};
use anyhow::{Context, Result, bail};
use clap::Args;
use liveobjects_directory::client::{Resolver, SeenVersions};
use liveobjects_host::driver::DriverArgs;
use liveobjects_host::executor::Budgets;
use liveobjects_host::node::{ControlRequest, ControlResponse, Node, StatusPage, request};
use liveobjects_host::runtime::Runtime;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;

/// Where the node's control socket is.
#[derive(Args, Debug, Clone)]
pub struct ControlArg {
    /// The node's control socket (default: ~/.local/share/liveobjects/node.sock).
    #[arg(long, env = "LO_CONTROL", value_name = "SOCKET")]
    control: Option<PathBuf>,
}

impl ControlArg {
    pub(crate) fn path(&self) -> Result<PathBuf> {
        match &self.control {
            Some(p) => Ok(p.clone()),
            None => Ok(super::data_dir()?.join("node.sock")),
        }
    }
}

/// What each object may use per second on this node (a record may override
/// these with `--driver-opt budget.NAME=N`, up to 16 times the node's value).
#[derive(Args, Debug)]
pub struct BudgetArgs {
    /// Multicasts per second one object may originate.
    #[arg(long, value_name = "N", default_value_t = Budgets::default().multicasts_per_sec)]
    budget_multicasts: u64,
    /// Multicasts per second one object may originate while applying events (how
    /// a chain reaction across replicas spreads).
    #[arg(long, value_name = "N", default_value_t = Budgets::default().event_multicasts_per_sec)]
    budget_event_multicasts: u64,
    /// Bytes of multicast payload per second one object may originate.
    #[arg(long, value_name = "BYTES", default_value_t = Budgets::default().bytes_per_sec)]
    budget_bytes: u64,
    /// Milliseconds of CPU per second one object may use.
    #[arg(long, value_name = "MS", default_value_t = Budgets::default().cpu_ms_per_sec)]
    budget_cpu_ms: u64,
    /// How long an object may stay over a budget (throttled) before it is
    /// quarantined on this node.
    #[arg(long, value_name = "MS", default_value_t = Budgets::default().grace.as_millis() as u64)]
    budget_grace_ms: u64,
}

impl BudgetArgs {
    fn budgets(&self) -> Budgets {
        Budgets {
            multicasts_per_sec: self.budget_multicasts.max(1),
            event_multicasts_per_sec: self.budget_event_multicasts.max(1),
            bytes_per_sec: self.budget_bytes.max(1),
            cpu_ms_per_sec: self.budget_cpu_ms.max(1),
            grace: std::time::Duration::from_millis(self.budget_grace_ms),
        }
    }
}

/// Where the HTTP API listens: an address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpListen {
    /// Serve on this address.
    On(std::net::SocketAddr),
    /// No HTTP API.
    Off,
}

impl std::str::FromStr for HttpListen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "off" {
            return Ok(HttpListen::Off);
        }
        s.parse()
            .map(HttpListen::On)
            .map_err(|_| format!("`{s}` is neither an address (127.0.0.1:7080) nor `off`"))
    }
}

/// The HTTP API's default address.
const DEFAULT_HTTP: &str = "127.0.0.1:7080";

/// `lo node`
#[derive(Args, Debug)]
pub struct NodeArgs {
    /// Serve the HTTP/JSON API here (`off`: none). On loopback no token is needed;
    /// elsewhere every request needs the --http-token (one is generated and
    /// printed if not given). If the default address is taken, a free port is used.
    #[arg(long, value_name = "ADDR|off", default_value = DEFAULT_HTTP)]
    http: HttpListen,
    /// The token HTTP requests must carry (`Authorization: Bearer TOKEN`).
    #[arg(long, value_name = "TOKEN", env = "LO_HTTP_TOKEN")]
    http_token: Option<String>,
    #[command(flatten)]
    drivers: DriverArgs,
    #[command(flatten)]
    budgets: BudgetArgs,
    /// Replicas and aggregates this node can run at once. Their sandboxes' slots
    /// are preallocated (address space, not memory) and reused as objects come and
    /// go; a join past the limit fails with an error saying so. 0: allocate each
    /// sandbox on demand instead.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub max_instances: u32,
    /// Hibernate an object idle this many seconds: its sandbox (and its slot of
    /// --max-instances) is given back and its state kept as a snapshot until its
    /// next event or call, which wakes it (an instantiation and an `init`, tens of
    /// microseconds for small state). 0: never.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    hibernate_after: u64,
    /// Keep a flight recording of every replica under DIR: its starting
    /// snapshot, every event, view change and call with what the guest saw, and
    /// state digests. Replay one with `lo replay DIR/<object>-<member>`.
    #[arg(long, value_name = "DIR")]
    record: Option<PathBuf>,
    /// Most MiB one replica's recording keeps; its oldest segments are deleted
    /// past it.
    #[arg(long, value_name = "MIB", default_value_t = 64, requires = "record")]
    record_mib: u64,
    /// Also record the state's digest every N events (a snapshot each, so a
    /// replay checks itself that often; 0: every 1,024 state changes).
    #[arg(long, value_name = "N", default_value_t = 0, requires = "record")]
    record_digest_every: u64,
    #[command(flatten)]
    control: ControlArg,
    #[command(flatten)]
    key: KeyArg,
    #[command(flatten)]
    target: DirectoryTarget,
    // Last: its help heading applies to what follows it.
    #[command(flatten)]
    pub(crate) runtime: super::RuntimeArgs,
}

/// `lo join`
#[derive(Args, Debug)]
pub struct JoinArgs {
    /// The object's name.
    name: String,
    /// Aspects the object must provide, e.g. total-order,encrypted.
    #[arg(long, default_value = "")]
    require: String,
    /// Start the group if no member answers (the first host of an object).
    #[arg(long)]
    found: bool,
    /// Also join every object it references (a document's embedded objects),
    /// each with the aspects its reference requires; exits 1 if any could not be.
    #[arg(long)]
    references: bool,
    /// Join and return, without the interactive session.
    #[arg(long)]
    no_interactive: bool,
    /// With --no-interactive: print {"name", "version", "members", "already"} as JSON
    /// (and "references": [{"name", "require", "joined", "version" or "error"}]).
    #[arg(long, requires = "no_interactive")]
    json: bool,
    #[command(flatten)]
    control: ControlArg,
}

/// `lo status`
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Print JSON: {"node": {"key", "addr"}, "drivers": [{"driver", "lines"}],
    /// "objects": [{"name", "driver", "members", ...}], "total", "next"}.
    #[arg(long)]
    json: bool,
    /// Show only objects whose names start with this (e.g. lo://acme/rooms/).
    #[arg(long, value_name = "NAME")]
    prefix: Option<String>,
    /// Start after this object (the `next` a previous page printed).
    #[arg(long, value_name = "NAME")]
    after: Option<String>,
    /// Show at most this many objects.
    #[arg(long, default_value_t = 100, conflicts_with = "all")]
    limit: usize,
    /// Show every object, however many.
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    control: ControlArg,
}

/// `lo leave`
#[derive(Args, Debug)]
pub struct LeaveArgs {
    /// The object's name.
    name: String,
    #[command(flatten)]
    control: ControlArg,
}

pub fn node(mut runtime: Runtime, args: NodeArgs) -> Result<()> {
    runtime.set_budgets(args.budgets.budgets());
    runtime.set_hibernation(
        (args.hibernate_after > 0).then(|| std::time::Duration::from_secs(args.hibernate_after)),
    );
    if let Some(dir) = &args.record {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the recording directory {}", dir.display()))?;
        runtime.set_recording(Some(liveobjects_host::runtime::recorder::RecordSettings {
            dir: dir.clone(),
            budget_bytes: args.record_mib.max(1) << 20,
            digest_every: args.record_digest_every,
        }));
    }
    let identity = super::directory::load_identity(&args.key)?;
    let root = super::directory::root_key(&args.target)?;
    let control = args.control.path()?;
    super::tokio()?.block_on(async move {
        let runtime = Arc::new(runtime);
        let drivers = args
            .drivers
            .start(&identity, &super::data_dir()?, &runtime)
            .await
            .map_err(anyhow::Error::msg)?;
        let client = args.target.client().await?;
        // Each node identity keeps its own version memory (the CLI's, or another
        // node's, may be in use meanwhile).
        let seen = SeenVersions::open(
            &super::data_dir()?.join(format!("seen-versions-node-{}.redb", identity.public())),
        )?;
        let resolver = Resolver::new(client, root, Some(seen));
        let mut banner = drivers.banner.clone();
        if let Some(dir) = &args.record {
            banner.push(format!("recording replicas under {}", dir.display()));
        }
        let node = Node::new(drivers, runtime, resolver);
        let mut out = std::io::stdout();
        for line in &banner {
            let _ = writeln!(out, "{line}");
        }
        // Bound before it is announced: a script that waits for this line (the
        // process tests restart nodes and join at once) must find the socket.
        let listener = Node::bind(&control)
            .await
            .with_context(|| format!("binding the control socket {}", control.display()))?;
        if let HttpListen::On(addr) = args.http {
            let (http, token) = bind_http(addr, args.http_token.clone()).await?;
            let at = http.local_addr().context("reading the HTTP address")?;
            match &token {
                Some(token) => {
                    let _ = writeln!(out, "http api on http://{at}/v1/ (token {token})");
                }
                None => {
                    let _ = writeln!(out, "http api on http://{at}/v1/");
                }
            }
            let options = liveobjects_host::http::HttpOptions { token };
            let node = node.clone();
            tokio::spawn(async move {
                if let Err(e) = liveobjects_host::http::serve(node, http, options).await {
                    tracing::error!("the HTTP API on {at} stopped: {e}");
                }
            });
        }
        let _ = writeln!(out, "control socket {}", control.display());
        let _ = out.flush();
        node.serve_on(listener)
            .await
            .with_context(|| format!("serving the control socket {}", control.display()))
    })
}

/// Bind the HTTP API: the default address falls back to a free loopback port if
/// taken (several nodes on one machine); an address asked for must be free. A
/// non-loopback address gets a generated token if none was given.
async fn bind_http(
    addr: std::net::SocketAddr,
    token: Option<String>,
) -> Result<(tokio::net::TcpListener, Option<String>)> {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) if addr.to_string() == DEFAULT_HTTP && e.kind() == std::io::ErrorKind::AddrInUse => {
            tokio::net::TcpListener::bind((addr.ip(), 0))
                .await
                .context("binding the HTTP API on a free loopback port")?
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!("binding the HTTP API on {addr} (choose another --http, or --http off)")
            });
        }
    };
    let token = match token {
        Some(t) => Some(t),
        None if !addr.ip().is_loopback() => Some(liveobjects_host::http::generate_token()),
        None => None,
    };
    Ok((listener, token))
}

/// How often `lo publish --watch` asks the node how the upgrade goes.
const WATCH_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// Wait up to `wait` for the node at `control` to run `name` at record
/// `version` (`lo publish --watch`): Ok once its replica switched, an error
/// saying why if the upgrade was aborted or refused, or if it did not come.
pub(crate) async fn watch_upgrade(
    control: &ControlArg,
    name: &str,
    version: u64,
    wait: std::time::Duration,
) -> Result<()> {
    let path = control.path()?;
    let deadline = tokio::time::Instant::now() + wait;
    let page = StatusPage {
        prefix: Some(name.to_string()),
        after: None,
        limit: Some(1),
    };
    let mut last_line = None;
    loop {
        let answer = request(&path, &ControlRequest::Status(page.clone()))
            .await
            .with_context(|| format!("watching the upgrade of {name} to version {version}"))?;
        let ControlResponse::Status { objects, .. } = expect(answer)? else {
            bail!("unexpected answer from the node at {}", path.display());
        };
        let Some(object) = objects.into_iter().find(|o| o.name == name) else {
            bail!(
                "the node at {} has not joined {name}, so it cannot show the upgrade \
                 (join it there, or publish without --watch)",
                path.display()
            );
        };
        let live = liveobjects_host::driver::driver(&object.driver).is_some_and(|d| d.live_upgrade);
        let report = object.report;
        let line = report
            .logic
            .clone()
            .unwrap_or_else(|| "no logic named yet".to_string());
        if let Some(reason) = &report.quarantined {
            bail!("{name} was stopped on this node: {reason} ({line})");
        }
        match (report.logic_version, report.upgrade_tried) {
            _ if !live => bail!(
                "{name} runs on the {} driver, which has no live upgrade: the hosts running \
                 it keep the logic they run",
                object.driver
            ),
            (Some(running), _) if running >= version => {
                println!("{name}: switched live to version {running} on this node ({line})");
                return Ok(());
            }
            (Some(running), Some(tried)) if tried >= version => bail!(
                "the live upgrade of {name} to version {version} did not happen; every replica \
                 carries on with version {running}: {line}"
            ),
            _ => {}
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "{name} still runs {line} after {wait:?}: the member that orders it looks for \
                 newer records every `lo node --upgrade-poll` seconds, and only while the \
                 object is used (make a call, or watch longer with --watch SECS)"
            );
        }
        if last_line.as_ref() != Some(&line) {
            eprintln!("{name}: waiting for the switch to version {version} ({line})");
            last_line = Some(line);
        }
        tokio::time::sleep(WATCH_EVERY).await;
    }
}

fn expect(response: ControlResponse) -> Result<ControlResponse> {
    match response {
        ControlResponse::Error(e) => bail!("{e}"),
        other => Ok(other),
    }
}

pub fn join(args: JoinArgs) -> Result<()> {
    let path = args.control.path()?;
    let rt = super::tokio()?;
    let joining = format!(
        "joining {}: resolving and verifying its record, fetching and compiling its \
         logic, state transfer",
        args.name
    );
    let joined = super::slow_step(&joining, || {
        rt.block_on(request(
            &path,
            &ControlRequest::Join {
                name: args.name.clone(),
                require: args.require.clone(),
                found_if_alone: args.found,
                references: args.references,
            },
        ))
    })?;
    let ControlResponse::Joined {
        version,
        members,
        already,
        references,
    } = expect(joined)?
    else {
        bail!("the node gave an unexpected answer to a join");
    };
    if args.json {
        let references: Vec<_> = references
            .iter()
            .map(|r| match &r.outcome {
                Ok(version) => serde_json::json!({"name": r.name, "require": r.require,
                    "joined": true, "version": version}),
                Err(e) => serde_json::json!({"name": r.name, "require": r.require,
                    "joined": false, "error": e}),
            })
            .collect();
        let mut answer = serde_json::json!({
            "name": args.name,
            "version": version,
            "members": members,
            "already": already,
        });
        if args.references {
            answer["references"] = references.into();
        }
        super::print_json(&answer);
    } else {
        println!(
            "{} {} (record version {version}), {members} member(s)",
            if already { "already joined" } else { "joined" },
            args.name
        );
        for r in &references {
            let require = if r.require.is_empty() {
                "nothing".to_string()
            } else {
                r.require.join(",")
            };
            match &r.outcome {
                Ok(version) => println!(
                    "  joined {} (record version {version}; requires {require})",
                    r.name
                ),
                Err(e) => println!("  not joined {}: {e}", r.name),
            }
        }
    }
    let refused = references.iter().filter(|r| r.outcome.is_err()).count();
    if refused > 0 {
        bail!(
            "{refused} of the {} objects {} references could not be joined (see above)",
            references.len(),
            args.name
        );
    }
    if args.no_interactive {
        return Ok(());
    }
    // Live notices from the node, printed as they arrive.
    let watch_path = path.clone();
    let name = args.name.clone();
    rt.spawn(async move {
        let Ok(mut stream) = tokio::net::UnixStream::connect(&watch_path).await else {
            return;
        };
        if liveobjects_host::node::write_message(&mut stream, &ControlRequest::Watch { name })
            .await
            .is_err()
        {
            return;
        }
        while let Ok(Some(ControlResponse::Notice(text))) =
            liveobjects_host::node::read_message(&mut stream).await
        {
            println!("  * {text}");
        }
    });
    eprintln!(
        "type METHOD ARGS (e.g. post \"hello\"), Ctrl-D to quit (you stay joined; `lo leave` leaves)"
    );
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let words = match super::split_words(line.trim()) {
            Ok(w) if !w.is_empty() => w,
            Ok(_) => continue,
            Err(e) => {
                println!("error: {e}");
                continue;
            }
        };
        let answer = rt.block_on(request(
            &path,
            &ControlRequest::Call {
                name: args.name.clone(),
                method: words[0].clone(),
                args: words[1..].to_vec(),
                json: false,
            },
        ))?;
        match answer {
            ControlResponse::Results(results) => {
                for r in results {
                    println!("{r}");
                }
            }
            ControlResponse::Error(e) => println!("error: {e}"),
            other => println!("unexpected answer {other:?}"),
        }
    }
    Ok(())
}

/// `lo call lo://NAME METHOD ARGS` through the node.
pub fn call(
    name: &str,
    method: &str,
    args: &[String],
    json: bool,
    control: &ControlArg,
) -> Result<()> {
    let path = control.path()?;
    let answer = super::tokio()?.block_on(request(
        &path,
        &ControlRequest::Call {
            name: name.to_string(),
            method: method.to_string(),
            args: args.to_vec(),
            json,
        },
    ))?;
    match expect(answer)? {
        ControlResponse::Results(results) if json => {
            let values = results
                .iter()
                .map(|r| serde_json::from_str(r))
                .collect::<Result<Vec<serde_json::Value>, _>>()
                .context("the node answered results that are not JSON")?;
            super::print_json(&serde_json::json!({ "results": values }));
            Ok(())
        }
        ControlResponse::Results(results) => {
            super::print_results(&results);
            Ok(())
        }
        other => bail!("unexpected answer {other:?}"),
    }
}

pub fn status(args: StatusArgs) -> Result<()> {
    if args.limit == 0 {
        bail!("--limit must be at least 1 (or use --all)");
    }
    let page = StatusPage {
        prefix: args.prefix.clone(),
        after: args.after.clone(),
        limit: (!args.all).then_some(args.limit),
    };
    let answer = super::tokio()?.block_on(request(
        &args.control.path()?,
        &ControlRequest::Status(page),
    ))?;
    let ControlResponse::Status {
        key,
        name,
        addr,
        objects,
        total,
        next,
        drivers,
    } = expect(answer)?
    else {
        bail!("unexpected answer");
    };
    if args.json {
        super::print_json(&liveobjects_host::json::node_status_json(
            &key,
            name.as_deref(),
            &addr,
            &objects,
            total,
            next.as_deref(),
            &drivers,
        ));
        return Ok(());
    }
    match &name {
        Some(name) => println!("node {addr} key {key} name {name}"),
        None => println!("node {addr} key {key}"),
    }
    for d in &drivers {
        for line in &d.lines {
            println!("{line}");
        }
    }
    if objects.is_empty() {
        match (&args.prefix, total) {
            (Some(prefix), 0) => println!("(no objects joined under {prefix})"),
            (None, 0) => println!("(no objects joined)"),
            _ => {}
        }
    }
    let shown = objects.len();
    for o in objects {
        let r = &o.report;
        let batched = if r.batches > 0 {
            format!(" ({} batch calls)", r.batches)
        } else {
            String::new()
        };
        println!(
            "{}  driver {}  {} member(s){}  events applied {}{batched}  state {} bytes sha256 {}",
            o.name,
            o.driver,
            r.members.len(),
            if r.sequencer {
                format!(
                    ", {}",
                    liveobjects_host::driver::driver(&o.driver).map_or("sequencer", |d| d.orderer)
                )
            } else if r.member {
                String::new()
            } else {
                ", joining".to_string()
            },
            r.events_applied,
            r.state_bytes,
            r.state_digest
        );
        if let Some(value) = &r.value {
            println!("    {value}");
        }
        if let Some(reason) = &r.quarantined {
            println!("    quarantined: {reason}");
        } else if r.throttled {
            println!("    throttled: over its budget (lo node --budget-*)");
        } else if r.hibernating {
            println!("    hibernating: idle, its state kept as a snapshot until it is used");
        }
        if let Some(logic) = &r.logic {
            println!("    logic: {logic}");
        }
        if let Some(divergence) = &r.divergence {
            println!("    {divergence}");
        }
        if let Some(check) = &r.check {
            println!("    last check: {check}");
        }
        if let Some((jobs, bytes)) = r.queued
            && jobs > 0
        {
            println!("    queued: {jobs} job(s), {bytes} bytes");
        }
        println!("    members: {}", r.members.join(", "));
    }
    if let Some(next) = next {
        let prefix = args
            .prefix
            .as_ref()
            .map(|p| format!(" --prefix {p}"))
            .unwrap_or_default();
        println!("({shown} shown of {total}; more: lo status{prefix} --after {next}, or --all)");
    }
    Ok(())
}

pub fn leave(args: LeaveArgs) -> Result<()> {
    let answer = super::tokio()?.block_on(request(
        &args.control.path()?,
        &ControlRequest::Leave {
            name: args.name.clone(),
        },
    ))?;
    expect(answer)?;
    println!("left {}", args.name);
    Ok(())
}
