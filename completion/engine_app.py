"""The team engine as a Ray Serve application: N replicas of the model side behind Ray
Serve's HTTP proxy, each document pinned to one replica (`completion.routing`).

Why HTTP through the proxy (and not Ray handles from each edge): the edge next to each
editor stays thin (no Ray in it, no cluster membership per editor: one keep-alive HTTP
connection), and the proxy is where the sticky router runs, so every editor's requests for
a document meet the same table.  Why a token: the port is the team's, and a request
without the token must not read or fill anyone's caches; the replicas get only its
SHA-256, so the token itself is not in the cluster's deployment config.

`draftline engine serve` (lsp/cli.py) calls `serve_forever`; `deploy` is the part a test
or a bench reuses.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import time
from types import SimpleNamespace
from typing import Any

from ray import serve

from . import wire

log = logging.getLogger("ray.serve")

APP_NAME = "draftline"
#: requests a replica accepts at once: they wait in its own priority queue (requests
#: before background work), not in the router, which would hold them back per replica
MAX_ONGOING = 64


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def settings_namespace(settings: dict) -> Any:
    """`completion.build` reads settings by attribute; the monitors are a nested object."""
    s = dict(settings)
    s["monitors"] = SimpleNamespace(**(s.get("monitors") or {"enabled": True}))
    return SimpleNamespace(**s)


@serve.deployment(name="Engine", max_ongoing_requests=MAX_ONGOING, health_check_period_s=2.0,
                  graceful_shutdown_timeout_s=2.0)
class EngineReplica:
    """One replica: loads the model, then answers the wire protocol (`completion.wire`)."""

    def __init__(self, settings: dict, token_sha256: str, threads: int = 0) -> None:
        import torch

        from .build import build_engine
        from .replica import ReplicaCore

        if threads > 0:
            torch.set_num_threads(threads)
        self.token_sha256 = token_sha256
        t0 = time.perf_counter()
        engine = build_engine(settings_namespace(settings), lambda msg, pct: log.info("model: %s (%d%%)", msg, pct), [])
        try:
            name = serve.get_replica_context().replica_id.unique_id
        except Exception:  # noqa: BLE001 (outside a replica: a plain name)
            name = ""
        self.core = ReplicaCore(engine, name)
        log.info("draftline replica %s ready in %.1f s (%d threads)", self.core.name,
                 time.perf_counter() - t0, torch.get_num_threads())

    def _authorized(self, header: str | None) -> bool:
        if not header or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(token_digest(header[7:].strip()), self.token_sha256)

    async def __call__(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        t_recv = time.perf_counter()
        if not self._authorized(request.headers.get("authorization")):
            log.warning("draftline: request without a valid token refused (from %s)",
                        getattr(request.client, "host", "?"))
            return JSONResponse({"error": "unauthorized: the engine needs `engineToken` "
                                          "(Authorization: Bearer <token>)"}, status_code=401)
        body = await request.body()
        if len(body) > wire.MAX_BODY_BYTES:
            return JSONResponse({"error": f"request of {len(body)} bytes: over {wire.MAX_BODY_BYTES}"},
                                status_code=413)
        try:
            msg = json.loads(body)
            if not isinstance(msg, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            return JSONResponse({"error": f"bad request: {e}"}, status_code=400)
        got = self.core.submit(msg, t_recv)
        if isinstance(got, tuple):
            status, out = got
        else:
            status, out = await asyncio.wrap_future(got)
        return JSONResponse(out, status_code=status)


def deploy(settings: dict, replicas: int, token: str, *, host: str = "127.0.0.1", port: int = 8000,
           threads: int = 0, address: str | None = None, num_cpus: int | None = None) -> str:
    """Start (or join, with `address`) a Ray cluster, run the engine with `replicas`
    replicas, and return the URL editors set as `engine`."""
    import ray
    from ray.serve.config import HTTPOptions, RequestRouterConfig

    global _STARTED_CLUSTER
    if not ray.is_initialized():
        _STARTED_CLUSTER = not address
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                     logging_level=logging.WARNING, object_store_memory=128 * 2**20)
    serve.start(http_options=HTTPOptions(host=host, port=port))
    threads = threads or max(1, (os.cpu_count() or 1) // max(1, replicas))
    env = {"GOMP_SPINCOUNT": "10000", "OMP_NUM_THREADS": str(threads)}  # as `draftline serve` (lsp/cli.py)
    app = EngineReplica.options(
        num_replicas=replicas,
        ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": env}},
        request_router_config=RequestRouterConfig(
            request_router_class="draftline.completion.routing.StickyRouter",
            request_router_kwargs={"num_fallback_replicas": 0}),
    ).bind(settings, token_digest(token), threads)
    serve.run(app, name=APP_NAME, route_prefix=wire.ROUTE)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{shown}:{port}{wire.ROUTE}"


_STARTED_CLUSTER = False


def shutdown() -> None:
    """Our cluster: Serve and Ray stop.  A joined cluster (`--address`): only our application
    goes (other applications on it keep serving)."""
    import ray

    try:
        if _STARTED_CLUSTER:
            serve.shutdown()
        elif ray.is_initialized():
            serve.delete(APP_NAME)
    except Exception as e:  # noqa: BLE001 (stopping: say what failed, go on)
        log.warning("draftline engine: stopping Serve: %s", e)
    finally:
        ray.shutdown()


def serve_forever(settings: dict, replicas: int, token: str, **kw: Any) -> int:
    """`draftline engine serve`: deploy, print where, run until SIGINT/SIGTERM."""
    import signal
    import sys
    import threading

    stop = threading.Event()
    try:
        url = deploy(settings, replicas, token, **kw)
    except Exception as e:  # noqa: BLE001 (a clear line, not a traceback, for a bad start)
        print(f"draftline engine: failed to start: {type(e).__name__}: {e}", file=sys.stderr)
        shutdown()
        return 2
    for sig in (signal.SIGINT, signal.SIGTERM):  # (after ray.init, which installs its own)
        signal.signal(sig, lambda *a: stop.set())
    print(f"draftline engine: ready at {url} ({replicas} replicas)", flush=True)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        print("draftline engine: shutting down", file=sys.stderr, flush=True)
        shutdown()
    return 0
