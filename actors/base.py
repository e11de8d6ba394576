"""The pykka actor class every stageline actor derives from."""

from __future__ import annotations

import itertools
import queue
from typing import Any

import pykka

from .carriers import shared_carriers

_numbers = itertools.count(1)


class StagelineActor(pykka.ThreadingActor):
    """A threading actor with a cheap mailbox, run on a reusable daemon thread.

    The thread is a daemon: a process may exit with runs mid-stage, which is a crash, and
    stage commits keep that safe. The mailbox is a SimpleQueue: it has the get/put/empty
    pykka uses, at a fraction of queue.Queue's cost. The loop runs on a carrier thread
    (actors/carriers.py): a thread left idle by an actor that stopped, when there is one,
    since starting a thread costs more than a whole in-memory stage.
    """

    use_daemon_thread = True

    @staticmethod
    def _create_actor_inbox() -> Any:
        return queue.SimpleQueue()

    def _start_actor_loop(self) -> None:
        shared_carriers().run(self._actor_loop, f"{type(self).__name__}-{next(_numbers)}")
