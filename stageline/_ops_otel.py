"""`stageline serve --otel`: the OpenTelemetry SDK set up from the `OTEL_*` environment.

The library never configures OpenTelemetry (stageline.actors.telemetry only emits when a
provider is set); the daemon's command may, as it configures logging. `--otel` builds a
TracerProvider and a MeterProvider from the standard environment variables:
`OTEL_SERVICE_NAME` (default "stageline") and `OTEL_RESOURCE_ATTRIBUTES` for the
resource; `OTEL_TRACES_EXPORTER` and `OTEL_METRICS_EXPORTER` ("otlp", the default,
"console" or "none"); `OTEL_EXPORTER_OTLP_PROTOCOL` ("http/protobuf", the default, or
"grpc"), `OTEL_EXPORTER_OTLP_ENDPOINT` and the rest, which the OTLP exporters read
themselves. A missing package is one line on stderr naming what to pip install.
"""

from __future__ import annotations

import os
from typing import Any

import click

NEEDS: str = (
    "--otel needs the OpenTelemetry SDK and the OTLP exporter: "
    "pip install 'stageline[otel]' opentelemetry-sdk opentelemetry-exporter-otlp"
)
_stores: list[Any] = []


def configure_sdk() -> None:
    """Set the global tracer and meter providers from the `OTEL_*` environment."""
    try:
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise click.ClickException(f"{NEEDS} ({exc})") from None
    name = os.environ.get("OTEL_SERVICE_NAME") or "stageline"
    resource = Resource.create({"service.name": name})
    tracing = TracerProvider(resource=resource)
    spans = _span_exporter(_choice("OTEL_TRACES_EXPORTER"))
    if spans is not None:
        tracing.add_span_processor(BatchSpanProcessor(spans))
    readers = []
    measures = _metric_exporter(_choice("OTEL_METRICS_EXPORTER"))
    if measures is not None:
        readers.append(PeriodicExportingMetricReader(measures))
    trace.set_tracer_provider(tracing)
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=readers))


def _choice(variable: str) -> str:
    value = (os.environ.get(variable) or "otlp").split(",")[0].strip().lower()
    if value not in ("otlp", "console", "none"):
        raise click.ClickException(f"{variable}={value!r}: use otlp, console or none")
    return value


def _grpc() -> bool:
    return os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf").strip() == "grpc"


def _span_exporter(kind: str) -> Any:
    if kind == "none":
        return None
    if kind == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    try:
        if _grpc():
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter,
            )
    except ImportError as exc:
        raise click.ClickException(f"{NEEDS} ({exc})") from None
    return OTLPSpanExporter()


def _metric_exporter(kind: str) -> Any:
    if kind == "none":
        return None
    if kind == "console":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

        return ConsoleMetricExporter()
    try:
        if _grpc():
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
                OTLPMetricExporter,
            )
        else:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                OTLPMetricExporter,
            )
    except ImportError as exc:
        raise click.ClickException(f"{NEEDS} ({exc})") from None
    return OTLPMetricExporter()


def watch_mailbox(store: Any) -> None:
    """Report the store's pending mailbox requests as `stageline.mailbox.pending` (only
    when a meter provider is set; the gauge is made once per process)."""
    from stageline.actors.telemetry import meter

    made = meter()
    if made is None:
        return
    if not _stores:
        made.create_observable_gauge(
            "stageline.mailbox.pending", [_observe_pending], unit="{request}",
            description="mailbox requests no daemon has claimed yet",
        )  # fmt: skip
    _stores.append(store)


def _observe_pending(options: Any) -> Any:
    from opentelemetry.metrics import Observation

    for store in list(_stores):
        try:
            pending = len(store.list_requests("pending", limit=1_000_000))
        except Exception:
            continue  # closed (the daemon stopped), or unreachable for now
        yield Observation(pending)
