//! The `lo` binary, run as a real process.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

struct Lo {
    home: tempfile::TempDir,
}

impl Lo {
    fn new() -> Self {
        Lo {
            home: tempfile::tempdir().unwrap(),
        }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lo"));
        // Keep caches and state inside the test's own directory.
        cmd.env("XDG_CACHE_HOME", self.home.path().join("cache"))
            .env("XDG_DATA_HOME", self.home.path().join("data"))
            .env("HOME", self.home.path())
            .env_remove("RUST_LOG")
            .env("RUST_BACKTRACE", "0");
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("lo runs")
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn call_keeps_local_state_between_invocations() {
    let lo = Lo::new();
    let counter = liveobjects_objects::COUNTER;
    assert!(lo.run(&["call", counter, "add", "5"]).status.success());
    let out = lo.run(&["call", counter, "add", "-2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = lo.run(&["call", counter, "get"]);
    assert_eq!(stdout(&out).trim(), "3");
    // The compiled component was cached by content hash.
    let cached = std::fs::read_dir(lo.home.path().join("cache/liveobjects/compiled"))
        .unwrap()
        .count();
    assert_eq!(cached, 1);
    // --fresh starts over.
    let out = lo.run(&["call", counter, "get", "--fresh"]);
    assert_eq!(stdout(&out).trim(), "0");
}

#[test]
fn call_with_an_explicit_state_file_and_typed_values() {
    let lo = Lo::new();
    let state = lo.home.path().join("reg.state");
    let state = state.to_str().unwrap();
    let register = liveobjects_objects::REGISTER;
    let out = lo.run(&[
        "call",
        register,
        "set",
        "text(\"hello world\")",
        "--state",
        state,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = lo.run(&["call", register, "get-entry", "--state", state]);
    let text = stdout(&out);
    assert!(text.contains("value: text(\"hello world\")"), "{text}");
    assert!(text.contains("version: 1"), "{text}");
    assert!(text.contains("writer: \"local\""), "{text}");
}

#[test]
fn errors_exit_nonzero_with_a_specific_message() {
    let lo = Lo::new();
    let cases: [(&[&str], &str); 4] = [
        (
            &["call", liveobjects_objects::COUNTER, "increment"],
            "has no method `increment`",
        ),
        (
            &["call", liveobjects_objects::COUNTER, "add", "\"five\""],
            "argument 1 of `add: func(n: s64)`",
        ),
        (
            &["inspect", liveobjects_objects::STRANGER],
            "does not implement the liveobjects world",
        ),
        (
            &["inspect", "/definitely/not/here.wasm"],
            "cannot read /definitely/not/here.wasm",
        ),
    ];
    for (args, expected) in cases {
        let out = lo.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        assert!(err.contains(expected), "{args:?}: {err}");
        assert!(!err.contains("Stack backtrace"), "{err}");
    }
}

#[test]
fn a_corrupt_state_file_is_reported_and_left_alone() {
    let lo = Lo::new();
    let state = lo.home.path().join("bad.state");
    std::fs::write(&state, b"\xff\xff\xff garbage").unwrap();
    let out = lo.run(&[
        "call",
        liveobjects_objects::COUNTER,
        "get",
        "--state",
        state.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is corrupt"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&state).unwrap(), b"\xff\xff\xff garbage");
}

#[test]
fn inspect_lists_the_natural_interface() {
    let lo = Lo::new();
    let out = lo.run(&["inspect", liveobjects_objects::CHAT]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(
        text.contains("post: func(text: string) -> result<_, string>"),
        "{text}"
    );
    assert!(
        text.contains("history: func(n: u32) -> list<record {"),
        "{text}"
    );
    assert!(
        text.contains("liveobjects:object/lifecycle@0.2.0"),
        "{text}"
    );
    assert!(
        text.contains("world         liveobjects:object/object@0.3.0 (implemented)"),
        "{text}"
    );
    // An object built for 0.1 is shown as such.
    let out = lo.run(&["inspect", liveobjects_objects::LEGACY_COUNTER]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(
        text.contains("world         liveobjects:object/object@0.1.0 (implemented)"),
        "{text}"
    );
    assert!(text.contains("add: func(n: s64)"), "{text}");
}

#[test]
fn run_drives_several_replicas_from_stdin() {
    let lo = Lo::new();
    let mut child = lo
        .command()
        .args(["run", liveobjects_objects::CHAT, "--replicas", "2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"post \"hello from one\"\n@2 post \"and from two\"\n@1 count\n@2 history 1\nnope\n.quit\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("[m2] message: m1: hello from one"), "{text}");
    assert!(
        text.contains("\n2\n"),
        "count on replica 1 should be 2: {text}"
    );
    assert!(text.contains("sender: \"m2\""), "{text}");
    assert!(text.contains("error: object local:"), "{text}");
}

#[test]
fn demo_runs_three_members_that_agree() {
    let lo = Lo::new();
    let out = lo.run(&["demo", "--duration", "1", "--interval", "0.2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("[  bob sees] alice: hi all, alice here"),
        "{text}"
    );
    assert!(text.contains("chat: replicas identical"), "{text}");
    // Each replica knows every member by the name it gave itself, learned over
    // the network from the group's view.
    let views: Vec<&str> = text.lines().filter(|l| l.contains(", members ")).collect();
    assert_eq!(views.len(), 3, "{text}");
    for line in views {
        let (_, members) = line.split_once(", members ").expect("filtered on it");
        for name in ["alice", "bob", "carol"] {
            assert!(members.contains(name), "{name} is not named in {line:?}");
        }
    }
    assert!(text.contains("counter: replicas identical"), "{text}");
    assert!(text.contains("ticker: replicas identical"), "{text}");
    assert!(text.contains("IP multicast on lo"), "{text}");
    // The ledger on vsync: the overdraft aborted everywhere, money conserved.
    assert!(
        text.contains("aborted everywhere") && text.contains("no overdrafts"),
        "{text}"
    );
    assert!(text.contains("ledger: replicas identical"), "{text}");
    assert!(text.contains("total 100)"), "{text}");
    assert!(!text.contains("DIFFER"), "{text}");
    assert!(
        text.contains("every host's census counts 3 live hosts"),
        "{text}"
    );
    assert!(Path::new(&lo.home.path().join("cache")).exists());
}

#[test]
fn a_rejected_update_exits_nonzero_with_the_objects_reason() {
    let lo = Lo::new();
    let register = liveobjects_objects::REGISTER;
    let out = lo.run(&["call", register, "set", "text(\"a\")"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = lo.run(&["call", register, "compare-and-set", "7", "text(\"b\")"]);
    assert!(!out.status.success(), "a rejected update exited 0");
    let err = stderr(&out);
    assert!(
        err.contains("rejected the update")
            && err.contains("compare-and-set expected version 7, register is at 1"),
        "{err}"
    );
    // Nothing changed, and the results come as JSON on request.
    let out = lo.run(&["call", register, "get", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let answer: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(answer, serde_json::json!({"results": [{"text": "a"}]}));
}

#[test]
fn completions_for_each_shell_and_sandbox_flags_only_where_guests_run() {
    let lo = Lo::new();
    for shell in ["bash", "zsh", "fish"] {
        let out = lo.run(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let script = stdout(&out);
        for word in ["join", "status", "completions", "--no-interactive"] {
            assert!(script.contains(word), "{shell} completions lack {word}");
        }
    }
    let help = |args: &[&str]| stdout(&lo.run(args));
    for command in [
        "keygen", "status", "ls", "resolve", "leave", "join", "replay",
    ] {
        let text = help(&[command, "--help"]);
        assert!(
            !text.contains("--fuel") && !text.contains("--memory-mib"),
            "lo {command} --help shows the sandbox's flags:\n{text}"
        );
    }
    for command in [
        "call", "node", "run", "inspect", "demo", "publish", "gossip",
    ] {
        let text = help(&[command, "--help"]);
        assert!(
            text.contains("--fuel") && text.contains("--memory-mib"),
            "lo {command} --help lacks the sandbox's flags:\n{text}"
        );
    }
    let out = lo.run(&["keygen", "--fuel", "5"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--fuel"), "{}", stderr(&out));
}

#[test]
fn new_and_build_make_a_rust_a_python_and_a_javascript_object_that_run() {
    let lo = Lo::new();
    // The test's HOME is its own; cargo and rustup keep theirs (toolchains, the
    // crates already downloaded), and Rust builds share one target folder.
    let real_home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let rustup = std::env::var("RUSTUP_HOME").unwrap_or_else(|_| format!("{real_home}/.rustup"));
    let cargo = std::env::var("CARGO_HOME").unwrap_or_else(|_| format!("{real_home}/.cargo"));
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("lo-new-target");
    for (lang, name) in [("rust", "page-views"), ("python", "tally"), ("js", "hits")] {
        let dir = lo.home.path().join(name);
        let out = lo.run(&["new", name, "--lang", lang, "--path", dir.to_str().unwrap()]);
        assert!(out.status.success(), "lo new {lang}: {}", stderr(&out));
        assert!(dir.join("README.md").exists() && dir.join("liveobject.toml").exists());
        let out = lo
            .command()
            .args(["build", dir.to_str().unwrap()])
            .env("RUSTUP_HOME", &rustup)
            .env("CARGO_HOME", &cargo)
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .unwrap();
        assert!(out.status.success(), "lo build {lang}: {}", stderr(&out));
        let wasm = dir.join(format!("{name}.wasm"));
        let wasm = wasm.to_str().unwrap();
        let out = lo.run(&["inspect", wasm]);
        let text = stdout(&out);
        assert!(
            text.contains("add: func(n: s64)") && text.contains("get: func() -> s64"),
            "{lang}: {text}"
        );
        // A Python or JavaScript component's first compile takes seconds: it is
        // not silent.
        if lang != "rust" {
            assert!(stderr(&out).contains("compiling"), "{}", stderr(&out));
        }
        for n in ["5", "-2"] {
            let out = lo.run(&["call", wasm, "add", n]);
            assert!(out.status.success(), "{lang}: {}", stderr(&out));
            assert!(
                !stderr(&out).contains("compiling"),
                "cached: {}",
                stderr(&out)
            );
        }
        let out = lo.run(&["call", wasm, "get"]);
        assert_eq!(stdout(&out).trim(), "3", "{lang}: {}", stderr(&out));
    }
    // A second project of the same name is refused; a bad name says what is allowed.
    let taken = lo.home.path().join("tally");
    let out = lo.run(&["new", "tally", "--path", taken.to_str().unwrap()]);
    assert!(!out.status.success() && stderr(&out).contains("exists already"));
    let out = lo.run(&["new", "Page_Views"]);
    assert!(!out.status.success() && stderr(&out).contains("lowercase words"));
    // Building where no project is says how to make one.
    let out = lo.run(&["build", lo.home.path().to_str().unwrap()]);
    assert!(!out.status.success() && stderr(&out).contains("lo new NAME"));
}

#[test]
fn dev_rebuilds_on_change_and_keeps_the_replicas_state() {
    use std::io::{BufRead, BufReader};
    use std::time::{Duration, Instant};
    let lo = Lo::new();
    let dir = lo.home.path().join("score");
    let out = lo.run(&[
        "new",
        "score",
        "--lang",
        "python",
        "--path",
        dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut dev = lo
        .command()
        .args(["dev", dir.to_str().unwrap(), "--poll-ms", "100"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let stdout = dev.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    // Every wait is bounded: a build and a first compile take seconds each. A
    // result is a line of its own; `lo dev`'s reports contain what is awaited.
    let wait_for = |what: &str| -> String {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line.starts_with("dev:") && line.contains(what) => return line,
                Ok(line) if line == what => return line,
                Ok(_) => {}
                Err(e) => panic!("lo dev never printed {what:?}: {e}"),
            }
        }
    };
    let mut stdin = dev.stdin.take().unwrap();
    wait_for("3 replica(s)");
    stdin.write_all(b"add 5\n@2 get\n").unwrap();
    assert_eq!(wait_for("5"), "5");

    // New code for `get`: rebuilt, reloaded, and the state carried over.
    let app = dir.join("app.py");
    let code = std::fs::read_to_string(&app).unwrap();
    let scaled = code.replace("        return _total\n", "        return _total * 10\n");
    assert_ne!(code, scaled, "the template's get changed shape");
    std::fs::write(&app, &scaled).unwrap();
    let reloaded = wait_for("reloaded");
    assert!(reloaded.contains("state kept"), "{reloaded}");
    stdin.write_all(b"@3 get\n").unwrap();
    assert_eq!(wait_for("50"), "50");

    // A build that fails leaves the running version in place.
    std::fs::write(&app, format!("{scaled}\ndef broken(:\n")).unwrap();
    wait_for("the build failed");
    stdin.write_all(b"add 1\nget\n").unwrap();
    assert_eq!(wait_for("60"), "60");
    drop(stdin);
    let status = dev.wait().unwrap();
    assert!(status.success(), "lo dev exited with {status}");
}
