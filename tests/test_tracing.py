"""Traces: the SDK continues the trace of the event it handles and passes it on; a malformed
traceparent starts a new trace; the local collector takes OTLP exports and the waterfall draws
them. (The whole workflow on a local cluster, one trace id across every stage and the
propagation: tests/test_cluster.py.)"""

from __future__ import annotations

import pytest
import requests
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from rich.console import Console

from eventing.http import new_event
from functions_fixtures import post_event, reply_event, serve  # noqa: F401 - serve is a fixture
from handlers_fixtures import cluster_factory  # noqa: F401 - a fixture
from skylark.runtime.traces import create_app as traces_app
from skylark.runtime.waterfall import new_traceparent, waterfall
from skylark.sdk import Context, Function, FunctionSettings, create_app
from skylark.serving.tracing import context_of
from skylark.state.settings import Settings

_EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    """Spans recorded in this process (the OTel API takes one provider per process: set once)."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    return _EXPORTER


class Relay(Function):
    name = "relay"

    def handle(self, ctx: Context):
        if ctx.located:
            ctx.input  # noqa: B018 - a read, for its span
        ctx.state.put({"n": b"1"})
        return ctx.emit("io.test.relayed", {})


def test_a_function_continues_the_trace_and_passes_it_on(spans, redis_server, redis_client, serve):
    app = serve(create_app(Relay(), settings=FunctionSettings(core=Settings(node="node-a", redis_url=redis_server.url))))
    traceparent, trace_id = new_traceparent()
    first = reply_event(post_event(app.url, new_event("io.test.go", "/s", {"chain": "t1"}, id_="e1",
                                                      traceparent=traceparent)))
    second = reply_event(post_event(app.url, first))  # the next stage: reads what the first wrote
    recorded = {s.name: s for s in spans.get_finished_spans() if format(s.context.trace_id, "032x") == trace_id}
    function_spans = [s for s in spans.get_finished_spans() if s.name == "relay"
                      and format(s.context.trace_id, "032x") == trace_id]
    assert len(function_spans) == 2, "both stages are in the caller's trace"
    one, two = sorted(function_spans, key=lambda s: s.start_time)
    assert format(one.parent.span_id, "016x") == traceparent.split("-")[2]  # child of the caller's span
    assert two.parent.span_id == one.context.span_id  # the event carried the first stage's span
    assert first.get_extension("traceparent").split("-")[1:3] == [trace_id, format(one.context.span_id, "016x")]
    assert recorded["write relay"].parent.span_id in {one.context.span_id, two.context.span_id}
    read = recorded["read relay"]
    assert read.parent.span_id == two.context.span_id
    assert read.attributes["skylark.read.location"] == "local" and read.attributes["skylark.version"] == 1
    assert two.attributes["skylark.chain"] == "t1" and two.attributes["skylark.fetch_location"] == "local"
    assert second.get_extension("traceparent").split("-")[1] == trace_id


@pytest.mark.parametrize("bad", ["garbage", "00-" + "0" * 32 + "-" + "0" * 16 + "-01", "ff-" + "a" * 32 + "-" + "b" * 16
                                 + "-01", "00-" + "g" * 32 + "-" + "b" * 16 + "-01"])
def test_a_malformed_traceparent_starts_a_new_trace_and_is_answered_normally(spans, bad, redis_server, redis_client,
                                                                              serve):
    assert not trace.get_current_span(context_of(bad)).get_span_context().is_valid
    app = serve(create_app(Relay(), settings=FunctionSettings(core=Settings(node="node-a", redis_url=redis_server.url))))
    spans.clear()
    reply = reply_event(post_event(app.url, new_event("io.test.go", "/s", {"chain": "t2"}, id_=f"b-{bad}",
                                                      traceparent=bad)))
    [function] = [s for s in spans.get_finished_spans() if s.name == "relay"]
    assert function.parent is None  # a root: a new trace
    assert reply.get_extension("traceparent").split("-")[1] == format(function.context.trace_id, "032x")


def test_the_collector_keeps_exported_spans_and_the_waterfall_draws_them(spans, serve):
    collector = serve(traces_app())
    tracer = trace.get_tracer("test")
    traceparent, trace_id = new_traceparent()
    spans.clear()
    with tracer.start_as_current_span("invocation", context=context_of(traceparent)):
        with tracer.start_as_current_span("read preprocess", attributes={"skylark.read.location": "local",
                                                                          "skylark.read.node": "node-b",
                                                                          "skylark.bytes": 150_066}):
            pass
    body = encode_spans(spans.get_finished_spans()).SerializeToString()
    answer = requests.post(f"{collector.url}/v1/traces", data=body, headers={"content-type": "application/x-protobuf"})
    assert answer.status_code == 200
    got = requests.get(f"{collector.url}/traces/{trace_id}", params={"min_spans": 2, "wait_ms": 2000}).json()["spans"]
    assert [s["name"] for s in got] == ["invocation", "read preprocess"]
    assert got[1]["parent_id"] == got[0]["span_id"] and got[1]["attributes"]["skylark.read.node"] == "node-b"
    # a long name on a node: cut to one line, the trigger's node suffix left to the node column
    got.append({**got[1], "span_id": "f" * 16, "name": "deliver observer-io-skylark-alarm-raised-node-c",
                "service": "broker@node-c", "attributes": {}})
    console = Console(width=80, record=True)
    console.print(waterfall(got, "one trace"))
    text = console.export_text()
    lines = text.splitlines()
    assert any(line.startswith("invocation ") for line in lines)
    [read] = [line for line in lines if line.startswith(" read preprocess ")]  # one step under its parent
    assert "local@node-b 150 kB" in read
    [deliver] = [line for line in lines if line.startswith(" deliver observer-io-")]
    assert "node-c" in deliver and "alarm-raised-node-c" not in deliver
    assert max(len(line) for line in lines) <= 80
    # what is not an OTLP export is refused with the JSON error shape
    for data, kind, status in ((b"nope", "application/x-protobuf", 400), (b"{}", "application/json", 415)):
        refused = requests.post(f"{collector.url}/v1/traces", data=data, headers={"content-type": kind})
        assert refused.status_code == status and refused.json()["error"]
    assert requests.get(f"{collector.url}/traces/XYZ").status_code == 400


def test_the_chart_takes_an_otlp_endpoint():
    import yaml

    from chart_fixtures import CRD_LINES, crd_errors, helm_template, is_crd_kind

    result = helm_template(None, set_values=["tracing.otlpEndpoint=http://otel.observability:4318"])
    assert result.returncode == 0, result.stderr
    objects = [o for o in yaml.safe_load_all(result.stdout) if o]
    [config] = [o for o in objects if o["kind"] == "ConfigMap" and "SKYLARK_WORKFLOW" in o["data"]]
    assert config["data"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel.observability:4318"
    assert config["data"]["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
    services = [o for o in objects if o["kind"] == "Service" and o["apiVersion"] == "serving.knative.dev/v1"
                and "env" in o["spec"]["template"]["spec"]["containers"][0]]  # not the event_display sink
    assert len(services) == 3 + 3  # handlers per node, then the example's functions
    for service in services:
        env = {e["name"]: e.get("value") for e in service["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["OTEL_SERVICE_NAME"] == service["metadata"]["name"]
        for line in CRD_LINES:
            assert is_crd_kind(service) and crd_errors(service, line) == [], (line, service["metadata"]["name"])
    # without an endpoint nothing of it is rendered: no spans recorded, the context still flows
    plain = helm_template(None)
    assert "OTEL_" not in plain.stdout


def test_a_push_continues_the_writers_trace_not_a_foreign_one(spans, cluster_factory):
    """The change record carries the writer's traceparent; a stream source that sends a trace of
    its own (the real RedisStreamSource may) does not take the push out of the writer's trace,
    while a hop of the same trace (the local stream source's span) becomes its parent."""
    from eventing.redisstream import encode_stream_event, to_go_binary

    cluster = cluster_factory(["node-a", "node-b"], [("node-a", "node-b")], stream_sources=False)
    a = cluster["node-a"]
    writer, writer_trace = new_traceparent()
    a.store.put("tr", "f", {"x": b"1"}, traceparent=writer)
    entry_id, fields = a.store.client.xrange("skylark:changes")[-1]
    record = {k.decode(): v.decode() for k, v in fields.items()}
    assert record["traceparent"] == writer
    event = encode_stream_event(f"redis://127.0.0.1:{a.redis.port}", "skylark:changes", entry_id.decode(), record)
    headers, body = to_go_binary(event)
    foreign, _ = new_traceparent()
    same_trace_hop = f"00-{writer_trace}-{'c' * 16}-01"
    for header, expected_parent in ((foreign, writer.split("-")[2]), (same_trace_hop, "c" * 16)):
        spans.clear()
        answer = a.post({**headers, "traceparent": header}, body)
        assert answer.status_code == 202, answer.text
        [push] = [s for s in spans.get_finished_spans() if s.name == "propagate f"]
        assert format(push.context.trace_id, "032x") == writer_trace
        assert format(push.parent.span_id, "016x") == expected_parent
        assert push.attributes["skylark.targets"] == ("node-b",)
