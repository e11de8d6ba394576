"""Where `stageline serve` imports its APP from: the current folder, after the library.

`python -m stageline` puts the current folder first on sys.path, where a file such as
psycopg.py or sqlite3.py in it would shadow the library's own dependencies. `serve`
moves it to the end before it imports the daemon: APP modules in the current folder
still import, and nothing there shadows an installed or standard module.
"""

from __future__ import annotations

import os
import sys


def importable_here() -> None:
    """Make the current folder importable, after every other entry of sys.path."""
    here = os.getcwd()
    if sys.path and sys.path[0] in ("", here):
        del sys.path[0]
    if here not in sys.path and "" not in sys.path:
        sys.path.append(here)
