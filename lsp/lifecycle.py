"""Process lifecycle over stdio: framing, exit codes, stdin EOF, the editor process dying.

pygls' own stdio loop is replaced (RELIABILITY P2, P10):

* `FrameReader` bounds every read: header lines (8 KiB), the number of header lines, and
  the body (64 MiB by default, `DRAFTLINE_MAX_MESSAGE_BYTES`). An oversized body is
  skipped in chunks without buffering it, and answered with an error when its id can be
  found in its first bytes. A body never contains a `Content-Length: N\\r\\n` line (raw
  CR/LF cannot occur inside JSON strings), so finding one inside a body means the declared
  length was a lie: the reader resynchronizes on that header instead of waiting forever
  for bytes that will never come. pygls' reader wedges on such input.
* Invalid UTF-8, malformed JSON and nesting too deep for the parser are answered
  -32700 ParseError (with the request's id when it can be recovered, else null).
* Messages are parsed on a reader thread and handled one by one on the event loop by
  `Dispatcher`, which yields to the loop after each message so that a request handler
  runs up to its first real await (and snapshots the document) before the next message,
  e.g. a didChange sent right after the request, is applied (P3).
* Exit 0 after shutdown + exit, 1 otherwise (exit without shutdown, stdin EOF, broken
  pipe, the editor's processId gone), as the LSP spec asks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
import threading
import time
from typing import Any, BinaryIO, Callable

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 2**20
MAX_HEADER_LINE = 8192
MAX_HEADER_LINES = 32
CHUNK = 1 << 16
IN_FLIGHT = 64  # parsed messages waiting for the loop (backpressure on the reader thread)
IN_FLIGHT_BYTES = 96 * 2**20  # and their bodies' bytes

_HEADER_IN_BODY = re.compile(rb"(?i)Content-Length[ \t]*:[ \t]*\d+[ \t]*\r?\n")
_HEADER_LINE = re.compile(rb"(?i)Content-Length[ \t]*:[ \t]*(\d{1,18})[ \t]*\r?\n?$")
_ID = re.compile(rb'(?<!\\)"id"\s*:\s*(-?\d{1,18}|"(?:[^"\\\r\n]|\\.){0,200}")')


def max_message_bytes() -> int:
    try:
        return max(1024, int(os.environ.get("DRAFTLINE_MAX_MESSAGE_BYTES", MAX_MESSAGE_BYTES)))
    except ValueError:
        return MAX_MESSAGE_BYTES


def recover_id(head: bytes) -> Any:
    """Best effort: the id of a request whose body cannot be parsed, from its first bytes
    (only a top-level-looking `"id"` before `"params"`), else None."""
    cut = head.find(b'"params"')
    m = _ID.search(head if cut < 0 else head[:cut])
    if m is None:
        return None
    try:
        return json.loads(m.group(1))
    except ValueError:
        return None


class Frame:
    """What the reader hands to the dispatcher: a parsed message, or an error to answer."""

    __slots__ = ("message", "error", "msg_id", "nbytes")

    def __init__(self, message: Any = None, error: tuple[int, str] | None = None, msg_id: Any = None,
                 nbytes: int = 0):
        self.message = message
        self.error = error
        self.msg_id = msg_id
        self.nbytes = nbytes


class FrameReader:
    """Reads LSP frames from a binary stream with bounded memory; never wedges on a bad
    Content-Length as long as well-formed frames follow."""

    def __init__(self, stream: BinaryIO, max_body: int | None = None):
        self.stream = stream
        self.max_body = max_body or max_message_bytes()
        self._buf = b""  # pushed-back bytes, read before the stream
        self.eof = False

    # -- low level -------------------------------------------------------------------------
    def _read1(self, n: int) -> bytes:
        if self._buf:
            out, self._buf = self._buf[:n], self._buf[n:]
            return out
        r1 = getattr(self.stream, "read1", None)
        data = r1(n) if r1 is not None else self.stream.read(n)
        if not data:
            self.eof = True
        return data

    def _readline(self, limit: int) -> bytes:
        if self._buf:
            i = self._buf.find(b"\n", 0, limit)
            if i >= 0:
                out, self._buf = self._buf[: i + 1], self._buf[i + 1 :]
                return out
            if len(self._buf) >= limit:
                out, self._buf = self._buf[:limit], self._buf[limit:]
                return out
            head, self._buf = self._buf, b""
            return head + self.stream.readline(limit - len(head))
        line = self.stream.readline(limit)
        if not line:
            self.eof = True
        return line

    def _unread(self, data: bytes) -> None:
        self._buf = data + self._buf

    # -- frames ----------------------------------------------------------------------------
    def read_headers(self) -> int | None:
        """Content-Length of the next frame, or None at EOF. Garbage, overlong lines and
        header blocks without a usable Content-Length are skipped (logged); a header glued
        to the end of garbage (a body shorter than declared) is still found."""
        length: int | None = None
        lines = 0
        while True:
            line = self._readline(MAX_HEADER_LINE)
            if not line:
                return None
            if not line.endswith(b"\n") and len(line) >= MAX_HEADER_LINE:
                tail = line[-64:]
                while True:  # discard the rest of an overlong line, keeping its end
                    more = self._readline(MAX_HEADER_LINE)
                    if not more:
                        return None
                    tail = (tail + more)[-64:]
                    if more.endswith(b"\n"):
                        break
                log.warning("overlong line before a frame header skipped")
                line, lines = tail, 0
            s = line.strip()
            if not s:
                if length is not None:
                    return length
                if lines:
                    log.warning("header block without a valid Content-Length skipped")
                lines = 0
                continue
            lines += 1
            if lines > MAX_HEADER_LINES:
                log.warning("too many header lines; resynchronizing")
                length, lines = None, 0
                continue
            m = _HEADER_LINE.search(line)
            if m is not None:
                if m.start() > 0:
                    log.warning("%d bytes of garbage before a frame header skipped", m.start())
                length = int(m.group(1))
            elif lines == 1 and b":" not in s:
                log.warning("garbage line (%d bytes) skipped", len(line))
                lines = 0
            # other headers (Content-Type) are ignored: the body is UTF-8 JSON

    def read_body(self, n: int) -> tuple[bytes | None, bool]:
        """(body, complete). Stops early, pushing the bytes back, at a frame header found
        inside the body: the declared length was wrong. body None at EOF."""
        buf = bytearray()
        while len(buf) < n:
            chunk = self._read1(min(CHUNK, n - len(buf)))
            if not chunk:
                return None, False
            start = max(0, len(buf) - 64)
            buf += chunk
            m = _HEADER_IN_BODY.search(buf, start)
            if m is not None:
                self._unread(bytes(buf[m.start() :]))
                return bytes(buf[: m.start()]), False
        return bytes(buf), True

    def skip_body(self, n: int) -> tuple[bytes, bool]:
        """Discard n bytes without keeping them; returns (first bytes, complete). Stops at
        a frame header found inside (the declared length was wrong)."""
        head = b""
        left = n
        tail = b""
        while left > 0:
            chunk = self._read1(min(CHUNK, left))
            if not chunk:
                return head, False
            if len(head) < 4096:
                head += chunk[: 4096 - len(head)]
            window = tail + chunk
            m = _HEADER_IN_BODY.search(window)
            if m is not None:
                self._unread(window[m.start() :])
                return head, False
            left -= len(chunk)
            tail = window[-64:]
        return head, True

    def next(self) -> Frame | None:
        """The next frame (a message or an error to answer); None at EOF."""
        while True:
            n = self.read_headers()
            if n is None:
                return None
            if n > self.max_body:
                head, _ = self.skip_body(n)
                mid = recover_id(head)
                log.warning("message of %d bytes skipped (limit %d)", n, self.max_body)
                return Frame(error=(-32600, f"message of {n} bytes exceeds the {self.max_body}-byte limit"),
                             msg_id=mid, nbytes=n)
            body, complete = self.read_body(n)
            if body is None:
                return None
            if not complete:
                log.warning("Content-Length %d does not match the body (%d bytes); resynchronized", n, len(body))
                return Frame(error=(-32700, "Content-Length does not match the body"), msg_id=recover_id(body[:4096]),
                             nbytes=len(body))
            return parse_body(body)


def parse_body(body: bytes) -> Frame:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        log.warning("message body is not valid UTF-8 (byte %d)", e.start)
        return Frame(error=(-32700, f"invalid UTF-8 at byte {e.start}"), msg_id=recover_id(body[:4096]),
                     nbytes=len(body))
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        msg = json.loads(text)
    except RecursionError:
        log.warning("message nested too deeply")
        return Frame(error=(-32700, "JSON nested too deeply"), msg_id=recover_id(body[:4096]), nbytes=len(body))
    except ValueError as e:
        log.warning("malformed JSON: %s", str(e)[:80])
        return Frame(error=(-32700, "malformed JSON"), msg_id=recover_id(body[:4096]), nbytes=len(body))
    return Frame(message=msg, nbytes=len(body))


class StreamWriter:
    """Frames out to a binary stream (the duplicated fd 1)."""

    def __init__(self, stream: BinaryIO):
        self.stream = stream

    def write(self, data: bytes) -> None:
        self.stream.write(data)
        self.stream.flush()

    def close(self) -> None:
        try:
            self.stream.close()
        except OSError:
            pass


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


#: glibc's largest fixed mmap threshold (4 MB x sizeof(long)): blocks below it come from the heap
MMAP_THRESHOLD = 32 * 2**20
_malloc_tuned = False


def malloc_tuned() -> bool:
    """Whether tune_malloc() took effect in this process (then idle trims pay off)."""
    return _malloc_tuned


def _libc():
    import ctypes

    return ctypes.CDLL("libc.so.6")


def tune_malloc(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at `threshold` (glibc otherwise moves it with each large
    free).  Why high: torch's temporaries of 0.25-32 MB (prefill chunk activations, a sync's
    attention weights, PIE move pieces) then come from the heap and are reused; with the
    256 KB threshold used before they were fresh mmapped pages on every request (11-28k page
    faults per 2k-token request: sync 66-86 vs 53-61 ms, edit -> drafts p50 440 vs 397 ms,
    in-process, back to back).  The price: document-sized strings (a new one per edit) also
    come from the heap and leave holes (RSS crept by 150-280 MB per 1,000 edits of 50 files
    when glibc's own moving threshold did that); `MallocTrimmer` returns the holes when the
    worker is idle.  No-op elsewhere; DRAFTLINE_NO_MALLOC_TUNE=1 turns it off."""
    global _malloc_tuned
    if not sys.platform.startswith("linux"):
        return False
    try:
        M_MMAP_THRESHOLD = -3
        _malloc_tuned = bool(_libc().mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False
    return _malloc_tuned


def rss_bytes() -> int:
    """Resident set size of this process (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def malloc_trim() -> bool:
    """Return free heap pages to the OS now (glibc; False elsewhere)."""
    try:
        return bool(_libc().malloc_trim(0))
    except (OSError, AttributeError):
        return False


class MallocTrimmer:
    """Idle-time `malloc_trim(0)` (free heap pages back to the OS), only once RSS has grown
    GROWTH bytes past what it was after the last trim: trimming also returns the free pages
    the next request's temporaries would reuse (they fault in again), so it runs when holes
    have piled up, not after every request."""

    GROWTH = 64 * 2**20

    def __init__(self) -> None:
        self.base = 0

    def __call__(self) -> None:
        rss = rss_bytes()
        if not rss:
            return
        if not self.base or rss < self.base:
            self.base = rss
        elif rss - self.base > self.GROWTH:
            malloc_trim()
            self.base = rss_bytes() or rss
            log.debug("malloc_trim: RSS %d -> %d MB", rss >> 20, self.base >> 20)


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
