//! Command-line interface of `lo`.

mod demo;
mod demo_web;
mod directory;
mod gossip;
mod new;
mod node;
mod qsm;
mod replay;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use liveobjects_host::local::LocalGroup;
use liveobjects_host::runtime::{Limits, Logic, LogicHash, Runtime, RuntimeConfig};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// liveobjects: live distributed objects whose logic runs as sandboxed WebAssembly.
#[derive(Parser, Debug)]
#[command(name = "lo", version, about)]
pub struct Cli {
    /// Log more (or set RUST_LOG, e.g. RUST_LOG=liveobjects_host=debug).
    #[arg(short, long, global = true)]
    pub verbose: bool,

    #[command(subcommand)]
    command: Command,
}

/// The sandbox's flags, on the commands that run guest code.
#[derive(Args, Debug)]
#[command(next_help_heading = "Sandbox")]
pub(crate) struct RuntimeArgs {
    /// Directory for compiled components (default: ~/.cache/liveobjects/compiled).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Compile components in memory only, without the disk cache.
    #[arg(long)]
    no_cache: bool,
    /// Memory cap per replica, in MiB: its sandbox and what the host holds for it.
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    memory_mib: usize,
    /// CPU budget per call, in fuel units (about one per WebAssembly instruction).
    #[arg(long, default_value_t = 2_000_000_000, value_name = "FUEL")]
    fuel: u64,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show a component's world, imports, exports and methods.
    Inspect {
        /// The component (.wasm).
        file: PathBuf,
        #[command(flatten)]
        runtime: RuntimeArgs,
    },
    /// Call one method: of a joined object through the node (`lo call lo://acme/x
    /// post '"hi"'`), or of a component file in a local replica whose state persists
    /// between calls (`lo call counter.wasm add 5`, then `lo call counter.wasm get`).
    Call {
        /// A joined object's name (lo://...) or a component file (.wasm).
        file: PathBuf,
        /// Method name, e.g. `add` (or `interface.method` if ambiguous).
        method: String,
        /// Arguments in WAVE text form: 5, "text", [1, 2], {field: 1}, some(3), ...
        #[arg(allow_negative_numbers = true)]
        args: Vec<String>,
        /// State file of the local replica (default: one per component, under
        /// ~/.local/share/liveobjects/local/).
        #[arg(long, value_name = "FILE")]
        state: Option<PathBuf>,
        /// Start from a fresh object, discarding the saved state.
        #[arg(long)]
        fresh: bool,
        /// Print {"results": [...]} as JSON (each result as WAVE text).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        control: node::ControlArg,
        #[command(flatten)]
        runtime: RuntimeArgs,
    },
    /// Run the host daemon: keeps joined objects live on the mesh, serves `lo join`,
    /// `lo call lo://...`, `lo status`, `lo leave`.
    Node(Box<node::NodeArgs>),
    /// Join an object by name through the node, then call its methods interactively.
    Join(node::JoinArgs),
    /// List the node's objects with members, events applied and state size.
    Status(node::StatusArgs),
    /// Leave an object.
    Leave(node::LeaveArgs),
    /// Run replicas of an object in this process and call its methods interactively.
    Run {
        /// The component (.wasm).
        file: PathBuf,
        /// Number of replicas (members named m1, m2, ...).
        #[arg(long, default_value_t = 1)]
        replicas: usize,
        #[command(flatten)]
        runtime: RuntimeArgs,
    },
    /// Create an ed25519 identity (secret key file readable only by you).
    Keygen {
        /// Where to write it (default: ~/.config/liveobjects/identity.key).
        #[arg(long)]
        out: Option<PathBuf>,
        /// A short name other members see next to your key's first digits, as
        /// `alice (728c838b)`: 1-16 letters, digits, `-`, `_`, `.`. It is not
        /// checked by anyone; the key is what is authenticated.
        #[arg(long)]
        name: Option<liveobjects_directory::keys::MemberName>,
    },
    /// Run the membership service of a qsm domain (hosts register with it; qsm
    /// records name it with --driver-opt membership=KEY@ADDR).
    QsmMembership(qsm::MembershipArgs),
    /// Gossip with other hosts: SWIM membership, peer sampling, and aggregates over
    /// every live host (census, average load, max), printed as each epoch ends.
    Gossip(gossip::GossipArgs),
    /// Run a directory server.
    #[command(subcommand)]
    Directory(directory::DirectoryCommand),
    /// Create or delegate zones.
    #[command(subcommand)]
    Zone(directory::ZoneCommand),
    /// Publish a component under a name (signed with your zone key).
    Publish(directory::PublishArgs),
    /// List a folder of the directory (verified).
    Ls(directory::LsArgs),
    /// Print a name's verified record.
    Resolve(directory::ResolveArgs),
    /// Fetch a name's logic, verified against its record.
    Fetch(directory::FetchArgs),
    /// Watch live objects at work: three in-process members share a chat room and a
    /// counter built from the shipped objects, run a scripted exchange, then keep
    /// posting until the duration ends (or Ctrl-C).
    Demo {
        /// How long to keep the live part running, in seconds (0: until Ctrl-C).
        #[arg(long, default_value_t = 0)]
        duration: u64,
        /// Seconds between live updates.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Instead: three full nodes serving the web page, sharing a chat, a
        /// counter, a ticker and a live document that embeds them; prints each
        /// host's page URL and runs until Ctrl-C (or --duration).
        #[arg(long)]
        web: bool,
        #[command(flatten)]
        runtime: RuntimeArgs,
    },
    /// Re-execute a replica's flight recording (`lo node --record DIR`) step by
    /// step, checking every outcome and state digest, or find where two replicas'
    /// recordings part (`--diff`).
    Replay(replay::ReplayArgs),
    /// Create a project for a new live object (a counter to start from) in
    /// Rust or Python: `lo new hits --lang python`, then `lo build` in it.
    New(new::NewArgs),
    /// Build the live object project in this folder (or DIR) into NAME.wasm.
    Build(new::BuildArgs),
    /// Build the project, run local replicas with an interactive prompt, and
    /// rebuild and reload them (keeping their state) whenever a source changes.
    Dev(new::DevArgs),
    /// Print a shell completion script: `lo completions bash > /etc/bash_completion.d/lo`
    /// (or `source <(lo completions bash)`; zsh and fish likewise).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// Run the parsed command.
pub fn run(cli: Cli) -> Result<()> {
    let runtime = |args: &RuntimeArgs| make_runtime(args, None);
    match cli.command {
        Command::Inspect { file, runtime: r } => inspect(&runtime(&r)?, &file),
        Command::Call {
            file,
            method,
            args,
            state,
            fresh,
            json,
            control,
            runtime: r,
        } => match file.to_str() {
            Some(name) if name.starts_with("lo://") => {
                node::call(name, &method, &args, json, &control)
            }
            _ => call(&runtime(&r)?, &file, &method, &args, state, fresh, json),
        },
        Command::Node(args) => {
            let pooled = Some(args.max_instances).filter(|&n| n > 0);
            node::node(make_runtime(&args.runtime, pooled)?, *args)
        }
        Command::Join(args) => node::join(args),
        Command::Status(args) => node::status(args),
        Command::Leave(args) => node::leave(args),
        Command::Run {
            file,
            replicas,
            runtime: r,
        } => repl(&runtime(&r)?, &file, replicas),
        Command::Demo {
            duration,
            interval,
            web,
            runtime: r,
        } => demo(runtime(&r)?, duration, interval, web),
        Command::Gossip(args) => gossip::gossip(runtime(&args.runtime)?, args),
        Command::QsmMembership(args) => qsm::membership(args),
        Command::Keygen { out, name } => directory::keygen(out, name),
        Command::Directory(cmd) => directory::directory(cmd),
        Command::Zone(cmd) => directory::zone(cmd),
        Command::Publish(args) => directory::publish(&runtime(&args.runtime)?, args),
        Command::Ls(args) => directory::ls(args),
        Command::Resolve(args) => directory::resolve(args),
        Command::Fetch(args) => directory::fetch(args),
        // A replay runs under the limits the recording names, not the sandbox flags.
        Command::Replay(args) => replay::replay(
            &Runtime::new(RuntimeConfig::with_user_cache())
                .context("starting the WebAssembly runtime")?,
            args,
        ),
        Command::New(args) => new::new(args),
        Command::Build(args) => new::build(args),
        Command::Dev(args) => new::dev(&runtime(&args.runtime)?, args),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "lo", &mut std::io::stdout());
            Ok(())
        }
    }
}

/// The runtime for a command; `pooled`: preallocate that many instance slots.
fn make_runtime(args: &RuntimeArgs, pooled: Option<u32>) -> Result<Runtime> {
    let mut config = if args.no_cache {
        RuntimeConfig::default()
    } else {
        RuntimeConfig::with_user_cache()
    };
    if let Some(dir) = &args.cache_dir {
        config.cache_dir = Some(dir.clone());
    }
    config.limits = Limits {
        memory_bytes: args.memory_mib << 20,
        fuel_per_call: args.fuel,
        ..Limits::default()
    };
    config.pooled_instances = pooled;
    Runtime::new(config).context("starting the WebAssembly runtime")
}

pub(crate) fn load(runtime: &Runtime, file: &Path) -> Result<Arc<Logic>> {
    let what = format!(
        "compiling {} (the first time only: it is cached by content hash)",
        file.display()
    );
    Ok(slow_step(&what, || runtime.load_file(file))?)
}

/// Run `work`; if it takes more than a second, say what it is doing (a spinner on
/// a terminal, one line on stderr otherwise), so no step is silent for longer.
pub(crate) fn slow_step<T>(what: &str, work: impl FnOnce() -> T) -> T {
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let what = what.to_string();
    let reporter = std::thread::spawn(move || {
        // A disconnect (the sender dropped) means the work is done.
        if finished.recv_timeout(std::time::Duration::from_secs(1))
            != Err(std::sync::mpsc::RecvTimeoutError::Timeout)
        {
            return;
        }
        let spinner = indicatif::ProgressBar::new_spinner();
        if spinner.is_hidden() {
            eprintln!("{what} ...");
        } else {
            spinner.set_message(what);
            spinner.enable_steady_tick(std::time::Duration::from_millis(100));
        }
        let _ = finished.recv();
        spinner.finish_and_clear();
    });
    let result = work();
    drop(done);
    let _ = reporter.join();
    result
}

fn inspect(runtime: &Runtime, file: &Path) -> Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let name = file.display().to_string();
    let logic = slow_step(&format!("compiling {name}"), || {
        runtime.load_bytes(&name, &bytes)
    })?;
    let iface = logic.interface();
    println!("object logic  {}", file.display());
    println!("sha256        {}", logic.hash());
    println!("size          {} bytes", logic.size());
    println!("world         {} (implemented)", iface.world());
    println!("imports");
    for import in &iface.imports {
        println!("  {import}");
    }
    println!("exports");
    for export in &iface.exports {
        println!("  {export}");
    }
    println!("methods");
    for method in &iface.methods {
        let owner = method.interface.as_deref().unwrap_or("(world)");
        println!("  {}    [{owner}]", method.signature());
    }
    Ok(())
}

/// `$XDG_DATA_HOME/liveobjects` or `~/.local/share/liveobjects`.
pub(crate) fn data_dir() -> Result<PathBuf> {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .context("neither XDG_DATA_HOME nor HOME is set")?;
    Ok(base.join("liveobjects"))
}

/// What `lo call` keeps between invocations.
#[derive(Serialize, Deserialize)]
struct LocalState {
    logic: [u8; 32],
    next_seq: u64,
    snapshot: Vec<u8>,
}

const LOCAL_MEMBER: &str = "local";

fn default_state_path(hash: LogicHash) -> Result<PathBuf> {
    Ok(data_dir()?
        .join("local")
        .join(format!("{}.state", &hash.to_hex()[..16])))
}

fn call(
    runtime: &Runtime,
    file: &Path,
    method: &str,
    args: &[String],
    state: Option<PathBuf>,
    fresh: bool,
    json: bool,
) -> Result<()> {
    let logic = load(runtime, file)?;
    let state_path = match state {
        Some(p) => p,
        None => default_state_path(logic.hash())?,
    };
    let saved: Option<LocalState> = if fresh || !state_path.exists() {
        None
    } else {
        let bytes = std::fs::read(&state_path)
            .with_context(|| format!("cannot read state file {}", state_path.display()))?;
        let saved: LocalState = postcard::from_bytes(&bytes).with_context(|| {
            format!(
                "state file {} is corrupt; remove it or pass --fresh",
                state_path.display()
            )
        })?;
        if saved.logic != logic.hash().0 {
            bail!(
                "state file {} belongs to other logic (sha256 {}), not {}; pass --fresh or another --state",
                state_path.display(),
                hex::encode(saved.logic),
                logic.hash()
            );
        }
        Some(saved)
    };
    let object = format!("local:{}", file.display());
    let mut group = LocalGroup::start(
        runtime,
        &logic,
        &object,
        &[LOCAL_MEMBER],
        saved.as_ref().map(|s| s.snapshot.as_slice()),
    )?;
    if let Some(saved) = &saved {
        group.set_next_seq(LOCAL_MEMBER, saved.next_seq);
    }
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let outcome = group.call(0, method, &arg_refs)?;
    for note in outcome.deliveries.iter().flat_map(|d| &d.notifications) {
        eprintln!("notify {}: {}", note.topic, note.detail);
    }
    if json {
        let method = logic
            .interface()
            .find(method)
            .map_err(|_| anyhow::anyhow!("{object} has no method {method}"))?;
        let values = liveobjects_host::json::results_to_json(method, &outcome.results)?;
        print_json(&serde_json::json!({ "results": values }));
    } else {
        print_results(&outcome.results);
    }
    if !outcome.events.is_empty() {
        let snapshot = group.replica_mut(0).snapshot()?;
        let state = LocalState {
            logic: logic.hash().0,
            next_seq: group.next_seq(LOCAL_MEMBER),
            snapshot,
        };
        save_state(&state_path, &state)?;
    }
    // An event the object rejected changed nothing (the update's other events
    // were applied and saved, as a driver without transactions would).
    let problems = outcome.problems();
    if !problems.is_empty() {
        bail!("{object} rejected the update: {}", problems.join("; "));
    }
    Ok(())
}

fn save_state(path: &Path, state: &LocalState) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let bytes = postcard::to_allocvec(state).context("encoding local state")?;
    // Write then rename: a crash mid-write keeps the previous state intact.
    let tmp = path.with_extension("state.tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

/// Print a call's results (WAVE text), one per line.
pub(crate) fn print_results(results: &[String]) {
    for result in results {
        println!("{result}");
    }
}

/// Print `value` as pretty JSON on stdout (the `--json` output of every command).
pub(crate) fn print_json(value: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("a JSON value always serializes")
    );
}

/// Split a REPL line into words: whitespace separates, except inside quotes or
/// brackets, so WAVE values like `"hello world"` or `{a: 1, b: 2}` stay whole.
pub(crate) fn split_words(line: &str) -> Result<Vec<String>> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut depth: i32 = 0;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in line.chars() {
        if let Some(q) = quote {
            current.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' => {
                quote = Some(c);
                current.push(c);
            }
            '(' | '[' | '{' => {
                depth += 1;
                current.push(c);
            }
            ')' | ']' | '}' => {
                depth -= 1;
                current.push(c);
            }
            c if c.is_whitespace() && depth <= 0 => {
                if !current.is_empty() {
                    words.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if quote.is_some() {
        bail!("unterminated quote in: {line}");
    }
    if depth != 0 {
        bail!("unbalanced brackets in: {line}");
    }
    if !current.is_empty() {
        words.push(current);
    }
    Ok(words)
}

const REPL_HELP: &str = "\
  METHOD ARGS...       call a method on replica 1 (args in WAVE: 5, \"hi\", [1, 2])
  @N METHOD ARGS...    call it on replica N
  .methods             list methods
  .snapshot            show every replica's snapshot size and hash
  .help                this text
  .quit                leave (or Ctrl-D)";

fn repl(runtime: &Runtime, file: &Path, replicas: usize) -> Result<()> {
    if replicas == 0 {
        bail!("--replicas must be at least 1");
    }
    let logic = load(runtime, file)?;
    let names: Vec<String> = (1..=replicas).map(|i| format!("m{i}")).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let object = format!("local:{}", file.display());
    let mut group = LocalGroup::start(runtime, &logic, &object, &name_refs, None)?;
    eprintln!(
        "{} replica(s) of {} (sha256 {}). Type .help for help.",
        replicas,
        file.display(),
        &logic.hash().to_hex()[..16]
    );
    let stdin = std::io::stdin();
    loop {
        eprint!("lo> ");
        std::io::stderr().flush().ok();
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        if !repl_line(&mut group, &logic, &names, line.trim()) {
            break;
        }
    }
    Ok(())
}

/// Act on one line typed at the prompt of `lo run` or `lo dev` (a method call on a
/// replica, or a dot command); false once it asks to quit.
pub(crate) fn repl_line(
    group: &mut LocalGroup,
    logic: &Logic,
    names: &[String],
    line: &str,
) -> bool {
    match line {
        "" => return true,
        ".quit" | ".exit" => return false,
        ".help" => {
            println!("{REPL_HELP}");
            return true;
        }
        ".methods" => {
            for m in &logic.interface().methods {
                println!("  {}", m.signature());
            }
            return true;
        }
        ".snapshot" => {
            for (i, name) in names.iter().enumerate() {
                match group.replica_mut(i).snapshot() {
                    Ok(s) => println!(
                        "  {name}: {} bytes, sha256 {}",
                        s.len(),
                        &LogicHash::of(&s).to_hex()[..16]
                    ),
                    Err(e) => println!("  {name}: error: {e}"),
                }
            }
            return true;
        }
        _ => {}
    }
    let words = match split_words(line) {
        Ok(w) => w,
        Err(e) => {
            println!("error: {e}");
            return true;
        }
    };
    let replicas = names.len();
    let (target, rest) = match words[0].strip_prefix('@') {
        Some(n) => match n.parse::<usize>() {
            Ok(n) if (1..=replicas).contains(&n) => (n - 1, &words[1..]),
            _ => {
                println!("error: no replica {n}; there are {replicas}");
                return true;
            }
        },
        None => (0, &words[..]),
    };
    let Some((method, args)) = rest.split_first() else {
        println!("error: which method?");
        return true;
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match group.call(target, method, &args) {
        Ok(outcome) => {
            for d in &outcome.deliveries {
                for n in &d.notifications {
                    println!("  [{}] {}: {}", names[d.replica], n.topic, n.detail);
                }
            }
            for problem in outcome.problems() {
                println!("  warning: {problem}");
            }
            for r in &outcome.results {
                println!("{r}");
            }
        }
        Err(e) => println!("error: {e}"),
    }
    true
}

fn demo(runtime: Runtime, duration: u64, interval: f64, web: bool) -> Result<()> {
    let runtime = std::sync::Arc::new(runtime);
    if web {
        tokio()?.block_on(demo_web::run(&runtime, duration, interval))
    } else {
        tokio()?.block_on(demo::run(&runtime, duration, interval))
    }
}

/// The async runtime the network commands run on (two workers: the machine size we
/// plan for).
pub(crate) fn tokio() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

#[cfg(test)]
mod tests {
    use super::split_words;

    #[test]
    fn words_keep_quoted_and_bracketed_values_whole() {
        let w = split_words(r#"post "hello world" {a: 1, b: [2, 3]} 'x y'"#).unwrap();
        assert_eq!(
            w,
            vec!["post", "\"hello world\"", "{a: 1, b: [2, 3]}", "'x y'"]
        );
    }

    #[test]
    fn escaped_quote_does_not_end_a_string() {
        let w = split_words(r#"post "say \"hi\" now""#).unwrap();
        assert_eq!(w, vec!["post", r#""say \"hi\" now""#]);
    }

    #[test]
    fn unbalanced_input_is_an_error() {
        assert!(split_words("post \"open").is_err());
        assert!(split_words("set [1, 2").is_err());
    }
}
