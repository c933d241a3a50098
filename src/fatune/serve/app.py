"""The HTTP side of ``fatune serve``: OpenAI's chat-completions API, the arena, the web pages.

* ``GET /v1/models`` and ``POST /v1/chat/completions`` (non-streaming, and streaming as server-sent
  events ending with ``data: [DONE]``), answered by the batcher (``serve.batching``).
* ``POST /arena/battle``, ``POST /arena/vote``, ``GET /arena/leaderboard`` (``serve.arena_routes``): two
  anonymous answers to one prompt, a human's vote appended to the votes file, Bradley-Terry ratings.
* ``/`` (chat) and ``/arena`` pages from ``serve/static``; they need no key, the API calls they make do.

Every error is OpenAI's JSON shape ``{"error": {"message", "type", "param", "code"}}``, unexpected ones
included (500 with a generic message; the traceback goes only to the server log). With ``api_key``
every ``/v1`` and ``/arena`` route wants ``Authorization: Bearer KEY``.

A client that goes away stops its generation: a streaming response's generator is cancelled by Starlette
when the client disconnects, a non-streaming request is watched with ``request.is_disconnected()``;
either way the request's cancelled flag ends its row at the next generation step.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from fatune.serve.arena_routes import add_arena_routes
from fatune.serve.batching import Batcher, Done, Failed, Piece, QueueFull, Sampling, cancel_when_gone
from fatune.serve.schema import Limits, RequestError, parse_chat_request, read_json_body

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"
PLACEHOLDER = ("<!doctype html><meta charset=utf-8><title>fatune</title><p>fatune serve is running; this page "
               "is not installed. The API is at <code>/v1</code>.</p>")


def _error(status: int, message: str, type: str = "invalid_request_error", code: str | None = None,
           param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type, "param": param, "code": code}}, status)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestError)
    async def refused(request: Request, error: RequestError):
        return JSONResponse(error.body(), error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        first = error.errors()[0] if error.errors() else {"loc": (), "msg": "invalid request"}
        field = ".".join(str(p) for p in first["loc"] if p != "body") or None
        return _error(400, f"{field}: {first['msg']}" if field else first["msg"], param=field)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        kinds = {401: "authentication_error", 404: "not_found_error", 405: "invalid_request_error"}
        return _error(error.status_code, str(error.detail), kinds.get(error.status_code, "invalid_request_error"))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=error)
        return _error(500, "the server hit an unexpected error; its log has the details", "server_error")


def _key_check(api_key: str | None):
    async def check(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise RequestError("a valid API key is needed: send the header 'Authorization: Bearer KEY'",
                               status=401, type="authentication_error", code="invalid_api_key")
    return check


def create_app(registry, *, api_key: str | None = None, votes_path: str | Path | None = None,
               limits: Limits = Limits(), max_batch: int = 8, queue_limit: int = 32,
               batcher: Batcher | None = None) -> FastAPI:
    """The server for ``registry`` (``serve.registry.Registry``). ``batcher`` defaults to a new one."""
    batcher = batcher or Batcher(registry, max_batch=max_batch, queue_limit=queue_limit)
    vote_log = None
    if votes_path is not None:
        from fatune.eval.votes import VoteLog

        vote_log = VoteLog(votes_path)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        batcher.close()
        if vote_log is not None:
            vote_log.close()

    app = FastAPI(title="fatune serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.registry, app.state.batcher, app.state.limits = registry, batcher, limits
    _install_error_handlers(app)
    api = APIRouter(dependencies=[Depends(_key_check(api_key))])

    def served(model_id: str):
        if model_id not in registry:
            raise RequestError(f"model {model_id!r} does not exist; this server has: {', '.join(registry.ids())}",
                               "model", status=404, code="model_not_found")
        return registry[model_id]

    async def submit(model_id: str, messages: list[dict], max_tokens: int, sampling: Sampling,
                     seed: int | None = None, stop=()):
        model = served(model_id)
        prompt = await run_in_threadpool(model.prompt_ids, messages)  # a long prompt tokenizes off the loop
        context = model.context_length
        if context and len(prompt) + max_tokens > context:
            raise RequestError(f"the prompt is {len(prompt)} tokens; with max_tokens {max_tokens} that is over "
                               f"{model_id!r}'s context of {context} tokens", "messages", code="context_length_exceeded")
        try:
            return batcher.submit(model_id, prompt, max_tokens, sampling, seed, stop)
        except QueueFull:
            raise RequestError(f"too many requests are waiting for {model_id!r} (limit {batcher.queue_limit}); "
                               "retry shortly", status=429, type="rate_limit_error", code="queue_full") from None

    @api.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": i, "object": "model", "created": 0, "owned_by": "fatune"}
                                           for i in registry.ids()]}

    @api.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        chat, max_tokens = parse_chat_request(await read_json_body(request, limits), limits)
        generation = await submit(chat.model, chat.conversation(), max_tokens, Sampling(*chat.sampling), chat.seed,
                                  chat.stops)
        created = int(time.time())
        if chat.stream:
            usage = bool(chat.stream_options and chat.stream_options.include_usage)
            return StreamingResponse(_sse(generation, chat.model, created, usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        watcher = asyncio.create_task(cancel_when_gone(request, generation))
        try:
            done = await generation.result()
        finally:
            watcher.cancel()
        return {"id": generation.id, "object": "chat.completion", "created": created, "model": chat.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": done.text},
                             "logprobs": None, "finish_reason": _finish(done)}],
                "usage": _usage(done)}

    add_arena_routes(api, registry, submit, limits, votes_path, vote_log)
    app.include_router(api)

    @app.get("/", include_in_schema=False)
    async def index():
        return _page("index.html")

    @app.get("/arena", include_in_schema=False)
    async def arena_page():
        return _page("arena.html")

    app.mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static")
    return app


def _page(name: str):
    path = STATIC / name
    return FileResponse(path) if path.exists() else HTMLResponse(PLACEHOLDER)


def _finish(done: Done) -> str:
    return "length" if done.finish_reason == "length" else "stop"


def _usage(done: Done) -> dict:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens}


def _event(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _sse(generation, model_id: str, created: int, include_usage: bool):
    """``chat.completion.chunk`` events: the role first, then text pieces, the finish reason, the usage
    (when asked) and ``[DONE]``. Cancelled (the client left) -> the generation is cancelled too."""
    def chunk(delta: dict, finish: str | None = None) -> dict:
        data = {"id": generation.id, "object": "chat.completion.chunk", "created": created, "model": model_id,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if include_usage:
            data["usage"] = None
        return data

    try:
        yield _event(chunk({"role": "assistant", "content": ""}))
        while True:
            event = await generation.events.get()
            if isinstance(event, Piece):
                yield _event(chunk({"content": event.text}))
            elif isinstance(event, Failed):
                log.error("generation failed for %s", model_id, exc_info=event.error)
                yield _event({"error": {"message": "generation failed; the server's log has the details",
                                        "type": "server_error", "param": None, "code": None}})
                break
            elif isinstance(event, Done):
                yield _event(chunk({}, _finish(event)))
                if include_usage:
                    yield _event({"id": generation.id, "object": "chat.completion.chunk", "created": created,
                                  "model": model_id, "choices": [], "usage": _usage(event)})
                yield "data: [DONE]\n\n"
                break
    finally:  # normal end, or the client went away (CancelledError / GeneratorExit): stop generating
        generation.cancel()
