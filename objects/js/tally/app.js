// `tally`: a replicated word counter written in JavaScript (componentize-js).
//
// It implements the same liveobjects world as the Rust and Python objects: the
// lifecycle (init / deliver / view-changed / snapshot) plus its own `tally`
// interface. State changes only in `deliver`; snapshots are canonical JSON (keys
// sorted), so replicas that applied the same events return identical bytes. A
// thrown string is the `err` of a `result<_, string>`: the host's rejection.
import { multicast } from "liveobjects:object/host@0.1.0";

let counts = new Map();

function canonical() {
  const keys = [...counts.keys()].sort();
  const obj = {};
  for (const k of keys) obj[k] = counts.get(k);
  return JSON.stringify(obj);
}

export const lifecycle = {
  init(snapshot) {
    counts = new Map();
    if (snapshot === undefined || snapshot === null) return;
    let data;
    try {
      data = JSON.parse(new TextDecoder().decode(snapshot));
    } catch (e) {
      throw `snapshot does not decode: ${e}`;
    }
    for (const [k, v] of Object.entries(data)) counts.set(String(k), Number(v));
  },
  deliver(event) {
    let word;
    try {
      word = new TextDecoder("utf-8", { fatal: true }).decode(event.payload);
    } catch (e) {
      throw `event ${event.seq} from ${event.sender} is not UTF-8: ${e}`;
    }
    if (word.length === 0) throw "empty word";
    counts.set(word, (counts.get(word) ?? 0) + 1);
  },
  viewChanged(view) {},
  snapshot() {
    return new TextEncoder().encode(canonical());
  },
};

export const tally = {
  add(word) {
    multicast(new TextEncoder().encode(word));
  },
  count(word) {
    return counts.get(word) ?? 0;
  },
  top(n) {
    return [...counts.entries()]
      .sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))
      .slice(0, n);
  },
};
