"""LSP framing over a byte stream: bounded reads, resynchronization, parse errors.

pygls' own reader is replaced (docs/reliability.md, P2):

* `FrameReader` bounds every read: header lines (8 KiB), the number of header lines, and
  the body (64 MiB by default, `DRAFTLINE_MAX_MESSAGE_BYTES`). An oversized body is
  skipped in chunks without buffering it, and answered with an error when its id can be
  found in its first bytes. A body never contains a `Content-Length: N\\r\\n` line (raw
  CR/LF cannot occur inside JSON strings), so finding one inside a body means the declared
  length was a lie: the reader resynchronizes on that header instead of waiting forever
  for bytes that will never come. pygls' reader wedges on such input.
* Invalid UTF-8, malformed JSON and nesting too deep for the parser are answered
  -32700 ParseError (with the request's id when it can be recovered, else null).
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any, BinaryIO

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 2**20
MAX_HEADER_LINE = 8192
MAX_HEADER_LINES = 32
CHUNK = 1 << 16

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


