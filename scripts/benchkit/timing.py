"""How a sample is taken: timed per unit, checked, in scratch files, then medians.

Every case's function builds what it needs (untimed), times the work with
`time.perf_counter` and returns one sample; `check` refuses a sample whose run did not do
what the bench expected. `medians` warms each side up once, then samples the sides
alternately.
"""

from __future__ import annotations

import gc
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from .settings import Settings

Measure = Callable[[Settings], float]


class BenchError(RuntimeError):
    """A run did not do what the benchmark expected: its numbers would mean nothing."""


def check(ok: bool, what: str) -> None:
    if not ok:
        raise BenchError(what)


def per(start: float, units: int) -> float:
    """Microseconds per unit since `start`."""
    return (time.perf_counter() - start) * 1e6 / units


@contextmanager
def scratch_dir(settings: Settings) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="stageline-bench-", dir=settings.tmpdir) as path:
        yield Path(path)


def wal_size(db: Path) -> int:
    wal = Path(f"{db}-wal")
    return wal.stat().st_size if wal.exists() else 0


def sample(measure: Measure, settings: Settings) -> float:
    gc.collect()  # start every sample from the same heap, whoever made the garbage
    return measure(settings)


def medians(
    measures: Sequence[Measure], settings: Settings, reps: int, warmup: bool = True
) -> list[float]:
    """Warm each measure up once, then sample them alternately `reps` times; medians."""
    if warmup:
        for measure in measures:
            sample(measure, settings)
    samples: list[list[float]] = [[] for _ in measures]
    for _ in range(reps):
        for i, measure in enumerate(measures):
            samples[i].append(sample(measure, settings))
    return [statistics.median(values) for values in samples]
