//! The node's HTTP API (`lo node --http ADDR`): live objects for any program that
//! speaks HTTP and JSON. Version 1 routes, all JSON (see `docs/http.md` and
//! `/v1/openapi.json`):
//!
//! - `GET /v1/node`: the node (key, name, address, drivers) and its objects;
//! - `GET /v1/objects`, `POST /v1/objects` (join), `GET|DELETE /v1/objects/{name}`;
//! - `GET /v1/objects/{name}/interface`: methods with WIT types and a JSON Schema
//!   per argument and result;
//! - `POST /v1/objects/{name}/call/{method}`: a JSON array of arguments in, the
//!   results out (the mapping of [`crate::json`]);
//! - `GET /v1/objects/{name}/events`: notifications, views and the end of the
//!   object here, as a WebSocket or as Server-Sent Events;
//! - `GET /v1/directory?folder=`, `GET /v1/directory/resolve?name=`: verified
//!   listings and records.
//!
//! Errors are `{"error": {"kind", "message", ...}}` with a matching status.
//!
//! `GET /` is the web page (`src/web/`, embedded in the binary): a folder browser,
//! objects with forms generated from their WIT types, live feeds and documents.
//!
//! Security: on a loopback address no token is needed, but the `Host` header must
//! name a loopback host (a web page on another site that rebinds its DNS name to
//! 127.0.0.1 is refused). On any other address every request needs the token
//! (`Authorization: Bearer TOKEN`, or `?token=` where a browser cannot set
//! headers: WebSocket, EventSource). Requests that change something, and every
//! WebSocket, are refused if a browser says they come from another origin. Each
//! client connection has a request-rate budget; bodies are bounded; a WebSocket
//! or SSE client that does not keep up is disconnected instead of being buffered
//! for.

use crate::json::{
    JsonValueError, json_to_wave, node_status_json, object_status_json, objects_page_json,
    record_json, schema,
};
use crate::node::{Node, NodeError, StatusPage};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value as Json, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;
use wasmtime::component::Val;

/// Largest request body (a call's arguments).
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// Requests a client connection may make per second, sustained.
pub const REQUESTS_PER_SECOND: f64 = 200.0;
/// Requests a client connection may make in a burst.
pub const REQUEST_BURST: f64 = 400.0;
/// How long a WebSocket or SSE client may take to accept one message before it
/// is disconnected.
pub const SLOW_CLIENT: Duration = Duration::from_secs(5);
/// Most connections the rate limiter remembers (oldest forgotten first).
const TRACKED_CONNECTIONS: usize = 4096;

/// How the API is served.
#[derive(Debug, Clone, Default)]
pub struct HttpOptions {
    /// The token every request must carry; `None` on loopback only.
    pub token: Option<String>,
}

/// A random token for a non-loopback address (printed at start).
pub fn generate_token() -> String {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    hex::encode(bytes)
}

#[derive(Clone)]
struct Api {
    node: Arc<Node>,
    token: Option<Arc<str>>,
    loopback: bool,
    buckets: Arc<Mutex<Buckets>>,
}

/// Serve the API on `listener` until the process stops. Refuses a non-loopback
/// address without a token.
pub async fn serve(
    node: Arc<Node>,
    listener: tokio::net::TcpListener,
    options: HttpOptions,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    let loopback = addr.ip().is_loopback();
    if !loopback && options.token.is_none() {
        return Err(std::io::Error::other(format!(
            "the HTTP API on {addr} (not loopback) needs a token: pass --http-token"
        )));
    }
    let api = Api {
        node,
        token: options.token.map(Arc::from),
        loopback,
        buckets: Arc::default(),
    };
    axum::serve(
        listener,
        router(api).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}

fn router(api: Api) -> Router {
    Router::new()
        .route("/v1/node", get(node_status))
        .route("/v1/objects", get(list_objects).post(join))
        .route("/v1/objects/{name}", get(object_status).delete(leave))
        .route("/v1/objects/{name}/interface", get(interface))
        .route("/v1/objects/{name}/call/{method}", post(call))
        .route("/v1/objects/{name}/events", get(events))
        .route("/v1/directory", get(list_folder))
        .route("/v1/directory/resolve", get(resolve))
        .route("/v1/openapi.json", get(openapi))
        .route("/", get(page))
        .route("/assets/{file}", get(asset))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(api.clone(), guard))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(api)
}

/// The paths of every route, as the OpenAPI document names them (a test checks
/// that the document and the router agree).
pub const ROUTES: &[(&str, &[&str])] = &[
    ("/v1/node", &["get"]),
    ("/v1/objects", &["get", "post"]),
    ("/v1/objects/{name}", &["get", "delete"]),
    ("/v1/objects/{name}/interface", &["get"]),
    ("/v1/objects/{name}/call/{method}", &["post"]),
    ("/v1/objects/{name}/events", &["get"]),
    ("/v1/directory", &["get"]),
    ("/v1/directory/resolve", &["get"]),
    ("/v1/openapi.json", &["get"]),
];

/// A failed request: its status, a stable `kind`, a message, and details (which
/// argument, where in it) for forms to show next to the field.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    details: serde_json::Map<String, Json>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
            details: serde_json::Map::new(),
        }
    }

    fn with(mut self, key: &str, value: impl Into<Json>) -> Self {
        self.details.insert(key.into(), value.into());
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        self.status.as_u16()
    }

    /// The stable name of the failure (`bad-argument`, `not-joined`, ...).
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// What went wrong, for people.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// A detail for programs (`argument`, `param`, `path`, `reference`, ...).
    pub fn detail(&self, key: &str) -> Option<&Json> {
        self.details.get(key)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = self.details;
        error.insert("kind".into(), self.kind.into());
        error.insert("message".into(), self.message.into());
        (self.status, axum::Json(json!({ "error": error }))).into_response()
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        let kind = e.kind();
        let status = match kind {
            "not-joined" | "no-such-method" => StatusCode::NOT_FOUND,
            "bad-argument" | "bad-request" => StatusCode::BAD_REQUEST,
            "not-allowed" => StatusCode::FORBIDDEN,
            "rejected" | "aborted" | "join-in-progress" | "type-mismatch" => StatusCode::CONFLICT,
            "resolve-failed" | "bad-logic" | "no-driver" => StatusCode::UNPROCESSABLE_ENTITY,
            "quarantined" | "gone" | "joining" | "unavailable" | "no-members" | "timeout"
            | "refused" => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let error = ApiError::new(status, kind, e.to_string());
        match e {
            NodeError::BadReference { argument, name, .. } => {
                error.with("argument", argument).with("reference", name)
            }
            _ => error,
        }
    }
}

type Answer = Result<Response, ApiError>;

fn ok(value: Json) -> Answer {
    Ok(axum::Json(value).into_response())
}

async fn not_found(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no-such-route",
        format!(
            "no route {} {} (see /v1/openapi.json)",
            request.method(),
            request.uri().path()
        ),
    )
}

/// Token, Host, Origin and rate checks, before any route.
async fn guard(State(api): State<Api>, request: Request, next: Next) -> Response {
    match check(&api, &request) {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

fn check(api: &Api, request: &Request) -> Result<(), ApiError> {
    let headers = request.headers();
    // The page's own files are the same for everyone and hold no secret: a
    // browser fetches them (scripts, styles) without the token, which the page
    // then sends on every API request itself.
    let page_file = request.method() == Method::GET
        && (request.uri().path() == "/" || request.uri().path().starts_with("/assets/"));
    if let Some(token) = api.token.as_ref().filter(|_| !page_file) {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let query = request
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("token=")));
        if !bearer
            .or(query)
            .is_some_and(|given| same_secret(given, token))
        {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this API needs its token (printed by `lo node` at start): send \
                 `Authorization: Bearer TOKEN`, or `?token=TOKEN` from a browser",
            ));
        }
    } else if api.loopback {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        if !host.is_some_and(is_loopback_host) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "bad-host",
                format!(
                    "Host {:?} is not a loopback name: without a token this API answers \
                     only requests addressed to localhost, 127.0.0.1 or [::1]",
                    host.unwrap_or("")
                ),
            ));
        }
    }
    let changes = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    let upgrade = headers.contains_key(header::UPGRADE);
    if (changes || upgrade)
        && let Some(origin) = headers.get(header::ORIGIN)
    {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let same = origin
            .to_str()
            .ok()
            .and_then(|o| {
                o.strip_prefix("http://")
                    .or_else(|| o.strip_prefix("https://"))
            })
            .is_some_and(|o| o.eq_ignore_ascii_case(host));
        if !same {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "cross-origin",
                format!(
                    "a page from {origin:?} may not change anything here (only pages this \
                     node serves may)"
                ),
            ));
        }
    }
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    if let Some(client) = client
        && !api
            .buckets
            .lock()
            .expect("buckets")
            .take(client, Instant::now())
    {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            format!(
                "more than {REQUESTS_PER_SECOND} requests per second on one connection; \
                 slow down"
            ),
        ));
    }
    Ok(())
}

/// Compare secrets in time independent of where they differ.
fn same_secret(given: &str, expected: &str) -> bool {
    given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A token bucket per client connection (the connection's address and port).
#[derive(Default)]
struct Buckets {
    buckets: HashMap<SocketAddr, (f64, Instant)>,
}

impl Buckets {
    fn take(&mut self, client: SocketAddr, now: Instant) -> bool {
        if self.buckets.len() >= TRACKED_CONNECTIONS && !self.buckets.contains_key(&client) {
            // Forget the connections idle longest (a full bucket is no state).
            let cutoff = now - Duration::from_secs_f64(REQUEST_BURST / REQUESTS_PER_SECOND);
            self.buckets.retain(|_, (_, at)| *at > cutoff);
            if self.buckets.len() >= TRACKED_CONNECTIONS {
                self.buckets.clear();
            }
        }
        let (level, at) = self.buckets.entry(client).or_insert((REQUEST_BURST, now));
        *level = (*level + now.duration_since(*at).as_secs_f64() * REQUESTS_PER_SECOND)
            .min(REQUEST_BURST);
        *at = now;
        if *level >= 1.0 {
            *level -= 1.0;
            true
        } else {
            false
        }
    }
}

fn parse_body(body: &[u8]) -> Result<Json, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad-json",
            format!("the body is not JSON: {e}"),
        )
    })
}

/// Most objects one status page shows (`?limit=`); larger asks get this many.
pub const MAX_PAGE: usize = 1000;

/// The page a status request asks for: `?prefix=`, `?after=`, `?limit=` (default
/// and most [`MAX_PAGE`]).
fn status_page(q: &HashMap<String, String>) -> Result<StatusPage, ApiError> {
    let limit = match q.get("limit") {
        None => MAX_PAGE,
        Some(text) => text.parse::<usize>().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad-request",
                format!("limit must be a whole number of objects, got `{text}`"),
            )
        })?,
    };
    Ok(StatusPage {
        prefix: q.get("prefix").cloned(),
        after: q.get("after").cloned(),
        limit: Some(limit.clamp(1, MAX_PAGE)),
    })
}

async fn node_status(State(api): State<Api>, Query(q): Query<HashMap<String, String>>) -> Answer {
    let s = api.node.status(&status_page(&q)?).await;
    ok(node_status_json(
        &s.me.key.to_string(),
        s.me.name.map(|n| n.to_string()).as_deref(),
        &s.me.addr.to_string(),
        &s.objects.objects,
        s.objects.total,
        s.objects.next.as_deref(),
        &s.drivers,
    ))
}

async fn list_objects(State(api): State<Api>, Query(q): Query<HashMap<String, String>>) -> Answer {
    let page = api.node.objects_status(&status_page(&q)?).await;
    ok(objects_page_json(
        &page.objects,
        page.total,
        page.next.as_deref(),
    ))
}

async fn object_status(State(api): State<Api>, Path(name): Path<String>) -> Answer {
    ok(object_status_json(&api.node.object_status(&name).await?))
}

/// A join request (`POST /v1/objects`), decoded.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// The object's name.
    pub name: String,
    /// Aspects it must provide.
    #[serde(default)]
    pub require: Vec<String>,
    /// Found the group if no member answers.
    #[serde(default)]
    pub found: bool,
    /// Also join every object it references (a document's embedded objects).
    #[serde(default)]
    pub references: bool,
}

/// Decode the body of a join: a JSON object, or a `bad-json` / `bad-request`
/// error saying what is wrong.
pub fn decode_join(body: &[u8]) -> Result<JoinRequest, ApiError> {
    let refuse = |why: String| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            format!(
                "a join is {{\"name\": \"lo://...\", \"require\": [aspects], \"found\": bool, \"references\": bool}}: {why}"
            ),
        )
    };
    // Only an object: serde would also read a struct from an array of its fields.
    let body @ Json::Object(_) = parse_body(body)? else {
        return Err(refuse("the body is not a JSON object".into()));
    };
    serde_json::from_value(body).map_err(|e| refuse(e.to_string()))
}

async fn join(State(api): State<Api>, body: Bytes) -> Answer {
    let request = decode_join(&body)?;
    let outcome = api
        .node
        .join_object(&request.name, &request.require.join(","), request.found)
        .await?;
    let status = if outcome.already {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let mut answer = json!({
        "name": request.name,
        "version": outcome.version,
        "members": outcome.members,
        "already": outcome.already,
    });
    if request.references {
        // Each reference's own outcome: one that does not resolve or fit is
        // reported, and the others are joined all the same.
        let joins = match api.node.join_references(&request.name).await {
            Ok(joins) => joins,
            Err(e) => {
                // The object is joined all the same: say so, and why its references are not.
                answer["references"] = Json::Array(Vec::new());
                answer["references_error"] = json!({"kind": e.kind(), "message": e.to_string()});
                return Ok((status, axum::Json(answer)).into_response());
            }
        };
        answer["references"] = joins
            .into_iter()
            .map(|j| {
                let mut line = json!({"name": j.reference.name, "require": j.reference.require});
                match j.outcome {
                    Ok(o) => {
                        line["joined"] = true.into();
                        line["version"] = o.version.into();
                    }
                    Err(e) => {
                        line["joined"] = false.into();
                        line["error"] = json!({"kind": e.kind(), "message": e.to_string()});
                    }
                }
                line
            })
            .collect();
    }
    Ok((status, axum::Json(answer)).into_response())
}

async fn leave(State(api): State<Api>, Path(name): Path<String>) -> Answer {
    api.node.leave_object(&name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn interface(State(api): State<Api>, Path(name): Path<String>) -> Answer {
    let joined = api.node.joined(&name).await?;
    let Some(interface) = &joined.interface else {
        return ok(json!({"name": name, "driver": joined.driver, "methods": []}));
    };
    let methods: Vec<Json> = interface
        .methods
        .iter()
        .map(|m| {
            let params: Vec<Json> = m
                .params
                .iter()
                .map(|(p, ty)| json!({"name": p, "type": crate::runtime::type_name(ty), "schema": schema(ty)}))
                .collect();
            let results: Vec<Json> = m
                .results
                .iter()
                .map(|ty| json!({"type": crate::runtime::type_name(ty), "schema": schema(ty)}))
                .collect();
            json!({
                "name": m.name,
                "interface": m.interface,
                "signature": m.signature(),
                "params": params,
                "results": results,
            })
        })
        .collect();
    ok(json!({"name": name, "driver": joined.driver, "methods": methods}))
}

/// Decode a call's body against `method`: a JSON array of its arguments, each
/// turned into the WAVE text a replica parses (no body: no arguments). Errors are
/// `bad-json`, `bad-request` or `bad-argument` (with the argument's index, name
/// and the path inside it).
pub fn decode_call(method: &crate::runtime::Method, body: &[u8]) -> Result<Vec<String>, ApiError> {
    decode_arguments(method, &call_arguments(body)?)
}

/// The JSON array of a call's body.
fn call_arguments(body: &[u8]) -> Result<Vec<Json>, ApiError> {
    if body.is_empty() {
        return Ok(Vec::new());
    }
    match parse_body(body)? {
        Json::Array(args) => Ok(args),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "the body of a call is a JSON array of its arguments, like [\"hi\"] or []",
        )),
    }
}

fn decode_arguments(
    found: &crate::runtime::Method,
    args: &[Json],
) -> Result<Vec<String>, ApiError> {
    if args.len() != found.params.len() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad-argument",
            format!(
                "{} takes {} argument(s), got {}",
                found.signature(),
                found.params.len(),
                args.len()
            ),
        )
        .with("signature", found.signature()));
    }
    let mut wave = Vec::with_capacity(args.len());
    for (i, ((param, ty), arg)) in found.params.iter().zip(args).enumerate() {
        let text = json_to_wave::<Val>(ty, arg).map_err(|e: JsonValueError| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad-argument",
                format!(
                    "argument {} ({param}: {}) of {}: {e}",
                    i + 1,
                    crate::runtime::type_name(ty),
                    found.signature()
                ),
            )
            .with("argument", i)
            .with("param", param.as_str())
            .with("path", e.path.as_str())
        })?;
        wave.push(text);
    }
    Ok(wave)
}

async fn call(
    State(api): State<Api>,
    Path((name, method)): Path<(String, String)>,
    body: Bytes,
) -> Answer {
    let args = call_arguments(&body)?;
    let joined = api.node.joined(&name).await?;
    let Some(interface) = &joined.interface else {
        // An aggregate has no WIT methods: its arguments are WAVE text.
        let wave: Vec<String> = args
            .iter()
            .map(|a| {
                a.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| a.to_string())
            })
            .collect();
        let wave: Vec<&str> = wave.iter().map(String::as_str).collect();
        let results = api.node.call_object(&name, &method, &wave).await?;
        return ok(json!({ "results": results }));
    };
    let found = interface.find(&method).map_err(|e| {
        let message = match e {
            crate::runtime::MethodLookupError::NotFound => format!(
                "{name} has no method {method:?} (methods: {})",
                interface.method_names().join(", ")
            ),
            crate::runtime::MethodLookupError::Ambiguous(names) => format!(
                "{name}: {method:?} is in several interfaces; call one of {}",
                names.join(", ")
            ),
        };
        ApiError::new(StatusCode::NOT_FOUND, "no-such-method", message)
    })?;
    let wave = decode_arguments(found, &args)?;
    let wave: Vec<&str> = wave.iter().map(String::as_str).collect();
    let results = api.node.call_object(&name, &method, &wave).await?;
    let results = crate::json::results_to_json(found, &results).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "bad-result",
            e.to_string(),
        )
    })?;
    ok(json!({ "results": results }))
}

/// One notice of the events stream as JSON.
fn notice_json(notice: &crate::group::GroupNotice) -> Json {
    use crate::group::GroupNotice as N;
    match notice {
        N::Notification { topic, detail } => {
            json!({"type": "notification", "topic": topic, "detail": detail})
        }
        N::View(members) => json!({
            "type": "view",
            "members": members.iter().map(|p| p.label()).collect::<Vec<_>>(),
        }),
        N::Excluded => json!({"type": "excluded"}),
        N::Quarantined(reason) => json!({"type": "quarantined", "reason": reason}),
    }
}

/// What the events stream says when the client fell behind the object by more
/// than a queue holds: it missed some, so the stream ends.
fn lagged_json(missed: u64) -> Json {
    json!({"type": "lagged", "missed": missed,
           "message": "this client fell behind and missed events; reconnect and re-read the state"})
}

/// One applied event of the events stream as JSON.
fn applied_json(e: &crate::runtime::AppliedEvent) -> Json {
    json!({"type": "applied", "sender": e.sender, "seq": e.seq.to_string(),
           "timestamp_ms": e.timestamp_ms.to_string(), "bytes": e.bytes, "rejected": e.rejected})
}

/// What an events stream reads from: the object's notices and, for objects that
/// apply events, its applied events.
struct EventSources {
    notices: broadcast::Receiver<crate::group::GroupNotice>,
    applied: Option<broadcast::Receiver<crate::runtime::AppliedEvent>>,
}

impl EventSources {
    /// The next message, and whether it is the last (the client fell behind); `None`
    /// once the object is gone. Each source stays in its own order.
    async fn next(&mut self) -> Option<(Json, bool)> {
        use broadcast::error::RecvError;
        let applied = async {
            match &mut self.applied {
                Some(applied) => applied.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            notice = self.notices.recv() => match notice {
                Ok(notice) => Some((notice_json(&notice), false)),
                Err(RecvError::Lagged(missed)) => Some((lagged_json(missed), true)),
                Err(RecvError::Closed) => None,
            },
            event = applied => match event {
                Ok(event) => Some((applied_json(&event), false)),
                Err(RecvError::Lagged(missed)) => Some((lagged_json(missed), true)),
                Err(RecvError::Closed) => None,
            },
        }
    }
}

async fn events(
    State(api): State<Api>,
    Path(name): Path<String>,
    headers: HeaderMap,
    request: Request,
) -> Answer {
    let joined = api.node.joined(&name).await?;
    let sources = EventSources {
        notices: joined.object.subscribe(),
        applied: joined.object.applied(),
    };
    let wants_socket = headers.contains_key(header::UPGRADE);
    if wants_socket {
        let (mut parts, _) = request.into_parts();
        let upgrade = WebSocketUpgrade::from_request_parts(&mut parts, &())
            .await
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad-request", e.body_text()))?;
        return Ok(upgrade
            .max_message_size(64 << 10)
            .on_upgrade(move |socket| socket_events(socket, sources)));
    }
    // Server-Sent Events: one `data:` line of JSON per message. A client that
    // does not read blocks only this stream, whose sources are bounded queues.
    let stream = futures_util::stream::unfold(Some(sources), |state| async move {
        let mut sources = state?;
        let (json, end) = sources.next().await?;
        let next = if end { None } else { Some(sources) };
        Some((
            Ok::<_, std::convert::Infallible>(Bytes::from(format!("data: {json}\n\n"))),
            next,
        ))
    });
    let mut response = Body::from_stream(stream).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// Forward events to a WebSocket until either side ends. A client that takes
/// longer than [`SLOW_CLIENT`] to accept a message, or falls behind by more than
/// a queue, is disconnected: nothing is buffered for it beyond the queues every
/// subscriber shares.
async fn socket_events(mut socket: WebSocket, mut sources: EventSources) {
    loop {
        tokio::select! {
            next = sources.next() => {
                let Some((json, end)) = next else { break };
                let sent = tokio::time::timeout(SLOW_CLIENT, socket.send(Message::Text(json.to_string().into()))).await;
                match sent {
                    Ok(Ok(())) if !end => {}
                    Ok(Ok(())) => {
                        tracing::info!("disconnected an events client that fell behind");
                        break;
                    }
                    Ok(Err(_)) => break,
                    Err(_) => {
                        tracing::info!(
                            "disconnected an events client that accepted no message for {SLOW_CLIENT:?}"
                        );
                        break;
                    }
                }
            }
            incoming = socket.recv() => {
                // The client speaks only to close (pings are answered by axum).
                if !matches!(incoming, Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Text(_) | Message::Binary(_)))) {
                    break;
                }
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.send(Message::Close(None))).await;
}

/// A query parameter, or a JSON error naming it.
fn param<'a>(
    query: &'a HashMap<String, String>,
    name: &str,
    example: &str,
) -> Result<&'a str, ApiError> {
    query.get(name).map(String::as_str).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            format!("missing the query parameter {name} (like ?{name}={example})"),
        )
    })
}

async fn list_folder(State(api): State<Api>, Query(q): Query<HashMap<String, String>>) -> Answer {
    let folder = param(&q, "folder", "lo://acme/rooms/")?;
    let folder = if folder.ends_with('/') {
        folder.to_string()
    } else {
        format!("{folder}/")
    };
    liveobjects_directory::name::Name::parse(&folder)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad-name", e.to_string()))?;
    let listing = api
        .node
        .resolver()
        .list(&folder)
        .await
        .map_err(directory_error)?;
    let records: Vec<Json> = listing.records.iter().map(record_json).collect();
    ok(json!({"folder": folder, "folders": listing.folders, "records": records}))
}

async fn resolve(State(api): State<Api>, Query(q): Query<HashMap<String, String>>) -> Answer {
    let name = param(&q, "name", "lo://acme/rooms/lobby")?;
    let verified = api
        .node
        .resolver()
        .resolve(name)
        .await
        .map_err(directory_error)?;
    ok(record_json(&verified))
}

fn directory_error(e: liveobjects_directory::client::ResolveError) -> ApiError {
    let message = e.to_string();
    let (status, kind) = if message.contains("not found") || message.contains("no record") {
        (StatusCode::NOT_FOUND, "not-found")
    } else {
        (StatusCode::BAD_GATEWAY, "directory-failed")
    };
    ApiError::new(status, kind, message)
}

/// The page's files, embedded: the page works with no network beyond this node.
const WEB_ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("web/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("web/app.css"),
    ),
];

/// Headers every page file carries: nothing but this node may supply scripts,
/// styles or connections; no framing (clickjacking); the token in the page's
/// address is never sent on as a referrer.
fn page_headers(content_type: &'static str) -> [(header::HeaderName, &'static str); 6] {
    [
        (header::CONTENT_TYPE, content_type),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-cache"),
    ]
}

async fn page() -> Response {
    (
        page_headers("text/html; charset=utf-8"),
        include_str!("web/index.html"),
    )
        .into_response()
}

async fn asset(Path(file): Path<String>) -> Answer {
    let (_, content_type, body) = WEB_ASSETS
        .iter()
        .find(|(name, _, _)| *name == file)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no-such-route",
                format!("the page has no file {file:?}"),
            )
        })?;
    Ok((page_headers(content_type), *body).into_response())
}

async fn openapi() -> Answer {
    ok(openapi_document())
}

/// The OpenAPI 3.1 document of the API.
pub fn openapi_document() -> Json {
    let error = json!({"$ref": "#/components/schemas/Error"});
    let name = json!({"name": "name", "in": "path", "required": true,
        "description": "the object's name, percent-encoded (lo%3A%2F%2Facme%2Frooms%2Flobby)",
        "schema": {"type": "string"}});
    let page = json!([
        {"name": "prefix", "in": "query", "required": false, "schema": {"type": "string"},
            "description": "only objects whose names start with this"},
        {"name": "after", "in": "query", "required": false, "schema": {"type": "string"},
            "description": "start after this name (the previous page's next)"},
        {"name": "limit", "in": "query", "required": false,
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
            "description": "at most this many objects (default and most 1000)"},
    ]);
    let answers = |ok: &str, description: &str| {
        json!({
            ok: {"description": description, "content": {"application/json": {"schema": {"type": "object"}}}},
            "default": {"description": "an error", "content": {"application/json": {"schema": error}}},
        })
    };
    json!({
        "openapi": "3.1.0",
        "info": {"title": "liveobjects node API", "version": "1"},
        "components": {"schemas": {"Error": {
            "type": "object", "required": ["error"],
            "properties": {"error": {"type": "object", "required": ["kind", "message"],
                "properties": {"kind": {"type": "string"}, "message": {"type": "string"},
                    "argument": {"type": "integer"}, "param": {"type": "string"}, "path": {"type": "string"},
                    "reference": {"type": "string"}}}}
        }}},
        "paths": {
            "/v1/node": {"get": {"summary": "the node, its drivers and a page of its objects",
                "parameters": page, "responses": answers("200", "node status")}},
            "/v1/objects": {
                "get": {"summary": "a page of joined objects (objects, total, next)",
                    "parameters": page, "responses": answers("200", "objects")},
                "post": {"summary": "join an object",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {
                        "type": "object", "required": ["name"], "additionalProperties": false,
                        "properties": {"name": {"type": "string"}, "require": {"type": "array", "items": {"type": "string"}},
                            "found": {"type": "boolean"}, "references": {"type": "boolean"}}}}}},
                    "responses": answers("201", "joined (200: joined already)")},
            },
            "/v1/objects/{name}": {
                "get": {"summary": "an object's status", "parameters": [name], "responses": answers("200", "status")},
                "delete": {"summary": "leave an object", "parameters": [name],
                    "responses": {"204": {"description": "left"}, "default": {"description": "an error", "content": {"application/json": {"schema": error}}}}},
            },
            "/v1/objects/{name}/interface": {"get": {"summary": "methods, WIT types, JSON Schemas",
                "parameters": [name], "responses": answers("200", "interface")}},
            "/v1/objects/{name}/call/{method}": {"post": {"summary": "call a method",
                "parameters": [name, {"name": "method", "in": "path", "required": true, "schema": {"type": "string"}}],
                "requestBody": {"required": false, "content": {"application/json": {"schema": {"type": "array"}}}},
                "responses": answers("200", "{\"results\": [...]}")}},
            "/v1/objects/{name}/events": {"get": {"summary": "notices as a WebSocket or text/event-stream",
                "parameters": [name], "responses": {"101": {"description": "WebSocket"},
                    "200": {"description": "Server-Sent Events", "content": {"text/event-stream": {}}},
                    "default": {"description": "an error", "content": {"application/json": {"schema": error}}}}}},
            "/v1/directory": {"get": {"summary": "a folder's verified records",
                "parameters": [{"name": "folder", "in": "query", "required": true, "schema": {"type": "string"}}],
                "responses": answers("200", "listing")}},
            "/v1/directory/resolve": {"get": {"summary": "a verified record",
                "parameters": [{"name": "name", "in": "query", "required": true, "schema": {"type": "string"}}],
                "responses": answers("200", "record")}},
            "/v1/openapi.json": {"get": {"summary": "this document", "responses": answers("200", "OpenAPI")}},
        }
    })
}
