"""OpenTelemetry spans and metrics of a run, built from its events when a provider is set.

The library never configures OpenTelemetry: it emits only when the application (or
`stageline serve --otel`) has set a real tracer or meter provider. `opentelemetry` is
never imported here: this module looks for it in `sys.modules`, so a process that never
imported it (no provider can be set without importing it) pays one dict lookup per
run, and a process with the API but no provider one more call (`get_tracer_provider()`
is the API's `ProxyTracerProvider` until `set_tracer_provider` is called). The check
is made each time a run (or a resumed segment from the store) gets its live handle, so
a provider configured later is honoured by the runs that follow.

Spans: one `stageline.run` per segment of a run (its first start, each resume, wake,
retry or recovery), `stageline.stage` children, `stageline.step` children per attempt;
a child pipeline's stages nest under their parent stage's span. A segment's span
context is written to the run record (`Store.set_trace`, W3C traceparent text), and the
next segment's span links to it, in this process or another. See docs/observability.md.
"""

from __future__ import annotations

import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any, Final

from stageline.core import events as ev
from stageline.core import lifecycle
from stageline.core.errors import describe_error
from stageline.core.events import Event, PathNode
from stageline.core.store import Commit, Store

from .emitter import Emitter

PREFIX: Final = "stageline."
_PROXIES: Final = frozenset({"ProxyTracerProvider", "NoOpTracerProvider"})
_METER_PROXIES: Final = frozenset({"_ProxyMeterProvider", "NoOpMeterProvider"})
_STATUS_OF_END: Final[dict[str, str]] = {
    ev.PIPELINE_SUCCESS: lifecycle.SUCCEEDED,
    ev.PIPELINE_PAUSED: lifecycle.PAUSED,
    ev.PIPELINE_SLEEPING: lifecycle.SLEEPING,
}
_STAGE_ENDS: Final = {
    ev.STAGE_SUCCESS: "succeeded",
    ev.STAGE_PAUSED: lifecycle.PAUSED,
    ev.STAGE_FAILURE: lifecycle.FAILED,
}

_commit_histogram: Any = None
"""`stageline.commit.duration`, once metrics are on in this process (see `commit`)."""
_instruments: dict[str, Any] = {}
_registries: weakref.WeakSet[Any] = weakref.WeakSet()
_gauges_lock = threading.Lock()


# --- is OpenTelemetry configured? ---------------------------------------------------------


def tracer() -> Any:
    """A stageline tracer if a real tracer provider is set, else None (never imports)."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    provider = trace.get_tracer_provider()
    if type(provider).__name__ in _PROXIES:
        return None
    return provider.get_tracer("stageline")


def meter() -> Any:
    """The stageline meter if a real meter provider is set, else None (never imports)."""
    metrics = sys.modules.get("opentelemetry.metrics")
    if metrics is None:
        return None
    provider = metrics.get_meter_provider()
    if type(provider).__name__ in _METER_PROXIES:
        return None
    return provider.get_meter("stageline")


def active() -> bool:
    """Is a real tracer or meter provider configured in this process?"""
    return tracer() is not None or meter() is not None


# --- a run's spans ------------------------------------------------------------------------


def watch(live: Any, emitter: Emitter, store: Store) -> Callable[..., None] | None:
    """Subscribe a run's telemetry to its events when OpenTelemetry is configured.

    Returns the run's `on_end` callback wrapped so a segment stopped without a terminal
    event (registry.stop()) still ends its span; None when telemetry is off. Called on
    the caller's thread of prepare() or resume(): its current context becomes the
    parent of the segment this handle starts first.
    """
    spans, instruments = tracer(), _metric_instruments()
    if spans is None and instruments is None:
        return None
    telemetry = RunTelemetry(live, store, spans, instruments)
    emitter.on("*", telemetry)
    ended: Callable[..., None] = live.ended

    def on_end(*args: Any) -> None:
        telemetry.segment_stopped()
        ended(*args)

    return on_end


def encode_context(context: Any) -> str:
    """A span context as W3C traceparent text (what the run record keeps)."""
    flags = int(context.trace_flags)
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{flags:02x}"


def decode_context(text: str | None) -> Any:
    """The span context kept in a run record; None if absent or unreadable."""
    if not text:
        return None
    try:
        _, trace_id, span_id, flags = text.split("-")
        from opentelemetry.trace import SpanContext, TraceFlags

        return SpanContext(
            int(trace_id, 16), int(span_id, 16), is_remote=True,
            trace_flags=TraceFlags(int(flags, 16)),
        )  # fmt: skip
    except (ValueError, ImportError):
        return None


class RunTelemetry:
    """One live run's spans and metrics, fed its events on the run actor's thread."""

    def __init__(self, live: Any, store: Store, spans: Any, instruments: Any) -> None:
        self.live = live
        self.store = store
        self.tracer = spans
        self.instruments = instruments
        self.lock = threading.Lock()
        self.parent = _current_context() if spans is not None else None
        self.previous: Any = None  # the span context of this handle's last segment
        self.run_span: Any = None
        self.ts = 0.0
        self.stages: dict[tuple[PathNode, ...], tuple[Any, float]] = {}
        self.steps: dict[tuple[tuple[PathNode, ...], str | None], Any] = {}

    def __call__(self, event: Event) -> None:
        try:
            with self.lock:
                self._on(event)
        except Exception:  # telemetry never fails a run, nor logs per event
            pass

    def _on(self, event: Event) -> None:
        # Times follow the events' seq order (an event's `ts` may trail the one before it
        # by microseconds), so a span never ends after its parent.
        self.ts = max(self.ts, event.ts)
        name = event.name
        if name.startswith("step:"):
            self._on_step(event)
        elif name == ev.STAGE_START:
            self._open_stage(event)
        elif name in _STAGE_ENDS:
            self._close_stage(event, _STAGE_ENDS[name])
        elif name == ev.PIPELINE_START:
            self._open_run(event)
        elif name in ev.TERMINAL_EVENTS:
            self._close_run(event, self._end_status(event))

    def _end_status(self, event: Event) -> str:
        if event.name in _STATUS_OF_END:
            return _STATUS_OF_END[event.name]
        status = str(self.live.status)
        return status if status in lifecycle.FINISHED else lifecycle.FAILED

    # --- the run span -------------------------------------------------------------------

    def _open_run(self, event: Event) -> None:
        starts = event.name == ev.PIPELINE_START and not event.resumed
        if self.instruments is not None and starts:
            self.instruments["started"].add(1, {"stageline.pipeline_id": self.live.pipeline_id})
        if self.tracer is None:
            return
        self._end_open(self.ts, lifecycle.RUNNING)
        previous = self.previous or decode_context(getattr(self.live.record, "trace", None))
        self.run_span = span = self.tracer.start_span(
            "stageline.run",
            context=self._parent_context(),
            links=_links(previous),
            start_time=_ns(self.ts),
            attributes=self._attributes(event, resumed=event.resumed),
        )
        self.previous = context = span.get_span_context()
        self.store.set_trace(self.live.run_id, encode_context(context))

    def _parent_context(self) -> Any:
        """The caller's context for the first segment, a new trace for the others."""
        parent, self.parent = self.parent, None
        if parent is not None:
            return parent
        from opentelemetry.context import Context

        return Context()

    def _close_run(self, event: Event, status: str) -> None:
        if self.instruments is not None and status in lifecycle.FINISHED:
            attributes = {"status": status, "stageline.pipeline_id": self.live.pipeline_id}
            self.instruments["finished"].add(1, attributes)
        if self.tracer is None:
            return
        if self.run_span is None:  # aborted while paused: a segment of its own, an instant
            self._open_run(event)
        span = self.run_span
        self._end_children(self.ts, status)
        span.set_attribute(PREFIX + "status", status)
        if event.error is not None:
            _record_error(span, event.error)
        self.run_span = None
        span.end(_ns(self.ts))

    def segment_stopped(self) -> None:
        """The segment's actor stopped: end what a missing terminal event left open."""
        try:
            with self.lock:
                self._end_open(time.time(), str(self.live.status))
        except Exception:
            pass

    def _end_open(self, ts: float, status: str) -> None:
        if self.run_span is None:
            return
        self._end_children(ts, status)
        self.run_span.set_attribute(PREFIX + "status", status)
        self.run_span.end(_ns(ts))
        self.run_span = None

    def _end_children(self, ts: float, status: str) -> None:
        for span in (*self.steps.values(), *(s for s, _ in self.stages.values())):
            span.set_attribute(PREFIX + "status", status)
            span.end(_ns(ts))
        self.steps.clear()
        self.stages.clear()

    # --- stages and steps ---------------------------------------------------------------

    def _open_stage(self, event: Event) -> None:
        span = None
        if self.tracer is not None:
            parent = self.stages.get(event.path[:-1], (self.run_span, 0.0))[0]
            span = self.tracer.start_span(
                "stageline.stage",
                context=_under(parent),
                start_time=_ns(self.ts),
                attributes=self._attributes(event, label=event.label),
            )
        self.stages[event.path] = (span, self.ts)

    def _close_stage(self, event: Event, status: str) -> None:
        span, started = self.stages.pop(event.path, (None, self.ts))
        if self.instruments is not None:
            attributes = {
                "stageline.pipeline_id": str(event.pipeline_id),
                "stageline.stage_id": str(event.stage_id),
                "status": status,
            }
            self.instruments["stage"].record(max(0.0, self.ts - started), attributes)
        if span is not None:
            span.set_attribute(PREFIX + "status", status)
            if event.routing is not None:
                span.set_attribute(PREFIX + "routing", event.routing)
            if event.error is not None:
                _record_error(span, event.error)
            span.end(_ns(self.ts))

    def _on_step(self, event: Event) -> None:
        if self.tracer is None:
            return
        key = (event.path, event.step_id)
        if event.name == ev.STEP_START:
            parent = self.stages.get(event.path, (self.run_span, 0.0))[0]
            self.steps[key] = self.tracer.start_span(
                "stageline.step",
                context=_under(parent),
                start_time=_ns(self.ts),
                attributes=self._attributes(event, step_id=event.step_id, attempt=event.attempt),
            )
            return
        span = self.steps.pop(key, None)
        if span is None:
            return
        status = {ev.STEP_SUCCESS: "succeeded", ev.STEP_RETRY: "retrying"}.get(event.name)
        span.set_attribute(PREFIX + "status", status or lifecycle.FAILED)
        if event.error is not None:
            _record_error(span, event.error)
        span.end(_ns(self.ts))

    def _attributes(self, event: Event, **more: Any) -> dict[str, Any]:
        attributes = {
            PREFIX + "run_id": event.run_id,
            PREFIX + "pipeline_id": str(event.pipeline_id or self.live.pipeline_id),
        }
        if event.stage_id is not None:
            attributes[PREFIX + "stage_id"] = event.stage_id
        for key, value in more.items():
            if value is not None:
                attributes[PREFIX + key] = value
        return attributes


def _ns(ts: float) -> int:
    return int(ts * 1e9)


def _current_context() -> Any:
    context = sys.modules.get("opentelemetry.context")
    return None if context is None else context.get_current()


def _under(parent: Any) -> Any:
    from opentelemetry import trace

    return None if parent is None else trace.set_span_in_context(parent)


def _links(previous: Any) -> list[Any]:
    if previous is None:
        return []
    from opentelemetry.trace import Link

    return [Link(previous, {PREFIX + "link": "previous segment"})]


def _record_error(span: Any, error: Any) -> None:
    from opentelemetry.trace import Status, StatusCode

    if isinstance(error, BaseException):
        span.record_exception(error)
        message = describe_error(error)
    else:  # an error record (a dict) read back from a store
        message = str(error.get("message", error) if isinstance(error, dict) else error)
        span.add_event("exception", {"exception.message": message})
    span.set_status(Status(StatusCode.ERROR, message))


# --- metrics --------------------------------------------------------------------------------


def _metric_instruments() -> dict[str, Any] | None:
    """The counters and histograms, made once a real meter provider is set."""
    global _commit_histogram
    if _instruments:
        return _instruments
    made = meter()
    if made is None:
        return None
    with _gauges_lock:
        if not _instruments:
            _instruments.update(_make_instruments(made))
            _commit_histogram = _instruments["commit"]
    return _instruments


def _make_instruments(made: Any) -> dict[str, Any]:
    return {
        "started": made.create_counter(
            "stageline.runs.started", unit="{run}", description="runs started (not resumed)"
        ),
        "finished": made.create_counter(
            "stageline.runs.finished", unit="{run}", description="runs ended, by status"
        ),
        "stage": made.create_histogram(
            "stageline.stage.duration", unit="s", description="a stage, start to end"
        ),
        "commit": made.create_histogram(
            "stageline.commit.duration", unit="s", description="a run's store commit"
        ),
        "running": made.create_observable_gauge(
            "stageline.runs.running", [_registry_gauge("running")], unit="{run}"
        ),
        "live_paused": made.create_observable_gauge(
            "stageline.runs.live_paused", [_registry_gauge("paused_live")], unit="{run}"
        ),
    }


def commit(store: Store, change: Commit) -> int:
    """`store.commit(change)`, timed into `stageline.commit.duration` when metrics are on."""
    histogram = _commit_histogram
    if histogram is None:
        version: int = store.commit(change)
        return version
    started = time.perf_counter()
    try:
        version = store.commit(change)
        return version
    finally:
        histogram.record(time.perf_counter() - started)


def watch_registry(registry: Any) -> None:
    """Report `registry.stats()` through the observable gauges while it runs."""
    if _metric_instruments() is not None:
        _registries.add(registry)


def _registry_gauge(key: str) -> Callable[[Any], Iterator[Any]]:
    def observe(options: Any) -> Iterator[Any]:
        from opentelemetry.metrics import Observation

        for registry in list(_registries):
            if registry.supervisor.stopped:
                continue
            try:
                value = registry.stats()[key]
            except Exception:
                continue  # stopping meanwhile
            yield Observation(value, {PREFIX + "owner": registry.owner})

    return observe
