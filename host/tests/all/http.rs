//! The HTTP API against real `lo node` processes on loopback: every route, every
//! error kind a client can cause, a two-node round trip, WebSocket notices in
//! the replica's applied order, Server-Sent Events, and the guards (Origin, Host,
//! token, rate, body size).
//!
//! Requests are written as raw HTTP/1.1 on a `TcpStream` rather than with a
//! client library: the tests must send what a library refuses to (a forged
//! `Host`, a hostile `Origin`, pipelined floods, bodies that are not JSON) and see
//! exactly what the node answers.

use crate::common::{Daemon, DirectoryProcess, Home};
use crate::node::{
    control, directory_with_acme_zone, publish_mesh, publish_mesh_with, start_node_with,
};
use futures_util::StreamExt;
use serde_json::{Value as Json, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

pub(crate) const ROOM: &str = "lo://acme/rooms/lobby";
/// A document (the shipped `doc`).
pub(crate) const DOC: &str = "lo://acme/docs/plan";
/// A chat whose record promises only reliable FIFO.
pub(crate) const FIFO: &str = "lo://acme/rooms/notes";

/// `lo://acme/rooms/lobby` as one path segment.
pub(crate) fn enc(name: &str) -> String {
    name.replace(':', "%3A").replace('/', "%2F")
}

pub(crate) struct Reply {
    pub(crate) status: u16,
    head: String,
    pub(crate) body: String,
}

impl Reply {
    pub(crate) fn json(&self) -> Json {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    /// The error kind of an error reply ("" for any other reply).
    fn kind(&self) -> String {
        serde_json::from_str::<Json>(&self.body)
            .ok()
            .and_then(|j| j["error"]["kind"].as_str().map(str::to_string))
            .unwrap_or_default()
    }
}

/// Decode a `Transfer-Encoding: chunked` body.
fn unchunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

/// One request on a fresh connection. `headers` may override `Host`.
fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        request.push_str("Content-Type: application/json\r\n");
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        unchunk(body)
    } else {
        body.to_string()
    };
    Reply {
        status,
        head: head.to_string(),
        body,
    }
}

pub(crate) fn get(addr: &str, path: &str) -> Reply {
    http(addr, "GET", path, &[], "")
}

pub(crate) fn post(addr: &str, path: &str, body: &str) -> Reply {
    http(addr, "POST", path, &[], body)
}

fn call(addr: &str, method: &str, args: Json) -> Reply {
    post(
        addr,
        &format!("/v1/objects/{}/call/{method}", enc(ROOM)),
        &args.to_string(),
    )
}

/// Run `future` to its end on a runtime of its own (each WebSocket client runs
/// on a thread of its own while the test makes calls).
pub(crate) fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

pub(crate) struct Cluster {
    pub(crate) home: Home,
    pub(crate) directory: DirectoryProcess,
    _nodes: Vec<Daemon>,
    /// Each node's HTTP address.
    pub(crate) http: Vec<String>,
    /// Node 1's mesh seed (KEY@ADDR).
    pub(crate) seed: String,
}

impl Cluster {
    /// Publish the document [`DOC`] and the reliable-FIFO chat [`FIFO`].
    pub(crate) fn publish_documents(&self) {
        publish_mesh(
            &self.home,
            &self.directory,
            DOC,
            liveobjects_objects::DOC,
            &self.seed,
        );
        publish_mesh_with(
            &self.home,
            &self.directory,
            FIFO,
            liveobjects_objects::CHAT,
            &self.seed,
            "reliable-fifo",
        );
    }

    /// Node `node` (from 0) joins each of `names`, founding its group.
    pub(crate) fn found(&self, node: usize, names: &[&str]) {
        for name in names {
            let joined = post(
                &self.http[node],
                "/v1/objects",
                &json!({"name": name, "found": true}).to_string(),
            );
            assert_eq!(joined.status, 201, "{name}: {}", joined.body);
        }
    }
}

/// A directory with lo://acme/, the chat published with node 1 as its seed, and
/// two nodes serving the API on free loopback ports.
pub(crate) fn cluster() -> Cluster {
    let home = Home::new();
    let directory = directory_with_acme_zone(&home);
    let (dir, root) = (directory.addr.clone(), directory.root.clone());
    let mut nodes = Vec::new();
    let mut http = Vec::new();
    let mut seed = String::new();
    for n in 1..=2 {
        let (daemon, s) = start_node_with(
            &home,
            n,
            &dir,
            &root,
            &["--http", "127.0.0.1:0"],
            &["http api on "],
        );
        let url = daemon.value("http api on ");
        http.push(
            url.trim_start_matches("http://")
                .trim_end_matches("/v1/")
                .to_string(),
        );
        if n == 1 {
            seed = s;
        }
        nodes.push(daemon);
    }
    publish_mesh(&home, &directory, ROOM, liveobjects_objects::CHAT, &seed);
    Cluster {
        home,
        directory,
        _nodes: nodes,
        http,
        seed,
    }
}

#[test]
fn two_nodes_join_call_and_stream_through_the_api() {
    let c = cluster();
    let (a, b) = (c.http[0].as_str(), c.http[1].as_str());

    // The node, and no objects yet.
    let node = get(a, "/v1/node");
    assert_eq!(node.status, 200, "{}", node.body);
    assert_eq!(node.json()["node"]["name"], "node1");
    assert_eq!(
        format!(
            "{}@{}",
            node.json()["node"]["key"].as_str().unwrap(),
            node.json()["node"]["addr"].as_str().unwrap()
        ),
        c.seed
    );
    assert_eq!(
        get(a, "/v1/objects").json(),
        json!({"objects": [], "total": 0, "next": null})
    );

    // Join: node 1 founds the room, node 2 joins it requiring total order.
    let joined = post(
        a,
        "/v1/objects",
        &json!({"name": ROOM, "found": true}).to_string(),
    );
    assert_eq!(joined.status, 201, "{}", joined.body);
    assert_eq!(joined.json()["already"], false);
    let again = post(a, "/v1/objects", &json!({"name": ROOM}).to_string());
    assert_eq!(
        (again.status, again.json()["already"].clone()),
        (200, json!(true))
    );
    let joined = post(
        b,
        "/v1/objects",
        &json!({"name": ROOM, "require": ["total-order"]}).to_string(),
    );
    assert_eq!(joined.status, 201, "{}", joined.body);
    // The same object as `lo status` shows it, by name.
    let status = get(b, &format!("/v1/objects/{}", enc(ROOM)));
    assert_eq!(status.status, 200, "{}", status.body);
    assert_eq!(status.json()["driver"], "mesh");
    let cli: Json =
        serde_json::from_str(
            &c.home
                .ok(&["status", "--json", "--control", &control(&c.home, 2)]),
        )
        .unwrap();
    assert_eq!(cli["objects"][0]["name"], status.json()["name"]);
    // Pages: a limit that is not a number is refused; one object per page.
    let refused = get(b, "/v1/objects?limit=many");
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(
        refused.body.contains("limit must be a whole number"),
        "{}",
        refused.body
    );
    let page = get(b, "/v1/objects?limit=1&prefix=lo%3A%2F%2Facme%2F").json();
    assert_eq!(page["total"], 1, "{page}");
    assert_eq!(page["objects"][0]["name"], ROOM);
    assert!(page["next"].is_null(), "{page}");
    let elsewhere = get(b, "/v1/objects?prefix=lo%3A%2F%2Fother%2F").json();
    assert_eq!(elsewhere, json!({"objects": [], "total": 0, "next": null}));

    // The interface: WIT types and a JSON Schema per argument.
    let interface = get(a, &format!("/v1/objects/{}/interface", enc(ROOM))).json();
    let post_method = interface["methods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "post")
        .cloned()
        .expect("chat has post");
    assert_eq!(post_method["params"][0]["name"], "text");
    assert_eq!(post_method["params"][0]["type"], "string");
    assert_eq!(post_method["params"][0]["schema"]["type"], "string");
    assert_eq!(post_method["results"][0]["schema"]["x-wit"], "result");

    // Node 2 watches over a WebSocket, node 1 over Server-Sent Events, while
    // both post 20 messages each.
    let url = format!("ws://{b}/v1/objects/{}/events", enc(ROOM));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let watcher = std::thread::spawn(move || {
        block_on(async move {
            let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
            ready_tx.send(()).unwrap();
            let (mut seen, mut applied) = (Vec::new(), Vec::new());
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while seen.len() < 40 || applied.len() < 40 {
                let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline, socket.next()).await
                else {
                    break;
                };
                if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
                    let event: Json = serde_json::from_str(&text).unwrap();
                    if event["type"] == "notification" {
                        seen.push(event["detail"].as_str().unwrap().to_string());
                    } else if event["type"] == "applied" {
                        applied.push(event);
                    }
                }
            }
            (seen, applied)
        })
    });
    ready_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    let mut sse = TcpStream::connect(a).unwrap();
    sse.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        sse,
        "GET /v1/objects/{}/events HTTP/1.1\r\nHost: {a}\r\nAccept: text/event-stream\r\n\r\n",
        enc(ROOM)
    )
    .unwrap();
    let mut sse = BufReader::new(sse);
    let mut line = String::new();
    sse.read_line(&mut line).unwrap();
    assert!(line.contains(" 200 "), "{line}");
    for i in 0..20 {
        for (n, at) in [(1, a), (2, b)] {
            let reply = call(at, "post", json!([format!("m{i} from node {n}")]));
            assert_eq!(reply.status, 200, "{}", reply.body);
            assert_eq!(reply.json(), json!({"results": [{"ok": null}]}));
        }
    }
    let (seen, applied_events) = watcher.join().unwrap();
    assert_eq!(seen.len(), 40, "the WebSocket saw {seen:?}");
    assert_eq!(applied_events.len(), 40, "{applied_events:?}");
    // The order of the notices is the order the replica applied the posts in.
    let history = call(b, "history", json!([100])).json();
    let applied: Vec<String> = history["results"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{}: {}",
                m["sender"].as_str().unwrap(),
                m["text"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(seen, applied);
    // The applied events come in the same order, each sender's numbered 1, 2, ...
    let senders: Vec<&str> = history["results"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["sender"].as_str().unwrap())
        .collect();
    let event_senders: Vec<&str> = applied_events
        .iter()
        .map(|e| e["sender"].as_str().unwrap())
        .collect();
    assert_eq!(event_senders, senders);
    for sender in [senders[0], senders[senders.len() - 1]] {
        let seqs: Vec<&str> = applied_events
            .iter()
            .filter(|e| e["sender"] == sender)
            .map(|e| e["seq"].as_str().unwrap())
            .collect();
        let expected: Vec<String> = (1..=seqs.len()).map(|n| n.to_string()).collect();
        assert_eq!(seqs, expected, "{sender}'s events");
    }
    assert!(
        applied_events
            .iter()
            .all(|e| e["rejected"].is_null() && e["bytes"].as_u64() > Some(0))
    );
    // 64-bit results are strings; both replicas agree.
    assert_eq!(
        call(a, "count", json!([])).json(),
        json!({"results": ["40"]})
    );
    assert_eq!(
        call(b, "count", json!([])).json(),
        json!({"results": ["40"]})
    );
    let mut events = Vec::new();
    while events.len() < 40 {
        line.clear();
        if sse.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if let Some(data) = line.trim().strip_prefix("data: ") {
            let notice: Json = serde_json::from_str(data).unwrap();
            if notice["type"] == "notification" {
                events.push(notice["detail"].as_str().unwrap().to_string());
            }
        }
    }
    assert_eq!(events, applied, "Server-Sent Events in the applied order");

    // The directory through the node: verified listing and record.
    let listing = get(a, "/v1/directory?folder=lo://acme/rooms/");
    assert_eq!(listing.status, 200, "{}", listing.body);
    assert_eq!(listing.json()["records"][0]["name"], ROOM);
    assert_eq!(listing.json()["records"][0]["verified"], true);
    let record = get(a, &format!("/v1/directory/resolve?name={}", enc(ROOM)));
    assert_eq!(record.json()["driver"]["name"], "mesh");

    // Leaving: 204, then the object is not joined here.
    let left = http(b, "DELETE", &format!("/v1/objects/{}", enc(ROOM)), &[], "");
    assert_eq!(left.status, 204, "{}", left.body);
    let gone = get(b, &format!("/v1/objects/{}", enc(ROOM)));
    assert_eq!((gone.status, gone.kind()), (404, "not-joined".to_string()));
}

#[test]
fn bad_requests_get_their_error_kind_and_change_nothing() {
    let c = cluster();
    let a = c.http[0].as_str();
    assert_eq!(
        post(
            a,
            "/v1/objects",
            &json!({"name": ROOM, "found": true}).to_string()
        )
        .status,
        201
    );
    let count = || call(a, "count", json!([])).json()["results"][0].clone();
    assert_eq!(count(), json!("0"));

    let cases: Vec<(Reply, u16, &str)> = vec![
        (get(a, "/v1/nothing"), 404, "no-such-route"),
        (
            get(a, "/v1/objects/lo%3A%2F%2Facme%2Fnope"),
            404,
            "not-joined",
        ),
        (call(a, "shout", json!(["hi"])), 404, "no-such-method"),
        (call(a, "post", json!([5])), 400, "bad-argument"),
        (call(a, "post", json!(["a", "b"])), 400, "bad-argument"),
        (call(a, "history", json!([-1])), 400, "bad-argument"),
        (
            post(
                a,
                &format!("/v1/objects/{}/call/post", enc(ROOM)),
                "[\"unterminated",
            ),
            400,
            "bad-json",
        ),
        (
            post(
                a,
                &format!("/v1/objects/{}/call/post", enc(ROOM)),
                "{\"text\": \"hi\"}",
            ),
            400,
            "bad-request",
        ),
        (post(a, "/v1/objects", "{\"nam\": 1}"), 400, "bad-request"),
        // An array of the fields is not a join (serde alone would accept it).
        (
            post(a, "/v1/objects", &json!([ROOM, [], true]).to_string()),
            400,
            "bad-request",
        ),
        (
            post(
                a,
                "/v1/objects",
                &json!({"name": ROOM, "require": ["durable"]}).to_string(),
            ),
            409,
            "type-mismatch",
        ),
        (
            post(
                a,
                "/v1/objects",
                &json!({"name": "lo://acme/rooms/none"}).to_string(),
            ),
            422,
            "resolve-failed",
        ),
        (get(a, "/v1/directory?folder=not-a-name"), 400, "bad-name"),
        // A page of another site may not change anything.
        (
            http(
                a,
                "POST",
                &format!("/v1/objects/{}/call/post", enc(ROOM)),
                &[("Origin", "http://evil.example")],
                "[\"from evil\"]",
            ),
            403,
            "cross-origin",
        ),
        // A rebound DNS name pointing at loopback is not loopback.
        (
            http(
                a,
                "GET",
                "/v1/objects",
                &[("Host", "evil.example:7080")],
                "",
            ),
            403,
            "bad-host",
        ),
    ];
    for (reply, status, kind) in &cases {
        assert_eq!(
            (reply.status, reply.kind().as_str()),
            (*status, *kind),
            "{}",
            reply.body
        );
        assert!(
            reply.head.to_ascii_lowercase().contains("application/json"),
            "{}",
            reply.head
        );
    }
    // The bad argument says which one, where, and against which signature.
    let wrong = call(a, "post", json!([5])).json();
    assert_eq!(wrong["error"]["argument"], 0);
    assert_eq!(wrong["error"]["param"], "text");
    assert!(
        wrong["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expected a string"),
        "{wrong}"
    );
    // An update the object refuses is its result, not an HTTP failure.
    assert_eq!(
        call(a, "post", json!(["  "])).json(),
        json!({"results": [{"err": "message is empty"}]})
    );
    // The same page origin may post.
    let same = http(
        a,
        "POST",
        &format!("/v1/objects/{}/call/post", enc(ROOM)),
        &[("Origin", &format!("http://{a}"))],
        "[\"from the node's own page\"]",
    );
    assert_eq!(same.status, 200, "{}", same.body);
    // Nothing else changed anything.
    assert_eq!(count(), json!("1"));

    // A body over the limit is refused before it is read whole.
    let big = format!("[\"{}\"]", "x".repeat(2 << 20));
    let reply = post(a, &format!("/v1/objects/{}/call/post", enc(ROOM)), &big);
    assert_eq!(reply.status, 413, "{}", reply.head);

    // One connection sending far more than its budget is told to slow down;
    // another connection is not affected.
    let mut flood = TcpStream::connect(a).unwrap();
    flood
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let request = format!("GET /v1/openapi.json HTTP/1.1\r\nHost: {a}\r\n\r\n");
    let requests = 600;
    let writer = {
        let mut flood = flood.try_clone().unwrap();
        std::thread::spawn(move || {
            for _ in 0..requests {
                if flood.write_all(request.as_bytes()).is_err() {
                    break;
                }
            }
        })
    };
    let mut reader = BufReader::new(&mut flood);
    let (mut limited, mut answered) = (0, 0);
    let started = Instant::now();
    while answered < requests && started.elapsed() < Duration::from_secs(60) {
        let mut status = String::new();
        if reader.read_line(&mut status).unwrap_or(0) == 0 {
            break;
        }
        let mut length = 0;
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).unwrap();
            if header == "\r\n" {
                break;
            }
            if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        answered += 1;
        if status.contains(" 429 ") {
            limited += 1;
        }
    }
    writer.join().unwrap();
    assert_eq!(answered, requests, "every pipelined request was answered");
    assert!(
        limited > 0,
        "600 requests at once on one connection were all served"
    );
    assert_eq!(get(a, "/v1/openapi.json").status, 200);

    // Every documented route is served, with every documented method (the
    // events stream is exercised by the round-trip test; leaving comes last).
    let mut routes: Vec<_> = liveobjects_host::http::ROUTES.to_vec();
    routes.sort_by_key(|(_, methods)| methods.contains(&"delete"));
    for (path, methods) in routes {
        if path.ends_with("/events") {
            continue;
        }
        let path = path
            .replace("{name}", &enc(ROOM))
            .replace("{method}", "count");
        for method in methods {
            let body = if *method == "post" { "[]" } else { "" };
            let reply = http(a, &method.to_uppercase(), &path, &[], body);
            assert!(
                reply.status != 405 && reply.kind() != "no-such-route",
                "{method} {path}: {} {}",
                reply.status,
                reply.body
            );
        }
    }
}

#[test]
fn the_openapi_document_lists_exactly_the_routes_served() {
    let document = liveobjects_host::http::openapi_document();
    let paths = document["paths"].as_object().unwrap();
    let mut documented: Vec<(String, Vec<String>)> = paths
        .iter()
        .map(|(p, ops)| {
            (
                p.clone(),
                ops.as_object().unwrap().keys().cloned().collect(),
            )
        })
        .collect();
    let mut served: Vec<(String, Vec<String>)> = liveobjects_host::http::ROUTES
        .iter()
        .map(|(p, ms)| (p.to_string(), ms.iter().map(|m| m.to_string()).collect()))
        .collect();
    for list in [&mut documented, &mut served] {
        for (_, methods) in list.iter_mut() {
            methods.sort();
        }
        list.sort();
    }
    assert_eq!(documented, served);
}

/// A WebSocket client that stops reading (its receive window 4 KiB) while 1,500
/// notices of 4 kB stream past: the node disconnects it instead of buffering for
/// it, and a healthy client on the same object receives every notice in order.
#[test]
fn a_stalled_websocket_client_is_disconnected_and_the_others_get_everything() {
    const POSTS: usize = 1500;
    let c = cluster();
    let a = c.http[0].clone();
    assert_eq!(
        post(
            &a,
            "/v1/objects",
            &json!({"name": ROOM, "found": true}).to_string()
        )
        .status,
        201
    );
    let url = format!("ws://{a}/v1/objects/{}/events", enc(ROOM));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let stalled = {
        let (url, a, ready_tx) = (url.clone(), a.clone(), ready_tx.clone());
        std::thread::spawn(move || {
            let socket =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            socket.set_recv_buffer_size(4096).unwrap();
            let addr: std::net::SocketAddr = a.parse().unwrap();
            socket.connect(&addr.into()).unwrap();
            let stream: std::net::TcpStream = socket.into();
            stream.set_nonblocking(true).unwrap();
            block_on(async move {
                let stream = tokio::net::TcpStream::from_std(stream).unwrap();
                let (mut socket, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
                ready_tx.send(()).unwrap();
                // Stall until every post was made and for longer than the node
                // waits on a client, then read what is left.
                let _ = tokio::task::spawn_blocking(move || done_rx.recv()).await;
                tokio::time::sleep(liveobjects_host::http::SLOW_CLIENT + Duration::from_secs(3))
                    .await;
                let mut notices = 0;
                let mut lagged = false;
                let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                while let Ok(Some(Ok(message))) =
                    tokio::time::timeout_at(deadline, socket.next()).await
                {
                    if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
                        let notice: Json = serde_json::from_str(&text).unwrap();
                        notices += usize::from(notice["type"] == "notification");
                        lagged |= notice["type"] == "lagged";
                    }
                }
                (notices, lagged)
            })
        })
    };
    let healthy = std::thread::spawn(move || {
        block_on(async move {
            let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
            ready_tx.send(()).unwrap();
            let mut texts = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            while texts.len() < POSTS {
                let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline, socket.next()).await
                else {
                    break;
                };
                if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
                    let notice: Json = serde_json::from_str(&text).unwrap();
                    if notice["type"] == "notification" {
                        texts.push(notice["detail"].as_str().unwrap().to_string());
                    }
                }
            }
            texts
        })
    });
    for _ in 0..2 {
        ready_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    }
    let filler = "x".repeat(3990);

    let mut sent = Vec::new();
    for i in 0..POSTS {
        let text = format!("{i:04}{filler}");
        let reply = call(&a, "post", json!([text]));
        assert_eq!(reply.status, 200, "post {i}: {}", reply.body);
        sent.push(text);
    }
    done_tx.send(()).unwrap();
    let texts = healthy.join().unwrap();
    assert_eq!(texts.len(), POSTS, "the healthy client missed notices");
    let received: Vec<&str> = texts
        .iter()
        .map(|t| t.split_once(": ").map_or("", |(_, text)| text))
        .collect();
    assert_eq!(
        received, sent,
        "the healthy client's notices are out of order"
    );
    let (notices, lagged) = stalled.join().unwrap();
    assert!(
        notices < POSTS,
        "the stalled client was buffered for: it got all {notices} notices (lagged: {lagged})"
    );
    // The node still answers.
    assert_eq!(
        call(&a, "count", json!([])).json(),
        json!({"results": [POSTS.to_string()]})
    );
}

/// With a token, every request must carry it, in the `Authorization` header or,
/// for browsers' WebSocket and EventSource, the query; a wrong one is refused
/// like a missing one.
#[test]
fn a_token_guards_every_route() {
    let home = Home::new();
    let directory = directory_with_acme_zone(&home);
    let (node, _) = start_node_with(
        &home,
        1,
        &directory.addr,
        &directory.root,
        &["--http", "127.0.0.1:0", "--http-token", "s3cret-token"],
        &["http api on "],
    );
    let line = node.value("http api on ");
    assert!(line.ends_with("(token s3cret-token)"), "{line}");
    let a = line
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    for (headers, path, status) in [
        (vec![], "/v1/node", 401),
        (
            vec![("Authorization", "Bearer wrong-token!")],
            "/v1/node",
            401,
        ),
        (
            vec![("Authorization", "Bearer s3cret-token")],
            "/v1/node",
            200,
        ),
        (vec![], "/v1/node?token=s3cret-token", 200),
        (vec![], "/v1/node?token=s3cret-tokem", 401),
        (vec![], "/v1/openapi.json", 401),
        // The page's files hold no secret: a browser loads them without the
        // token (the page sends it on its API requests); nothing else is open.
        (vec![], "/", 200),
        (vec![], "/assets/app.js", 200),
        (vec![], "/assets/other.js", 404),
        (vec![], "/assets", 401),
    ] {
        let reply = http(&a, "GET", path, &headers, "");
        assert_eq!(reply.status, status, "{path} {headers:?}: {}", reply.body);
        if status == 401 {
            assert_eq!(reply.kind(), "unauthorized");
        }
    }
    // Nothing is joined through a refused request.
    let refused = post(
        &a,
        "/v1/objects",
        &json!({"name": ROOM, "found": true}).to_string(),
    );
    assert_eq!(refused.status, 401);
    let objects = http(
        &a,
        "GET",
        "/v1/objects",
        &[("Authorization", "Bearer s3cret-token")],
        "",
    );
    assert_eq!(
        objects.json(),
        json!({"objects": [], "total": 0, "next": null})
    );
}

/// Node 1's `references` of the document, as names.
fn references(addr: &str) -> Vec<String> {
    let r = post(
        addr,
        &format!("/v1/objects/{}/call/references", enc(DOC)),
        "[]",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["results"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect()
}

/// A document embeds another object only if the host finds that the object's
/// record meets what the reference requires: a chat that promises reliable FIFO
/// embedded where total order is required is refused with the words of `lo join
/// --require`, through the API and through `lo call`, and nothing changes; a
/// name that does not resolve and aspects that do not parse are refused too. A
/// node joining the document with its references joins the embedded objects.
#[test]
fn a_document_embeds_only_objects_that_meet_its_references() {
    let c = cluster();
    c.publish_documents();
    let (a, b) = (c.http[0].as_str(), c.http[1].as_str());
    c.found(0, &[ROOM, DOC, FIFO]);
    let embed = |reference: Json| {
        post(
            a,
            &format!("/v1/objects/{}/call/embed", enc(DOC)),
            &json!([reference]).to_string(),
        )
    };

    let ok = embed(json!({"name": ROOM, "require": ["total-order"]}));
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.json()["results"], json!([{"ok": null}]));

    let refused = embed(json!({"name": FIFO, "require": ["total-order"]}));
    assert_eq!(refused.status, 409, "{}", refused.body);
    let error = &refused.json()["error"];
    assert_eq!(error["kind"], "type-mismatch");
    assert_eq!(error["argument"], 0);
    assert_eq!(error["reference"], FIFO);
    let words = format!(
        "cannot embed {FIFO}: you require total-order, but the object offers reliable-fifo"
    );
    assert_eq!(error["message"], words.as_str());

    // The same operation through `lo call` and the node's control socket.
    let cli = c.home.fails_owned(vec![
        "call".into(),
        DOC.into(),
        "embed".into(),
        format!("{{name: {FIFO:?}, require: [\"total-order\"]}}"),
        "--control".into(),
        control(&c.home, 1),
    ]);
    assert!(cli.contains(&words), "{cli}");

    let unknown = embed(json!({"name": "lo://acme/rooms/nowhere", "require": []}));
    assert_eq!(unknown.status, 422, "{}", unknown.body);
    assert_eq!(unknown.kind(), "resolve-failed");
    let nonsense = embed(json!({"name": ROOM, "require": ["totally-ordered"]}));
    assert_eq!(nonsense.status, 400, "{}", nonsense.body);
    assert_eq!(nonsense.kind(), "bad-argument");
    assert!(
        nonsense.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`totally-ordered` is not an aspect"),
        "{}",
        nonsense.body
    );
    // Refused calls never ran: the document holds the room only.
    assert_eq!(references(a), vec![ROOM.to_string()]);

    // Asking for no more than the record gives is accepted.
    let fits = embed(json!({"name": FIFO, "require": ["reliable-fifo"]}));
    assert_eq!(
        fits.json()["results"],
        json!([{"ok": null}]),
        "{}",
        fits.body
    );
    // The object's own check: the same object twice is refused by the document.
    let twice = embed(json!({"name": ROOM, "require": []}));
    assert_eq!(twice.status, 200, "{}", twice.body);
    assert!(
        twice.json()["results"][0]["err"]
            .as_str()
            .is_some_and(|e| e.contains("embedded already")),
        "{}",
        twice.body
    );
    assert_eq!(references(a), vec![ROOM.to_string(), FIFO.to_string()]);

    // Node 2 joins the document and, with it, everything it references: through
    // `lo join --references`, then (joined already) through the API.
    let cli: Json = serde_json::from_str(&c.home.ok(&[
        "join",
        DOC,
        "--references",
        "--no-interactive",
        "--json",
        "--control",
        &control(&c.home, 2),
    ]))
    .unwrap();
    assert_eq!(cli["already"], false, "{cli}");
    let joined = post(
        b,
        "/v1/objects",
        &json!({"name": DOC, "references": true}).to_string(),
    );
    assert_eq!(joined.status, 200, "{}", joined.body);
    assert_eq!(joined.json()["already"], true, "{}", joined.body);
    for lines in [&cli["references"], &joined.json()["references"]] {
        let lines = lines.as_array().unwrap();
        assert_eq!(lines.len(), 2, "{lines:?}");
        for (line, (name, require)) in lines
            .iter()
            .zip([(ROOM, "total-order"), (FIFO, "reliable-fifo")])
        {
            assert_eq!(line["name"], name);
            assert_eq!(line["require"], json!([require]));
            assert_eq!(line["joined"], true, "{line}");
            assert_eq!(line["version"], 1, "{line}");
        }
    }
    let objects = get(b, "/v1/objects").json();
    let mut names: Vec<&str> = objects["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, vec![DOC, ROOM, FIFO]);
}
