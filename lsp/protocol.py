"""JSON-RPC / LSP protocol behaviour that pygls 2.1.1 gets wrong on its own (see
docs/reliability.md): kept here, apart from the feature handlers.

What this class adds to pygls' `LanguageServerProtocol` (P1, P2, P8 in docs/reliability.md):

* Every request gets exactly one response. Before `initialize` a request is answered
  -32002 ServerNotInitialized; after `shutdown` -32600 InvalidRequest (pygls drops it);
  params that do not deserialize -32602 InvalidParams with the request's id (pygls sends
  nothing); a result that cannot be serialized an internal error (pygls sends nothing); a
  second response for the same id is dropped and logged.
* Messages are structured at the top level only (pygls' `object_hook` would turn any
  nested dict holding a "jsonrpc" key, e.g. inside initializationOptions, into a message).
* Frames are written under a lock and only from the event-loop thread; bodies are never
  logged (they hold the user's code).
* `exit` does not raise SystemExit inside a handler: lsp/lifecycle.py decides the exit code.
* pygls' own text-document store is bypassed: it would read unopened files from disk,
  split lines on U+2028 and raise KeyError popups for unknown URIs. Our handlers keep the
  documents (lsp/documents.py).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import threading
from collections import Counter
from typing import Any, Callable

from lsprotocol import types as T
from pygls.exceptions import JsonRpcException
from pygls.protocol import LanguageServerProtocol, lsp_method
from pygls.protocol.json_rpc import JsonRPCNotification, JsonRPCRequestMessage, JsonRPCResponseMessage

log = logging.getLogger(__name__)

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
SERVER_NOT_INITIALIZED = -32002
REQUEST_CANCELLED = -32800
CONTENT_MODIFIED = -32801

_NO_ID = object()  # "this message carries no usable id" (distinct from an explicit null)


def valid_id(x: Any) -> bool:
    """JSON-RPC ids are strings or numbers (bool is not a number here)."""
    return isinstance(x, str) or (isinstance(x, (int, float)) and not isinstance(x, bool))


class DraftlineProtocol(LanguageServerProtocol):
    def __init__(self, server, converter):
        self._open_ids: Counter = Counter()
        super().__init__(server, converter)
        self._initialize_seen = False
        self._open_ids: Counter = Counter()  # ids of requests received and not yet answered
        self._write_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self.on_exit: Callable[[], None] | None = None  # set by lsp/lifecycle.py
        self.on_write_error: Callable[[BaseException], None] | None = None
        self.exit_received = False
        self.stats = Counter()  # responses, errors, dropped_duplicates, parse_errors, ...

    # -- transport ---------------------------------------------------------------------------
    def attach(self, loop: asyncio.AbstractEventLoop, writer) -> None:
        """Bind to the event loop that owns this protocol and to a frame writer."""
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self.set_writer(writer, include_headers=True)

    def _dumps(self, data: Any) -> str:
        if hasattr(data, "__attrs_attrs__"):
            data = self._converter.unstructure(data)
        # ensure_ascii: the body is pure ASCII, so len(body) is its byte length;
        # allow_nan=False: NaN/Infinity are not JSON and would break the client's parser
        return json.dumps(data, default=self._serialize_message, ensure_ascii=True, allow_nan=False)

    def _write_body(self, body: str) -> None:
        """Write one frame. From another thread the write is handed to the loop thread
        (pygls' writer has no lock, and two threads would interleave frames)."""
        if self._loop is not None and threading.get_ident() != self._loop_thread:
            try:
                self._loop.call_soon_threadsafe(self._write_body, body)
            except RuntimeError:  # loop closed: we are exiting
                pass
            return
        if self.writer is None:
            log.debug("no transport; message dropped")
            return
        frame = f"Content-Length: {len(body)}\r\n\r\n{body}".encode("ascii")
        try:
            with self._write_lock:
                self.writer.write(frame)
        except (BrokenPipeError, ConnectionResetError, ValueError, OSError) as e:
            log.error("cannot write to the client (%s); the client is gone", type(e).__name__)
            if self.on_write_error is not None:
                self.on_write_error(e)

    def _send_data(self, data: Any):
        """Notifications and server-to-client requests (responses go through _send_response)."""
        if not data:
            return
        try:
            body = self._dumps(data)
        except Exception as e:
            log.error("message for %s could not be serialized: %s", getattr(data, "method", "?"), e)
            return
        self._write_body(body)

    def _send_response(self, msg_id: Any, result: Any = None, error: T.ResponseError | None = None):
        """Exactly one response per request id: a second one is dropped; a result that
        cannot be serialized becomes an internal error instead of silence."""
        if msg_id is not None:
            if self._open_ids[msg_id] <= 0:
                self.stats["dropped_duplicates"] += 1
                log.warning("second response for request %r dropped", msg_id)
                return
            self._open_ids[msg_id] -= 1
            if self._open_ids[msg_id] <= 0:
                del self._open_ids[msg_id]
        if error is not None:
            msg: dict[str, Any] = {"jsonrpc": "2.0", "id": msg_id, "error": self._converter.unstructure(error)}
        else:
            msg = {"jsonrpc": "2.0", "id": msg_id, "result": result}
        try:
            body = self._dumps(msg)
        except Exception as e:
            log.error("result for request %r could not be serialized: %s: %s", msg_id, type(e).__name__, e)
            error = T.ResponseError(code=INTERNAL_ERROR, message=f"result could not be serialized ({type(e).__name__})")
            body = self._dumps({"jsonrpc": "2.0", "id": msg_id, "error": self._converter.unstructure(error)})
        self.stats["errors" if error is not None else "results"] += 1
        self._write_body(body)

    def send_error(self, msg_id: Any, code: int, message: str) -> None:
        """An error response for a request that never reached a handler."""
        if msg_id is not None:
            self._open_ids[msg_id] += 1
        self._send_response(msg_id, error=T.ResponseError(code=code, message=message))

    def pending_requests(self) -> int:
        return sum(self._open_ids.values())

    # -- receiving ---------------------------------------------------------------------------
    def handle_raw(self, data: Any) -> None:
        """Entry point for one parsed JSON value from the transport (never raises)."""
        try:
            self._handle_raw(data)
        except Exception:  # a bug here must not take the reader down
            log.exception("unexpected error while handling a message")
            mid = data.get("id", _NO_ID) if isinstance(data, dict) and "method" in data else _NO_ID
            if valid_id(mid) and self._open_ids[mid] <= 0:
                self.send_error(mid, INTERNAL_ERROR, "internal error while handling the message")

    def _handle_raw(self, data: Any) -> None:
        if not isinstance(data, dict):
            # LSP has no batches; a bare value is not a message
            self.stats["invalid"] += 1
            self.send_error(None, INVALID_REQUEST, "a JSON-RPC message must be an object")
            return
        mid = data.get("id", _NO_ID)
        method = data.get("method", _NO_ID)
        if method is _NO_ID:
            if mid is _NO_ID:
                self.send_error(None, INVALID_REQUEST, "neither method nor id")
                return
            self._handle_client_response(data)
            return
        is_request = mid is not _NO_ID
        if is_request and not valid_id(mid):
            self.send_error(None, INVALID_REQUEST, "request id must be a string or a number")
            return
        if not isinstance(method, str) or data.get("jsonrpc") != "2.0":
            if is_request:
                self.send_error(mid, INVALID_REQUEST, "not a JSON-RPC 2.0 request")
            else:
                log.warning("malformed notification ignored")
            return
        if is_request:
            self._receive_request(mid, method, data)
        else:
            self._receive_notification(method, data)

    def _structure(self, data: dict, fallback: type) -> Any:
        msg_type = self.get_message_type(data["method"]) or fallback
        return self._converter.structure(data, msg_type)

    def _receive_request(self, mid: Any, method: str, data: dict) -> None:
        self.stats["requests"] += 1
        if method == T.INITIALIZE:
            if self._initialize_seen:
                self.send_error(mid, INVALID_REQUEST, "initialize was already received")
                return
        elif not self._initialize_seen:
            self.send_error(mid, SERVER_NOT_INITIALIZED, f"{method}: the server is not initialized")
            return
        if self._shutdown:
            self.send_error(mid, INVALID_REQUEST, f"{method}: the server is shutting down")
            return
        if "params" in data and data["params"] is not None and not isinstance(data["params"], (dict, list)):
            self.send_error(mid, INVALID_PARAMS, f"{method}: params must be an object or an array")
            return
        try:
            msg = self._structure(data, JsonRPCRequestMessage)
        except Exception as e:
            self.stats["invalid_params"] += 1
            log.warning("request %r (%s) has invalid params: %s", mid, method, _short(e))
            self.send_error(mid, INVALID_PARAMS, f"{method}: invalid params: {_short(e)}")
            return
        if method == T.INITIALIZE:
            self._initialize_seen = True
        self._open_ids[mid] += 1
        ctx = contextvars.copy_context()
        ctx.run(self._handle_request, mid, method, msg.params)

    def _receive_notification(self, method: str, data: dict) -> None:
        if method == T.EXIT:
            pass  # always honoured
        elif not self._initialize_seen or self._shutdown:
            log.info("notification %s ignored (%s)", method,
                     "before initialize" if not self._initialize_seen else "after shutdown")
            return
        try:
            msg = self._structure(data, JsonRPCNotification)
        except Exception as e:
            log.warning("notification %s ignored: invalid params: %s", method, _short(e))
            return
        ctx = contextvars.copy_context()
        ctx.run(self._handle_notification, method, msg.params)

    def _handle_client_response(self, data: dict) -> None:
        mid = data.get("id")
        try:
            if "error" in data:
                msg = self._converter.structure(data, T.ResponseErrorMessage)
                self._handle_response(mid, None, msg.error)
            else:
                rtype = self._result_types.pop(mid, None) or JsonRPCResponseMessage
                msg = self._converter.structure(data, rtype)
                self._handle_response(mid, msg.result)
        except Exception as e:
            log.warning("response %r from the client ignored: %s", mid, _short(e))

    # pygls' own path (messages not fed by lsp/lifecycle's reader): same rules
    def structure_message(self, data: dict[str, Any]):
        return data  # structured in handle_message, top level only

    def handle_message(self, message: Any):
        self.handle_raw(message)

    # -- handler results ---------------------------------------------------------------------
    def _execute_handler(self, msg_id, handler, callback, args=None, kwargs=None):
        """pygls keeps the future of every generator (builtin) handler in _request_futures
        under a fresh uuid and never removes it for notifications: one leaked future per
        didOpen/didChange/didClose. Drop the entry when the future is done."""

        def done(f, _cb=callback):
            if self._request_futures.get(msg_id) is f:
                del self._request_futures[msg_id]
            _cb(f)

        return super()._execute_handler(msg_id, handler, done, args, kwargs)

    def _send_handler_result(self, future, *, msg_id):
        self._request_futures.pop(msg_id, None)
        try:
            if future.cancelled():
                self._send_response(msg_id, error=T.ResponseError(
                    code=REQUEST_CANCELLED, message=f"request {msg_id} cancelled"))
                return
            exc = future.exception()
            if exc is None:
                self._send_response(msg_id, result=future.result())
            elif isinstance(exc, JsonRpcException):
                log.info("request %r answered with error %d: %s", msg_id, exc.code, exc.message)
                self._send_response(msg_id, error=exc.to_response_error())
            elif isinstance(exc, asyncio.CancelledError):
                self._send_response(msg_id, error=T.ResponseError(
                    code=REQUEST_CANCELLED, message=f"request {msg_id} cancelled"))
            else:
                log.error("request %r failed", msg_id, exc_info=exc)
                self._send_response(msg_id, error=T.ResponseError(
                    code=INTERNAL_ERROR, message=f"{type(exc).__name__}: {_short(exc)}"))
        except Exception:
            log.exception("could not answer request %r", msg_id)
            if self._open_ids[msg_id] > 0:
                self._send_response(msg_id, error=T.ResponseError(code=INTERNAL_ERROR, message="internal error"))

    def _check_handler_result(self, future):
        """Notification handlers: log failures (pygls pops up a message per failure)."""
        if not future.cancelled() and (exc := future.exception()) is not None:
            log.error("notification handler failed", exc_info=exc)

    def _handle_cancel_notification(self, msg_id):
        future = self._request_futures.pop(msg_id, None)
        if future is None:
            log.debug("cancel for request %r: already answered or unknown", msg_id)
            return
        if future.cancel():
            self.stats["cancelled"] += 1

    # -- lifecycle ---------------------------------------------------------------------------
    @lsp_method(T.EXIT)
    def lsp_exit(self, *args):
        """Record the exit; lsp/lifecycle.py stops the loop and picks the exit code
        (0 after shutdown, else 1). Without a lifecycle hook (TCP), pygls' behaviour."""
        if (h := self.fm.features.get(T.EXIT)) is not None:
            yield h, args, None
        self.exit_received = True
        if self.on_exit is None:
            yield from LanguageServerProtocol.lsp_exit(self, *args)
            return
        self.on_exit()

    # -- our document store instead of pygls' ------------------------------------------------
    @lsp_method(T.TEXT_DOCUMENT_DID_OPEN)
    def lsp_text_document__did_open(self, params: T.DidOpenTextDocumentParams):
        if (h := self.fm.features.get(T.TEXT_DOCUMENT_DID_OPEN)) is not None:
            yield h, (params,), None

    @lsp_method(T.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params: T.DidChangeTextDocumentParams):
        if (h := self.fm.features.get(T.TEXT_DOCUMENT_DID_CHANGE)) is not None:
            yield h, (params,), None

    @lsp_method(T.TEXT_DOCUMENT_DID_CLOSE)
    def lsp_text_document__did_close(self, params: T.DidCloseTextDocumentParams):
        if (h := self.fm.features.get(T.TEXT_DOCUMENT_DID_CLOSE)) is not None:
            yield h, (params,), None


def _short(e: BaseException, limit: int = 300) -> str:
    """An exception message without the offending values' full text (no code in logs)."""
    s = str(e).split("\n", 1)[0]
    if hasattr(e, "exceptions"):  # cattrs ClassValidationError: name the failing fields
        parts = []
        for sub in _leaves(e):
            note = getattr(sub, "__notes__", None) or []
            parts.append(f"{type(sub).__name__}" + (f" ({note[0]})" if note else ""))
        if parts:
            s = "; ".join(parts[:5])
    return s[:limit]


def _leaves(e: BaseException):
    subs = getattr(e, "exceptions", None)
    if not subs:
        yield e
        return
    for s in subs:
        yield from _leaves(s)
