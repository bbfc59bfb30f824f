"""The function SDK with functions written here: what an author gets without writing it.

Real redis-servers (one per simulated node) and real HTTP: each function is served by
``skylark.sdk.create_app`` in a thread (functions_fixtures.serve), events are POSTed to it.
"""

from __future__ import annotations

import time

import pytest
import requests

from eventing.http import new_event, to_structured
from eventing.publisher import Publisher
from functions_fixtures import Recorder, assert_json_error, post_event, reply_event, serve  # noqa: F401 - serve is a fixture
from skylark.sdk import Config, Context, Function, FunctionSettings, InputError, StateError, create_app, load_function
from skylark.sdk.envelope import derived_chain
from skylark.state.errors import ConfigError
from skylark.state.peers import StaticPeers
from skylark.state.settings import Settings
from skylark.state.store import StateStore
from skylark.workflow import parse_workflow

ORDER = "io.test.order.placed"
PRICED = "io.test.order.priced"
SHIPPED = "io.test.order.shipped"


class Price(Function):
    """Writes a price for an order (its own state) and announces it."""

    name = "price"
    accepts = (ORDER,)

    def start(self, config: Config) -> None:
        self.rate = config.float("rate", 1.0, minimum=0.0)
        self.started = True

    def handle(self, ctx: Context):
        order = ctx.json()
        if "qty" not in order:
            raise InputError("missing_qty", "the order has no qty")
        time.sleep(0.03)  # "compute"
        ctx.state.put({"price": str(order["qty"] * self.rate)})
        return ctx.emit(PRICED, {"qty": order["qty"]})


class Ship(Function):
    """Reads the price state (its input) and ships; writes nothing."""

    name = "ship"
    accepts = (PRICED,)

    def handle(self, ctx: Context):
        price = float(ctx.input.fields["price"])
        if price < 0:
            raise StateError("negative_price", "a price below zero")
        return ctx.emit(SHIPPED, {"price": price, "input_version": ctx.input.version})


def core(server, node: str = "node-a", **changes) -> Settings:
    return Settings(node=node, redis_url=server.url, redis_timeout_s=1.0, **changes)


def order(chain: str | None = "order-1", qty: int = 3, **ext):
    data = {"qty": qty} if chain is None else {"chain": chain, "qty": qty}
    return new_event(ORDER, "/tests/shop", data, id_=f"{chain}-placed", **ext)


@pytest.fixture()
def node_a(redis_server, redis_client):
    return redis_server


def test_an_author_writes_only_the_work(node_a, redis_client, serve):
    app = serve(create_app(Price(), settings=FunctionSettings(core=core(node_a), config={"rate": "2.5"})))
    event = reply_event(post_event(app.url, order()))
    # the result event: type, source, chain, and the state it announces (where, which version, size)
    assert event.get_type() == PRICED and event.get_source() == "/skylark/nodes/node-a/price"
    assert event.get_extension("skylarkchain") == "order-1"
    assert (event.get_extension("skylarkfunction"), event.get_extension("skylarknode"),
            event.get_extension("skylarkversion")) == ("price", "node-a", "1")
    stored = StateStore(redis_client, node="node-a").get_bundle("order-1", "price")
    assert stored.fields == {"price": b"7.5"} and event.get_extension("skylarksize") == str(stored.meta.size)
    data = event.get_data()
    assert data["qty"] == 3
    [stage] = data["skylark"]["trace"]
    assert (stage["function"], stage["node"], stage["version"], stage["fetch_location"]) == ("price", "node-a", 1, "inline")
    assert stage["compute_ms"] >= 30 and stage["store_ms"] > 0 and stage["fetch_ms"] == 0
    assert data["skylark"]["state"] == {"price": {"node": "node-a", "version": 1, "size": stored.meta.size}}
    # a redelivery yields the same id (reply mode does the work again: the reply may have been lost)
    again = reply_event(post_event(app.url, order()))
    assert again.get_id() == event.get_id() and again.get_extension("skylarkversion") == "2"


def test_the_successor_reads_its_input_where_the_event_says_and_the_trace_grows(redis_factory, node_a, serve):
    priced = reply_event(post_event(serve(create_app(Price(), settings=FunctionSettings(core=core(node_a)))).url,
                                    order()))
    node_b = redis_factory()
    peers = StaticPeers.from_mapping({"node-a": {"redis_url": node_a.url}})
    ship = serve(create_app(Ship(), settings=FunctionSettings(core=core(node_b, "node-b")), peers=peers))
    shipped = reply_event(post_event(ship.url, priced))
    data = shipped.get_data()
    assert data["price"] == 3.0 and data["input_version"] == 1
    first, second = data["skylark"]["trace"]
    assert first["function"] == "price"
    assert (second["function"], second["node"], second["fetch_location"], second["fetch_node"]) == (
        "ship", "node-b", "remote", "node-a")
    assert second["version"] is None and second["store_ms"] == 0
    # ship wrote nothing, so its event announces no state of its own, but carries where price's is
    assert shipped.get_extension("skylarkfunction") is None
    assert data["skylark"]["state"]["price"]["node"] == "node-a"


def test_a_later_stage_reads_an_earlier_stages_state_through_the_envelope(redis_factory, node_a, serve):
    """notify reads price's state although its input event came from ship (which wrote none)."""

    class Notify(Function):
        name = "notify"

        def handle(self, ctx: Context):
            return ctx.emit("io.test.notified", {"price": ctx.read("price").fields["price"].decode()})

    priced = reply_event(post_event(serve(create_app(Price(), settings=FunctionSettings(core=core(node_a)))).url,
                                    order()))
    peers = StaticPeers.from_mapping({"node-a": {"redis_url": node_a.url}})
    node_b, node_c = redis_factory(), redis_factory()
    shipped = reply_event(post_event(serve(create_app(
        Ship(), settings=FunctionSettings(core=core(node_b, "node-b")), peers=peers)).url, priced))
    notified = reply_event(post_event(serve(create_app(
        Notify(), settings=FunctionSettings(core=core(node_c, "node-c")), peers=peers)).url, shipped))
    assert notified.get_data()["price"] == "3.0"
    assert [t["function"] for t in notified.get_data()["skylark"]["trace"]] == ["price", "ship", "notify"]
    assert notified.get_data()["skylark"]["trace"][-1]["fetch_node"] == "node-a"


def test_chains_come_from_the_event_or_start_anew(node_a, redis_client, serve):
    app = serve(create_app(Price(), settings=FunctionSettings(core=core(node_a))))
    by_extension = reply_event(post_event(app.url, new_event(ORDER, "/s", {"qty": 1}, id_="x", skylarkchain="c-ext")))
    assert by_extension.get_extension("skylarkchain") == "c-ext"
    fresh = new_event(ORDER, "/s", {"qty": 1}, id_="no-chain")
    started = reply_event(post_event(app.url, fresh))
    assert started.get_extension("skylarkchain") == derived_chain(fresh)
    assert StateStore(redis_client, node="node-a").get_meta(derived_chain(fresh), "price").version == 1
    mismatch = new_event(ORDER, "/s", {"chain": "a", "qty": 1}, id_="m", skylarkchain="b")
    assert_json_error(post_event(app.url, mismatch), 400, "chain_mismatch")
    bad = new_event(ORDER, "/s", {"chain": "no spaces allowed", "qty": 1}, id_="m2")
    assert_json_error(post_event(app.url, bad), 400, "invalid_chain")


@pytest.mark.parametrize(("data", "ext", "code"), [
    ({"qty": 1, "skylark": []}, {}, "invalid_envelope"),
    ({"qty": 1, "skylark": {"trace": {"a": 1}}}, {}, "invalid_envelope"),
    ({"qty": 1, "skylark": {"state": {"x": {"node": "n", "version": "١٢"}}}}, {}, "invalid_version"),
    ({"qty": 1, "skylark": {"state": {"x": {"node": "n", "version": 2**64}}}}, {}, "invalid_version"),
    ({"qty": 1, "skylark": {"state": {"bad name": {"node": "n", "version": 1}}}}, {}, "invalid_envelope"),
    ({"qty": 1}, {"skylarkfunction": "f", "skylarknode": "n", "skylarkversion": "1_000"}, "invalid_version"),
    ({"qty": 1}, {"skylarkfunction": "f", "skylarknode": "n", "skylarkversion": "²"}, "invalid_version"),
    ({"qty": 1}, {"skylarkfunction": "f", "skylarknode": "n", "skylarkversion": "1", "skylarksize": "-1"},
     "invalid_version"),
    ({}, {}, "missing_qty"),
    (["not", "an", "object"], {}, "invalid_event_data"),
])
def test_bad_input_is_a_4xx_json_answer_and_writes_nothing(node_a, redis_client, serve, data, ext, code):
    app = serve(create_app(Price(), settings=FunctionSettings(core=core(node_a))))
    before = set(redis_client.keys("*"))
    assert_json_error(post_event(app.url, new_event(ORDER, "/s", data, id_="bad", **ext)), 400, code)
    assert set(redis_client.keys("*")) == before


def test_status_contract_for_state_and_dependencies(redis_factory, node_a, redis_client, serve):
    ship = serve(create_app(Ship(), settings=FunctionSettings(core=core(node_a))))
    # nothing announced: nothing to read
    assert_json_error(post_event(ship.url, new_event(PRICED, "/s", {"chain": "c1"}, id_="1")), 400, "no_input_state")
    # announced, but nobody has it
    ghost = new_event(PRICED, "/s", {}, id_="2", skylarkchain="c1", skylarkfunction="price", skylarknode="node-a",
                      skylarkversion="1")
    assert_json_error(post_event(ship.url, ghost), 404, "bundle_not_found")
    # there, but not what ship expects
    StateStore(redis_client, node="node-a").put("c1", "price", {"price": b"-1"})
    assert_json_error(post_event(ship.url, ghost), 422, "negative_price")
    # on a node whose Redis is down: 503 (Knative redelivers)
    origin = redis_factory()
    peers = StaticPeers.from_mapping({"node-z": {"redis_url": origin.url}})
    origin.stop()
    far = serve(create_app(Ship(), settings=FunctionSettings(core=core(node_a)), peers=peers))
    there = new_event(PRICED, "/s", {}, id_="3", skylarkchain="c2", skylarkfunction="price", skylarknode="node-z",
                      skylarkversion="1")
    assert_json_error(post_event(far.url, there), 503, "store_unavailable")
    # an event type it does not take
    assert_json_error(post_event(ship.url, order()), 400, "unsupported_event_type")


def test_own_redis_down_is_503_and_not_ready_but_alive(redis_factory, serve):
    doomed = redis_factory()
    app = serve(create_app(Price(), settings=FunctionSettings(core=core(doomed))))
    assert requests.get(f"{app.url}/readyz").json() == {"status": "ready", "redis": "ok", "function": "price"}
    doomed.stop()
    assert_json_error(post_event(app.url, order()), 503, "store_unavailable")
    assert requests.get(f"{app.url}/readyz").status_code == 503
    assert requests.get(f"{app.url}/healthz").status_code == 200


def test_probes_follow_the_functions_hooks(node_a, serve):
    class Warming(Function):
        name = "warming"
        loaded = False

        def alive(self) -> bool:
            return False  # e.g. its model could not be loaded

        def ready(self):
            return self.loaded, {"model": "loading"}

    app = serve(create_app(Warming(), settings=FunctionSettings(core=core(node_a))))
    dead = requests.get(f"{app.url}/healthz")
    assert dead.status_code == 503 and dead.json()["status"] == "dead"
    ready = requests.get(f"{app.url}/readyz")
    assert ready.status_code == 503 and ready.json()["model"] == "loading" and ready.json()["redis"] == "ok"


def test_with_k_sink_results_are_published_and_redeliveries_acknowledged(node_a, redis_client, serve):
    recorder = Recorder()
    sink = serve(recorder.app())
    app = serve(create_app(Price(), settings=FunctionSettings(core=core(node_a, broker_url=sink.url))))
    headers, body = to_structured(order("c-sink"))  # structured in, binary out
    assert requests.post(app.url, data=body, headers=headers).status_code == 202
    assert post_event(app.url, order("c-sink")).status_code == 202  # the same input again
    [published] = recorder.wait_for(1)
    time.sleep(0.2)
    assert len(recorder.events) == 1 and published.get_type() == PRICED
    assert StateStore(redis_client, node="node-a").get_meta("c-sink", "price").version == 1
    metrics = requests.get(f"{app.url}/metrics").text
    assert f'skylark_function_events_total{{function="price",outcome="{PRICED}"}} 1.0' in metrics
    assert 'skylark_function_events_total{function="price",outcome="duplicate"} 1.0' in metrics
    assert 'skylark_function_stage_seconds_count{function="price",stage="publish"} 1.0' in metrics


class SlowPrice(Price):
    """Price that takes long enough for a broker to give up waiting and deliver again."""

    def handle(self, ctx: Context):
        time.sleep(0.8)
        return super().handle(ctx)


def test_a_redelivery_during_the_first_delivery_is_429_and_the_function_runs_once(node_a, redis_client, serve):
    import threading

    recorder = Recorder()
    sink = serve(recorder.app())
    app = serve(create_app(SlowPrice(), settings=FunctionSettings(core=core(node_a, broker_url=sink.url))))
    first: list[requests.Response] = []
    worker = threading.Thread(target=lambda: first.append(post_event(app.url, order("c-slow"))))
    worker.start()
    time.sleep(0.3)  # the first delivery is inside handle now
    assert_json_error(post_event(app.url, order("c-slow")), 429, "in_progress")
    worker.join()
    assert first[0].status_code == 202
    assert post_event(app.url, order("c-slow")).status_code == 202  # done by then: a duplicate
    recorder.wait_for(1)
    time.sleep(0.2)
    assert len(recorder.events) == 1
    assert StateStore(redis_client, node="node-a").get_meta("c-slow", "price").version == 1
    # the claim is gone with the delivery that held it: a failed first delivery can be retried
    assert not [k for k in redis_client.scan_iter("skylark:fn:price:seen:*:claim")]
    metrics = requests.get(f"{app.url}/metrics").text
    assert 'skylark_function_events_total{function="price",outcome="in_progress"} 1.0' in metrics


def test_sink_down_is_503_and_refused_is_502(node_a, redis_client, serve):
    recorder = Recorder(status=503)
    sink = serve(recorder.app())
    app = serve(create_app(Price(), settings=FunctionSettings(core=core(node_a, broker_url=sink.url)),
                           publisher=Publisher(retries=0)))
    assert_json_error(post_event(app.url, order("c-retry")), 503, "sink_unavailable")
    recorder.status = 202
    assert post_event(app.url, order("c-retry")).status_code == 202
    first, second = recorder.wait_for(2)
    assert first.get_id() == second.get_id()  # downstream drops the duplicate
    recorder.status = 400
    assert_json_error(post_event(app.url, order("c-refused")), 502, "sink_rejected")


WORKFLOW = f"""
apiVersion: skylark.io/v1alpha1
kind: Workflow
metadata: {{name: shop}}
spec:
  functions:
    - name: price
      entry: test_sdk:Price
      accepts: [{ORDER}]
      emits: [{PRICED}]
      node: node-a
      config: {{rate: 10}}
    - name: ship
      entry: test_sdk:Ship
      accepts: [{PRICED}]
      emits: [{SHIPPED}]
      reads: [price]
      node: node-b
    - name: audit
      entry: test_sdk:Ship
      accepts: [{PRICED}]
      reads: [price]
"""


def test_results_go_to_the_broker_of_the_node_each_consumer_is_pinned_to(node_a, serve):
    """ship is pinned to node-b: the event goes to node-b's broker; audit runs anywhere: K_SINK."""
    local, remote = Recorder(), Recorder()
    sink, broker_b = serve(local.app()), serve(remote.app())
    workflow = parse_workflow(WORKFLOW)
    peers = StaticPeers.from_mapping({"node-b": {"broker_url": broker_b.url}})
    settings = FunctionSettings(core=core(node_a, broker_url=sink.url), workflow=workflow,
                                env={"SKYLARK_PRICE_RATE": "2"})
    app = serve(create_app(Price(), settings=settings, peers=peers))
    assert post_event(app.url, order("c-route")).status_code == 202
    [there], [here] = remote.wait_for(1), local.wait_for(1)
    assert there.get_id() == here.get_id()
    # the environment overrides the workflow's config (rate 10 there, 2 here)
    assert StateStore(app.app.extensions["skylark.function"].state.store.client, node="node-a").get_bundle(
        "c-route", "price").fields == {"price": b"6.0"}
    # a consumer on a node whose broker nobody knows: 503 before any work (nothing written), and
    # the input is redelivered later
    lost = FunctionSettings(core=core(node_a, broker_url=sink.url), workflow=workflow)
    app = serve(create_app(Price(), settings=lost, peers=StaticPeers({})))
    assert_json_error(post_event(app.url, order("c-lost")), 503, "unknown_broker")
    assert StateStore(app.app.extensions["skylark.function"].state.store.client,
                      node="node-a").get_meta("c-lost", "price") is None


def test_the_workflow_decides_name_accepts_and_input(node_a, serve):
    workflow = parse_workflow(WORKFLOW)
    # the same code under another name of the workflow: audit reads price's state
    audit = create_app(Ship(), settings=FunctionSettings(core=core(node_a), workflow=workflow, name="audit"))
    service = audit.extensions["skylark.function"]
    assert (service.name, service.accepts, service.reads) == ("audit", (PRICED,), ("price",))
    service.stop()
    with pytest.raises(ConfigError, match="not in workflow 'shop'"):
        create_app(Ship(), settings=FunctionSettings(core=core(node_a), workflow=workflow, name="billing"))


def test_several_events_and_what_handle_may_return(node_a, serve):
    class Fan(Function):
        name = "fan"

        def handle(self, ctx: Context):
            mode = ctx.json()["mode"]
            if mode == "two":
                return [ctx.emit("io.test.a", {"n": 1}), ctx.emit("io.test.b", b"raw", content_type="text/plain")]
            if mode == "none":
                return None
            if mode == "reserved":
                return ctx.emit("io.test.a", {"skylark": 1})
            if mode == "append-internal":
                ctx.state.append("skylark:meta:x:y", {"a": "b"})
            return "not an event"

    recorder = Recorder()
    sink = serve(recorder.app())
    app = serve(create_app(Fan(), settings=FunctionSettings(core=core(node_a, broker_url=sink.url))))

    def send(mode: str) -> requests.Response:
        return post_event(app.url, new_event("io.test.go", "/s", {"chain": f"fan-{mode}", "mode": mode}, id_=mode))

    assert send("two").status_code == 202
    a, b = sorted(recorder.wait_for(2), key=lambda e: e.get_type())
    assert a.get_data()["n"] == 1 and a.get_data()["skylark"]["trace"][0]["function"] == "fan"
    assert b.get_data() == b"raw" and a.get_id() != b.get_id()
    assert send("none").status_code == 204
    for mode in ("reserved", "append-internal", "other"):  # the author's bugs: 500, logged, no traceback out
        assert_json_error(send(mode), 500, "internal_error")
    # without a sink, two events cannot both be the reply
    reply_only = serve(create_app(Fan(), settings=FunctionSettings(core=core(node_a))))
    many = post_event(reply_only.url, new_event("io.test.go", "/s", {"chain": "fan-r", "mode": "two"}, id_="r"))
    assert many.status_code >= 400 and "no K_SINK" in many.json()["detail"]


def test_appended_records_and_extra_bundles_go_through_the_context(node_a, redis_client, serve):
    class Ledger(Function):
        name = "ledger"

        def handle(self, ctx: Context):
            entry = ctx.state.append("ledger:entries", {"chain": ctx.chain, "amount": 5})
            ctx.state.put({"summary": b"ok"}, function="ledger-summary")
            return ctx.emit("io.test.booked", {"entry": entry})

    app = serve(create_app(Ledger(), settings=FunctionSettings(core=core(node_a))))
    booked = reply_event(post_event(app.url, new_event("io.test.go", "/s", {"chain": "l1"}, id_="l")))
    [(entry_id, fields)] = redis_client.xrange("ledger:entries")
    assert entry_id.decode() == booked.get_data()["entry"] and fields == {b"chain": b"l1", b"amount": b"5"}
    assert StateStore(redis_client, node="node-a").get_bundle("l1", "ledger-summary").fields == {"summary": b"ok"}
    assert booked.get_data()["skylark"]["state"]["ledger-summary"]["version"] == 1
    assert booked.get_data()["skylark"]["trace"][0]["store_ms"] > 0


def test_entry_points_and_settings_from_the_environment(node_a, tmp_path):
    assert isinstance(load_function("test_sdk:Price"), Price)
    for entry, message in (("nocolon", "MODULE:FACTORY"), ("no_such_module_xyz:F", "cannot import"),
                           ("test_sdk:Nope", "no callable"), ("test_sdk:order", "not a skylark.sdk.Function")):
        with pytest.raises(ConfigError, match=message):
            load_function(entry)
    path = tmp_path / "wf.yaml"
    path.write_text(WORKFLOW)
    settings = FunctionSettings.from_env({
        "SKYLARK_FUNCTION": "test_sdk:Ship", "SKYLARK_FUNCTION_NAME": "ship", "SKYLARK_WORKFLOW": str(path),
        "SKYLARK_NODE": "node-b", "SKYLARK_REDIS_URL": node_a.url, "SKYLARK_MAX_REQUEST_BYTES": "4096"})
    app = create_app(settings=settings)
    service = app.extensions["skylark.function"]
    assert (service.name, app.config["MAX_CONTENT_LENGTH"], service.workflow.name) == ("ship", 4096, "shop")
    service.stop()
    with pytest.raises(ConfigError, match="SKYLARK_FUNCTION"):
        create_app(settings=FunctionSettings(core=core(node_a)))
    with pytest.raises(ConfigError, match="rate"):  # a config value the function refuses stops the start
        create_app(Price(), settings=FunctionSettings(core=core(node_a), config={"rate": "-1"}))
    with pytest.raises(ConfigError, match="SKYLARK_MAX_REQUEST_BYTES"):
        FunctionSettings.from_env({"SKYLARK_MAX_REQUEST_BYTES": "١٠٠٠٠"})


def test_config_getters_name_the_key_and_its_environment_variable():
    config = Config.merged("detect-2", {"a": "1", "flag": "yes", "ratio": "0.5", "names": "x, y,,z"},
                           {"SKYLARK_DETECT_2_A": "7", "SKYLARK_DETECT_2_": "ignored", "OTHER": "1"})
    assert (config.int("a", 0), config.bool("flag", False), config.float("ratio", 0.0)) == (7, True, 0.5)
    assert config.list("names") == ("x", "y", "z") and config.str("missing", "d") == "d"
    assert dict(config) == {"a": "7", "flag": "yes", "ratio": "0.5", "names": "x, y,,z"}
    with pytest.raises(ConfigError, match=r"detect-2.config.ratio \(SKYLARK_DETECT_2_RATIO\)"):
        config.int("ratio", 0)
    with pytest.raises(ConfigError, match="must be >= 10"):
        config.int("a", 0, minimum=10)
    with pytest.raises(ConfigError, match="true or false"):
        Config({"b": "maybe"}, function="f").bool("b", False)
    # a function called "redis" does not take Skylark's own SKYLARK_REDIS_URL for its key "url"
    named_redis = Config.merged("redis", {}, {"SKYLARK_REDIS_URL": "redis://x:1/0", "SKYLARK_REDIS_DEPTH": "3"})
    assert dict(named_redis) == {"depth": "3"}
