//! `lo new NAME --lang rust|python|js` writes a project for a new live object, and
//! `lo build` in it produces the component (`NAME.wasm`) to run, call and publish.
//!
//! A Rust project carries its own copy of the guest SDK and the object WIT (the
//! SDK is not on crates.io), so it builds anywhere `cargo` and the
//! `wasm32-wasip2` target are; a Python project needs `componentize-py`, a
//! JavaScript one `componentize-js` (npm).

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use liveobjects_host::local::LocalGroup;
use liveobjects_host::runtime::Runtime;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

/// The object WIT, 0.3 (what the Rust SDK implements), as this `lo` speaks it.
const OBJECT_WIT: &str = include_str!("../../../wit/object.wit");
/// 0.2 of the object WIT: 0.3 exports its lifecycle.
const OBJECT_WIT_0_2: &str = include_str!("../../../wit/deps/object-0.2/object.wit");
/// 0.1 of the object WIT: 0.2 imports its host interface, and the Python and
/// JavaScript templates implement it (they have no use for `deliver-batch`).
const OBJECT_WIT_0_1: &str = include_str!("../../../wit/deps/object-0.1/object.wit");
/// The Rust guest SDK's sources, copied into a new Rust project.
const SDK_LIB: &str = include_str!("../../../guest-sdk/src/lib.rs");
const SDK_AGGREGATE: &str = include_str!("../../../guest-sdk/src/aggregate.rs");
/// The componentize-py release the Python template is built and tested with.
pub const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";
/// The componentize-js release the JavaScript template is built and tested with.
pub const COMPONENTIZE_JS: &str = "@bytecodealliance/componentize-js@0.23.0";

/// A language a new object can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    /// Rust with the liveobjects guest SDK (cargo, wasm32-wasip2).
    Rust,
    /// Python with componentize-py.
    Python,
    /// JavaScript with componentize-js.
    Js,
}

/// `lo new`
#[derive(Args, Debug)]
pub struct NewArgs {
    /// The object's name: lowercase words joined by `-` (it names the folder, the
    /// WIT interface and the component).
    name: String,
    /// The language to write it in.
    #[arg(long, value_enum, default_value = "rust")]
    lang: Lang,
    /// Where to create the project folder (default: ./NAME).
    #[arg(long, value_name = "DIR")]
    path: Option<PathBuf>,
}

/// `lo build`
#[derive(Args, Debug)]
pub struct BuildArgs {
    /// The project folder (default: the current one).
    #[arg(default_value = ".")]
    dir: PathBuf,
}

/// What a project folder is, read back from the files `lo new` wrote.
struct Project {
    dir: PathBuf,
    name: String,
    lang: Lang,
}

pub fn new(args: NewArgs) -> Result<()> {
    check_name(&args.name)?;
    let dir = args.path.unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists() {
        bail!(
            "{} exists already; choose another name or --path",
            dir.display()
        );
    }
    let files = match args.lang {
        Lang::Rust => rust_files(&args.name),
        Lang::Python => python_files(&args.name),
        Lang::Js => js_files(&args.name),
    };
    for (rel, text) in &files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!(
        "created {} ({:?}): a replicated counter with one update (add) and one query (get)",
        dir.display(),
        args.lang
    );
    println!("next: cd {} && lo build", dir.display());
    Ok(())
}

pub fn build(args: BuildArgs) -> Result<()> {
    let project = Project::read(&args.dir)?;
    let out = project.dir.join(format!("{}.wasm", project.name));
    project.build(&out)?;
    println!("built {}", out.display());
    println!(
        "try: lo inspect {0}; lo call {0} add 5; lo call {0} get",
        out.display()
    );
    Ok(())
}

impl Project {
    fn read(dir: &Path) -> Result<Project> {
        let marker = dir.join("liveobject.toml");
        let text = std::fs::read_to_string(&marker).with_context(|| {
            format!(
                "{} is not a live object project (no liveobject.toml); create one with \
                 `lo new NAME`",
                dir.display()
            )
        })?;
        /// `liveobject.toml`, as `marker` writes it.
        #[derive(serde::Deserialize)]
        struct Marker {
            name: String,
            lang: Lang,
        }
        let Marker { name, lang } = toml::from_str(&text).with_context(|| {
            format!(
                "{} does not say the project's name and lang (rust, python or js)",
                marker.display()
            )
        })?;
        check_name(&name)?;
        Ok(Project {
            dir: dir.to_path_buf(),
            name,
            lang,
        })
    }

    /// Build the component into `out`.
    fn build(&self, out: &Path) -> Result<()> {
        match self.lang {
            Lang::Rust => build_rust(self, out),
            Lang::Python => build_python(self, out),
            Lang::Js => build_js(self, out),
        }
    }

    /// The files a build reads: the sources, the WIT and the manifests.
    fn sources(&self) -> Vec<PathBuf> {
        let roots: &[&str] = match self.lang {
            Lang::Rust => &["src", "wit", "sdk", "Cargo.toml"],
            Lang::Python => &["app.py", "wit"],
            Lang::Js => &["app.js", "wit"],
        };
        let mut files = Vec::new();
        let mut pending: Vec<PathBuf> = roots.iter().map(|r| self.dir.join(r)).collect();
        while let Some(path) = pending.pop() {
            match std::fs::read_dir(&path) {
                Ok(entries) => pending.extend(entries.flatten().map(|e| e.path())),
                Err(_) if path.is_file() => files.push(path),
                Err(_) => {}
            }
        }
        files.sort();
        files
    }

    /// What changes when a source is edited, added or removed: each source with
    /// its modification time and size.
    fn sources_stamp(&self) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
        self.sources()
            .into_iter()
            .map(|path| {
                let meta = std::fs::metadata(&path).ok();
                let modified = meta.as_ref().and_then(|m| m.modified().ok());
                let len = meta.map_or(0, |m| m.len());
                (path, modified, len)
            })
            .collect()
    }
}

/// Names become WIT identifiers, a folder, a crate and a Python class: lowercase
/// words of letters and digits, joined by `-`, starting with a letter.
fn check_name(name: &str) -> Result<()> {
    let words_ok = name.split('-').all(|w| {
        w.chars().next().is_some_and(|c| c.is_ascii_lowercase())
            && w.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    });
    if !words_ok || name.len() > 40 {
        bail!(
            "`{name}` is not a valid object name: use lowercase words of letters and digits \
             joined by `-`, each starting with a letter (e.g. `hits` or `page-views`)"
        );
    }
    Ok(())
}

fn snake(name: &str) -> String {
    name.replace('-', "_")
}

/// `page-views` -> `pageViews`: how componentize-js names an exported interface.
fn lower_camel(name: &str) -> String {
    let upper = camel(name);
    let mut chars = upper.chars();
    chars
        .next()
        .map(|c| c.to_ascii_lowercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

fn camel(name: &str) -> String {
    name.split('-')
        .map(|w| {
            let mut chars = w.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// The object's own WIT: a counter's interface.
fn interface_wit(name: &str) -> String {
    format!(
        "package liveobjects:{name}@0.1.0;

/// A replicated counter: `add` is an update every replica applies, `get` reads
/// this replica's state.
interface {name} {{
    /// Add `n` on every replica.
    add: func(n: s64);
    /// The total at this replica.
    get: func() -> s64;
}}
"
    )
}

fn marker(name: &str, lang: &str) -> String {
    format!("# Written by `lo new`; `lo build` reads it.\nname = \"{name}\"\nlang = \"{lang}\"\n")
}

fn readme(name: &str, build_needs: &str) -> String {
    format!(
        "# {name}

A live object: every host that joins it runs this code in a sandbox, and the
host keeps the replicas in step. State changes only when an event is delivered
(`add` multicasts one), so every replica computes the same state.

Build it ({build_needs}), then try it locally:

```sh
lo build
lo inspect {name}.wasm
lo call {name}.wasm add 5
lo call {name}.wasm get
lo run {name}.wasm --replicas 3
```

Publish it and join it from hosts running `lo node`:

```sh
lo publish {name}.wasm --name lo://ZONE/{name} --reliability total-order
lo join lo://ZONE/{name} --found
```
"
    )
}

fn rust_files(name: &str) -> Vec<(String, String)> {
    let snake = snake(name);
    let camel = camel(name);
    let cargo = format!(
        "[package]
name = \"{name}\"
version = \"0.1.0\"
edition = \"2024\"

[lib]
crate-type = [\"cdylib\"]

[dependencies]
liveobjects-guest = {{ path = \"sdk\" }}
wit-bindgen = {{ version = \"0.63\", default-features = false, features = [\"macros\", \"realloc\", \"std\", \"macro-string\"] }}
serde = {{ version = \"1\", features = [\"derive\"] }}

# A project of its own, even inside another workspace.
[workspace]

[profile.release]
opt-level = \"s\"
lto = true
codegen-units = 1
strip = true
panic = \"abort\"
"
    );
    let sdk_cargo = "[package]
name = \"liveobjects-guest\"
version = \"0.1.0\"
edition = \"2024\"
description = \"The liveobjects guest SDK, copied here by `lo new`.\"

[dependencies]
wit-bindgen = { version = \"0.63\", default-features = false, features = [\"macros\", \"realloc\", \"std\", \"macro-string\"] }
serde = { version = \"1\", features = [\"derive\"] }
postcard = { version = \"1\", features = [\"alloc\"] }
"
    .to_string();
    let interface = interface_wit(name);
    let lib = format!(
        "//! `{name}`: a replicated counter. `add(n)` is an update (an event every
//! replica applies), `get()` a query of this replica's state.

use liveobjects_guest::{{EventContext, LiveObject}};
use serde::{{Deserialize, Serialize}};

wit_bindgen::generate!({{
    inline: r#\"
{interface}
world {name}-object {{
    export {name};
}}
\"#,
}});

/// The state every replica keeps (its snapshot is this, encoded).
#[derive(Default, Serialize, Deserialize)]
struct {camel} {{
    total: i64,
}}

/// What an update multicasts; every replica applies it in `apply`.
#[derive(Serialize, Deserialize)]
enum Event {{
    Add(i64),
}}

impl LiveObject for {camel} {{
    type Event = Event;

    fn apply(&mut self, event: Event, _ctx: &EventContext) -> Result<(), String> {{
        match event {{
            Event::Add(n) => {{
                self.total = self
                    .total
                    .checked_add(n)
                    .ok_or_else(|| format!(\"adding {{n}} would overflow {{}}\", self.total))?;
            }}
        }}
        Ok(())
    }}
}}

impl exports::liveobjects::{snake}::{snake}::Guest for {camel} {{
    fn add(n: i64) {{
        {camel}::emit(&Event::Add(n));
    }}

    fn get() -> i64 {{
        {camel}::read(|state| state.total)
    }}
}}

liveobjects_guest::export_object!({camel});
export!({camel});
"
    );
    vec![
        ("liveobject.toml".into(), marker(name, "rust")),
        ("Cargo.toml".into(), cargo),
        ("src/lib.rs".into(), lib),
        ("sdk/Cargo.toml".into(), sdk_cargo),
        ("sdk/src/lib.rs".into(), SDK_LIB.to_string()),
        ("sdk/src/aggregate.rs".into(), SDK_AGGREGATE.to_string()),
        ("wit/object.wit".into(), OBJECT_WIT.to_string()),
        (
            "wit/deps/object-0.2/object.wit".into(),
            OBJECT_WIT_0_2.to_string(),
        ),
        (
            "wit/deps/object-0.1/object.wit".into(),
            OBJECT_WIT_0_1.to_string(),
        ),
        (
            "README.md".into(),
            readme(name, "needs `rustup target add wasm32-wasip2`"),
        ),
        (".gitignore".into(), "/target\n*.wasm\n".into()),
    ]
}

/// The object's WIT with a world that includes the object world (for
/// componentize-py and componentize-js, which read the object WIT from `deps/`).
fn world_wit(name: &str) -> String {
    format!(
        "{}
world {name}-object {{
    include liveobjects:object/object@0.1.0;
    export {name};
}}
",
        interface_wit(name)
    )
}

fn python_files(name: &str) -> Vec<(String, String)> {
    let camel = camel(name);
    let wit = world_wit(name);
    let app = format!(
        "\"\"\"`{name}`: a replicated counter. `add(n)` is an update (an event every
replica applies), `get()` a query of this replica's state. State changes only in
`deliver`; the snapshot is canonical JSON, so replicas that applied the same
events return identical bytes.
\"\"\"

import json

from wit_world import exports
from wit_world.imports import host
from componentize_py_types import Err

_total = 0


class Lifecycle(exports.Lifecycle):
    def init(self, snapshot):
        global _total
        if snapshot is None:
            _total = 0
            return
        try:
            _total = int(json.loads(bytes(snapshot).decode(\"utf-8\"))[\"total\"])
        except (ValueError, KeyError, TypeError) as e:
            raise Err(f\"snapshot does not decode: {{e}}\")

    def deliver(self, event):
        global _total
        try:
            n = int(bytes(event.payload).decode(\"utf-8\"))
        except ValueError as e:
            raise Err(f\"event {{event.seq}} from {{event.sender}} is not a number: {{e}}\")
        _total += n

    def view_changed(self, view):
        pass

    def snapshot(self):
        return json.dumps({{\"total\": _total}}, separators=(\",\", \":\")).encode(\"utf-8\")


class {camel}(exports.{camel}):
    def add(self, n):
        host.multicast(str(n).encode(\"utf-8\"))

    def get(self):
        return _total
"
    );
    vec![
        ("liveobject.toml".into(), marker(name, "python")),
        ("app.py".into(), app),
        (format!("wit/{name}.wit"), wit),
        (
            "wit/deps/object/object.wit".into(),
            OBJECT_WIT_0_1.to_string(),
        ),
        (
            "README.md".into(),
            readme(name, &format!("needs `pip install {COMPONENTIZE_PY}`")),
        ),
        (".gitignore".into(), "__pycache__/\n*.wasm\n".into()),
    ]
}

fn js_files(name: &str) -> Vec<(String, String)> {
    let export = lower_camel(name);
    let app = format!(
        "// `{name}`: a replicated counter. `add(n)` is an update (an event every
// replica applies), `get()` a query of this replica's state. State changes only
// in `deliver`; a thrown string is the `err` the host reports as a rejection.
// WIT's s64 is a BigInt here.
import {{ multicast }} from \"liveobjects:object/host@0.1.0\";

let total = 0n;

export const lifecycle = {{
  init(snapshot) {{
    total = 0n;
    if (snapshot === undefined || snapshot === null) return;
    try {{
      total = BigInt(JSON.parse(new TextDecoder().decode(snapshot)).total);
    }} catch (e) {{
      throw `snapshot does not decode: ${{e}}`;
    }}
  }},
  deliver(event) {{
    let n;
    try {{
      n = BigInt(new TextDecoder().decode(event.payload));
    }} catch (e) {{
      throw `event ${{event.seq}} from ${{event.sender}} is not a number: ${{e}}`;
    }}
    total += n;
  }},
  viewChanged(view) {{}},
  snapshot() {{
    return new TextEncoder().encode(JSON.stringify({{ total: total.toString() }}));
  }},
}};

export const {export} = {{
  add(n) {{
    multicast(new TextEncoder().encode(n.toString()));
  }},
  get() {{
    return total;
  }},
}};
"
    );
    vec![
        ("liveobject.toml".into(), marker(name, "js")),
        ("app.js".into(), app),
        (format!("wit/{name}.wit"), world_wit(name)),
        (
            "wit/deps/object/object.wit".into(),
            OBJECT_WIT_0_1.to_string(),
        ),
        (
            "README.md".into(),
            readme(name, &format!("needs `npm install {COMPONENTIZE_JS}`")),
        ),
        (".gitignore".into(), "node_modules/\n*.wasm\n".into()),
    ]
}

fn build_js(project: &Project, out: &Path) -> Result<()> {
    let mut cmd = Command::new("componentize-js");
    cmd.args(["app.js", "--wit", "wit", "--world-name"])
        .arg(format!("liveobjects:{0}/{0}-object@0.1.0", project.name))
        // No clocks, randomness, stdio or HTTP: replicas must stay deterministic.
        .args([
            "-d",
            "stdio",
            "random",
            "clocks",
            "http",
            "fetch-event",
            "-o",
        ])
        .arg(out.file_name().expect("NAME.wasm"))
        .current_dir(&project.dir);
    run_tool(
        cmd,
        "componentize-js",
        &format!("install it with `npm install -g {COMPONENTIZE_JS}`"),
    )
}

fn build_rust(project: &Project, out: &Path) -> Result<()> {
    let mut cmd = Command::new("cargo");
    cmd.args(["build", "--release", "--target", "wasm32-wasip2"])
        .current_dir(&project.dir);
    run_tool(
        cmd,
        "cargo",
        "install Rust (rustup.rs), then `rustup target add wasm32-wasip2`",
    )?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| project.dir.join("target"));
    let built = target
        .join("wasm32-wasip2/release")
        .join(format!("{}.wasm", snake(&project.name)));
    std::fs::copy(&built, out)
        .with_context(|| format!("cannot copy {} to {}", built.display(), out.display()))?;
    Ok(())
}

fn build_python(project: &Project, out: &Path) -> Result<()> {
    let mut cmd = Command::new("componentize-py");
    cmd.args(["-d", "wit", "-w"])
        .arg(format!("liveobjects:{0}/{0}-object@0.1.0", project.name))
        .args(["componentize", "app", "-o"])
        .arg(out.file_name().expect("NAME.wasm"))
        .current_dir(&project.dir);
    run_tool(
        cmd,
        "componentize-py",
        &format!("install it with `pip install {COMPONENTIZE_PY}`"),
    )
}

/// Run a build tool in the foreground, its output on our stderr (it is progress,
/// not a result); a missing tool is named with how to install it.
fn run_tool(mut cmd: Command, tool: &str, install: &str) -> Result<()> {
    eprintln!("running {tool} ...");
    let status = match cmd.stdout(std::io::stderr()).status() {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("`{tool}` is not installed: {install}")
        }
        Err(e) => return Err(e).with_context(|| format!("cannot run {tool}")),
    };
    if !status.success() {
        bail!("{tool} failed ({status}); see its output above");
    }
    Ok(())
}

/// `lo dev`
#[derive(Args, Debug)]
pub struct DevArgs {
    /// The project folder (default: the current one).
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// Local replicas to run (members m1, m2, ...).
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// How often to look for changed sources, in milliseconds.
    #[arg(long, default_value_t = 500, value_name = "MS")]
    poll_ms: u64,
    #[command(flatten)]
    pub(crate) runtime: super::RuntimeArgs,
}

/// Build the project, run its replicas in this process with the interactive
/// prompt of `lo run`, and rebuild and reload whenever a source changes: the
/// replicas restart from a snapshot taken with the old code, so their state
/// carries over wherever the new code still loads it (else they start afresh,
/// and say why). A build that fails leaves the running version in place.
pub fn dev(runtime: &Runtime, args: DevArgs) -> Result<()> {
    if args.replicas == 0 {
        bail!("--replicas must be at least 1");
    }
    let project = Project::read(&args.dir)?;
    let out = project.dir.join(format!("{}.wasm", project.name));
    project.build(&out)?;
    let names: Vec<String> = (1..=args.replicas).map(|i| format!("m{i}")).collect();
    let members: Vec<&str> = names.iter().map(String::as_str).collect();
    let object = format!("local:{}", project.name);
    let mut logic = super::load(runtime, &out)?;
    let mut group = LocalGroup::start(runtime, &logic, &object, &members, None)?;
    println!(
        "dev: {} replica(s) of {} (sha256 {}); edit the sources to rebuild and reload. \
         Type .help for help.",
        args.replicas,
        out.display(),
        &logic.hash().to_hex()[..16]
    );
    // Lines from stdin arrive on a channel, so the loop can also watch the sources.
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = project.sources_stamp();
    let poll = std::time::Duration::from_millis(args.poll_ms.max(50));
    loop {
        match lines.recv_timeout(poll) {
            Ok(line) => {
                if !super::repl_line(&mut group, &logic, &names, line.trim()) {
                    break;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
        let now = project.sources_stamp();
        if now == seen {
            continue;
        }
        seen = now;
        println!("dev: sources changed; rebuilding");
        if let Err(e) = project.build(&out) {
            println!("dev: the build failed ({e:#}); still running the previous version");
            continue;
        }
        let new_logic = match super::load(runtime, &out) {
            Ok(l) => l,
            Err(e) => {
                println!(
                    "dev: cannot load the new build ({e:#}); still running the previous version"
                );
                continue;
            }
        };
        let snapshot = group.replica_mut(0).snapshot()?;
        let next_seqs: Vec<u64> = members.iter().map(|m| group.next_seq(m)).collect();
        let restarted = match LocalGroup::start(
            runtime,
            &new_logic,
            &object,
            &members,
            Some(&snapshot),
        ) {
            Ok(g) => {
                println!(
                    "dev: reloaded (sha256 {}); state kept ({} bytes)",
                    &new_logic.hash().to_hex()[..16],
                    snapshot.len()
                );
                g
            }
            Err(e) => {
                println!(
                    "dev: reloaded (sha256 {}); the new code refused the old state ({e}), so it starts afresh",
                    &new_logic.hash().to_hex()[..16]
                );
                LocalGroup::start(runtime, &new_logic, &object, &members, None)?
            }
        };
        group = restarted;
        for (member, seq) in members.iter().zip(next_seqs) {
            group.set_next_seq(member, seq);
        }
        logic = new_logic;
    }
    Ok(())
}
