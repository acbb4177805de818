"""`POST /captinv/v1/invert`, `/captinv/v1/perfusion` and `/captinv/v1/caption`, added when the
WebUI runs with --api.

Routes run under the host's queue, so a job never runs beside a txt2img request, and are
protected by --api-auth exactly as the WebUI's own routes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException

from captinv.config import PerfusionOptions
from captinv.errors import CaptinvError
from captinv.hosts.base import Host
from captinv.webui import jobs
from captinv.webui.auth import basic_auth
from captinv.webui.options import WebUIOptions
from captinv.webui.perfusion_tag import perfusion_tag
from captinv.webui.schema import (
    SOURCES,
    CaptionRequest,
    CaptionResponse,
    InvertRequest,
    InvertResponse,
    PerfusionRequest,
    PerfusionResponse,
    check_refused,
    config_values,
    decode_image,
    error_detail,
    request_images,
)


def _job(host: Host, name: str, work: Callable[[], Any]) -> Any:
    def guarded() -> Any:
        try:
            return work()
        except CaptinvError as err:
            raise HTTPException(status_code=err.http_status, detail=error_detail(err)) from err

    return host.run_queued(name, guarded)


def _check(request, route: str) -> None:
    """What can be refused before the job is queued: the source, fields of the other route."""
    _check_source(request.source)
    try:
        check_refused(request, route)
    except CaptinvError as err:
        raise HTTPException(status_code=err.http_status, detail=error_detail(err)) from err


def _check_source(source: str) -> None:
    if source not in SOURCES:
        raise HTTPException(status_code=422, detail=f"source must be one of {', '.join(SOURCES)}.")


def _run_values(request) -> dict[str, Any]:
    """The request's run options; its name is `_name`'s business (an empty one means the default)."""
    return {key: value for key, value in config_values(request).items() if key != "name"}


def _name(host: Host, request, perfusion: bool) -> str:
    """The request's name, else a free one from its file name (or 'captinv'): 'cat', 'cat-2', ..."""
    if (request.name or "").strip():
        return request.name
    return jobs.free_default_name(host, Path(request.filename or "captinv").stem, perfusion=perfusion)


def _webui_options(request) -> WebUIOptions:
    return WebUIOptions.from_mapping(config_values(request, WebUIOptions))


def _routes(host: Host) -> dict[str, tuple[Callable[..., Any], type]]:
    def invert_route(request: InvertRequest) -> InvertResponse:
        _check(request, "invert")

        def work() -> InvertResponse:
            result, _ = jobs.run_inversion(
                host,
                request_images(request),
                request.caption,
                _name(host, request, perfusion=False),
                _run_values(request),
                request.source,
                _webui_options(request),
            )
            return InvertResponse(
                combined_name=result.combined_name,
                word_names=result.word_names,
                names=[result.combined_name, *result.word_names],
                caption=result.text,
                sentence=result.sentence,
                files=[path.name for path in result.files],
                losses=result.losses,
                steps=result.steps,
                max_steps=result.max_steps,
                stop_reason=result.stop_reason,
                seconds=round(result.seconds, 2),
            )

        return _job(host, "captinv-invert", work)

    def perfusion_route(request: PerfusionRequest) -> PerfusionResponse:
        _check(request, "perfusion")

        def work() -> PerfusionResponse:
            options = config_values(request, PerfusionOptions)
            result, _ = jobs.run_perfusion(
                host,
                request_images(request),
                request.caption,
                _name(host, request, perfusion=True),
                _run_values(request),
                options,
                request.source,
                _webui_options(request),
            )
            beta = options.get("beta", PerfusionOptions().beta)
            return PerfusionResponse(
                **{k: v for k, v in result.to_dict().items() if k in PerfusionResponse.__fields__},
                tag=perfusion_tag(result.name, beta),
                caption=result.text,
            )

        return _job(host, "captinv-perfusion", work)

    def caption_route(request: CaptionRequest) -> CaptionResponse:
        _check_source(request.source)
        return _job(
            host,
            "captinv-caption",
            lambda: CaptionResponse(
                caption=jobs.caption(host, [decode_image(request.image)], request.source)
            ),
        )

    return {
        "/captinv/v1/invert": (invert_route, InvertResponse),
        "/captinv/v1/perfusion": (perfusion_route, PerfusionResponse),
        "/captinv/v1/caption": (caption_route, CaptionResponse),
    }


def _set_route(host: Host) -> Callable[[str], dict[str, Any]]:
    """The tab's "continue from this embedding": a set's caption and options, by its name (only
    embeddings in the WebUI's embeddings folder can be named)."""

    def stored_set(name: str) -> dict[str, Any]:
        try:
            return jobs.stored_set_options(host, name)
        except CaptinvError as err:
            raise HTTPException(status_code=404, detail=error_detail(err)) from err

    return stored_set


def add_routes(app: FastAPI, host: Host) -> None:
    """captinv's routes: the tab's live progress always, the job routes with --api."""
    app.add_api_route("/captinv/v1/progress", lambda: jobs.live.to_dict(), methods=["GET"])
    app.add_api_route("/captinv/v1/set", _set_route(host), methods=["GET"])
    enabled, credentials = host.api_settings()
    if not enabled:
        return
    extra = {"dependencies": [Depends(basic_auth(credentials))]} if credentials else {}
    for path, (route, response) in _routes(host).items():
        app.add_api_route(path, route, methods=["POST"], response_model=response, **extra)
