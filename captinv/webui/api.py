"""`POST /captinv/v1/invert`, `/captinv/v1/perfusion` and `/captinv/v1/caption`, registered when the WebUI runs with --api.

Routes take the WebUI's queue lock, so a job never runs beside a txt2img
request, and are protected by --api-auth exactly as the WebUI's own routes.
"""

from __future__ import annotations

from fastapi import Depends, FastAPI, HTTPException
from modules import shared
from modules.call_queue import queue_lock

from captinv.config import PerfusionOptions
from captinv.errors import CaptinvError
from captinv.webui import service
from captinv.webui.auth import basic_auth, parse_credentials
from captinv.webui.schema import (
    SOURCES,
    CaptionRequest,
    CaptionResponse,
    InvertRequest,
    InvertResponse,
    PerfusionRequest,
    PerfusionResponse,
    config_values,
    decode_image,
)


def _job(name: str, work):
    with queue_lock:
        shared.state.begin(job=name)
        try:
            return work()
        except CaptinvError as err:
            raise HTTPException(status_code=err.http_status, detail=str(err)) from err
        finally:
            shared.state.end()


def _check_source(source: str) -> None:
    if source not in SOURCES:
        raise HTTPException(status_code=422, detail=f"source must be one of {', '.join(SOURCES)}.")


def invert_route(request: InvertRequest) -> InvertResponse:
    _check_source(request.source)

    def work() -> InvertResponse:
        image = decode_image(request.image)
        result, _ = service.run_inversion(
            image, request.caption, request.name, config_values(request), request.source
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
            seconds=round(result.seconds, 2),
        )

    return _job("captinv-invert", work)


def perfusion_route(request: PerfusionRequest) -> PerfusionResponse:
    _check_source(request.source)

    def work() -> PerfusionResponse:
        image = decode_image(request.image)
        options = config_values(request, PerfusionOptions)
        result, _ = service.run_perfusion(
            image, request.caption, request.name, config_values(request), options, request.source
        )
        beta = options.get("beta", PerfusionOptions().beta)
        return PerfusionResponse(
            **{k: v for k, v in result.to_dict().items() if k in PerfusionResponse.__fields__},
            tag=service.perfusion_tag(result.name, beta),
            caption=result.text,
        )

    return _job("captinv-perfusion", work)


def caption_route(request: CaptionRequest) -> CaptionResponse:
    _check_source(request.source)
    return _job(
        "captinv-caption",
        lambda: CaptionResponse(caption=service.caption(decode_image(request.image), request.source)),
    )


def on_app_started(_demo, app: FastAPI) -> None:
    if not (shared.cmd_opts.api or shared.cmd_opts.nowebui):
        return
    extra = {}
    if shared.cmd_opts.api_auth:
        extra["dependencies"] = [Depends(basic_auth(parse_credentials(shared.cmd_opts.api_auth)))]
    app.add_api_route(
        "/captinv/v1/invert", invert_route, methods=["POST"], response_model=InvertResponse, **extra
    )
    app.add_api_route(
        "/captinv/v1/perfusion", perfusion_route, methods=["POST"], response_model=PerfusionResponse, **extra
    )
    app.add_api_route(
        "/captinv/v1/caption", caption_route, methods=["POST"], response_model=CaptionResponse, **extra
    )
