"""``skylark deadletter list|show|replay``: the dead letters of a running local cluster.

It finds the cluster through the file ``skylark up`` leaves (``skylark.runtime.cluster.state_file``)
and reads every node's dead letters (``skylark.runtime.deadletters``): the brokers' (kept by the
dead-letter sink) and the stream sources' (changes the handlers did not take).

``replay`` sends broker dead letters again through the broker of the node that gave up, at most
once per event; change dead letters go to the node's handlers again, as the stream source would
(it also does so by itself every few seconds once they answer). Delivered, they leave the list.
"""

from __future__ import annotations

import json
import time

from rich.console import Console
from rich.table import Table

from eventing import wiring
from eventing.publisher import Publisher
from eventing.source import StreamSource
from skylark.runtime.cluster import load_state
from skylark.runtime.deadletters import DeadLetter, DeadLetters
from skylark.state.errors import ConfigError
from skylark.state.redis_client import connect


def _stores(state: dict) -> dict[str, DeadLetters]:
    return {name: DeadLetters(connect(node["redis_url"]), name) for name, node in state["nodes"].items()}


def _find(stores: dict[str, DeadLetters], entry: str, node: str | None) -> DeadLetter:
    for name, store in stores.items():
        if node is None or node == name:
            found = store.get(entry)
            if found is not None:
                return found
    raise ConfigError(f"no dead letter {entry!r}" + (f" on {node}" if node else " on any node"))


def _ago(ms: int) -> str:
    seconds = max(0.0, time.time() - ms / 1000)
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def main_deadletter(args) -> int:
    state = load_state()
    stores = _stores(state)
    console = Console()
    if args.action == "list":
        letters = [letter for store in stores.values() for letter in store.list()]
        if args.json:
            print(json.dumps([letter.to_dict() for letter in letters], indent=1))
            return 0
        table = Table(title=f"Dead letters: {len(letters)}", caption="replay: skylark deadletter replay --all")
        for col in ("node", "kind", "entry", "type / what", "ago", "reason"):
            table.add_column(col, overflow="fold")
        for letter in letters:
            what = (f"{letter.detail['chain']}/{letter.detail['function']} v{letter.detail['version']}"
                    if letter.kind == "change" else letter.event_type)
            mark = " (replayed)" if letter.detail.get("replayed") else ""
            table.add_row(letter.node, letter.kind, letter.entry_id, what, _ago(letter.failed_ms),
                          letter.reason[:60] + mark)
        console.print(table)
        return 0
    if args.action == "show":
        if not args.entries:
            raise ConfigError("show needs an entry id (skylark deadletter list)")
        for entry in args.entries:
            print(json.dumps(_find(stores, entry, args.node).to_dict(with_body=True), indent=1))
        return 0
    # replay
    if not args.entries and not args.all:
        raise ConfigError("replay needs entry ids, or --all")
    publisher = Publisher(retries=2)
    key, group = wiring.stream_from_values(wiring.load_chart_values())
    letters = ([letter for store in stores.values() for letter in store.list()] if args.all
               else [_find(stores, entry, args.node) for entry in args.entries])
    delivered = failed = skipped = 0
    for letter in (x for x in letters if x.kind == "broker"):
        outcome = stores[letter.node].replay(letter, state["nodes"][letter.node]["broker_ingress"], publisher)
        if outcome is None:
            skipped += 1
        elif outcome.ok:
            delivered += 1
        else:
            failed += 1
            console.print(f"[red]{letter.node} {letter.entry_id}: {outcome.status_code} {outcome.reason}[/red]")
    for node in {x.node for x in letters if x.kind == "change"}:
        node_state = state["nodes"][node]
        source = StreamSource(stores[node].client, key, group, f"{node}-replay", node_state["handlers_url"] + "/",
                              address=node_state["redis_url"].rsplit("/", 1)[0], publisher=publisher)
        before = len([x for x in stores[node].list() if x.kind == "change"])
        source.replay_dead_letters(limit=10_000)
        after = len([x for x in stores[node].list() if x.kind == "change"])
        delivered += before - after
        failed += after
    console.print(f"replayed {delivered}, already replayed before {skipped}, not delivered {failed}")
    return 0 if failed == 0 else 1
