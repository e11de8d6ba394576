"""The pykka actor class every stageline actor derives from."""

from __future__ import annotations

import queue
from typing import Any

import pykka


class StagelineActor(pykka.ThreadingActor):
    """A threading actor with a cheap mailbox and a daemon thread.

    The thread is a daemon: a process may exit with runs mid-stage, which is a crash, and
    stage commits keep that safe. The mailbox is a SimpleQueue: it has the get/put/empty
    pykka uses, at a fraction of queue.Queue's cost.
    """

    use_daemon_thread = True

    @staticmethod
    def _create_actor_inbox() -> Any:
        return queue.SimpleQueue()
