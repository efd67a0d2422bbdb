//! The web page in headless Chromium, driven over WebDriver (chromedriver and
//! fantoccini) against real `lo node` processes: two pages on two nodes see each
//! other's chat posts inside a live document; forms follow WIT types and show an
//! error next to the field that caused it; a refused embedding shows the host's
//! type error, and an object dropped on a document is embedded.
//!
//! Screenshots go to `target/browser/`. Without `chromium` and `chromedriver`
//! (Debian's `chromium` and `chromium-driver`, which `.ci/run` installs) the tests
//! say `skipped`, and fail under `CI=true`.

use crate::http::{DOC, FIFO, ROOM, block_on, cluster, enc, post};
use crate::node::publish_mesh;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value as Json, json};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A register (its `set` takes a variant).
const REGISTER: &str = "lo://acme/vars/setting";

/// One browser test at a time: each starts Chromium, and the machine has 2 cores.
static ONE_BROWSER_TEST: Mutex<()> = Mutex::new(());

/// How long the page may take to show something.
const PAGE_WAIT: Duration = Duration::from_secs(30);

/// A chromedriver process on a free loopback port, killed on drop.
struct Chromedriver {
    child: Child,
    url: String,
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

/// Start chromedriver, or say why not: `None` (skipped) unless under `CI=true`,
/// where a missing browser fails the test.
fn chromedriver() -> Option<(Chromedriver, PathBuf)> {
    let (Some(driver), Some(chromium)) = (on_path("chromedriver"), on_path("chromium")) else {
        let why = "chromium and chromedriver are not installed \
                   (apt-get install chromium chromium-driver)";
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "browser tests cannot run under CI: {why}"
        );
        eprintln!("skipped: {why}");
        return None;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "chromedriver did not listen on port {port} within 20 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Some((
        Chromedriver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        },
        chromium,
    ))
}

/// This test's turn with the browser, and chromedriver (`None`: skipped).
fn start() -> Option<(std::sync::MutexGuard<'static, ()>, Chromedriver, PathBuf)> {
    let turn = ONE_BROWSER_TEST.lock().unwrap_or_else(|e| e.into_inner());
    let (driver, chromium) = chromedriver()?;
    Some((turn, driver, chromium))
}

/// A headless Chromium session.
async fn browser(driver: &Chromedriver, chromium: &std::path::Path) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            // --no-sandbox: the tests run as root, where Chromium's sandbox cannot start.
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1300,1100"],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a Chromium session through chromedriver")
}

/// Evaluate `script` (a JavaScript expression) until it is true, or fail after
/// PAGE_WAIT with what it last gave and `what`.
async fn wait_until(page: &Client, what: &str, script: &str) {
    let started = Instant::now();
    let mut last = Json::Null;
    while started.elapsed() < PAGE_WAIT {
        match page.execute(&format!("return ({script});"), vec![]).await {
            Ok(Json::Bool(true)) => return,
            Ok(other) => last = other,
            Err(e) => last = Json::String(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let shot = screenshot(page, &format!("failed-{}", what.replace(' ', "-"))).await;
    panic!(
        "the page did not show {what} within {PAGE_WAIT:?} (last: {last}); see {}",
        shot.display()
    );
}

/// The text of the first element matching `css` ("" if none).
async fn text(page: &Client, css: &str) -> String {
    page.execute(
        "const e = document.querySelector(arguments[0]); return e ? e.textContent : '';",
        vec![json!(css)],
    )
    .await
    .unwrap()
    .as_str()
    .unwrap_or_default()
    .to_string()
}

/// Save a screenshot as `target/browser/NAME.png`.
async fn screenshot(page: &Client, name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/browser");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.png"));
    if let Ok(png) = page.screenshot().await {
        std::fs::write(&path, png).unwrap();
    }
    path
}

fn page_url(http: &str, object: &str) -> String {
    format!("http://{http}/#/object/{}", enc(object))
}

/// A CSS selector for the embedded block of `name`.
fn embedded(name: &str) -> String {
    format!(".block.embed[data-name=\"{name}\"]")
}

async fn type_into(page: &Client, css: &str, text: &str) {
    let field = page.find(Locator::Css(css)).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(text).await.unwrap();
}

async fn click(page: &Client, css: &str) {
    page.find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Node 1 founds the chat and a document that embeds it; node 2's page joins
/// the document (and, with it, the chat) through its Join button; each page
/// posts in the embedded chat box and sees the other's post arrive.
#[test]
fn two_pages_on_two_nodes_see_each_others_chat_posts() {
    let Some((_one, driver, chromium)) = start() else {
        return;
    };
    let c = cluster();
    c.publish_documents();
    let (a, b) = (c.http[0].as_str(), c.http[1].as_str());
    c.found(0, &[ROOM, DOC]);
    for (method, args) in [
        ("set-title", json!(["Plans"])),
        ("add-text", json!(["Talk it over below."])),
        ("embed", json!([{"name": ROOM, "require": ["total-order"]}])),
    ] {
        let r = post(
            a,
            &format!("/v1/objects/{}/call/{method}", enc(DOC)),
            &args.to_string(),
        );
        assert_eq!(r.json()["results"], json!([{"ok": null}]), "{}", r.body);
    }
    block_on(async {
        let one = browser(&driver, &chromium).await;
        let two = browser(&driver, &chromium).await;
        one.goto(&page_url(a, DOC)).await.unwrap();
        two.goto(&page_url(b, DOC)).await.unwrap();

        // Node 2 has not joined: its page offers Join (with the references).
        wait_until(&two, "the join button", "!!document.getElementById('join')").await;
        click(&two, "#join").await;
        let chat_box = format!("{} .chat-input", embedded(ROOM));
        for page in [&one, &two] {
            wait_until(
                page,
                "the embedded chat box",
                &format!(
                    "!!document.querySelector('{}')",
                    chat_box.replace('\'', "\\'")
                ),
            )
            .await;
        }
        assert_eq!(text(&two, "#doc-title").await, "Plans");

        let lines = format!("{} .chat-lines", embedded(ROOM)).replace('\'', "\\'");
        for (from, to, words) in [
            (&one, &two, "hello from page one"),
            (&two, &one, "and back from two"),
        ] {
            type_into(from, &chat_box, words).await;
            click(from, &format!("{} .chat-send", embedded(ROOM))).await;
            wait_until(
                to,
                &format!("'{words}' on the other page"),
                &format!(
                    "(document.querySelector('{lines}') || {{}}).textContent.includes('{words}')"
                ),
            )
            .await;
        }
        // Senders are shown by their names (learned from the views), not keys.
        let seen = text(&two, &lines.replace("\\'", "'")).await;
        assert!(seen.contains("node1 ("), "{seen}");
        assert!(seen.contains("node2 ("), "{seen}");
        screenshot(&one, "chat-node1").await;
        screenshot(&two, "chat-node2").await;
        one.close().await.unwrap();
        two.close().await.unwrap();
    });
}

/// The register's `set` takes a variant: the page's form offers its cases, an
/// s64 payload that is not a number is refused with the error next to that
/// payload's field, and a value beyond 2^53 goes through and back exactly.
#[test]
fn forms_follow_wit_types_and_show_errors_next_to_the_field() {
    let Some((_one, driver, chromium)) = start() else {
        return;
    };
    let c = cluster();
    publish_mesh(
        &c.home,
        &c.directory,
        REGISTER,
        liveobjects_objects::REGISTER,
        &c.seed,
    );
    let a = c.http[0].as_str();
    block_on(async {
        let page = browser(&driver, &chromium).await;
        // Browse to it: the folder lists it, draggable, with its aspects.
        page.goto(&format!("http://{a}/?folder={}", enc("lo://acme/vars/")))
            .await
            .unwrap();
        let item = format!("li.object[data-name=\"{REGISTER}\"][draggable=true]");
        wait_until(
            &page,
            "the register in the folder",
            &format!("!!document.querySelector('{item}')"),
        )
        .await;
        assert!(text(&page, &item).await.contains("total-order"));
        click(&page, &item).await;
        wait_until(
            &page,
            "the join button",
            "!!document.getElementById('join')",
        )
        .await;
        click(&page, "#join-found").await;
        click(&page, "#join").await;
        let set = "form[data-method=set]";
        wait_until(
            &page,
            "the set form",
            &format!("!!document.querySelector('{set}')"),
        )
        .await;

        // The variant's cases are a select; `integer` shows an s64 field.
        page.find(Locator::Css(&format!("{set} select")))
            .await
            .unwrap()
            .select_by_value("integer")
            .await
            .unwrap();
        let payload = format!("{set} .field[data-path='.integer'] input");
        type_into(&page, &payload, "twelve").await;
        click(&page, &format!("{set} button[type=submit]")).await;
        let invalid = format!("{set} .field.invalid[data-path='.integer']");
        wait_until(
            &page,
            "the error next to the integer field",
            &format!("!!document.querySelector(\"{invalid}\")"),
        )
        .await;
        // What is wrong at that field; which argument and the signature in its title.
        let error = text(&page, &format!("{invalid} > .error")).await;
        assert_eq!(
            error,
            "\"twelve\" is not a s64: expected decimal digits, like \"-42\""
        );
        let whole = page
            .execute(
                "return document.querySelector(arguments[0]).title;",
                vec![json!(format!("{invalid} > .error"))],
            )
            .await
            .unwrap();
        assert!(
            whole
                .as_str()
                .unwrap()
                .starts_with("argument 1 (v: variant {"),
            "{whole}"
        );
        // Nothing stray in the view (an absent section is left out, not "null").
        assert_eq!(
            page.execute(
                "return [...document.getElementById('view').childNodes]
                    .filter((n) => n.nodeType === Node.TEXT_NODE).length;",
                vec![]
            )
            .await
            .unwrap(),
            json!(0)
        );
        screenshot(&page, "form-error").await;

        // Beyond 2^53, exactly.
        type_into(&page, &payload, "-9007199254740993").await;
        click(&page, &format!("{set} button[type=submit]")).await;
        wait_until(
            &page,
            "the value in the state panel",
            "(document.querySelector('[data-query=get]') || {}).textContent \
             === 'get = {\"integer\":\"-9007199254740993\"}'",
        )
        .await;
        assert_eq!(
            text(&page, &format!("{set} > .error")).await,
            "",
            "no error is left once the call went through"
        );
        screenshot(&page, "form-register").await;

        // A list inside the variant (`bytes(list<u8>)`): three rows, the first
        // removed, so the rows renumber; an out-of-range byte in the second row
        // is shown at that row, and the form sends what it shows.
        page.find(Locator::Css(&format!("{set} select")))
            .await
            .unwrap()
            .select_by_value("bytes")
            .await
            .unwrap();
        let bytes = format!("{set} .field[data-path='.bytes']");
        for _ in 0..3 {
            click(&page, &format!("{bytes} > fieldset > button")).await;
        }
        click(&page, &format!("{bytes} .row button")).await;
        let row = |i: usize| format!("{set} .field[data-path='.bytes[{i}]']");
        assert_eq!(text(&page, &format!("{} > label", row(1))).await, "[1] ");
        type_into(&page, &format!("{} input", row(0)), "7").await;
        type_into(&page, &format!("{} input", row(1)), "300").await;
        click(&page, &format!("{set} button[type=submit]")).await;
        wait_until(
            &page,
            "the error at the second byte",
            &format!("!!document.querySelector(\"{set} .field.invalid[data-path='.bytes[1]']\")"),
        )
        .await;
        type_into(&page, &format!("{} input", row(1)), "8").await;
        click(&page, &format!("{set} button[type=submit]")).await;
        wait_until(
            &page,
            "the bytes in the state panel",
            "(document.querySelector('[data-query=get]') || {}).textContent \
             === 'get = {\"bytes\":[7,8]}'",
        )
        .await;
        page.close().await.unwrap();
    });
}

/// A document page: embedding the FIFO chat where total order is required is
/// refused with the host's type error (from the editor and from the `embed`
/// method's record form); the chat dropped on the document is embedded.
#[test]
fn a_refused_embedding_shows_the_type_error_and_a_dropped_object_is_embedded() {
    let Some((_one, driver, chromium)) = start() else {
        return;
    };
    let c = cluster();
    c.publish_documents();
    let a = c.http[0].as_str();
    c.found(0, &[ROOM, DOC]);
    let words = format!(
        "cannot embed {FIFO}: you require total-order, but the object offers reliable-fifo"
    );
    block_on(async {
        let page = browser(&driver, &chromium).await;
        page.goto(&page_url(a, DOC)).await.unwrap();
        wait_until(
            &page,
            "the document editor",
            "!!document.getElementById('embed')",
        )
        .await;
        type_into(&page, "#embed-name", FIFO).await;
        type_into(&page, "#embed-require", "total-order").await;
        click(&page, "#embed").await;
        wait_until(
            &page,
            "the type error",
            &format!("document.getElementById('embed-error').textContent === '{words}'"),
        )
        .await;
        screenshot(&page, "embed-refused").await;

        // The `embed` method's form: a record with a list inside.
        let form = "form[data-method=embed]";
        type_into(
            &page,
            &format!("{form} .field[data-path='.name'] input"),
            FIFO,
        )
        .await;
        click(
            &page,
            &format!("{form} .field[data-path='.require'] button"),
        )
        .await;
        type_into(
            &page,
            &format!("{form} .field[data-path='.require[0]'] input"),
            "total-order",
        )
        .await;
        click(&page, &format!("{form} button[type=submit]")).await;
        let invalid = format!("{form} .field.invalid[data-path='']");
        wait_until(
            &page,
            "the type error next to the reference argument",
            &format!(
                "(document.querySelector(\"{invalid} > .error\") || {{}}).textContent === '{words}'"
            ),
        )
        .await;
        assert_eq!(
            page.execute(
                "return document.querySelectorAll('.block.embed').length;",
                vec![]
            )
            .await
            .unwrap(),
            json!(0),
            "nothing was embedded"
        );

        // Drop the chat on the document (the drop event the folder browser's drag
        // ends in; WebDriver's pointer actions do not start HTML5 drags).
        type_into(&page, "#embed-require", "total-order").await;
        page.execute(
            "const data = new DataTransfer();
             data.setData('application/x-lo-name', arguments[0]);
             document.getElementById('dropzone').dispatchEvent(
                 new DragEvent('drop', {dataTransfer: data, bubbles: true, cancelable: true}));",
            vec![json!(ROOM)],
        )
        .await
        .unwrap();
        wait_until(
            &page,
            "the dropped chat embedded",
            &format!("!!document.querySelector('{} .chat-input')", embedded(ROOM)),
        )
        .await;
        screenshot(&page, "embed-dropped").await;

        // Asking no more than its record gives, the FIFO chat is embedded; this
        // node has not joined it, so the page offers to rather than joining it.
        type_into(&page, "#embed-name", FIFO).await;
        type_into(&page, "#embed-require", "reliable-fifo").await;
        click(&page, "#embed").await;
        let join = format!("{} .embed-join", embedded(FIFO));
        wait_until(
            &page,
            "the offer to join the embedded chat",
            &format!("!!document.querySelector('{join}')"),
        )
        .await;
        let joined_here = crate::http::get(a, "/v1/objects").json();
        assert!(
            !joined_here.to_string().contains(FIFO),
            "rendering the document joined it: {joined_here}"
        );
        // No member runs it (its seed is this node): the join says so, and the
        // page offers to start it here.
        click(&page, &join).await;
        let found = format!("{} .embed-found", embedded(FIFO));
        wait_until(
            &page,
            "the offer to start the chat",
            &format!(
                "(document.querySelector('{found}') || {{hidden: true}}).hidden === false \
                 && document.querySelector('{} .error').textContent.includes('no member of')",
                embedded(FIFO)
            ),
        )
        .await;
        click(&page, &found).await;
        wait_until(
            &page,
            "the embedded FIFO chat live",
            &format!("!!document.querySelector('{} .chat-input')", embedded(FIFO)),
        )
        .await;
        page.close().await.unwrap();
    });
}

/// `lo demo --web`: three hosts, each printing its page; each serves the page
/// and the document with its three references; in the browser, bob's page shows
/// the document with the chat, the counter and the moving ticker live in place.
#[test]
fn lo_demo_web_serves_each_host_its_page() {
    let _one = ONE_BROWSER_TEST.lock().unwrap_or_else(|e| e.into_inner());
    let home = crate::common::Home::new();
    let mut cmd = home.lo();
    cmd.args(["demo", "--web", "--duration", "60", "--interval", "0.2"]);
    let demo = crate::common::Daemon::start(cmd, &["Live for"]);
    let pages: Vec<(String, String)> = demo
        .lines
        .iter()
        .filter_map(|l| l.strip_prefix("web "))
        .map(|l| {
            let mut words = l.split_whitespace();
            (
                words.next().unwrap().to_string(),
                words.next().unwrap().to_string(),
            )
        })
        .collect();
    let names: Vec<&str> = pages.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["alice", "bob", "carol"], "{:?}", demo.lines);
    const WELCOME: &str = "lo://demo/docs/welcome";
    for (name, url) in &pages {
        assert!(
            url.ends_with(&format!("/#/object/{}", enc(WELCOME))),
            "{url}"
        );
        let addr = url.trim_start_matches("http://").split('/').next().unwrap();
        let page = crate::http::get(addr, "/");
        assert_eq!(page.status, 200, "{name}");
        assert!(
            page.body.contains("<script src=\"/assets/app.js\""),
            "{name}"
        );
        let refs = post(
            addr,
            &format!("/v1/objects/{}/call/references", enc(WELCOME)),
            "[]",
        );
        let refs: Vec<String> = refs.json()["results"][0]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r["name"]
                    .as_str()
                    .unwrap()
                    .rsplit('/')
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(refs, ["lobby", "hits", "ticker"], "{name}");
    }
    let Some((driver, chromium)) = chromedriver() else {
        return;
    };
    block_on(async {
        let page = browser(&driver, &chromium).await;
        page.goto(&pages[1].1).await.unwrap();
        wait_until(
            &page,
            "the three embedded objects",
            "document.querySelectorAll('.block.embed .embed-body .values, .block.embed .chat-lines').length === 3",
        )
        .await;
        wait_until(
            &page,
            "alice's welcome in the chat box",
            &format!(
                "(document.querySelector('{} .chat-lines') || {{}}).textContent \
                 .includes('alice (')",
                embedded("lo://demo/rooms/lobby")
            ),
        )
        .await;
        // Each widget shows its object: the counter's value and the ticker's count.
        let value = |object: &str, query: &str| {
            format!(
                "(document.querySelector('{} [data-query={query}]') || {{}}).textContent",
                embedded(object)
            )
        };
        let ticker = value("lo://demo/markets/ticker", "count");
        wait_until(
            &page,
            "the counter's value",
            &format!(
                "/^get = \\d+$/.test({})",
                value("lo://demo/counters/hits", "get")
            ),
        )
        .await;
        wait_until(
            &page,
            "the ticker's count",
            &format!("/^count = \"?\\d+\"?$/.test({ticker})"),
        )
        .await;
        let shown = text(
            &page,
            &format!(
                "{} [data-query=count]",
                embedded("lo://demo/markets/ticker")
            ),
        )
        .await;
        let before: u64 = shown
            .trim_start_matches("count = ")
            .trim_matches('"')
            .parse()
            .unwrap_or_else(|e| panic!("{shown:?}: {e}"));
        wait_until(
            &page,
            "the ticker moving",
            &format!("Number(({ticker}).replace(/[^0-9]/g, '')) > {before}"),
        )
        .await;
        screenshot(&page, "demo-bob").await;
        page.close().await.unwrap();
    });
    drop(demo);
}

/// A node whose API needs a token: the page opened with `?token=` carries it on
/// every request and on its WebSocket (the feed goes live and shows the post);
/// without it the node answers 401. Join and Leave from the page.
#[test]
fn the_page_carries_the_token_and_joins_and_leaves() {
    let Some((_one, driver, chromium)) = start() else {
        return;
    };
    let home = crate::common::Home::new();
    let directory = crate::node::directory_with_acme_zone(&home);
    let (node, seed) = crate::node::start_node_with(
        &home,
        1,
        &directory.addr,
        &directory.root,
        &["--http", "127.0.0.1:0", "--http-token", "s3cret-token"],
        &["http api on "],
    );
    publish_mesh(&home, &directory, ROOM, liveobjects_objects::CHAT, &seed);
    let line = node.value("http api on ");
    let addr = line
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap();
    block_on(async {
        let page = browser(&driver, &chromium).await;
        page.goto(&format!("http://{addr}/")).await.unwrap();
        // The page itself loads; the API refuses it, and it says why.
        wait_until(
            &page,
            "the refusal without the token",
            "document.getElementById('node-error').textContent.startsWith('this API needs its token')",
        )
        .await;

        page.goto(&format!(
            "http://{addr}/?token=s3cret-token#/object/{}",
            enc(ROOM)
        ))
        .await
        .unwrap();
        wait_until(
            &page,
            "the join button",
            "!!document.getElementById('join')",
        )
        .await;
        assert!(text(&page, "#node-label").await.starts_with("node node1 ("));
        click(&page, "#join-found").await;
        click(&page, "#join").await;
        wait_until(
            &page,
            "the live feed over a WebSocket",
            "document.body.textContent.includes('live (WebSocket)')",
        )
        .await;
        let post = "form[data-method=post]";
        type_into(&page, &format!("{post} input"), "hi with a token").await;
        click(&page, &format!("{post} button[type=submit]")).await;
        wait_until(
            &page,
            "the post in the feed",
            "document.getElementById('feed').textContent.includes('hi with a token')",
        )
        .await;
        screenshot(&page, "token-feed").await;

        click(&page, "#leave").await;
        wait_until(
            &page,
            "the join button again",
            "!!document.getElementById('join')",
        )
        .await;
        page.close().await.unwrap();
    });
}

/// The page outlives its node: after a kill -9 the feed says it is reconnecting,
/// and once the node is back on the same address (and has joined again) the
/// stream reopens by itself, says so, and shows what happens next.
#[test]
fn the_page_reconnects_after_its_node_restarts() {
    let Some((_one, driver, chromium)) = start() else {
        return;
    };
    let home = crate::common::Home::new();
    let directory = crate::node::directory_with_acme_zone(&home);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let http = format!("127.0.0.1:{port}");
    let start_node = || {
        crate::node::start_node_with(
            &home,
            1,
            &directory.addr,
            &directory.root,
            &["--http", &http],
            &["http api on "],
        )
    };
    let (mut node, seed) = start_node();
    publish_mesh(&home, &directory, ROOM, liveobjects_objects::CHAT, &seed);
    let found = || {
        let r = post(
            &http,
            "/v1/objects",
            &json!({"name": ROOM, "found": true}).to_string(),
        );
        assert_eq!(r.status, 201, "{}", r.body);
    };
    found();
    block_on(async {
        let page = browser(&driver, &chromium).await;
        page.goto(&page_url(&http, ROOM)).await.unwrap();
        let says = |words: &str| format!("document.body.textContent.includes('{words}')");
        wait_until(&page, "the live feed", &says("live (WebSocket)")).await;
        node.kill9();
        wait_until(
            &page,
            "that it is reconnecting",
            &says("events stream closed; reconnecting"),
        )
        .await;
        let (again, _) = start_node();
        found();
        wait_until(
            &page,
            "the stream reopened",
            &says("reconnected: state re-read"),
        )
        .await;
        let r = post(
            &http,
            &format!("/v1/objects/{}/call/post", enc(ROOM)),
            &json!(["after the restart"]).to_string(),
        );
        assert_eq!(r.json()["results"], json!([{"ok": null}]), "{}", r.body);
        wait_until(
            &page,
            "the post after the restart",
            "document.getElementById('feed').textContent.includes('after the restart')",
        )
        .await;
        screenshot(&page, "reconnected").await;
        page.close().await.unwrap();
        drop(again);
    });
}
