"""OpenTelemetry (SPEC section 18): spans, links and metrics, read back through the SDK's
in-memory exporters; and nothing at all when no provider is configured.

The global providers can be set once per process: a module fixture sets them for the
tests here and puts the API back as it found it afterwards (so other test modules run
with no provider). The tests of an unconfigured process run in a subprocess.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk", reason="needs opentelemetry-sdk (the dev extra)")

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import StatusCode

import stageline
from stageline import Pause, Pipeline, PipelineFactory, Registry, Stage, Step
from stageline.actors import telemetry
from stageline.core import transitions
from stageline.core.errors import RunNotFound

pytestmark = pytest.mark.timeout(60)

ROOT = Path(stageline.__file__).resolve().parent.parent


class Otel:
    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.reader = InMemoryMetricReader()

    def finished(self, run_id: str | None = None) -> list[ReadableSpan]:
        spans = list(self.spans.get_finished_spans())
        if run_id is None:
            return spans
        return [s for s in spans if (s.attributes or {}).get("stageline.run_id") == run_id]

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        found = []
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found += list(metric.data.data_points)
        return found


@pytest.fixture(scope="module")
def otel_providers() -> Iterator[Otel]:
    otel = Otel()
    tracing = TracerProvider()
    tracing.add_span_processor(SimpleSpanProcessor(otel.spans))
    trace.set_tracer_provider(tracing)
    metrics.set_meter_provider(MeterProvider(metric_readers=[otel.reader]))
    assert telemetry.active()
    yield otel
    # Put the API back as no application configured it, for the other test modules.
    trace._TRACER_PROVIDER = None  # type: ignore[attr-defined]
    trace._TRACER_PROVIDER_SET_ONCE._done = False  # type: ignore[attr-defined]
    from opentelemetry.metrics import _internal as metrics_internal

    metrics_internal._METER_PROVIDER = None
    metrics_internal._METER_PROVIDER_SET_ONCE._done = False
    telemetry._commit_histogram = None
    telemetry._instruments.clear()
    assert not telemetry.active()


@pytest.fixture
def otel(otel_providers: Otel) -> Otel:
    otel_providers.spans.clear()
    return otel_providers


def add(key: str) -> Any:
    def step(state: dict[str, Any], ctx: Any) -> dict[str, Any]:
        return {key: state.get(key, 0) + 1}

    return step


def flaky(fail_times: int) -> Any:
    calls = {"n": 0}

    def step(state: dict[str, Any], ctx: Any) -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] <= fail_times:
            raise ValueError(f"boom {calls['n']}")
        return {"flaky": calls["n"]}

    return step


def gate(state: dict[str, Any], results: Any) -> Any:
    return None if state.get("approved") else Pause("last")


def by_name(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return sorted((s for s in spans if s.name == name), key=lambda s: s.start_time or 0)


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def parent_of(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


# --- spans ----------------------------------------------------------------------------------


def test_run_stage_and_step_spans_nest_with_their_attributes(otel: Otel) -> None:
    child = Pipeline("child", [Stage("inner", order=1, steps=[Step("c", add("c"))])])
    pipeline = Pipeline(
        "shape",
        [
            Stage("first", order=1, steps=[Step("a", add("a")), Step("b", add("b"))]),
            Stage("kids", order=2, pipelines=[child]),
        ],
    )
    result = PipelineFactory(pipeline).prepare().run(timeout=30)
    assert result.status == "succeeded"
    spans = otel.finished(result.run_id)
    (run,) = by_name(spans, "stageline.run")
    stages = {attrs(s)["stageline.stage_id"]: s for s in by_name(spans, "stageline.stage")}
    steps = {attrs(s)["stageline.step_id"]: s for s in by_name(spans, "stageline.step")}
    assert set(stages) == {"first", "kids", "inner"} and set(steps) == {"a", "b", "c"}
    assert run.parent is None and not run.links
    assert attrs(run) == {
        "stageline.run_id": result.run_id,
        "stageline.pipeline_id": "shape",
        "stageline.resumed": False,
        "stageline.status": "succeeded",
    }
    assert parent_of(stages["first"]) == parent_of(stages["kids"]) == run.context.span_id
    assert parent_of(stages["inner"]) == stages["kids"].context.span_id  # the child nests
    assert parent_of(steps["a"]) == parent_of(steps["b"]) == stages["first"].context.span_id
    assert parent_of(steps["c"]) == stages["inner"].context.span_id
    assert {s.context.trace_id for s in spans} == {run.context.trace_id}
    assert attrs(steps["c"]) == {
        "stageline.run_id": result.run_id,
        "stageline.pipeline_id": "child",
        "stageline.stage_id": "inner",
        "stageline.step_id": "c",
        "stageline.attempt": 1,
        "stageline.status": "succeeded",
    }
    assert attrs(stages["first"])["stageline.status"] == "succeeded"
    assert all(s.status.status_code is StatusCode.UNSET for s in spans)
    assert run.start_time <= stages["first"].start_time <= steps["a"].start_time  # type: ignore[operator]
    assert steps["c"].end_time <= stages["kids"].end_time <= run.end_time  # type: ignore[operator]


def test_a_retried_step_has_a_span_per_attempt_and_a_failure_is_an_error(otel: Otel) -> None:
    pipeline = Pipeline(
        "failing",
        [
            Stage("retried", order=1, steps=[Step("flaky", flaky(1), retries=1)]),
            Stage("doomed", order=2, steps=[Step("bad", flaky(99))]),
        ],
    )
    result = PipelineFactory(pipeline).prepare().run(timeout=30)
    assert result.status == "failed"
    spans = otel.finished(result.run_id)
    flaky_steps = [
        s for s in by_name(spans, "stageline.step") if attrs(s)["stageline.step_id"] == "flaky"
    ]
    assert [attrs(s)["stageline.attempt"] for s in flaky_steps] == [1, 2]
    assert [attrs(s)["stageline.status"] for s in flaky_steps] == ["retrying", "succeeded"]
    assert flaky_steps[0].status.status_code is StatusCode.ERROR
    assert flaky_steps[1].status.status_code is StatusCode.UNSET

    (bad,) = [s for s in by_name(spans, "stageline.step") if attrs(s)["stageline.step_id"] == "bad"]
    assert bad.status.status_code is StatusCode.ERROR and "boom 1" in str(bad.status.description)
    (exception,) = [e for e in bad.events if e.name == "exception"]
    assert exception.attributes is not None
    assert exception.attributes["exception.type"] == "ValueError"
    assert exception.attributes["exception.message"] == "boom 1"
    doomed = [
        s for s in by_name(spans, "stageline.stage") if attrs(s)["stageline.stage_id"] == "doomed"
    ]
    assert doomed[0].status.status_code is StatusCode.ERROR
    assert attrs(doomed[0])["stageline.status"] == "failed"
    (run,) = by_name(spans, "stageline.run")
    assert run.status.status_code is StatusCode.ERROR and attrs(run)["stageline.status"] == "failed"


def test_prepare_under_an_active_span_makes_the_run_its_child(otel: Otel) -> None:
    pipeline = Pipeline("child_of_caller", [Stage("s", order=1, steps=[Step("a", add("a"))])])
    factory = PipelineFactory(pipeline)
    with trace.get_tracer("app").start_as_current_span("request") as request:
        run_context = factory.prepare()
    result = run_context.run(timeout=30)  # run outside the span: prepare() decided
    (run,) = by_name(otel.finished(result.run_id), "stageline.run")
    assert run.parent is not None and run.parent.span_id == request.get_span_context().span_id
    assert run.context.trace_id == request.get_span_context().trace_id


def pausing_pipeline(name: str) -> Pipeline:
    return Pipeline(
        name,
        [
            Stage("ask", order=1, steps=[Step("a", add("a"))], router=gate),
            Stage("skipped", order=2, steps=[Step("x", add("x"))]),
            Stage("last", order=3, steps=[Step("b", add("b"))]),
        ],
    )


def test_a_resumed_segment_links_to_the_paused_one_through_the_record(otel: Otel) -> None:
    with Registry() as registry:
        factory = PipelineFactory(pausing_pipeline("linked"), registry=registry)
        paused = factory.prepare().run(timeout=30)
        assert paused.status == "paused"
        store = factory.store
        assert store is not None
        (first,) = by_name(otel.finished(paused.run_id), "stageline.run")
        assert attrs(first)["stageline.status"] == "paused"
        kept = store.load_run(paused.run_id).trace
        assert kept == telemetry.encode_context(first.context)
        done = factory.resume(paused.run_id, {"approved": True}).run(timeout=30)
    assert done.status == "succeeded"
    runs = by_name(otel.finished(paused.run_id), "stageline.run")
    assert len(runs) == 2
    second = runs[1]
    assert attrs(second)["stageline.resumed"] is True
    assert second.parent is None and second.context.trace_id != first.context.trace_id
    assert [link.context.span_id for link in second.links] == [first.context.span_id]
    assert [link.context.trace_id for link in second.links] == [first.context.trace_id]


def test_a_run_aborted_while_paused_ends_in_a_linked_span(otel: Otel) -> None:
    with Registry() as registry:
        factory = PipelineFactory(pausing_pipeline("aborted"), registry=registry)
        context = factory.prepare()
        assert context.run(timeout=30).status == "paused"
        context.abort("no longer wanted")
    runs = by_name(otel.finished(context.run_id), "stageline.run")
    assert [attrs(s)["stageline.status"] for s in runs] == ["paused", "aborted"]
    assert runs[1].status.status_code is StatusCode.ERROR
    assert [link.context.span_id for link in runs[1].links] == [runs[0].context.span_id]


# --- two processes --------------------------------------------------------------------------

PROCESS = textwrap.dedent(
    """
    import json, sys
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from stageline import Pause, Pipeline, PipelineFactory, Stage, Step
    from stageline.stores import SqliteStore

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    mode, path, run_id = sys.argv[1:4]
    pipeline = Pipeline("two", [
        Stage("ask", order=1, steps=[Step("a", lambda s, c: {"a": 1})],
              router=lambda s, r: None if s.get("ok") else Pause("last")),
        Stage("last", order=2, steps=[Step("b", lambda s, c: {"b": 1})]),
    ])
    factory = PipelineFactory(pipeline, store=SqliteStore(path))
    if mode == "pause":
        result = factory.prepare(run_id=run_id).run(timeout=30)
    else:
        result = factory.resume(run_id, {"ok": True}).run(timeout=30)
    spans = [
        {"name": s.name, "trace_id": s.context.trace_id, "span_id": s.context.span_id,
         "links": [[l.context.trace_id, l.context.span_id] for l in s.links],
         "status": dict(s.attributes).get("stageline.status")}
        for s in exporter.get_finished_spans()
    ]
    print(json.dumps({"status": result.status, "spans": spans}))
    """
)


def in_process(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", PROCESS, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=50,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    answer: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return answer


def test_a_run_paused_in_one_process_and_resumed_in_another_links_its_spans(
    tmp_path: Path,
) -> None:
    path, run_id = str(tmp_path / "runs.db"), "otel-two-processes"
    first = in_process("pause", path, run_id)
    second = in_process("resume", path, run_id)
    assert (first["status"], second["status"]) == ("paused", "succeeded")
    (paused,) = [s for s in first["spans"] if s["name"] == "stageline.run"]
    (resumed,) = [s for s in second["spans"] if s["name"] == "stageline.run"]
    assert (paused["status"], resumed["status"]) == ("paused", "succeeded")
    assert resumed["links"] == [[paused["trace_id"], paused["span_id"]]]
    assert resumed["trace_id"] != paused["trace_id"]


# --- metrics --------------------------------------------------------------------------------


def total(points: list[Any], **wanted: str) -> float:
    def matches(point: Any) -> bool:
        return all(point.attributes.get(k) == v for k, v in wanted.items())

    return sum(getattr(p, "value", None) or getattr(p, "count", 0) for p in points if matches(p))


def test_metrics_after_a_mixed_workload(otel: Otel) -> None:
    ok = Pipeline("mix_ok", [Stage("s", order=i, steps=[Step("a", add("a"))]) for i in (1,)])
    bad = Pipeline("mix_bad", [Stage("s", order=1, steps=[Step("bad", flaky(99))])])
    with Registry() as registry:
        factories = [PipelineFactory(p, registry=registry) for p in (ok, bad)]
        paused_factory = PipelineFactory(pausing_pipeline("mix_pause"), registry=registry)
        for _ in range(3):
            assert factories[0].prepare().run(timeout=30).status == "succeeded"
        assert factories[1].prepare().run(timeout=30).status == "failed"
        held = paused_factory.prepare()
        assert held.run(timeout=30).status == "paused"
        assert total(otel.points("stageline.runs.live_paused")) == 1
        assert total(otel.points("stageline.runs.running")) == 0
        assert paused_factory.resume(held.run_id, {"approved": True}).run(timeout=30).status == (
            "succeeded"
        )
    started = otel.points("stageline.runs.started")
    assert total(started, **{"stageline.pipeline_id": "mix_ok"}) == 3
    assert total(started, **{"stageline.pipeline_id": "mix_pause"}) == 1  # resumes do not count
    finished = otel.points("stageline.runs.finished")
    assert total(finished, **{"stageline.pipeline_id": "mix_ok", "status": "succeeded"}) == 3
    assert total(finished, **{"stageline.pipeline_id": "mix_bad", "status": "failed"}) == 1
    assert total(finished, **{"stageline.pipeline_id": "mix_pause", "status": "succeeded"}) == 1
    stages = otel.points("stageline.stage.duration")
    assert total(stages, **{"stageline.pipeline_id": "mix_ok", "status": "succeeded"}) == 3
    assert total(stages, **{"stageline.pipeline_id": "mix_bad", "status": "failed"}) == 1
    assert total(stages, **{"stageline.pipeline_id": "mix_pause", "status": "paused"}) == 1
    assert all(p.min >= 0 for p in stages)
    commits = otel.points("stageline.commit.duration")
    assert total(commits) >= 3 * 2 + 2  # a start and an end commit per run, at least
    assert all(p.min >= 0 and p.max < 5 for p in commits)


def test_the_daemons_mailbox_gauge_counts_pending_requests(otel: Otel, tmp_path: Path) -> None:
    from stageline._ops_otel import watch_mailbox
    from stageline.core.mailbox import Request
    from stageline.stores import SqliteStore

    store = SqliteStore(tmp_path / "runs.db")
    watch_mailbox(store)
    for n in range(2):
        store.post_request(Request(f"q{n}", "start", f"run-{n}", 0.0, pipeline_id="p"))
    assert total(otel.points("stageline.mailbox.pending")) == 2
    store.close()


# --- the record, in every store -------------------------------------------------------------


def test_every_store_keeps_a_runs_trace_across_commits(store: Any) -> None:
    pipeline = Pipeline("traced", [Stage("s", order=1, steps=[Step("a", add("a"))])])
    context = PipelineFactory(pipeline, store=store).prepare()
    assert store.load_run(context.run_id).trace is None
    text = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    store.set_trace(context.run_id, text)
    record = store.load_run(context.run_id)
    assert record.trace == text and record.version == 0  # no version change
    store.commit(transitions.start(record, "s", record.created_at + 1))
    assert store.load_run(context.run_id).trace == text  # commits keep it
    with pytest.raises(RunNotFound):
        store.set_trace("no-such-run", text)


def test_trace_text_round_trips() -> None:
    text = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    context = telemetry.decode_context(text)
    assert context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C and context.is_remote
    assert telemetry.encode_context(context) == text
    assert telemetry.decode_context("garbage") is None and telemetry.decode_context(None) is None


# --- nothing configured ---------------------------------------------------------------------

UNCONFIGURED = textwrap.dedent(
    """
    import sys
    if sys.argv[1] == "absent":
        sys.modules["opentelemetry"] = None  # as if the package were not installed
    else:
        from opentelemetry import metrics, trace
    from stageline import Pause, Pipeline, PipelineFactory, Registry, Stage, Step
    from stageline.actors import telemetry

    pipeline = Pipeline("plain", [
        Stage("ask", order=1, steps=[Step("a", lambda s, c: {"a": 1})],
              router=lambda s, r: None if s.get("ok") else Pause("last")),
        Stage("last", order=2, steps=[Step("b", lambda s, c: {"b": 1})]),
    ])
    with Registry() as registry:
        factory = PipelineFactory(pipeline, registry=registry)
        paused = factory.prepare().run(timeout=30)
        assert factory.store.load_run(paused.run_id).trace is None
        assert factory.resume(paused.run_id, {"ok": True}).run(timeout=30).status == "succeeded"
    assert not telemetry.active() and telemetry._commit_histogram is None
    assert "opentelemetry.sdk" not in sys.modules
    if sys.argv[1] == "api":
        assert type(trace.get_tracer_provider()).__name__ == "ProxyTracerProvider"
        assert type(metrics.get_meter_provider()).__name__ == "_ProxyMeterProvider"
    else:
        assert not any(name.startswith("opentelemetry.") for name in sys.modules)
    print("ok")
    """
)


@pytest.mark.parametrize("how", ["api", "absent"])
def test_with_no_provider_nothing_is_configured_nor_emitted(how: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", UNCONFIGURED, how],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_the_library_never_sets_a_provider() -> None:
    """No module of the library (the CLI's --otel aside) calls a provider setter."""
    offenders = []
    for folder in ("core", "actors", "stores", "stageline"):
        for path in (ROOT / folder).rglob("*.py"):
            calls = re.search(r"set_(tracer|meter)_provider\(", path.read_text())
            if calls and path.name != "_ops_otel.py":
                offenders.append(str(path))
    assert offenders == []


# --- stageline serve --otel -----------------------------------------------------------------

CONFIGURE = textwrap.dedent(
    """
    import click
    from opentelemetry import metrics, trace
    from stageline._ops_otel import configure_sdk
    from stageline.actors import telemetry
    try:
        configure_sdk()
    except click.ClickException as exc:
        print("error:", exc.message)
    else:
        print(type(trace.get_tracer_provider()).__name__,
              trace.get_tracer_provider().resource.attributes["service.name"],
              telemetry.active())
    """
)


def configure(**env: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", CONFIGURE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=50,
        env={**os.environ, **env},
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_serve_otel_configures_the_sdk_from_the_environment() -> None:
    assert configure(
        OTEL_TRACES_EXPORTER="console", OTEL_METRICS_EXPORTER="none", OTEL_SERVICE_NAME="orders"
    ) == ("TracerProvider orders True")
    assert configure(OTEL_TRACES_EXPORTER="zipkin").startswith("error: OTEL_TRACES_EXPORTER")


def test_serve_otel_names_the_package_an_otlp_export_needs() -> None:
    try:
        import opentelemetry.exporter.otlp.proto.http  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("opentelemetry-exporter-otlp is installed here")
    answer = configure(OTEL_TRACES_EXPORTER="otlp")
    assert answer.startswith("error: --otel needs") and "opentelemetry-exporter-otlp" in answer


def test_serve_has_an_otel_flag() -> None:
    from click.testing import CliRunner

    from stageline.cli import main

    answer = CliRunner().invoke(main, ["serve", "--help"])
    assert "--otel" in answer.output
