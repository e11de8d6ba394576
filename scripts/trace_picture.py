"""Draw docs/trace.png: the spans of one stageline run, as a trace viewer would show them.

    python scripts/trace_picture.py [OUT.png]      # default: docs/trace.png

Runs a small pipeline with the OpenTelemetry SDK's in-memory exporter: a stage whose step
fails once and is retried, a stage of two child pipelines, a stage that pauses; then the
run is resumed (a second segment, a new trace linked to the first) and ends. Each span is
a bar on a timeline, indented under its parent; a failed attempt is red, the link from the
resumed segment to the paused one an arrow. Needs opentelemetry-sdk (the dev extra) and
matplotlib (pip install matplotlib; no extra installs it, as for bench.py --plot).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from stageline import Pause, Pipeline, PipelineFactory, Registry, Stage, Step

OUT = Path(__file__).resolve().parent.parent / "docs" / "trace.png"
COLOURS = {"stageline.run": "#4c72b0", "stageline.stage": "#55a868", "stageline.step": "#8172b2"}


def work(seconds: float, key: str) -> Any:
    def step(state: dict[str, Any], ctx: Any) -> dict[str, Any]:
        time.sleep(seconds)  # something to see on the timeline
        return {key: True}

    return step


def flaky(state: dict[str, Any], ctx: Any) -> dict[str, Any]:
    time.sleep(0.012)
    if ctx.attempt == 1:
        raise ConnectionError("inventory service timed out")
    return {"reserved": True}


def pipeline() -> Pipeline:
    pay = Pipeline("payment", [Stage("charge", order=1, steps=[Step("card", work(0.02, "paid"))])])
    ship = Pipeline("shipping", [Stage("label", order=1, steps=[Step("print", work(0.03, "lbl"))])])
    return Pipeline(
        "order",
        [
            Stage("reserve", order=1, steps=[Step("stock", flaky, retries=1, retry_backoff=0.01)]),
            Stage("fulfil", order=2, pipelines=[pay, ship]),
            Stage(
                "approve",
                order=3,
                steps=[Step("notify", work(0.01, "asked"))],
                router=lambda state, results: None if state.get("ok") else Pause("close"),
            ),
            Stage("close", order=4, steps=[Step("archive", work(0.015, "done"))]),
        ],
    )


def run_spans() -> list[ReadableSpan]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    with Registry() as registry:
        factory = PipelineFactory(pipeline(), registry=registry)
        paused = factory.prepare().run(timeout=30)
        time.sleep(0.05)  # the approver thinks it over
        done = factory.resume(paused.run_id, {"ok": True}).run(timeout=30)
    assert (paused.status, done.status) == ("paused", "succeeded"), done
    return list(exporter.get_finished_spans())


def ordered(spans: list[ReadableSpan]) -> list[tuple[ReadableSpan, int]]:
    """Depth-first, children by start time: each span with its depth."""
    children: dict[int | None, list[ReadableSpan]] = {}
    for span in spans:
        parent = None if span.parent is None else span.parent.span_id
        children.setdefault(parent, []).append(span)
    rows: list[tuple[ReadableSpan, int]] = []

    def visit(parent: int | None, depth: int) -> None:
        for span in sorted(children.get(parent, []), key=lambda s: s.start_time or 0):
            rows.append((span, depth))
            visit(span.context.span_id, depth + 1)

    visit(None, 0)
    return rows


def label(span: ReadableSpan) -> str:
    a = dict(span.attributes or {})
    if span.name == "stageline.run":
        return f"run {a['stageline.pipeline_id']}  ({a.get('stageline.status')})"
    if span.name == "stageline.stage":
        return f"stage {a['stageline.pipeline_id']}/{a['stageline.stage_id']}"
    return f"step {a['stageline.step_id']} #{a['stageline.attempt']}"


def draw(spans: list[ReadableSpan], out: Path) -> None:
    import matplotlib
    import matplotlib.patches

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = ordered(spans)
    t0 = min(s.start_time or 0 for s in spans)
    fig, ax = plt.subplots(figsize=(11, 0.32 * len(rows) + 1.4), constrained_layout=True)
    where: dict[int, tuple[float, float, int]] = {}
    total = max((s.end_time or 0) - t0 for s in spans) / 1e6
    margin = total * 0.42  # the labels' column, left of 0, indented by depth
    for y, (span, depth) in enumerate(rows):
        start = ((span.start_time or 0) - t0) / 1e6
        width = max(((span.end_time or 0) - (span.start_time or 0)) / 1e6, 0.3)
        failed = span.status.status_code.name == "ERROR"
        colour = "#c44e52" if failed else COLOURS[span.name]
        ax.barh(y, width, left=start, height=0.6, color=colour)
        x = -margin + depth * margin * 0.07
        ax.text(x, y, label(span), ha="left", va="center", fontsize=8)
        where[span.context.span_id] = (start, start + width, y)
    draw_links(ax, rows, where)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlim(-margin, total * 1.02)
    ax.set_xticks([t for t in ax.get_xticks() if 0 <= t <= total])
    handles = [matplotlib.patches.Patch(color=c, label=n) for n, c in COLOURS.items()]
    handles.append(matplotlib.patches.Patch(color="#c44e52", label="error (a failed attempt)"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=4,
              fontsize=8, frameon=False)  # fmt: skip
    ax.set_yticks([])
    ax.set_xlabel("milliseconds since the run started")
    ax.set_title("Two segments of one run: paused at 'approve', resumed (a new trace, linked)")
    ax.spines[["left", "right", "top"]].set_visible(False)
    fig.savefig(out, dpi=110, bbox_inches="tight")


def draw_links(ax: Any, rows: list[tuple[ReadableSpan, int]], where: dict[int, Any]) -> None:
    """An arrow from each linked span (a previous segment) to the span that links to it."""
    for span, _ in rows:
        for link in span.links:
            if link.context.span_id in where:
                _, end, y0 = where[link.context.span_id]
                start, _, y1 = where[span.context.span_id]
                ax.annotate("", xy=(start, y1), xytext=(end, y0),
                            arrowprops={"arrowstyle": "->", "color": "#333", "ls": "--"})  # fmt: skip
                ax.text((start + end) / 2, (y0 + y1) / 2, " link (resumed)", fontsize=8)


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else OUT
    draw(run_spans(), out)
    print(f"trace picture written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
