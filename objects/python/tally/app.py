"""`tally`: a replicated word counter written in Python (componentize-py).

It implements the same liveobjects world as the Rust objects: the lifecycle
(init / deliver / view-changed / snapshot) plus its own `tally` interface.
State changes only in `deliver`; snapshots are canonical JSON, so replicas that
applied the same events return identical bytes.
"""

import json

from wit_world import exports
from wit_world.imports import host
from componentize_py_types import Err

_counts: dict[str, int] = {}


class Lifecycle(exports.Lifecycle):
    def init(self, snapshot):
        global _counts
        if snapshot is None:
            _counts = {}
            return
        try:
            data = json.loads(bytes(snapshot).decode("utf-8"))
        except ValueError as e:
            raise Err(f"snapshot does not decode: {e}")
        if not isinstance(data, dict):
            raise Err("snapshot is not a JSON object")
        _counts = {str(k): int(v) for k, v in data.items()}

    def deliver(self, event):
        try:
            word = bytes(event.payload).decode("utf-8")
        except UnicodeDecodeError as e:
            raise Err(f"event {event.seq} from {event.sender} is not UTF-8: {e}")
        if not word:
            raise Err("empty word")
        _counts[word] = _counts.get(word, 0) + 1

    def view_changed(self, view):
        pass

    def snapshot(self):
        return json.dumps(_counts, sort_keys=True, separators=(",", ":")).encode("utf-8")


class Tally(exports.Tally):
    def add(self, word):
        host.multicast(word.encode("utf-8"))

    def count(self, word):
        return _counts.get(word, 0)

    def top(self, n):
        ranked = sorted(_counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return [(w, c) for w, c in ranked[:n]]
