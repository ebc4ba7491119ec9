"""Helpers for the serving tests: tiny random models saved with the bundled tokenizer, an in-process server on a
free 127.0.0.1 port (started and stopped by fixtures), and a scripted engine that stands in for a model."""

import asyncio
import socket
import threading
import time
from contextlib import contextmanager

import httpx
import torch
import uvicorn

from moai_llm import MoaiForCausalLM
from moai_llm.loading import load_tokenizer
from moai_llm.serving import Finished, ServedModel, TextDelta, build_app

from .conftest import tiny_config


def save_tiny_model(path, seed: int = 0, **overrides):
    """A random MOAI model (hidden 64, 2 layers unless overridden) with the bundled 8,192-token tokenizer."""
    torch.manual_seed(seed)
    config = tiny_config(**{"vocab_size": 8192, "max_position_embeddings": 4096, **overrides})
    MoaiForCausalLM(config).save_pretrained(path)
    load_tokenizer().save_pretrained(path)
    return path


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def free_port() -> int:
    with free_socket() as sock:
        return sock.getsockname()[1]


@contextmanager
def running_server(registry, api_key=None, wrap=None, **app_args):
    """The app (wrapped in `wrap`'s middleware, if given) served by uvicorn on a thread of this process; yields its
    base URL; stops it (and its engines)."""
    sock = free_socket()
    app = build_app(registry, api_key, **app_args)
    server = uvicorn.Server(uvicorn.Config(wrap(app) if wrap else app, log_level="warning"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    wait_until_up(url)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
        assert not thread.is_alive(), "the test server did not stop"


def wait_until_up(url: str, timeout: float = 60.0, process=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not come up in {timeout}s")


class ScriptedEngine:
    """Stands in for a model (test hook, not product code): answers every request with `script(prompt)` split into
    pieces of `piece` characters, one every `delay` seconds, on its own thread; records prompts and cancellations."""

    def __init__(self, script, piece: int = 3, delay: float = 0.05):
        self.script, self.piece, self.delay = script, piece, delay
        self.prompts, self.cancelled = [], 0

    def submit_all(self, requests):
        for request in requests:
            self.prompts.append(request.prompt_ids)
            threading.Thread(target=self._answer, args=(request,), daemon=True).start()

    def retry_after(self):
        return 1

    def _answer(self, request):
        text = self.script(request.prompt_ids)
        for sent, start in enumerate(range(0, len(text), self.piece)):
            if request.cancelled.is_set():
                self.cancelled += 1
                request.deliver(Finished("cancelled", len(request.prompt_ids), sent))
                return
            request.deliver(TextDelta(text[start : start + self.piece]))
            time.sleep(self.delay)
        request.deliver(Finished("stop", len(request.prompt_ids), len(text)))

    def close(self):
        pass


def scripted_model(name: str, script, mode: str = "chat", **engine_args) -> ServedModel:
    engine = ScriptedEngine(script, **engine_args)
    return ServedModel(name, load_tokenizer(), engine, context_length=4096, max_tokens_limit=4096, mode=mode)


class CutStreams:
    """Test hook: ends the response to any request for `model` after `events` body writes, cleanly, as a proxy that
    drops a connection does (no finish_reason, no [DONE])."""

    def __init__(self, app, model: str, events: int = 3):
        self.app, self.marker, self.events = app, f'"model":"{model}"'.encode(), events

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        seen = {"cut": False, "writes": 0, "closed": False}

        async def watch():
            message = await receive()
            if self.marker in message.get("body", b"").replace(b" ", b""):
                seen["cut"] = True
            return message

        async def cut(message):
            if seen["closed"]:
                return
            if seen["cut"] and message["type"] == "http.response.body":
                seen["writes"] += 1
                if seen["writes"] >= self.events:
                    seen["closed"] = True
                    message = {**message, "more_body": False}
            await send(message)

        await self.app(scope, watch, cut)
