"""The Ray Serve deployment of the service: a FastAPI ingress, one Localiser per replica, and Ray Serve's
``@serve.batch`` for dynamic batching (images of concurrent requests share an encoder batch and a search).

A batch runs ``Localiser.localise`` once on all its images with the largest ``k`` asked for in it, in a
worker thread (the replica's event loop keeps answering health checks). Each request then takes its first
``k`` candidates: the engine's order is total (docs/METHOD.md §13.2), so that is exactly its own top-k.
If the batch fails (an image that passed the header check but does not decode), its images are localised
one by one so that only the faulty request gets an error.

(No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations at run time.)
"""

import asyncio
import logging
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve

from s4g_engine.serve.config import ServeConfig
from s4g_engine.serve.handlers import (
    ApiError,
    answer,
    candidates,
    check_content_length,
    check_images,
    error_from,
    gallery_points,
    parse_format,
    parse_k,
    thumbnail,
)

log = logging.getLogger(__name__)

api = FastAPI(title="s4g localisation service", docs_url=None, redoc_url=None)


def _error(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


@serve.deployment(graceful_shutdown_wait_loop_s=0.5, graceful_shutdown_timeout_s=30, max_ongoing_requests=256)
@serve.ingress(api)
class LocaliseService:
    """One replica: the model bundle, the gallery index and the batching queue of Ray Serve."""

    def __init__(self, config: dict[str, Any]) -> None:
        from s4g_engine.localiser import Localiser

        self.cfg = ServeConfig(**config)
        device = "cuda" if self.cfg.gpus_per_replica > 0 else self.cfg.device
        threads = max(1, int(self.cfg.cpus_per_replica))
        self.loc = Localiser.from_dir(self.cfg.model, device=device, backend=self.cfg.backend,
                                      precision=self.cfg.precision, batch_size=self.cfg.max_batch, threads=threads,
                                      decode_threads=threads)
        self.count = self.loc.load_index(self.cfg.index)
        self._batched.set_max_batch_size(self.cfg.max_batch)
        self._batched.set_batch_wait_timeout_s(self.cfg.max_wait_ms / 1000.0)
        log.info("replica ready: %d tiles, max batch %d, max wait %.1f ms", self.count, self.cfg.max_batch,
                 self.cfg.max_wait_ms)

    # -- batching ---------------------------------------------------------------------------------------
    def _localise(self, items: list[tuple[str, bytes, int]]) -> list[Any]:
        kmax = max(k for _, _, k in items)
        try:
            res = self.loc.localise([data for _, data, _ in items], k=kmax)
            return [candidates(res, i, k) for i, (_, _, k) in enumerate(items)]
        except Exception:  # find the faulty image(s): one by one, so only their requests fail
            out: list[Any] = []
            for name, data, k in items:
                try:
                    out.append(candidates(self.loc.localise([data], k=k), 0, k))
                except Exception as exc:  # noqa: BLE001 - turned into the request's answer
                    out.append(error_from(exc, name))
            return out

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _batched(self, items: list[tuple[str, bytes, int]]) -> list[Any]:
        return await asyncio.get_running_loop().run_in_executor(None, self._localise, items)

    # -- endpoints --------------------------------------------------------------------------------------
    @api.post("/v1/localise")
    async def localise(self, request: Request) -> Response:
        try:
            check_content_length(request.headers)
            form = await request.form(max_files=self.cfg.max_images + 1, max_fields=16)
            files = [(getattr(v, "filename", None) or f"image{i}", await v.read())
                     for i, (key, v) in enumerate(form.multi_items()) if hasattr(v, "read")]
            k = parse_k(request.query_params.get("k", form.get("k")), self.count, self.cfg.max_k)
            fmt = parse_format(request.query_params.get("format"))
            check_images(files, self.cfg.max_images)
            calls = [self._batched((name, data, k)) for name, data in files]
            got = await asyncio.wait_for(asyncio.gather(*calls), timeout=self.cfg.request_timeout_s)
        except ApiError as exc:
            return _error(exc)
        except asyncio.TimeoutError:
            return _error(ApiError(504, "timeout", f"localising took longer than request_timeout_s="
                                   f"{self.cfg.request_timeout_s:g}; send fewer images or retry later"))
        except ValueError as exc:  # a malformed multipart body
            return _error(ApiError(400, "bad_request", f"cannot read the multipart body ({exc}); expected "
                                   "multipart/form-data with file fields named 'image'"))
        for g in got:
            if isinstance(g, ApiError):
                return _error(g)
        return JSONResponse(answer([n for n, _ in files], got, fmt, k))

    @api.get("/healthz")
    def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz")
    def readyz(self) -> dict[str, Any]:
        return {"ready": True, "gallery": self.count, "model": self.loc.config.get("name", ""),
                "fingerprint": self.loc.fingerprint, "max_batch": self.cfg.max_batch, "max_k": self.cfg.max_k,
                "encoder": {v: {"runtime": c.get("runtime"), "precision": c.get("precision")}
                            for v, c in self.loc.encoder_choice.items()}}

    @api.get("/v1/gallery")
    def gallery(self) -> dict[str, Any]:
        return gallery_points(self.loc.index, self.cfg.gallery_points)

    @api.get("/v1/tiles/{tile_id:path}")
    def tile(self, tile_id: str) -> Response:
        try:
            return Response(thumbnail(self.cfg.tiles, tile_id, self.cfg.thumbnail_px), media_type="image/png")
        except ApiError as exc:
            return _error(exc)

    @api.get("/")
    def page(self) -> HTMLResponse:
        return HTMLResponse(resources.files("s4g_engine.serve").joinpath("static/index.html").read_text("utf-8"))


def application(cfg: ServeConfig) -> Any:
    """The bound application for ``serve.run``."""
    opts: dict[str, Any] = {"num_cpus": cfg.cpus_per_replica}
    if cfg.gpus_per_replica > 0:
        opts["num_gpus"] = cfg.gpus_per_replica
    return LocaliseService.options(num_replicas=cfg.replicas, ray_actor_options=opts).bind(cfg.to_dict())
