"""Process lifecycle over stdio or TCP: the dispatch loop, exit codes, stdin EOF, the
editor process dying (docs/reliability.md, P10).

* Messages are parsed on a reader thread (`framing.FrameReader`) and handled one by one on
  the event loop by `Dispatcher`, which yields to the loop after each message so that a
  request handler runs up to its first real await (and snapshots the document) before the
  next message, e.g. a didChange sent right after the request, is applied (P3).
* Exit 0 after shutdown + exit, 1 otherwise (exit without shutdown, stdin EOF, broken
  pipe, the editor's processId gone), as the LSP spec asks.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from typing import BinaryIO, Callable

from .framing import Frame, FrameReader, StreamWriter
from .memory import tune_malloc

log = logging.getLogger(__name__)

IN_FLIGHT = 64  # parsed messages waiting for the loop (backpressure on the reader thread)
IN_FLIGHT_BYTES = 96 * 2**20  # and their bodies' bytes


class Dispatcher:
    """Feeds frames to the protocol one at a time on the event loop.

    After each message it yields to the loop once, so a request's handler task runs up to
    its first real suspension (snapshotting the document) before the next message is
    applied. The reader thread blocks while IN_FLIGHT frames or IN_FLIGHT_BYTES of bodies
    wait (one frame is always let through), so a fast client cannot balloon memory."""

    def __init__(self, protocol, loop: asyncio.AbstractEventLoop):
        self.protocol = protocol
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self._cond = threading.Condition()
        self._frames = 0
        self._bytes = 0
        self.handled = 0

    def _admit(self, frame: Frame | None, block: bool) -> None:
        n = frame.nbytes if frame is not None else 0
        with self._cond:
            while block and self._frames and (self._frames >= IN_FLIGHT or self._bytes + n > IN_FLIGHT_BYTES):
                self._cond.wait()
            self._frames += 1
            self._bytes += n

    def _done(self, frame: Frame | None) -> None:
        with self._cond:
            self._frames -= 1
            self._bytes -= frame.nbytes if frame is not None else 0
            self._cond.notify_all()

    def feed_threadsafe(self, frame: Frame | None) -> bool:
        """From the reader thread (blocks under backpressure). False once the loop is gone."""
        self._admit(frame, block=True)
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, frame)
            return True
        except RuntimeError:
            return False

    def feed(self, frame: Frame | None) -> None:
        """From the loop thread (tests): never blocks."""
        self._admit(frame, block=False)
        self.queue.put_nowait(frame)

    def handle(self, frame: Frame) -> None:
        p = self.protocol
        if frame.error is not None:
            code, msg = frame.error
            p.stats["bad_frames"] += 1
            p.send_error(frame.msg_id, code, msg)
        else:
            p.handle_raw(frame.message)

    async def run(self) -> str:
        """Until EOF (a None frame); returns the reason."""
        while True:
            frame = await self.queue.get()
            try:
                if frame is None:
                    return "eof"
                try:
                    self.handle(frame)
                except Exception:
                    log.exception("message handling failed")
                self.handled += 1
            finally:
                self._done(frame)
            await asyncio.sleep(0)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, ValueError, OSError):
        return True  # not a pid we can check: do not exit on it
    try:  # a zombie (killed, not yet reaped by its parent) is gone for our purposes
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] != b"Z"
    except OSError:
        return True


def watch_parent(ls, interval: float = 1.0, on_gone: Callable[[], None] | None = None) -> threading.Thread:
    """Exit when the editor's processId (from initialize) no longer exists."""

    def gone() -> None:
        log.warning("editor process %s is gone; exiting", getattr(ls, "process_id", None))
        _flush_and_exit(1)

    def run() -> None:
        while True:
            time.sleep(interval)
            pid = getattr(ls, "process_id", None)
            if isinstance(pid, int) and pid > 0 and not _pid_alive(pid):
                (on_gone or gone)()
                return

    t = threading.Thread(target=run, name="draftline-parent-watch", daemon=True)
    t.start()
    return t


def _flush_and_exit(code: int) -> None:
    try:
        sys.stderr.flush()
    except Exception:
        pass
    os._exit(code)


def serve(ls, stdin: BinaryIO, stdout: BinaryIO) -> int:
    """Run the server on a stdio pair until exit, EOF or a broken pipe; returns the exit
    code (0 only after shutdown + exit)."""
    proto = ls.protocol
    outcome = {"reason": "eof"}

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = asyncio.Event()

        def finish(reason: str) -> None:
            if not done.is_set():
                outcome["reason"] = reason
                done.set()

        proto.attach(loop, StreamWriter(stdout))
        proto.on_exit = lambda: finish("exit")
        proto.on_write_error = lambda e: loop.call_soon_threadsafe(finish, "broken pipe")
        disp = Dispatcher(proto, loop)
        reader = FrameReader(stdin)

        def read_loop() -> None:
            try:
                while True:
                    frame = reader.next()
                    if not disp.feed_threadsafe(frame) or frame is None:
                        return
            except Exception:
                log.exception("stdin reader failed")
                try:
                    disp.feed_threadsafe(None)
                except Exception:
                    pass

        threading.Thread(target=read_loop, name="draftline-stdin", daemon=True).start()
        run = asyncio.ensure_future(disp.run())
        run.add_done_callback(lambda f: finish("eof"))
        await done.wait()
        run.cancel()

    try:
        asyncio.run(main())
    except (KeyboardInterrupt, SystemExit):
        outcome["reason"] = "interrupted"
    code = 0 if (outcome["reason"] == "exit" and proto._shutdown) else 1
    log.info("exiting with %d (%s)", code, outcome["reason"])
    return code


def _serve_then_exit(ls, rfile: BinaryIO, wfile: BinaryIO) -> int:
    """Serve until exit/EOF, stop the worker, exit the process (the worker may be inside a
    forward: it is not waited for)."""
    try:
        code = serve(ls, rfile, wfile)
    finally:
        if getattr(ls, "_scheduler", None) is not None:
            ls._scheduler.stop()
    _flush_and_exit(code)
    return code


def run_stdio(ls, proto_out: BinaryIO | None) -> int:
    if not os.environ.get("DRAFTLINE_NO_MALLOC_TUNE"):
        tune_malloc()
    watch_parent(ls)
    return _serve_then_exit(ls, sys.stdin.buffer, proto_out or sys.stdout.buffer)


def run_tcp(ls, host: str, port: int) -> int:
    """Serve one client over TCP with the same bounded framing as stdio (pygls' own TCP
    server reads frames without a size bound).  Listens on ``host:port``, accepts the first
    connection, and exits when it closes, like the stdio server on EOF."""
    import socket

    if not os.environ.get("DRAFTLINE_NO_MALLOC_TUNE"):
        tune_malloc()
    with socket.create_server((host, port)) as srv:
        log.info("listening on %s:%d", host, srv.getsockname()[1])
        conn, peer = srv.accept()
    log.info("client connected from %s:%s", *peer[:2])
    with conn:
        return _serve_then_exit(ls, conn.makefile("rb"), conn.makefile("wb"))
