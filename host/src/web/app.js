// The node's page: a folder browser for the directory, objects with forms
// generated from their WIT types, live feeds, and live documents. Plain DOM, no
// framework and nothing fetched from elsewhere: the node embeds this file.
// Everything shown comes from the node's JSON API (/v1/openapi.json); text from
// objects is only ever set as textContent, never parsed as HTML.
"use strict";

const token = new URLSearchParams(location.search).get("token");

// ---------------------------------------------------------------- helpers

/** An element with attributes (on* keys become listeners) and children. */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const enc = encodeURIComponent;

/** Replace `el`'s children, skipping absent ones (null, undefined, false). */
function put(el, ...children) {
  el.replaceChildren(...children.flat().filter((c) => c !== undefined && c !== null && c !== false));
}

/** A failed API request: the node's error object ({kind, message, ...}). */
class ApiError extends Error {
  constructor(error, status) {
    super(error.message || `HTTP ${status}`);
    this.error = error;
    this.status = status;
  }
}

/** Call the node's API; JSON in, JSON out; errors thrown as ApiError. */
async function api(method, path, body) {
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError({ kind: "unreachable", message: `the node did not answer: ${e.message}` }, 0);
  }
  if (response.status === 204) return null;
  const text = await response.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    throw new ApiError({ kind: "bad-answer", message: `not JSON (${response.status}): ${text.slice(0, 200)}` }, response.status);
  }
  if (!response.ok) throw new ApiError(json.error || { kind: "http", message: text }, response.status);
  return json;
}

const objectPath = (name) => `/v1/objects/${enc(name)}`;

/** A JSON value as one line of text (64-bit integers are strings already). */
function show(value) {
  if (typeof value === "string") return value;
  return JSON.stringify(value);
}

/** Open a live events stream of `name`: a WebSocket, or Server-Sent Events if
 *  no WebSocket ever opens. A stream that ends after it was open (the node
 *  restarted, or this page fell behind and was cut off) is opened again with a
 *  growing delay, and `onEvent` gets {type: "reconnected"} so the page re-reads
 *  what it shows. Returns a function that closes it for good. */
function subscribe(name, onEvent, onState) {
  const q = token ? `?token=${enc(token)}` : "";
  const path = `${objectPath(name)}/events${q}`;
  const say = (s) => onState && onState(s);
  const deliver = (data) => { try { onEvent(JSON.parse(data)); } catch { /* not JSON: ignore */ } };
  let closed = false;
  let source = null;
  let ws = null;
  let everOpen = false;
  let delay = 500;
  const open = () => {
    if (closed) return;
    ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${path}`);
    let opened = false;
    ws.onopen = () => {
      opened = true;
      delay = 500;
      say("live (WebSocket)");
      if (everOpen) onEvent({ type: "reconnected" });
      everOpen = true;
    };
    ws.onmessage = (m) => deliver(m.data);
    ws.onclose = () => {
      if (closed) return;
      if (!opened && !everOpen) {
        source = new EventSource(path);
        source.onopen = () => say("live (Server-Sent Events)");
        source.onmessage = (m) => deliver(m.data);
        source.onerror = () => say("events stream lost; the browser retries");
        return;
      }
      say(`events stream closed; reconnecting in ${Math.round(delay / 1000)} s`);
      setTimeout(open, delay);
      delay = Math.min(delay * 2, 30000);
    };
  };
  open();
  return () => { closed = true; if (ws) ws.close(); if (source) source.close(); };
}

/** Members' short names, learned from views: key prefix -> "alice (728c838b)". */
const labels = new Map();
function learnMembers(members) {
  for (const m of members || []) {
    const label = m.split("@")[0];
    const prefix = label.match(/([0-9a-f]{8})\)?$/);
    if (prefix) labels.set(prefix[1], label);
  }
}
/** A member's key (as an object sees it: hex) shown by its name if known. */
function who(key) {
  const short = String(key).slice(0, 8);
  return labels.get(short) || short;
}

/** Call `f` at most once per `ms`, trailing (refresh after bursts of events). */
function throttle(f, ms) {
  // One run at a time (an older render must not land after a newer one); a call
  // during a run schedules one more run after it. `cancel` stops it for good.
  let timer = null;
  let running = false;
  let again = false;
  let cancelled = false;
  const run = async () => {
    timer = null;
    if (cancelled) return;
    if (running) { again = true; return; }
    running = true;
    try { await f(); } catch { /* shown by f itself */ } finally {
      running = false;
      if (again && !cancelled) { again = false; schedule(); }
    }
  };
  const schedule = () => { if (!timer && !cancelled) timer = setTimeout(run, ms); };
  schedule.cancel = () => { cancelled = true; clearTimeout(timer); };
  return schedule;
}

// ---------------------------------------------------------------- forms from WIT types

/** A form field for a value of JSON Schema `schema` (the node's mapping of a WIT
 *  type, with the WIT kind under x-wit). Returns {el, get()}; every field element
 *  carries its value path (".name[0]") in data-path, for errors. */
function field(schema, label, path) {
  const kind = schema["x-wit"];
  const wrap = (input, get) => {
    const el = h("div", { class: "field", "data-path": path, "data-kind": kind },
      label !== null ? h("label", {}, label, " ") : null, input, h("span", { class: "error" }));
    return { el, get };
  };
  switch (kind) {
    case "bool": {
      const input = h("input", { type: "checkbox" });
      return wrap(input, () => input.checked);
    }
    case "s8": case "s16": case "s32": case "u8": case "u16": case "u32": {
      const input = h("input", { type: "number", step: "1", min: schema.minimum, max: schema.maximum, placeholder: kind, value: "0" });
      return wrap(input, () => (input.value.trim() === "" ? input.value : Number(input.value)));
    }
    case "s64": case "u64": {
      // Decimal text: exact beyond 2^53.
      const input = h("input", { inputmode: "numeric", placeholder: kind, value: "0" });
      return wrap(input, () => input.value.trim());
    }
    case "f32": case "f64": {
      const input = h("input", { inputmode: "decimal", placeholder: `${kind} (or NaN, Infinity)`, value: "0" });
      return wrap(input, () => {
        const t = input.value.trim();
        return ["NaN", "Infinity", "-Infinity"].includes(t) || t === "" || isNaN(Number(t)) ? t : Number(t);
      });
    }
    case "char": {
      const input = h("input", { maxlength: 2, size: 3, placeholder: "char" });
      return wrap(input, () => input.value);
    }
    case "string": {
      const input = h("input", { placeholder: "text" });
      return wrap(input, () => input.value);
    }
    case "enum": {
      const select = h("select", {}, schema.enum.map((c) => h("option", { value: c }, c)));
      return wrap(select, () => select.value);
    }
    case "flags": {
      const boxes = schema.items.enum.map((f) => [f, h("input", { type: "checkbox", value: f })]);
      const span = h("span", {}, boxes.map(([f, b]) => h("label", {}, b, f, " ")));
      return wrap(span, () => boxes.filter(([, b]) => b.checked).map(([f]) => f));
    }
    case "record": {
      const parts = Object.entries(schema.properties).map(([name, s]) => [name, field(s, name, `${path}.${name}`)]);
      const set = h("fieldset", {}, parts.map(([, p]) => p.el));
      const out = wrap(set, () => Object.fromEntries(parts.map(([n, p]) => [n, p.get()])));
      return out;
    }
    case "tuple": {
      const parts = schema.prefixItems.map((s, i) => field(s, `${i}`, `${path}[${i}]`));
      const set = h("fieldset", {}, parts.map((p) => p.el));
      return wrap(set, () => parts.map((p) => p.get()));
    }
    case "list": {
      const items = [];
      const list = h("div", {});
      const add = h("button", { type: "button", class: "secondary" }, "+ item");
      // After a removal the rows behind it move up: their paths (where errors
      // are shown) and labels are renumbered to match the array sent.
      const renumber = () => {
        items.forEach((item, k) => {
          const from = item.el.dataset.path;
          const to = `${path}[${k}]`;
          if (from === to) return;
          for (const el of [item.el, ...item.el.querySelectorAll(".field[data-path]")]) {
            el.dataset.path = to + el.dataset.path.slice(from.length);
          }
          const label = item.el.querySelector(":scope > label");
          if (label) label.textContent = `[${k}] `;
        });
      };
      add.addEventListener("click", () => {
        const i = items.length;
        const item = field(schema.items, `[${i}]`, `${path}[${i}]`);
        const remove = h("button", { type: "button", class: "secondary", title: "remove" }, "−");
        const row = h("div", { class: "row" }, item.el, remove);
        remove.addEventListener("click", () => { items.splice(items.indexOf(item), 1); row.remove(); renumber(); });
        items.push(item);
        list.append(row);
      });
      return wrap(h("fieldset", {}, list, add), () => items.map((p) => p.get()));
    }
    case "option": {
      const inner = schema.anyOf[1];
      const doubled = inner["x-wit"] === undefined && inner.properties && inner.properties.some;
      const child = field(doubled ? inner.properties.some : inner, null, doubled ? `${path}.some` : path);
      const some = h("input", { type: "checkbox", title: "some" });
      child.el.hidden = true;
      some.addEventListener("change", () => { child.el.hidden = !some.checked; });
      const span = h("span", {}, h("label", {}, some, "some "), child.el);
      return wrap(span, () => (some.checked ? (doubled ? { some: child.get() } : child.get()) : null));
    }
    case "variant": case "result": {
      const cases = schema.oneOf.map((c) => {
        const [name, payload] = Object.entries(c.properties)[0];
        const hasPayload = payload.type !== "null";
        return { name, child: hasPayload ? field(payload, null, `${path}.${name}`) : null };
      });
      const select = h("select", {}, cases.map((c) => h("option", { value: c.name }, c.name)));
      const holder = h("span", {});
      const pick = () => {
        holder.replaceChildren();
        const c = cases.find((c) => c.name === select.value);
        if (c && c.child) holder.append(c.child.el);
      };
      select.addEventListener("change", pick);
      pick();
      return wrap(h("span", {}, select, " ", holder), () => {
        const c = cases.find((c) => c.name === select.value);
        return { [c.name]: c.child ? c.child.get() : null };
      });
    }
    default: {
      // A kind this page has no widget for: JSON text, checked by the node.
      const input = h("input", { placeholder: `JSON (${kind || "value"})` });
      return wrap(input, () => JSON.parse(input.value || "null"));
    }
  }
}

/** Show an API error next to the field it is about: the argument's field at
 *  the deepest path the node named, or the form's own error line. */
function showError(form, args, err) {
  for (const el of form.querySelectorAll(".field.invalid")) el.classList.remove("invalid");
  for (const el of form.querySelectorAll(".field > .error")) el.textContent = "";
  const formError = form.querySelector(":scope > .error");
  formError.textContent = "";
  if (!err) return;
  const e = err.error || { message: String(err) };
  const arg = typeof e.argument === "number" ? args[e.argument] : null;
  if (arg) {
    // The deepest field whose path leads to the one the node named (read from
    // the form as it is now: list rows come and go).
    const path = e.path || "";
    const within = (p) => path === p || path.startsWith(`${p}.`) || path.startsWith(`${p}[`);
    let el = arg.el;
    for (const f of arg.el.querySelectorAll(".field[data-path]")) {
      if (within(f.dataset.path) && f.dataset.path.length > el.dataset.path.length) el = f;
    }
    el.classList.add("invalid");
    // Next to a nested field, what is wrong there is enough; the whole message
    // (which argument, the signature) is the title.
    const at = e.path ? e.message.indexOf(`at ${e.path}: `) : -1;
    const line = el.querySelector(":scope > .error");
    line.textContent = at >= 0 ? e.message.slice(at + e.path.length + 5) : e.message;
    line.title = e.message;
    return;
  }
  formError.textContent = e.message;
}

/** A form that calls `method` of `name`: one field per parameter, the results
 *  or the error shown in place. */
function methodForm(name, method, onDone) {
  const args = method.params.map((p) => field(p.schema, p.name, ""));
  const result = h("div", { class: "result" });
  // novalidate: every error comes from the node's WIT mapping, worded one way and
  // placed at its field (the browser's own range checks would pre-empt some).
  const form = h("form", { class: "method", "data-method": method.name, novalidate: true },
    h("div", {}, h("code", {}, method.name), " ", h("span", { class: "muted" }, method.signature)),
    args.map((a) => a.el),
    h("button", { type: "submit" }, "Call"),
    h("span", { class: "error" }),
    result);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    result.textContent = "";
    let values;
    try {
      values = args.map((a) => a.get());
    } catch (e) {
      showError(form, args, { error: { message: `not JSON: ${e.message}` } });
      return;
    }
    try {
      const answer = await api("POST", `${objectPath(name)}/call/${enc(method.name)}`, values);
      showError(form, args, null);
      const r = answer.results;
      // A method's own refusal (result<_, string> -> err) is shown as an error.
      if (r.length === 1 && r[0] && typeof r[0] === "object" && "err" in r[0]) {
        form.querySelector(":scope > .error").textContent = `refused: ${show(r[0].err)}`;
      } else {
        result.textContent = r.length === 0 ? "done" : r.map(show).join("\n");
      }
      onDone && onDone();
    } catch (e) {
      showError(form, args, e);
    }
  });
  return form;
}

/** Queries: methods without parameters whose result is not a `result` (objects
 *  report refusals of updates as results; a query cannot be refused). The page
 *  calls these to show state, and never calls anything else on its own. */
const isQuery = (m) => m.params.length === 0 && m.results.length === 1 && m.results[0].schema["x-wit"] !== "result";

/** Call each query of `name` and show its value (or why not) in `values`. */
async function showQueries(name, queries, values) {
  const shown = [];
  for (const q of queries) {
    try {
      const r = await api("POST", `${objectPath(name)}/call/${enc(q.name)}`, []);
      shown.push(h("span", { "data-query": q.name }, h("b", {}, q.name), " = ", show(r.results[0])));
    } catch (e) {
      shown.push(h("span", { class: "error" }, `${q.name}: ${e.message}`));
    }
  }
  values.replaceChildren(...shown);
}

// ---------------------------------------------------------------- the directory

async function openFolder(folder) {
  const listing = document.getElementById("listing");
  const error = document.getElementById("folder-error");
  document.getElementById("folder").value = folder;
  error.textContent = "";
  listing.replaceChildren(h("li", { class: "muted" }, "loading…"));
  try {
    const answer = await api("GET", `/v1/directory?folder=${enc(folder)}`);
    const items = [];
    if (answer.folder !== "lo://") {
      const up = answer.folder.replace(/[^/]+\/$/, "");
      items.push(h("li", { class: "folder", onclick: () => openFolder(up.length > 5 ? up : "lo://") }, ".."));
    }
    for (const f of answer.folders) {
      const path = f.startsWith("lo://") ? f : `${answer.folder}${f}`;
      items.push(h("li", { class: "folder", onclick: () => openFolder(path.endsWith("/") ? path : `${path}/`) }, f));
    }
    for (const r of answer.records) {
      const t = r.type;
      items.push(h("li", {
        class: "object", draggable: "true", "data-name": r.name,
        ondragstart: (e) => {
          e.dataTransfer.setData("application/x-lo-name", r.name);
          e.dataTransfer.setData("text/plain", r.name);
        },
        onclick: () => { location.hash = `#/object/${enc(r.name)}`; },
      }, r.name.slice(answer.folder.length) || r.name, " ",
      h("span", { class: "aspects" }, `${t.reliability}, ${t.security}, ${t.category} · ${r.driver.name} · v${r.version}${r.verified ? " · verified" : ""}`)));
    }
    if (items.length === 0) items.push(h("li", { class: "muted" }, "empty"));
    listing.replaceChildren(...items);
  } catch (e) {
    listing.replaceChildren();
    error.textContent = e.message;
  }
}

async function refreshJoined() {
  const list = document.getElementById("joined");
  try {
    const answer = await api("GET", "/v1/objects");
    list.replaceChildren(...answer.objects.map((o) => h("li", {
      class: "object", draggable: "true", "data-name": o.name,
      ondragstart: (e) => e.dataTransfer.setData("application/x-lo-name", o.name),
      onclick: () => { location.hash = `#/object/${enc(o.name)}`; },
    }, o.name, " ", h("span", { class: "aspects" }, `${o.driver} · ${o.members.length} member(s)`))));
    if (answer.objects.length === 0) list.replaceChildren(h("li", { class: "muted" }, "nothing yet"));
  } catch (e) {
    list.replaceChildren(h("li", { class: "error" }, e.message));
  }
}

// ---------------------------------------------------------------- an object

/** What closes when another object is opened (event streams, pending
 *  refreshes, embedded objects), and which opening is the current one (an older
 *  one still loading must not draw over it). */
let closers = [];
let opening = 0;
function closeAll() { for (const c of closers) c(); closers = []; }

async function openObject(name) {
  closeAll();
  const mine = ++opening;
  const view = document.getElementById("view");
  view.replaceChildren(h("p", { class: "muted" }, `opening ${name}…`));
  let status = null;
  try {
    status = await api("GET", objectPath(name));
  } catch (e) {
    if (mine !== opening) return;
    if (e.error.kind !== "not-joined") { view.replaceChildren(h("p", { class: "error" }, e.message)); return; }
  }
  if (mine !== opening) return;
  if (!status) return showUnjoined(name, view);
  const iface = await api("GET", `${objectPath(name)}/interface`).catch((e) => ({ methods: [], error: e.message }));
  if (mine !== opening) return;
  closers.push(() => {
    for (const el of view.querySelectorAll(".block.embed")) el.dispatchEvent(new Event("lo-close"));
  });
  const facts = h("dl", { class: "facts" });
  const feed = h("ul", { id: "feed" });
  const feedState = h("span", { class: "muted" }, "connecting…");
  const values = h("div", { class: "values", id: "state-values" });
  const queries = iface.methods.filter(isQuery);
  const isDocument = iface.methods.some((m) => m.name === "references") && iface.methods.some((m) => m.name === "blocks");
  const docHolder = h("div", {});
  const docEditor = isDocument ? documentEditor(name) : null;

  const renderFacts = (s) => {
    learnMembers(s.members);
    put(facts, [
      h("dt", {}, "driver"), h("dd", {}, s.driver),
      h("dt", {}, "members"), h("dd", { id: "members" }, s.members.join(", ")),
      h("dt", {}, "events applied"), h("dd", {}, s.events_applied ?? "–"),
      h("dt", {}, "state hash"), h("dd", { id: "state-digest" }, s.state_digest ?? "–"),
      h("dt", {}, "state size"), h("dd", {}, s.state_bytes !== null && s.state_bytes !== undefined ? `${s.state_bytes} bytes` : "–"),
      s.quarantined ? [h("dt", {}, "quarantined"), h("dd", { class: "error" }, s.quarantined)] : null]);
  };
  // A document's blocks are drawn as the document, not as values.
  const shownQueries = queries.filter((q) => !isDocument || !["blocks", "references"].includes(q.name));
  const refreshValues = () => showQueries(name, shownQueries, values);
  const refresh = throttle(async () => {
    try { renderFacts(await api("GET", objectPath(name))); } catch { /* left: shown by the feed */ }
    await refreshValues();
    if (isDocument) await renderDocument(name, docHolder);
  }, 250);
  closers.push(refresh.cancel);

  renderFacts(status);
  const leave = h("button", { class: "secondary", id: "leave" }, "Leave");
  leave.addEventListener("click", async () => {
    try { await api("DELETE", objectPath(name)); refreshJoined(); openObject(name); } catch (e) { alert(e.message); }
  });
  put(view,
    h("section", {}, h("h2", {}, name), facts, h("div", { class: "row" }, leave)),
    isDocument ? h("section", { id: "document" }, docHolder, docEditor) : null,
    queries.length ? h("section", {}, h("h3", {}, "State at this replica"), values) : null,
    h("section", { id: "methods" }, h("h3", {}, "Methods"),
      iface.error ? h("p", { class: "error" }, iface.error) : null,
      iface.methods.map((m) => methodForm(name, m, refresh))),
    h("section", {}, h("h3", {}, "Live feed "), feedState, feed));
  const line = (text, cls) => {
    feed.prepend(h("li", { class: cls }, `${new Date().toLocaleTimeString()} ${text}`));
    while (feed.children.length > 200) feed.lastChild.remove();
  };
  closers.push(subscribe(name, (e) => {
    switch (e.type) {
      case "applied": line(`applied #${e.seq} from ${who(e.sender)} (${e.bytes} bytes)${e.rejected ? ` rejected: ${e.rejected}` : ""}`, e.rejected ? "rejected" : ""); break;
      case "notification": line(`notification ${e.topic}: ${e.detail.replace(/\b[0-9a-f]{64}\b/g, who)}`); break;
      case "view": learnMembers(e.members); line(`view: ${e.members.join(", ")}`); break;
      case "lagged": line(`lagged: ${e.message}`, "rejected"); break;
      case "reconnected": line("reconnected: state re-read"); break;
      default: line(JSON.stringify(e));
    }
    refresh();
  }, (s) => { feedState.textContent = s; }));
  await refreshValues();
  if (isDocument) await renderDocument(name, docHolder);
}

async function showUnjoined(name, view) {
  const facts = h("dl", { class: "facts" });
  const error = h("div", { class: "error", id: "join-error" });
  const require = h("input", { id: "join-require", placeholder: "e.g. total-order, encrypted" });
  const found = h("input", { type: "checkbox", id: "join-found" });
  const refs = h("input", { type: "checkbox", id: "join-references", checked: true });
  const join = h("button", { id: "join" }, "Join");
  view.replaceChildren(h("section", {}, h("h2", {}, name), facts,
    h("h3", {}, "Join"),
    h("div", { class: "row" }, h("label", { for: "join-require" }, "require"), require),
    h("div", { class: "row" }, h("label", {}, found, " found it if no member answers")),
    h("div", { class: "row" }, h("label", {}, refs, " also join the objects it references (documents)")),
    h("div", { class: "row" }, join), error));
  try {
    const r = await api("GET", `/v1/directory/resolve?name=${enc(name)}`);
    facts.replaceChildren(
      h("dt", {}, "interface"), h("dd", {}, r.type.interface),
      h("dt", {}, "aspects"), h("dd", {}, `${r.type.reliability}, ${r.type.security}, ${r.type.category}`),
      h("dt", {}, "driver"), h("dd", {}, r.driver.name),
      h("dt", {}, "version"), h("dd", {}, r.version),
      h("dt", {}, "verified"), h("dd", {}, `${r.verified ? "yes" : "no"}, signed by ${r.signed_by}`),
      h("dt", {}, "logic"), h("dd", {}, `${r.logic.size} bytes, sha256 ${r.logic.sha256.slice(0, 16)}…`));
  } catch (e) {
    error.textContent = e.message;
  }
  join.addEventListener("click", async () => {
    error.textContent = "";
    join.disabled = true;
    try {
      const aspects = require.value.split(",").map((a) => a.trim()).filter(Boolean);
      const answer = await api("POST", "/v1/objects", { name, require: aspects, found: found.checked, references: refs.checked });
      const failed = (answer.references || []).filter((r) => !r.joined);
      await refreshJoined();
      await openObject(name);
      if (failed.length) alertBox(failed.map((r) => `${r.name}: ${r.error.message}`).join("\n"));
    } catch (e) {
      error.textContent = e.message;
      join.disabled = false;
    }
  });
}

function alertBox(text) {
  const view = document.getElementById("view");
  view.prepend(h("section", { class: "error" }, text));
}

// ---------------------------------------------------------------- documents

/** Render document `name` into `holder`: its title, text blocks, and each
 *  embedded object live in place (joined here with the aspects its reference
 *  requires, so the node checks them again). */
async function renderDocument(name, holder) {
  let title, blocks;
  try {
    title = (await api("POST", `${objectPath(name)}/call/title`, [])).results[0];
    blocks = (await api("POST", `${objectPath(name)}/call/blocks`, [])).results[0];
  } catch (e) {
    holder.replaceChildren(h("p", { class: "error" }, e.message));
    return;
  }
  // Keep embedded widgets that are still there (their streams stay open).
  const old = new Map([...holder.querySelectorAll(".block.embed")].map((el) => [el.dataset.name, el]));
  const children = [h("div", { class: "doc-title", id: "doc-title" }, title || "(untitled document)")];
  for (const b of blocks) {
    const by = h("span", {}, `#${b.id} by ${who(b.author)}`);
    if ("text" in b.content) {
      children.push(h("div", { class: "block text", "data-id": b.id }, b.content.text));
    } else {
      const ref = b.content.embed;
      let el = old.get(ref.name);
      if (!el) {
        el = h("div", { class: "block embed", "data-name": ref.name, "data-id": b.id },
          h("div", { class: "block-head" }, h("a", { href: `#/object/${enc(ref.name)}` }, ref.name),
            h("span", {}, ref.require.length ? `requires ${ref.require.join(", ")}` : "requires nothing"), by),
          h("div", { class: "embed-body" }, h("span", { class: "muted" }, "joining…")));
        embedLive(ref, el.querySelector(".embed-body"));
      }
      old.delete(ref.name);
      children.push(el);
    }
  }
  for (const el of old.values()) el.dispatchEvent(new Event("lo-close"));
  holder.replaceChildren(...children);
}

/** The document's editing tools: add a paragraph, embed by name, or drop an
 *  object from the folder browser. */
function documentEditor(name) {
  const text = h("textarea", { id: "doc-text", rows: 2, placeholder: "a paragraph" });
  const textError = h("div", { class: "error", id: "doc-text-error" });
  const add = h("button", { id: "doc-add-text" }, "Add paragraph");
  add.addEventListener("click", async () => {
    textError.textContent = "";
    try {
      const r = await api("POST", `${objectPath(name)}/call/add-text`, [text.value]);
      if (r.results[0] && "err" in r.results[0]) textError.textContent = r.results[0].err;
      else text.value = "";
    } catch (e) { textError.textContent = e.message; }
  });
  const target = h("input", { id: "embed-name", placeholder: "lo://… (or drop an object below)" });
  const require = h("input", { id: "embed-require", placeholder: "requires, e.g. total-order" });
  const embedError = h("div", { class: "error", id: "embed-error" });
  const embedOk = h("div", { class: "ok", id: "embed-ok" });
  const embed = async (objectName) => {
    embedError.textContent = "";
    embedOk.textContent = "";
    const aspects = require.value.split(",").map((a) => a.trim()).filter(Boolean);
    try {
      const r = await api("POST", `${objectPath(name)}/call/embed`, [{ name: objectName, require: aspects }]);
      if (r.results[0] && "err" in r.results[0]) embedError.textContent = r.results[0].err;
      else { embedOk.textContent = `embedded ${objectName}`; target.value = ""; }
    } catch (e) {
      // The host's type check: the same words as `lo join --require`.
      embedError.textContent = e.message;
    }
  };
  const button = h("button", { id: "embed" }, "Embed");
  button.addEventListener("click", () => embed(target.value.trim()));
  const zone = h("div", { class: "dropzone", id: "dropzone" }, "Drop an object here to embed it");
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    const dropped = e.dataTransfer.getData("application/x-lo-name") || e.dataTransfer.getData("text/plain");
    if (dropped) embed(dropped.trim());
  });
  return h("div", { class: "card" },
    h("div", { class: "row" }, text, add), textError,
    h("div", { class: "row" }, target, require, button), zone, embedError, embedOk);
}

/** An embedded object, live: joined here (with its reference's requirements),
 *  shown as a chat box if it looks like a chat, otherwise its query values and
 *  its methods; refreshed on each of its events. */
async function embedLive(ref, body) {
  const stop = [];
  let closed = false;
  body.closest(".block").addEventListener("lo-close", () => { closed = true; stop.forEach((f) => f()); });
  // Shown live only once this node has joined it: opening a document must not
  // make the node join whatever its authors embedded, so that takes a click
  // (or joining the document with its references).
  let status;
  try {
    status = await api("GET", objectPath(ref.name));
  } catch (e) {
    if (closed) return;
    if (e.error.kind !== "not-joined") { body.replaceChildren(h("span", { class: "error" }, e.message)); return; }
    const join = h("button", { class: "secondary embed-join" }, `Join ${ref.name} to show it here`);
    // Offered only once a join found no member: then this node may start it.
    const found = h("button", { class: "secondary embed-found", hidden: true }, "Start it on this node");
    const error = h("span", { class: "error" });
    const joinWith = (button, options) => async () => {
      button.disabled = true;
      try {
        await api("POST", "/v1/objects", { name: ref.name, require: ref.require, ...options });
        refreshJoined();
        body.replaceChildren(h("span", { class: "muted" }, "joining…"));
        await embedLive(ref, body);
      } catch (err) {
        error.textContent = err.message;
        button.disabled = false;
        if (err.error && err.error.kind === "no-members") found.hidden = false;
      }
    };
    join.addEventListener("click", joinWith(join, {}));
    found.addEventListener("click", joinWith(found, { found: true }));
    body.replaceChildren(join, " ", found, " ", error);
    return;
  }
  if (closed) return;
  learnMembers(status.members);
  let iface;
  try {
    iface = await api("GET", `${objectPath(ref.name)}/interface`);
  } catch (e) {
    if (!closed) body.replaceChildren(h("span", { class: "error" }, e.message));
    return;
  }
  if (closed) return;
  const has = (n) => iface.methods.find((m) => m.name === n);
  if (has("post") && has("history")) {
    const lines = h("ul", { class: "chat-lines" });
    const input = h("input", { class: "chat-input", placeholder: "say something" });
    const error = h("div", { class: "error" });
    const send = h("button", { class: "chat-send" }, "Send");
    const load = async () => {
      try {
        const r = await api("POST", `${objectPath(ref.name)}/call/history`, [20]);
        lines.replaceChildren(...r.results[0].map((m) => h("li", {}, h("span", { class: "sender" }, who(m.sender)), m.text)));
        lines.scrollTop = lines.scrollHeight;
      } catch (e) { error.textContent = e.message; }
    };
    const post = async () => {
      error.textContent = "";
      try {
        const r = await api("POST", `${objectPath(ref.name)}/call/post`, [input.value]);
        if (r.results[0] && "err" in r.results[0]) error.textContent = r.results[0].err;
        else input.value = "";
      } catch (e) { error.textContent = e.message; }
    };
    send.addEventListener("click", post);
    input.addEventListener("keydown", (e) => { if (e.key === "Enter") post(); });
    body.replaceChildren(lines, h("div", { class: "row" }, input, send), error);
    const reload = throttle(load, 150);
    stop.push(subscribe(ref.name, reload), reload.cancel);
    await load();
    return;
  }
  const values = h("div", { class: "values" });
  const queries = iface.methods.filter(isQuery);
  const load = () => showQueries(ref.name, queries, values);
  const methods = iface.methods.filter((m) => !isQuery(m));
  put(body, values, methods.length
    ? h("details", {}, h("summary", {}, "methods"), methods.map((m) => methodForm(ref.name, m, load)))
    : null);
  const reload = throttle(load, 150);
  stop.push(subscribe(ref.name, reload), reload.cancel);
  await load();
}

// ---------------------------------------------------------------- start

async function route() {
  const m = location.hash.match(/^#\/object\/(.+)$/);
  if (!m) return;
  let name;
  try {
    name = decodeURIComponent(m[1]);
  } catch {
    document.getElementById("view").replaceChildren(h("p", { class: "error" }, `not an object's address: ${m[1]}`));
    return;
  }
  await openObject(name);
}

window.addEventListener("hashchange", route);
document.getElementById("folder-form").addEventListener("submit", (e) => {
  e.preventDefault();
  let f = document.getElementById("folder").value.trim();
  if (!f.endsWith("/")) f += "/";
  openFolder(f);
});

(async () => {
  try {
    const node = await api("GET", "/v1/node");
    const n = node.node;
    document.getElementById("node-label").textContent =
      `node ${n.name ? `${n.name} (${n.key.slice(0, 8)})` : n.key.slice(0, 8)} at ${n.addr}`;
    document.title = `liveobjects · ${n.name || n.key.slice(0, 8)}`;
  } catch (e) {
    document.getElementById("node-error").textContent = e.message;
  }
  const start = new URLSearchParams(location.search).get("folder") || "lo://";
  await Promise.all([openFolder(start), refreshJoined()]);
  await route();
  document.body.dataset.ready = "true";
})();
