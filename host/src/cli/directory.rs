//! `lo keygen`, `lo directory serve`, `lo zone`, `lo publish`, `lo ls`, `lo resolve`,
//! `lo fetch`.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use liveobjects_directory::client::{
    Client, ClientError, ResolveError, Resolver, SeenVersions, ServerAddr,
};
use liveobjects_directory::keys::{Identity, MemberName, PublicKey, default_identity_path};
use liveobjects_directory::name::Name;
use liveobjects_directory::protocol::{DEFAULT_MAX_BLOB_BYTES, ErrorCode};
use liveobjects_directory::record::{
    AccessPolicy, Category, Delegation, DriverConfig, ObjectRecord, ObjectType, Reliability,
    Security, Signed,
};
use liveobjects_directory::server::{
    MirrorOf, Registration, ServeOptions, Server, ServerConfig, unix_now,
};
use liveobjects_directory::verify::{VerifiedRecord, verify_chain};
use liveobjects_host::json::record_json;
use liveobjects_host::runtime::Runtime;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Default directory address.
const DEFAULT_DIRECTORY: &str = "127.0.0.1:4433";

/// Where the directory is and which root key to trust.
#[derive(Args, Debug, Clone)]
pub struct DirectoryTarget {
    /// Directory servers (QUIC), comma-separated, tried in order: `ADDR` for the
    /// root's primary (it must hold the root key) or `KEY@ADDR` for a mirror (it
    /// must hold KEY, printed by `lo directory serve --secondary-of`).
    #[arg(long, env = "LO_DIRECTORY", default_value = DEFAULT_DIRECTORY, value_delimiter = ',')]
    pub(super) directory: Vec<String>,
    /// The root public key to trust (printed by `lo directory serve`).
    #[arg(long, env = "LO_ROOT_KEY")]
    root: Option<PublicKey>,
}

impl DirectoryTarget {
    /// The servers to try, in order, each with the key it must present.
    pub(super) fn servers(&self) -> Result<Vec<ServerAddr>> {
        let root = root_key(self)?;
        self.directory
            .iter()
            .map(|s| ServerAddr::parse(s.trim(), Some(root)).map_err(anyhow::Error::msg))
            .collect()
    }

    /// A client of these servers (failing over between them).
    pub(super) async fn client(&self) -> Result<Client> {
        Ok(Client::connect_any(&self.servers()?).await?)
    }
}

/// Which secret key signs.
#[derive(Args, Debug, Clone)]
pub struct KeyArg {
    /// Secret key file (default: ~/.config/liveobjects/identity.key, from `lo keygen`).
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
}

/// `lo directory ...`
#[derive(Subcommand, Debug)]
pub enum DirectoryCommand {
    /// Serve a directory over QUIC from an embedded database until killed: a
    /// primary (with --root-key), or a read-only mirror of one (--secondary-of).
    Serve {
        /// The root's secret key file (it signs top-level zones and freshness
        /// statements). A primary needs it; a mirror must not have it.
        #[arg(long, value_name = "FILE", required_unless_present = "secondary_of")]
        root_key: Option<PathBuf>,
        /// Mirror the primary at this address: pull its contents (incrementally)
        /// and serve them read-only, with its freshness statements.
        #[arg(
            long,
            value_name = "ADDR",
            conflicts_with = "root_key",
            requires = "root"
        )]
        secondary_of: Option<SocketAddr>,
        /// The root public key (a mirror checks its primary by it).
        #[arg(long, env = "LO_ROOT_KEY")]
        root: Option<PublicKey>,
        /// A mirror's own key file, which it presents to clients (default: your
        /// identity, from `lo keygen`).
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
        /// How often a mirror pulls from its primary, in seconds.
        #[arg(long, value_name = "SECS", default_value_t = 5)]
        refresh: u64,
        /// How long the primary's freshness statements are valid, in seconds
        /// (re-signed when half is left). Clients refuse a server whose last
        /// statement expired.
        #[arg(long, value_name = "SECS", default_value_t = liveobjects_directory::fresh::DEFAULT_VALIDITY_SECS)]
        freshness: u64,
        /// Serve a database restored from an older backup as current. Without it a
        /// primary that finds its database older than statements it signed before
        /// neither signs nor accepts writes.
        #[arg(long)]
        accept_restored_database: bool,
        /// UDP address to listen on.
        #[arg(long, default_value = DEFAULT_DIRECTORY)]
        listen: SocketAddr,
        /// Database file (default: ~/.local/share/liveobjects/directory.redb).
        #[arg(long, value_name = "FILE")]
        db: Option<PathBuf>,
        /// Largest logic blob accepted, in bytes.
        #[arg(long, default_value_t = DEFAULT_MAX_BLOB_BYTES)]
        max_blob_bytes: usize,
        /// Who may create top-level zones: `closed` (only the root key), `open`
        /// (any key), or `keys:KEY,KEY,...` (the root key and these).
        #[arg(long, value_name = "POLICY", default_value = "closed")]
        registration: Registration,
    },
}

/// `lo zone ...`
#[derive(Subcommand, Debug)]
pub enum ZoneCommand {
    /// Ask the directory's root for a top-level zone owned by your key.
    Create {
        /// The zone, e.g. lo://acme/
        zone: String,
        #[command(flatten)]
        key: KeyArg,
        #[command(flatten)]
        target: DirectoryTarget,
    },
    /// Hand a zone to a new key. The current key may still sign for the grace
    /// period (clients accept both); records must be republished with the new key
    /// before it ends. For a top-level zone, sign with the zone's current key; for
    /// a zone inside another, with the enclosing zone's key.
    Rollover {
        /// The zone, e.g. lo://acme/
        zone: String,
        /// Public key of its new owner.
        #[arg(long)]
        to: PublicKey,
        /// Seconds the current key may still sign.
        #[arg(long, value_name = "SECS", default_value_t = DEFAULT_GRACE_SECS)]
        grace: u64,
        #[command(flatten)]
        key: KeyArg,
        #[command(flatten)]
        target: DirectoryTarget,
    },
    /// End a rolled-over key's grace period now: records it signed are refused.
    Revoke {
        /// The zone, e.g. lo://acme/
        zone: String,
        /// The old key to revoke.
        #[arg(long)]
        old: PublicKey,
        #[command(flatten)]
        key: KeyArg,
        #[command(flatten)]
        target: DirectoryTarget,
    },
    /// Hand a folder inside your zone to another key.
    Delegate {
        /// The new zone, e.g. lo://acme/games/
        zone: String,
        /// Public key of its new owner.
        #[arg(long)]
        to: PublicKey,
        /// Directory servers that serve it (host:port), if not this one.
        #[arg(long = "server")]
        servers: Vec<String>,
        /// Validity in seconds.
        #[arg(long, default_value_t = 365 * 24 * 3600)]
        ttl: u64,
        #[command(flatten)]
        key: KeyArg,
        #[command(flatten)]
        target: DirectoryTarget,
    },
}

/// How long a rolled-over key keeps signing by default: a day.
const DEFAULT_GRACE_SECS: u64 = 24 * 3600;

/// `lo publish`
#[derive(Args, Debug)]
pub struct PublishArgs {
    /// The component (.wasm).
    file: PathBuf,
    /// The object's name, e.g. lo://acme/rooms/lobby
    #[arg(long)]
    name: String,
    /// Driver: mesh, qsm, vsync or gossip.
    #[arg(long, default_value = "mesh")]
    driver: String,
    /// Driver options, key=value (repeatable).
    #[arg(long = "driver-opt", value_name = "KEY=VALUE")]
    driver_opts: Vec<String>,
    /// Category.
    #[arg(long, default_value = "replicated-state")]
    category: Category,
    /// Reliability the object needs.
    #[arg(long, default_value = "reliable-fifo")]
    reliability: Reliability,
    /// Security.
    #[arg(long, default_value = "open")]
    security: Security,
    /// Who may join: open, keys:KEY1,KEY2 or grants:ISSUER.
    #[arg(long, default_value = "open")]
    policy: AccessPolicy,
    /// The interface aspect (default: the component's own exported interface).
    #[arg(long)]
    interface: Option<String>,
    /// Validity of the record in seconds.
    #[arg(long, default_value_t = 30 * 24 * 3600)]
    ttl: u64,
    /// Publish as this version (default: one above the current verified record; use
    /// it to replace a record that no longer verifies).
    #[arg(long)]
    version: Option<u64>,
    /// Publish even if the new logic removes or changes methods of the current
    /// version's interface (hosts running the object switch to it live, and
    /// callers of those methods then fail).
    #[arg(long)]
    breaking: bool,
    /// After publishing, wait up to SECS (default 120) for the node at
    /// --control, which has joined the object, to switch to the new version
    /// live, and say how it went: exits non-zero if the upgrade was refused or
    /// aborted (the reason is printed) or did not come in time. Drivers
    /// without live upgrade (qsm, gossip) refuse it before publishing.
    #[arg(
        long,
        value_name = "SECS",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "120"
    )]
    watch: Option<u64>,
    #[command(flatten)]
    control: super::node::ControlArg,
    #[command(flatten)]
    key: KeyArg,
    #[command(flatten)]
    target: DirectoryTarget,
    #[command(flatten)]
    pub(crate) runtime: super::RuntimeArgs,
}

/// `lo ls`
#[derive(Args, Debug)]
pub struct LsArgs {
    /// A folder, e.g. lo://acme/
    folder: String,
    /// Print JSON: {"folder", "folders": [...], "records": [record, ...]}, each
    /// record as `lo resolve --json` prints it.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: DirectoryTarget,
}

/// `lo resolve`
#[derive(Args, Debug)]
pub struct ResolveArgs {
    /// An object name.
    name: String,
    /// Print the verified record as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: DirectoryTarget,
}

/// `lo fetch`
#[derive(Args, Debug)]
pub struct FetchArgs {
    /// An object name.
    name: String,
    /// Output file.
    #[arg(short, long)]
    out: PathBuf,
    #[command(flatten)]
    target: DirectoryTarget,
}

fn identity_path(key: &KeyArg) -> Result<PathBuf> {
    match &key.key {
        Some(p) => Ok(p.clone()),
        None => default_identity_path().context("HOME is not set; pass --key FILE"),
    }
}

pub(super) fn load_identity(key: &KeyArg) -> Result<Identity> {
    let path = identity_path(key)?;
    Identity::load(&path).with_context(|| {
        format!(
            "loading your key {} (create one with `lo keygen`, or pass --key FILE)",
            path.display()
        )
    })
}

pub(super) fn root_key(target: &DirectoryTarget) -> Result<PublicKey> {
    target.root.context(
        "no root key to trust: pass --root KEY (printed by `lo directory serve`) or set LO_ROOT_KEY",
    )
}

pub(super) async fn resolver(target: &DirectoryTarget) -> Result<Resolver> {
    let root = root_key(target)?;
    let client = target.client().await?;
    let seen_path = super::data_dir()?.join("seen-versions.redb");
    let seen = SeenVersions::open(&seen_path)?;
    Ok(Resolver::new(client, root, Some(seen)))
}

pub fn keygen(out: Option<PathBuf>, name: Option<MemberName>) -> Result<()> {
    let path = match out {
        Some(p) => p,
        None => default_identity_path().context("HOME is not set; pass --out FILE")?,
    };
    let identity = Identity::generate().with_name(name);
    identity.save(&path)?;
    println!("public key {}", identity.public());
    if let Some(name) = name {
        println!("name {name}: others see you as {}", identity.label());
    }
    println!("secret key written to {} (mode 600)", path.display());
    Ok(())
}

pub fn directory(cmd: DirectoryCommand) -> Result<()> {
    let DirectoryCommand::Serve {
        root_key,
        secondary_of,
        root,
        key,
        refresh,
        freshness,
        accept_restored_database,
        listen,
        db,
        max_blob_bytes,
        registration,
    } = cmd;
    let (identity, mirror_of) = match (root_key, secondary_of) {
        (Some(root_key), None) => (
            Identity::load(&root_key)
                .with_context(|| format!("loading the root key {}", root_key.display()))?,
            None,
        ),
        (None, Some(primary)) => {
            let root = root.context("a mirror needs --root KEY to check its primary by")?;
            let identity = load_identity(&KeyArg { key })?;
            if identity.public() == root {
                bail!(
                    "a mirror must not hold the root key: give it a key of its own \
                     (`lo keygen --out mirror.key`, then --key mirror.key)"
                );
            }
            let refresh = std::time::Duration::from_secs(refresh.max(1));
            (
                identity,
                Some(MirrorOf {
                    primary,
                    root,
                    refresh,
                }),
            )
        }
        _ => bail!("give either --root-key FILE (a primary) or --secondary-of ADDR (a mirror)"),
    };
    let db_path = match db {
        Some(p) => p,
        None => super::data_dir()?.join("directory.redb"),
    };
    if let Some(dir) = db_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let public = identity.public();
    super::tokio()?.block_on(async move {
        let server = Server::start(ServerConfig {
            listen,
            db_path: db_path.clone(),
            root: identity,
            max_blob_bytes,
            registration,
            options: ServeOptions {
                freshness_secs: freshness,
                accept_restored: accept_restored_database,
                mirror_of: mirror_of.clone(),
            },
        })?;
        // Whoever started us may stop reading stdout; that must not stop the server.
        let mut out = std::io::stdout();
        let addr = server.local_addr();
        let _ = writeln!(out, "directory listening on {addr}");
        match &mirror_of {
            None => {
                let _ = writeln!(out, "root key {public}");
            }
            Some(of) => {
                let _ = writeln!(out, "mirror of {} (root key {})", of.primary, of.root);
                let _ = writeln!(
                    out,
                    "mirror key {public} (clients: --directory {public}@{addr})"
                );
            }
        }
        let _ = writeln!(out, "database {}", db_path.display());
        if let Some(reason) = server.directory().restored() {
            let _ = writeln!(out, "warning: {reason}");
        }
        let _ = out.flush();
        // Serve until the process is stopped.
        std::future::pending::<()>().await;
        Ok(())
    })
}

pub fn zone(cmd: ZoneCommand) -> Result<()> {
    super::tokio()?.block_on(async move {
        match cmd {
            ZoneCommand::Create { zone, key, target } => {
                let owner = load_identity(&key)?;
                let client = target.client().await?;
                client.create_zone(&zone, &owner).await?;
                println!("zone {zone} created, owned by {}", owner.public());
            }
            ZoneCommand::Rollover {
                zone,
                to,
                grace,
                key,
                target,
            } => {
                let (signer, root, client, current) = existing_zone(&key, &target, &zone).await?;
                let now = unix_now();
                if is_top_level(&zone)? {
                    client
                        .rollover_zone(&root, &zone, current.version, to, grace, &signer)
                        .await?;
                } else {
                    let changed = current.rolled_over(to, grace, now);
                    client.delegate(Signed::sign(&changed, &signer)).await?;
                }
                let old = if grace == 0 || current.key == to {
                    format!("{} may no longer sign", current.key)
                } else {
                    format!("{} may sign for {grace} s more", current.key)
                };
                println!(
                    "zone {zone} rolled over to {to} (version {}); {old}; republish its \
                     records and re-sign the zones delegated inside it with the new key",
                    current.version + 1,
                );
            }
            ZoneCommand::Revoke {
                zone,
                old,
                key,
                target,
            } => {
                let (signer, root, client, current) = existing_zone(&key, &target, &zone).await?;
                if !current.in_grace(&old, unix_now()) {
                    bail!(
                        "{old} is not a key in grace in {zone} (it is owned by {}); to replace \
                         the current key, use `lo zone rollover {zone} --to NEWKEY --grace 0`",
                        current.key
                    );
                }
                if is_top_level(&zone)? {
                    client
                        .revoke_key(&root, &zone, current.version, old, &signer)
                        .await?;
                } else {
                    let changed = current.revoking(&old, unix_now());
                    client.delegate(Signed::sign(&changed, &signer)).await?;
                }
                println!("key {old} revoked in {zone}: records it signed are refused");
            }
            ZoneCommand::Delegate {
                zone,
                to,
                servers,
                ttl,
                key,
                target,
            } => {
                let owner = load_identity(&key)?;
                let root = root_key(&target)?;
                let client = target.client().await?;
                // Bump the version of an existing delegation of this zone, and keep
                // the keys it still has in grace.
                let current = current_delegation(&client, root, &zone).await?;
                let version = match &current {
                    Some(d) => d
                        .version
                        .checked_add(1)
                        .context("delegation version overflow")?,
                    None => 1,
                };
                let now = unix_now();
                let mut delegation = Delegation::new(&zone, to, version, now, ttl);
                delegation.servers = servers;
                if let Some(current) = current {
                    delegation.previous = current
                        .previous
                        .into_iter()
                        .filter(|p| now < p.until && p.key != to)
                        .collect();
                }
                client.delegate(Signed::sign(&delegation, &owner)).await?;
                println!("zone {zone} delegated to {to} (version {version})");
            }
        }
        Ok(())
    })
}

/// Whether `zone` is a top-level zone (its delegation is signed by the root).
fn is_top_level(zone: &str) -> Result<bool> {
    let name = Name::parse(zone)?;
    if !name.is_folder() {
        bail!("{zone} is not a zone (zones are folders, ending in /)");
    }
    Ok(name.segments().len() == 1)
}

/// What changing an existing zone takes: the signing key, the trusted root, a
/// client, and the zone's current delegation.
async fn existing_zone(
    key: &KeyArg,
    target: &DirectoryTarget,
    zone: &str,
) -> Result<(Identity, PublicKey, Client, Delegation)> {
    let signer = load_identity(key)?;
    let root = root_key(target)?;
    let client = target.client().await?;
    let current = current_delegation(&client, root, zone)
        .await?
        .with_context(|| format!("no zone {zone} in the directory"))?;
    Ok((signer, root, client, current))
}

/// The current delegation of `zone`, if there is one. The zones above it are
/// verified from the root; its own delegation only decoded (its signer may be a
/// key whose grace ended, the very thing a new delegation repairs; the server
/// checks the version and who may sign the new one).
async fn current_delegation(
    client: &Client,
    root: PublicKey,
    zone: &str,
) -> Result<Option<Delegation>> {
    let chain = client.delegation_unverified(zone).await?;
    let is_zone = |d: &Signed<Delegation>| d.open().is_ok_and(|d| d.zone == zone);
    let above: Vec<_> = chain.iter().filter(|d| !is_zone(d)).cloned().collect();
    verify_chain(root, &above, unix_now())
        .with_context(|| format!("verifying the delegations above {zone}"))?;
    chain
        .iter()
        .find(|d| is_zone(d))
        .map(|d| {
            d.open()
                .with_context(|| format!("the delegation of {zone}"))
        })
        .transpose()
}

pub fn publish(runtime: &Runtime, args: PublishArgs) -> Result<()> {
    let name = Name::parse(&args.name)?;
    if name.is_folder() {
        bail!("{name} is a folder; objects have names like lo://zone/folder/object");
    }
    let identity = load_identity(&args.key)?;
    let bytes = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    // Refuse to publish what no host could run.
    let file_name = args.file.display().to_string();
    let checking = format!("compiling {file_name} to check it");
    let mut methods = None;
    let interface = if args.category == Category::GossipAggregate {
        super::slow_step(&checking, || {
            runtime.load_aggregate_bytes(&file_name, &bytes)
        })?;
        args.interface
            .unwrap_or_else(|| liveobjects_host::runtime::AGGREGATE_INTERFACE.to_string())
    } else {
        let logic = super::slow_step(&checking, || runtime.load_bytes(&file_name, &bytes))?;
        methods = Some(logic.interface().clone());
        match args.interface {
            Some(i) => i,
            None => logic
                .interface()
                .methods
                .iter()
                .find_map(|m| m.interface.clone())
                .unwrap_or_default(),
        }
    };
    let mut options = BTreeMap::new();
    for opt in &args.driver_opts {
        let (k, v) = opt
            .split_once('=')
            .with_context(|| format!("driver option `{opt}` is not KEY=VALUE"))?;
        options.insert(k.to_string(), v.to_string());
    }
    if args.watch.is_some()
        && !liveobjects_host::driver::driver(&args.driver).is_some_and(|d| d.live_upgrade)
    {
        bail!(
            "--watch: the {} driver has no live upgrade, so there is no switch to watch (hosts \
             running {name} keep the logic they run; a qsm group's joiners run its logic too)",
            args.driver
        );
    }
    let hash: [u8; 32] = Sha256::digest(&bytes).into();
    super::tokio()?.block_on(async move {
        let resolver = resolver(&args.target).await?;
        let version = match args.version {
            Some(v) => {
                // Over a record that verifies, the interface check applies too.
                if let Some(newer) = &methods
                    && !args.breaking
                    && let Ok(current) = resolver.resolve_fresh(name.as_str()).await
                {
                    refuse_breaking(runtime, &resolver, &current, newer).await?;
                }
                v
            }
            None => match resolver.resolve_fresh(name.as_str()).await {
                Ok(current) => {
                    if let Some(newer) = &methods
                        && !args.breaking
                    {
                        refuse_breaking(runtime, &resolver, &current, newer).await?;
                    }
                    current
                        .record
                        .version
                        .checked_add(1)
                        .context("the record's version cannot grow any more")?
                }
                Err(ResolveError::Client(ClientError::Refused {
                    code: ErrorCode::NotFound,
                    ..
                })) => 1,
                Err(e) => {
                    return Err(anyhow::Error::new(e).context(format!(
                        "reading the current version of {name} (pass --version N to publish \
                         over a record that does not verify)"
                    )));
                }
            },
        };
        let client = resolver.client();
        let mut record = ObjectRecord::new(name.as_str(), version, &bytes, unix_now(), args.ttl);
        record.object_type = ObjectType {
            interface,
            category: args.category,
            reliability: args.reliability,
            security: args.security,
        };
        record.driver = DriverConfig {
            name: args.driver,
            options,
        };
        record.policy = args.policy;
        liveobjects_host::join::check_type(&record, &Default::default())
            .map_err(|reason| anyhow::anyhow!("refusing to publish {name}: {reason}"))?;
        let blob = if client.has_blob(hash).await? {
            None
        } else {
            Some(bytes.clone())
        };
        let signed = Signed::sign(&record, &identity);
        let uploading = match &blob {
            Some(b) => format!("publishing {name}: uploading {} bytes of logic", b.len()),
            None => format!("publishing {name} (its logic is on the server already)"),
        };
        // The upload waits on the network: it runs on this runtime's workers while
        // this thread reports it if it takes long.
        let handle = tokio::runtime::Handle::current();
        let published = tokio::task::block_in_place(|| {
            super::slow_step(&uploading, || handle.block_on(client.publish(signed, blob)))
        });
        published?;
        println!(
            "published {name} version {} (logic sha256 {}, {} bytes)",
            record.version,
            hex::encode(hash),
            bytes.len()
        );
        if let Some(secs) = args.watch {
            let wait = std::time::Duration::from_secs(secs);
            super::node::watch_upgrade(&args.control, name.as_str(), record.version, wait).await?;
        }
        Ok(())
    })
}

/// Refuse to publish logic with the interface `newer` over `current` if it
/// removes or changes any of its methods: joined hosts switch to it live.
async fn refuse_breaking(
    runtime: &Runtime,
    resolver: &Resolver,
    current: &liveobjects_directory::verify::VerifiedRecord,
    newer: &liveobjects_host::runtime::ObjectInterface,
) -> Result<()> {
    let name = &current.record.name;
    if current.record.object_type.category == Category::GossipAggregate {
        return Ok(());
    }
    let bytes = resolver.fetch_logic(current).await.with_context(|| {
        format!(
            "fetching the logic of {name} version {} to check the new one does not break its \
             interface (pass --breaking to skip the check)",
            current.record.version
        )
    })?;
    let old = runtime.load_bytes(name, &bytes).with_context(|| {
        format!(
            "loading the logic of {name} version {}",
            current.record.version
        )
    })?;
    let broken = old.interface().breaking_changes(newer);
    if !broken.is_empty() {
        bail!(
            "refusing to publish {name}: the new logic {} of the interface of version {}. Hosts \
             running {name} switch to a new version live, and callers of those methods would \
             fail; pass --breaking to publish it anyway",
            broken.join(", "),
            current.record.version
        );
    }
    Ok(())
}

fn type_summary(r: &ObjectRecord) -> String {
    format!(
        "{} {} {} {}",
        if r.object_type.interface.is_empty() {
            "-"
        } else {
            &r.object_type.interface
        },
        r.object_type.category,
        r.object_type.reliability,
        r.object_type.security
    )
}

pub fn ls(args: LsArgs) -> Result<()> {
    let folder = if args.folder.ends_with('/') {
        args.folder.clone()
    } else {
        format!("{}/", args.folder)
    };
    Name::parse(&folder)?;
    super::tokio()?.block_on(async move {
        let resolver = resolver(&args.target).await?;
        let listing = resolver.list(&folder).await?;
        if args.json {
            let records: Vec<_> = listing.records.iter().map(record_json).collect();
            super::print_json(&serde_json::json!({
                "folder": folder,
                "folders": listing.folders,
                "records": records,
            }));
            return Ok(());
        }
        println!(
            "{:<36} {:<60} {:<7} {:>4} {:<12} {:>9}",
            "NAME", "TYPE", "DRIVER", "VER", "LOGIC", "SIZE"
        );
        for f in &listing.folders {
            println!("{f:<36} (folder)");
        }
        for v in &listing.records {
            let r = &v.record;
            println!(
                "{:<36} {:<60} {:<7} {:>4} {:<12} {:>9}",
                r.name,
                type_summary(r),
                r.driver.name,
                r.version,
                &hex::encode(r.logic.hash)[..12],
                r.logic.size
            );
        }
        if listing.folders.is_empty() && listing.records.is_empty() {
            println!("(empty)");
        }
        Ok(())
    })
}

fn print_record(v: &VerifiedRecord) {
    let r = &v.record;
    println!("name         {}", r.name);
    println!("version      {}", r.version);
    println!("type         {}", type_summary(r));
    println!(
        "logic \
         sha256 {} ({} bytes)",
        hex::encode(r.logic.hash),
        r.logic.size
    );
    let opts: Vec<String> = r
        .driver
        .options
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!("driver       {} {}", r.driver.name, opts.join(" "));
    println!("policy       {}", r.policy);
    println!("issued at    {} (Unix)", r.issued_at);
    println!("expires at   {} (Unix)", r.expires_at);
    println!("signed by    {}", v.signed.signer);
    println!(
        "chain \
     root {}",
        v.chain.root
    );
    for d in &v.chain.delegations {
        println!("             -> {} owned by {}", d.zone, d.key);
    }
    println!("verified     yes");
}

pub fn resolve(args: ResolveArgs) -> Result<()> {
    super::tokio()?.block_on(async move {
        let resolver = resolver(&args.target).await?;
        let v = resolver.resolve(&args.name).await?;
        if args.json {
            super::print_json(&record_json(&v));
        } else {
            print_record(&v);
        }
        Ok(())
    })
}

pub fn fetch(args: FetchArgs) -> Result<()> {
    super::tokio()?.block_on(async move {
        let resolver = resolver(&args.target).await?;
        let v = resolver.resolve(&args.name).await?;
        let bytes = resolver.fetch_logic(&v).await?;
        write_atomically(&args.out, &bytes)?;
        println!(
            "fetched {} version {}: {} bytes, sha256 verified, written to {}",
            v.record.name,
            v.record.version,
            bytes.len(),
            args.out.display()
        );
        Ok(())
    })
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("part");
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
