"""The FastAPI app: OpenAI routes (`/v1/models`, `/v1/chat/completions`, `/v1/completions`), the chat page at `/`,
`/health`, `/metrics`, and server-sent events that carry each token as the engine produces it."""

import asyncio
import json
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from .engine import Failed, GenerationRequest, PromptLogprobs, TextDelta
from .errors import APIError, error_body, install_error_handlers
from .metrics import GenerationTracker, ServerMetrics
from .middleware import APIKeyCheck, BodyLimit, CountRequests
from .registry import ModelRegistry, ServedModel
from .responses import ResponseShape
from .schemas import ChatCompletionRequest, CompletionRequest
from .waiting import EngineClosed, QueueFull

MAX_BODY_BYTES = 8 * 2**20


class GenerationStream(StreamingResponse):
    """Server-sent events that cancel their generations however the response ends: finished, or client gone (the
    engine then drops the sequences at its next step)."""

    def __init__(self, chunks, generations: list[GenerationRequest]):
        super().__init__(
            chunks, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        self.generations = generations

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            for generation in self.generations:
                generation.cancel()


def sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)}\n\n"


def build_app(
    registry: ModelRegistry,
    api_key: str | None = None,
    cors_origins: list[str] | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app):
        yield
        registry.close()

    app = FastAPI(title="MOAI-LLM", lifespan=lifespan)
    install_error_handlers(app)
    metrics = ServerMetrics(registry)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    if api_key:
        app.add_middleware(APIKeyCheck, api_key=api_key)
    if cors_origins:  # outside the key check: a browser's preflight carries no key
        app.add_middleware(CORSMiddleware, allow_origins=cors_origins, allow_methods=["*"], allow_headers=["*"])
    app.add_middleware(CountRequests, metrics=metrics)
    page = (resources.files("moai_llm.serving") / "static" / "index.html").read_text(encoding="utf-8")

    @app.get("/", include_in_schema=False)
    async def chat_page():
        return HTMLResponse(page)

    @app.get("/health")
    async def health():
        return {"status": "ok"}  # open to load balancers: says nothing about the models

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [m.card() for m in registry.models.values()]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str):
        return registry.get(name).card()

    def model_for(body: ChatCompletionRequest | CompletionRequest) -> ServedModel:
        body.check()
        served = registry.get(body.model)
        served.check_max_tokens(body.requested_max_tokens())
        return served

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        served = model_for(body)
        messages = [m.as_template_input() for m in body.messages]
        served.check_text_length([m["content"] for m in messages], "messages")
        prompt = await run_in_threadpool(served.chat_prompt, messages)  # a long prompt never stalls other streams
        return await generate(served, body, [prompt], [None], "messages", request, metrics)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        served = model_for(body)
        prompts = body.prompt
        served.check_text_length([p for p in prompts if isinstance(p, str)], "prompt")
        ids = await run_in_threadpool(
            lambda: [served.text_prompt(p) if isinstance(p, str) else served.token_prompt(p, "prompt") for p in prompts]
        )
        echoes = [None] * len(prompts)
        if body.echo:
            decode = served.tokenizer.decode
            echoes = [p if isinstance(p, str) else decode(p, skip_special_tokens=True) for p in prompts]
        return await generate(served, body, ids, echoes, "prompt", request, metrics)

    return app


async def generate(served: ServedModel, body, prompts, echoes, param, request, metrics):
    """Submit one generation per prompt and answer with their choices, streamed or whole."""
    budgets = [served.max_new_tokens(len(p), body.requested_max_tokens(), param) for p in prompts]
    k = body.logprobs_k()
    shape = ResponseShape(isinstance(body, ChatCompletionRequest), served.name, served.tokenizer, k, len(prompts))
    run = Run(shape, prompts, echoes, [GenerationTracker(metrics, served.name) for _ in prompts])
    generations = [
        GenerationRequest(
            prompt,
            body.sampling(budget),
            run.deliver_for(i),
            body.stop or [],
            bool(body.ignore_eos),
            logprobs=k,
            prompt_logprobs=echoes[i] is not None and k is not None,
        )
        for i, (prompt, budget) in enumerate(zip(prompts, budgets))
    ]
    try:
        served.engine.submit_all(generations)
    except QueueFull as err:
        headers = {"Retry-After": str(served.engine.retry_after())}
        raise APIError(429, f"The server is busy ({err}): retry later.", None, "rate_limit_exceeded", headers) from None
    except EngineClosed:
        raise APIError(503, "The server is shutting down.", None, "server_shutting_down") from None
    if body.stream:
        with_usage = bool(body.stream_options and body.stream_options.include_usage)
        return GenerationStream(stream_chunks(run, with_usage), generations)
    watcher = asyncio.create_task(cancel_when_disconnected(request, generations))
    try:
        return await complete(run)
    finally:  # a failed choice stops the others; the finished ones ignore it
        watcher.cancel()
        for generation in generations:
            generation.cancel()


class Run:
    """What one request's choices have produced so far (echoed prompts first), and their token counts; the engine
    events of its generations (one per prompt) reach it from the engine thread as (choice index, event)."""

    def __init__(self, shape: ResponseShape, prompts, echoes, trackers):
        self.shape, self.prompts, self.echoes, self.trackers = shape, prompts, echoes, trackers
        self.loop, self.queue = asyncio.get_running_loop(), asyncio.Queue()
        self.texts = [e or "" for e in echoes]
        self.logprobs: list[dict | None] = [None] * len(prompts)
        self.finish: list[str | None] = [None] * len(prompts)
        self.prompt_tokens = self.completion_tokens = 0

    def deliver_for(self, index: int):
        return lambda event: self.loop.call_soon_threadsafe(self.queue.put_nowait, (index, event))

    async def events(self) -> list:
        """The next event and any that queued up behind it (a slow client gets them in one write)."""
        events = [await self.queue.get()]
        while not self.queue.empty():
            events.append(self.queue.get_nowait())
        return events

    def add_logprobs(self, index: int, part: dict | None) -> None:
        whole = self.logprobs[index]
        if whole is None:
            self.logprobs[index] = part
        elif part is not None:
            for key, values in part.items():
                if isinstance(values, list):
                    whole[key].extend(values)

    def on(self, index: int, event) -> dict | None:
        """Record an event and return the chunk that streams it; a Failed event raises its APIError."""
        shape = self.shape
        if isinstance(event, PromptLogprobs):
            part = shape.logprobs(index, event.entries, self.prompts[index])
            self.add_logprobs(index, part)
            return shape.chunk(index, self.echoes[index], logprobs=part)
        if isinstance(event, TextDelta):
            self.trackers[index].token()
            part = shape.logprobs(index, event.logprobs)
            self.add_logprobs(index, part)
            self.texts[index] += event.text
            return shape.chunk(index, event.text, logprobs=part)
        if isinstance(event, Failed):
            self.trackers[index].end("error")
            raise APIError(event.status, event.message, code="generation_failed")
        self.trackers[index].end(event.reason)
        self.finish[index] = event.reason
        self.prompt_tokens += event.prompt_tokens
        self.completion_tokens += event.completion_tokens
        return shape.chunk(index, finish_reason=event.reason)

    def done(self) -> bool:
        return all(reason is not None for reason in self.finish)

    def usage(self) -> dict:
        total = self.prompt_tokens + self.completion_tokens
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens, "total_tokens": total}


async def stream_chunks(run: Run, include_usage: bool):
    shape = run.shape
    if shape.chat:
        yield sse(shape.chunk(role=True))
    first = [sse(shape.chunk(i, echo)) for i, echo in enumerate(run.echoes) if echo and not shape.with_logprobs]
    if first:
        yield "".join(first)
    while not run.done():
        chunks = []  # one SSE event per decoded piece; pieces that queued up together are written together
        try:
            for index, event in await run.events():
                chunks.append(sse(run.on(index, event)))
        except APIError as failed:
            yield "".join(chunks) + sse(error_body(failed.message, failed.status)) + sse("[DONE]")
            return
        yield "".join(chunks)
    if include_usage:
        yield sse(shape.usage_chunk(run.usage()))
    yield sse("[DONE]")


async def complete(run: Run):
    """The whole answer as one JSON object."""
    while not run.done():
        for index, event in await run.events():
            run.on(index, event)
    choices = [
        {"text": text, "finish_reason": reason, "logprobs": logprobs}
        for text, reason, logprobs in zip(run.texts, run.finish, run.logprobs)
    ]
    return run.shape.complete(choices, run.usage())


async def cancel_when_disconnected(request: Request, generations, every: float = 0.25) -> None:
    """A client that hangs up on a plain request stops its generations all the same."""
    while not await request.is_disconnected():
        await asyncio.sleep(every)
    for generation in generations:
        generation.cancel()
