"""The FastAPI app: OpenAI routes (`/v1/models`, `/v1/chat/completions`, `/v1/completions`), the chat page at `/`,
an API key check, and server-sent events that carry each token as the engine produces it."""

import asyncio
import json
import secrets
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from .engine import Failed, Finished, GenerationRequest, TextDelta
from .errors import APIError, error_body, install_error_handlers
from .registry import ModelRegistry, ServedModel
from .schemas import ChatCompletionRequest, CompletionRequest, ResponseShape, usage


class APIKeyCheck:
    """ASGI middleware: every /v1 request needs `Authorization: Bearer KEY`. It runs before the body is read, so a
    request without the key gets 401 whatever its body holds."""

    def __init__(self, app, api_key: str):
        self.app, self.expected = app, f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not secrets.compare_digest(given, self.expected):
                message = (
                    "Incorrect API key provided." if given else "Missing API key: send 'Authorization: Bearer KEY'."
                )
                await JSONResponse(
                    error_body(message, 401, code="invalid_api_key"),
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )(scope, receive, send)
                return
        await self.app(scope, receive, send)


class EventQueue:
    """One request's engine events, handed from the engine thread to the server's event loop."""

    def __init__(self):
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()

    def deliver(self, event) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    async def get(self):
        return await self.queue.get()

    async def get_all(self) -> list:
        """The next event and any that queued up behind it (a slow client gets them in one write)."""
        events = [await self.queue.get()]
        while not self.queue.empty():
            events.append(self.queue.get_nowait())
        return events


class GenerationStream(StreamingResponse):
    """Server-sent events that cancel their generation however the response ends: finished, or client gone (the
    engine then drops the sequence at its next step)."""

    def __init__(self, chunks, generation: GenerationRequest):
        super().__init__(
            chunks, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        self.generation = generation

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.generation.cancel()


def sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)}\n\n"


def index_html() -> str:
    return (resources.files("moai_llm.serving") / "static" / "index.html").read_text(encoding="utf-8")


def build_app(registry: ModelRegistry, api_key: str | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app):
        yield
        registry.close()

    app = FastAPI(title="MOAI-LLM", lifespan=lifespan)
    install_error_handlers(app)
    if api_key:
        app.add_middleware(APIKeyCheck, api_key=api_key)
    page = index_html()

    @app.get("/", include_in_schema=False)
    async def chat_page():
        return HTMLResponse(page)

    @app.get("/health")
    async def health():
        stats = {name: getattr(m.engine, "stats", dict)() for name, m in registry.models.items()}
        return {"status": "ok", "models": stats}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [m.card() for m in registry.models.values()]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str):
        return registry.get(name).card()

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        served = registry.get(body.model)
        prompt = served.chat_prompt([m.as_template_input() for m in body.messages])
        return await generate(served, body, prompt, "messages", ResponseShape(True, served.name), request)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        served = registry.get(body.model)
        prompt = served.text_prompt(body.prompt_text())
        return await generate(served, body, prompt, "prompt", ResponseShape(False, served.name), request)

    return app


async def generate(
    served: ServedModel, body, prompt: list[int], prompt_param: str, shape: ResponseShape, request: Request
):
    max_new_tokens = served.max_new_tokens(len(prompt), body.requested_max_tokens(), prompt_param)
    events = EventQueue()
    generation = GenerationRequest(
        prompt, body.sampling(max_new_tokens), events.deliver, body.stop_list(), bool(body.ignore_eos)
    )
    served.engine.submit(generation)
    if body.stream:
        return GenerationStream(stream_chunks(events, shape, body.include_usage()), generation)
    return await complete(events, shape, generation, request)


async def stream_chunks(events: EventQueue, shape: ResponseShape, include_usage: bool):
    if shape.chat:
        yield sse(shape.chunk(role=True))
    done = False
    while not done:
        chunks = []  # one SSE event per decoded piece; pieces that queued up together are written together
        for event in await events.get_all():
            if isinstance(event, TextDelta):
                chunks.append(sse(shape.chunk(event.text)))
            elif isinstance(event, Finished):
                chunks.append(sse(shape.chunk(finish_reason=event.reason)))
                if include_usage:
                    chunks.append(sse(shape.usage_chunk(usage(event.prompt_tokens, event.completion_tokens))))
                done = True
            elif isinstance(event, Failed):
                chunks.append(sse(error_body(event.message, 500)))
                done = True
        yield "".join(chunks)
    yield sse("[DONE]")


async def complete(events: EventQueue, shape: ResponseShape, generation: GenerationRequest, request: Request):
    """The whole answer as one JSON object; a client that hangs up stops its generation all the same."""
    watcher = asyncio.create_task(cancel_when_disconnected(request, generation))
    pieces = []
    try:
        while True:
            event = await events.get()
            if isinstance(event, TextDelta):
                pieces.append(event.text)
            elif isinstance(event, Failed):
                raise APIError(500, event.message, code="generation_failed")
            elif isinstance(event, Finished):
                return shape.complete(
                    "".join(pieces), event.reason, usage(event.prompt_tokens, event.completion_tokens)
                )
    finally:
        watcher.cancel()


async def cancel_when_disconnected(request: Request, generation: GenerationRequest, every: float = 0.25) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(every)
    generation.cancel()
