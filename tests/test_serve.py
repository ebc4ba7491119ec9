"""The OpenAI-compatible server on tiny random models: the official client, real streaming, disconnects, concurrent
clients against answers served alone and against `generate`, stop strings, seeds, and every kind of bad request (the
server's text and sampling pieces alone are in test_serve_pieces.py)."""

import inspect
import json
import threading
import time

import httpx
import openai
import pytest
import torch

from moai_llm.serving import load_models

from .serve_helpers import running_server, save_tiny_model

pytestmark = pytest.mark.integration  # every test here talks to a server over HTTP

MAX_TOKENS = 2048  # the server's limit in these tests; the models' context is 4096


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_models")
    entries = [
        ("tiny", save_tiny_model(root / "tiny")),
        (
            "small",
            save_tiny_model(root / "small", hidden_size=256, intermediate_size=768, num_hidden_layers=4, head_dim=64),
        ),
        ("moe", save_tiny_model(root / "moe", num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)),
    ]
    return load_models(entries, max_batch_size=16, max_tokens=MAX_TOKENS)


@pytest.fixture(scope="module")
def server(registry):
    with running_server(registry) as url:
        yield url


def chat_body(content, model="tiny", **extra):
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def post(url, path, body, **kwargs):
    return httpx.post(f"{url}{path}", json=body, timeout=60, **kwargs)


def stream_events(url, body):
    """(seconds after sending, parsed data) for every server-sent event of a streamed request."""
    start, events = time.perf_counter(), []
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                data = line[6:]
                events.append((time.perf_counter() - start, data if data == "[DONE]" else json.loads(data)))
    return events


def test_openai_client_streaming_and_not(server):
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)
    assert sorted(m.id for m in client.models.list()) == ["moe", "small", "tiny"]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a city in Korea."}]
    whole = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=12)
    assert whole.object == "chat.completion" and whole.choices[0].message.role == "assistant"
    assert whole.usage.completion_tokens == 12 and whole.usage.prompt_tokens > 5
    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=messages,
            temperature=0,
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1 and "".join(pieces) == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == 12 and chunks[-1].choices == []
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"

    text = client.completions.create(model="tiny", prompt="To be, or not to be", temperature=0, max_tokens=8)
    streamed = client.completions.create(
        model="tiny", prompt="To be, or not to be", temperature=0, max_tokens=8, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == text.choices[0].text and text.usage.completion_tokens == 8
    seeded = [
        client.chat.completions.create(
            model="tiny", messages=messages, temperature=1.0, seed=7, max_tokens=10, extra_body={"top_k": 40}
        )
        .choices[0]
        .message.content
        for _ in range(2)
    ]
    assert seeded[0] == seeded[1]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=messages)


def test_streaming_sends_tokens_as_they_are_generated(server):
    body = chat_body(
        "Tell me a long story.",
        model="small",
        max_tokens=64,
        temperature=0,
        ignore_eos=True,
        stream=True,
        stream_options={"include_usage": True},
    )
    events = stream_events(server, body)
    content = [(t, e) for t, e in events if e != "[DONE]" and e["choices"] and e["choices"][0]["delta"].get("content")]
    total = events[-1][0]
    assert events[-1][1] == "[DONE]" and events[-2][1]["usage"]["completion_tokens"] == 64
    assert len(content) >= 32  # one event per decoded piece, not the answer cut afterwards
    assert content[0][0] < total / 2, f"first piece after {content[0][0]:.3f}s of {total:.3f}s"


def test_disconnect_stops_generation_and_server_goes_on(server, registry, monkeypatch):
    """docs/serving.md: a stream stops at the next decode step, a plain request within a quarter of a second (the
    server polls every 0.25 s). The cancellation of each request is recorded (when, and how many tokens the engine
    had made): after it the engine samples at most the token of the step already running. A plain request's polls
    are recorded too, and counted rather than timed: on a loaded machine the event loop may wake late, but the
    first poll that can see the hang-up must cancel."""
    from moai_llm.serving import app as serving_app
    from moai_llm.serving.engine import GenerationRequest

    engine = registry.models["tiny"].engine
    cancels = []  # (monotonic time, engine.tokens_generated) when a request was cancelled
    polls = []  # (monotonic time, disconnected?) of every disconnect poll of a plain request
    cancel, watch = GenerationRequest.cancel, serving_app.cancel_when_disconnected

    def recorded(request):  # a generation still running: a stream of an earlier test may close late, once finished
        if not request.cancelled.is_set() and any(s.request is request for s in engine.running):
            cancels.append((time.monotonic(), engine.tokens_generated))
        cancel(request)

    async def watched(request, generations):
        is_disconnected = request.is_disconnected

        async def poll():
            polls.append((time.monotonic(), await is_disconnected()))
            return polls[-1][1]

        request.is_disconnected = poll
        await watch(request, generations)

    monkeypatch.setattr(GenerationRequest, "cancel", recorded)
    monkeypatch.setattr(serving_app, "cancel_when_disconnected", watched)
    before = engine.tokens_generated
    body = chat_body("Go on forever.", max_tokens=2000, ignore_eos=True, stream=True)
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()
        for _ in range(6):
            next(lines)
        left = time.monotonic()
    _wait_for_idle(engine)
    assert len(cancels) == 1 and cancels[0][0] - left < 1.0, (cancels, left)  # the server saw the client go
    assert engine.tokens_generated - cancels[0][1] <= 1, "generation went on after the client left"
    assert engine.tokens_generated - before < 2000

    cancels.clear()
    with pytest.raises(httpx.ReadTimeout):  # a non-streaming client that gives up stops its generation too
        httpx.post(
            f"{server}/v1/chat/completions", json=chat_body("Again.", max_tokens=2000, ignore_eos=True), timeout=0.5
        )
    left, before = time.monotonic(), engine.tokens_generated
    _wait_for_idle(engine)
    # at most one poll after the client left could miss it (the hang-up not yet read), and the next one cancelled
    assert len(cancels) == 1 and polls[-1][1] and cancels[0][0] >= polls[-1][0], (cancels, polls, left)
    assert sum(1 for t, gone in polls if t > left and not gone) <= 1, (polls, left)
    assert inspect.signature(watch).parameters["every"].default == 0.25  # the poll docs/serving.md promises
    assert engine.tokens_generated - cancels[0][1] <= 1
    assert engine.tokens_generated - before < 2000
    answer = post(server, "/v1/chat/completions", chat_body("Still there?", max_tokens=5)).json()
    assert answer["usage"]["completion_tokens"] <= 5


def _wait_for_idle(engine, timeout=20.0):
    deadline = time.monotonic() + timeout
    while engine.running or not engine.waiting.empty():
        assert time.monotonic() < deadline, "the engine kept generating"
        time.sleep(0.05)


PROMPTS = [
    "What is Seoul?",
    "Tell me about Hamlet, prince of Denmark.",
    "안녕하세요, 오늘 날씨는 어떤가요?",
    "x",
    "A longer prompt that needs more left padding than the others when it shares a batch with them.",
    "To be, or not to be",
    "Count to ten.",
    "Why is the sky blue?",
]


TOKENS = 32


@pytest.mark.parametrize("model", ["tiny", "moe"])
def test_concurrent_clients_equal_answers_served_alone(server, registry, model):
    def ask(i, prompt, results, sampled=False, start=None):
        knobs = {"temperature": 0.8, "top_p": 0.9, "top_k": 30, "seed": i} if sampled else {"temperature": 0}
        body = chat_body(prompt, model=model, max_tokens=TOKENS, ignore_eos=True, stream=i % 2 == 0, **knobs)
        if start is not None:
            start.wait(30)  # all clients send at once
        if body["stream"]:
            events = stream_events(server, body)
            results[i] = "".join(e["choices"][0]["delta"].get("content") or "" for _, e in events[:-1] if e["choices"])
        else:
            results[i] = post(server, "/v1/chat/completions", body).json()["choices"][0]["message"]["content"]

    engine = registry.models[model].engine
    for sampled in (False, True):
        alone = {}
        for i, prompt in enumerate(PROMPTS):
            ask(i, prompt, alone, sampled)
        together, steps, tokens = {}, engine.decode_steps, engine.tokens_generated
        start = threading.Barrier(len(PROMPTS))
        threads = [threading.Thread(target=ask, args=(i, p, together, sampled, start)) for i, p in enumerate(PROMPTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert together == alone
        assert (engine.tokens_generated - tokens) / (engine.decode_steps - steps) > 2, "requests were not batched"
    served = registry.models[model]
    tokenizer, torch_model = served.tokenizer, served.engine.model
    for i, prompt in enumerate(PROMPTS[:3]):  # the engine's greedy answers are transformers' generate answers
        ids = torch.tensor([served.chat_prompt([{"role": "user", "content": prompt}])])
        with torch.no_grad():
            out = torch_model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=TOKENS,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=tokenizer.pad_token_id,
            )
        reference = {}
        ask(i, prompt, reference)
        assert reference[i] == tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def test_stop_strings_end_the_answer_before_them(server):
    full = post(
        server, "/v1/chat/completions", chat_body("Say something.", max_tokens=24, temperature=0, ignore_eos=True)
    ).json()["choices"][0]["message"]["content"]
    stop = full[10:13]
    body = chat_body("Say something.", max_tokens=24, temperature=0, ignore_eos=True, stop=[stop, "never-seen"])
    answer = post(server, "/v1/chat/completions", body).json()["choices"][0]
    assert answer["message"]["content"] == full[: full.index(stop)] and answer["finish_reason"] == "stop"
    streamed = stream_events(server, {**body, "stream": True})
    assert "".join(e["choices"][0]["delta"].get("content") or "" for _, e in streamed[:-1]) == full[: full.index(stop)]


def test_a_failing_forward_fails_its_requests_not_the_server(server, registry, monkeypatch):
    engine = registry.models["tiny"].engine
    step = engine.batch.step
    calls = []

    def broken_once(*args):
        calls.append(1)
        if len(calls) <= 2:
            raise RuntimeError("injected fault")
        return step(*args)

    monkeypatch.setattr(engine.batch, "step", broken_once)
    response = post(server, "/v1/chat/completions", chat_body("hi", max_tokens=5, ignore_eos=True))
    assert response.status_code == 500 and "injected fault" in response.json()["error"]["message"]
    assert response.json()["error"]["type"] == "server_error"
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.APIError, match="injected fault"):  # a stream ends with an error event
        list(
            client.chat.completions.create(
                model="tiny", messages=messages, max_tokens=5, stream=True, extra_body={"ignore_eos": True}
            )
        )
    answer = client.chat.completions.create(model="tiny", messages=messages, max_tokens=5)
    assert answer.usage.completion_tokens >= 1 and len(calls) > 2


LONG = "word " * 4200
BAD_REQUESTS = [
    ("/v1/chat/completions", b'{"model": "tiny", "messages": [', 400, None, "invalid_json"),
    ("/v1/chat/completions", b"", 400, None, "missing_body"),
    ("/v1/chat/completions", b"[1, 2]", 400, None, "invalid_type"),
    ("/v1/chat/completions", {"model": "tiny"}, 400, "messages", "missing_required_parameter"),
    ("/v1/chat/completions", {"model": "tiny", "messages": []}, 400, "messages", "invalid_value"),
    ("/v1/chat/completions", {"model": "tiny", "messages": "hi"}, 400, "messages", "invalid_type"),
    (
        "/v1/chat/completions",
        {"model": "tiny", "messages": [{"role": "robot", "content": "hi"}]},
        400,
        "messages.0.role",
        "invalid_value",
    ),
    (
        "/v1/chat/completions",
        {"model": "tiny", "messages": [{"role": "user", "content": 5}]},
        400,
        "messages.0.content",
        "invalid_type",
    ),
    ("/v1/chat/completions", chat_body("hi", temperature="hot"), 400, "temperature", "invalid_type"),
    ("/v1/chat/completions", chat_body("hi", temperature=3), 400, "temperature", "invalid_value"),
    ("/v1/chat/completions", chat_body("hi", max_tokens=2.5), 400, "max_tokens", "invalid_type"),
    ("/v1/chat/completions", chat_body("hi", max_tokens=0), 400, "max_tokens", "invalid_value"),
    ("/v1/chat/completions", chat_body("hi", stream="yes"), 400, "stream", "invalid_type"),
    ("/v1/chat/completions", chat_body("hi", max_tokens=MAX_TOKENS + 1), 400, "max_tokens", "invalid_value"),
    ("/v1/chat/completions", chat_body(LONG), 400, "messages", "context_length_exceeded"),
    ("/v1/chat/completions", chat_body("word " * 3000, max_tokens=2000), 400, "messages", "context_length_exceeded"),
    ("/v1/chat/completions", chat_body("hi", stop=["a", "b", "c", "d", "e"]), 400, "stop", "invalid_value"),
    ("/v1/chat/completions", chat_body("hi", n=2), 400, "n", "invalid_value"),
    ("/v1/chat/completions", chat_body("hi", best_of=2), 400, "best_of", "unknown_parameter"),
    ("/v1/chat/completions", chat_body("hi", model="gpt-4"), 404, "model", "model_not_found"),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}]},
        400,
        "model",
        "missing_required_parameter",
    ),
    ("/v1/completions", {"model": "tiny", "prompt": []}, 400, "prompt", "invalid_value"),
    ("/v1/completions", {"model": "tiny", "prompt": [[1, 2], [8192]]}, 400, "prompt", None),
    ("/v1/completions", {"model": "tiny", "prompt": ""}, 400, "prompt", "invalid_value"),
    ("/v1/completions", {"model": "tiny", "prompt": LONG}, 400, "prompt", "context_length_exceeded"),
    ("/v1/completions", {"model": "tiny"}, 400, "prompt", "missing_required_parameter"),
    ("/v1/nothing", {}, 404, None, None),
]


def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server):
    for path, body, status, param, code in BAD_REQUESTS:
        if isinstance(body, bytes):
            response = httpx.post(
                f"{server}{path}", content=body, headers={"Content-Type": "application/json"}, timeout=60
            )
        else:
            response = post(server, path, body)
        error = response.json()["error"]
        assert (response.status_code, error["param"], error["code"]) == (status, param, code), (path, body, error)
        assert error["type"] == "invalid_request_error" and error["message"]
    assert httpx.get(f"{server}/v1/models/tiny").json()["id"] == "tiny"
    answer = post(server, "/v1/chat/completions", chat_body("Still serving?", max_tokens=4)).json()
    assert answer["choices"][0]["finish_reason"] in ("stop", "length")


def test_api_key(tmp_path):
    registry = load_models([("tiny", save_tiny_model(tmp_path / "tiny"))])
    with running_server(registry, api_key="s3cret") as url:
        body = chat_body("hi", max_tokens=2)
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            response = post(url, "/v1/chat/completions", body, headers=headers)
            assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
        malformed = httpx.post(f"{url}/v1/chat/completions", content=b"{", timeout=10)
        assert malformed.status_code == 401  # the key is checked before the body is read
        assert httpx.get(f"{url}/v1/models").status_code == 401
        assert httpx.get(f"{url}/").status_code == 200  # the page itself asks for the key
        good = openai.OpenAI(base_url=f"{url}/v1", api_key="s3cret", max_retries=0)
        assert good.chat.completions.create(model="tiny", messages=body["messages"], max_tokens=2).usage
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="nope", max_retries=0).models.list()
