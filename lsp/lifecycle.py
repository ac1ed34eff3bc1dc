"""Process lifecycle over stdio: exit codes, stdin EOF, the editor process dying.

Exit 0 after shutdown + exit, 1 otherwise (exit without shutdown, stdin EOF, parent
gone), as the LSP spec asks. pygls turns `exit` into SystemExit inside its loop and
swallows the code, so we record what happened and decide here.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import BinaryIO

from lsprotocol import types as T

log = logging.getLogger(__name__)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def watch_parent(ls, interval: float = 2.0) -> None:
    """Exit when the editor's processId (from initialize) no longer exists."""

    def run() -> None:
        while True:
            time.sleep(interval)
            pid = getattr(ls, "process_id", None)
            if pid and not _pid_alive(pid):
                log.warning("editor process %s is gone; exiting", pid)
                os._exit(1)

    threading.Thread(target=run, name="draftline-parent-watch", daemon=True).start()


def run_stdio(ls, proto_out: BinaryIO | None) -> int:
    state = {"exit": False}

    @ls.feature(T.EXIT)
    def on_exit(ls_, *args) -> None:
        state["exit"] = True

    watch_parent(ls)
    try:
        ls.start_io(sys.stdin.buffer, proto_out)
    finally:
        if ls._scheduler is not None:
            ls._scheduler.stop()
    code = 0 if (state["exit"] and ls.protocol._shutdown) else 1
    log.info("exiting with %d", code)
    sys.stderr.flush()
    os._exit(code)  # the worker may be inside a forward; do not wait for it
