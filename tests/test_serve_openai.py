"""The server against real clients: OpenAI's own fields accepted (or refused by name), log-probabilities on both
endpoints checked against the model's own forward, echo and token-id prompt lists, the load limits (429, 413, 503,
chunked prefill), CORS, /metrics, /health and /docs behind the key."""

import json
import logging
import threading

import httpx
import openai
import pytest
import torch

from moai_llm.serving import load_models

from .serve_helpers import running_server, save_tiny_model

pytestmark = pytest.mark.integration  # a server over HTTP


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    path = save_tiny_model(tmp_path_factory.mktemp("openai") / "tiny")
    return load_models([("tiny", path)], max_batch_size=4, max_tokens=512, max_prefill_tokens=64, max_waiting=2)


@pytest.fixture(scope="module")
def server(registry):
    with running_server(registry) as url:
        yield url


def post(url, path, body, **kwargs):
    return httpx.post(f"{url}{path}", json=body, timeout=60, **kwargs)


def chat(content="Hello", **extra):
    return {"model": "tiny", "messages": [{"role": "user", "content": content}], **extra}


def reference_logprobs(registry, ids: list[int]) -> torch.Tensor:
    """log_softmax of the model's own forward over ids: [len(ids), vocab]."""
    model = registry.models["tiny"].engine.model
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)


def test_openai_fields_are_accepted_and_logged(server, caplog):
    history = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": None, "tool_calls": [], "refusal": None},
        {"role": "user", "content": "Again"},
    ]
    fields = {
        "messages": history,
        "response_format": {"type": "text"},
        "tool_choice": "none",
        "tools": [],
        "parallel_tool_calls": False,
        "logit_bias": {},
        "store": False,
        "metadata": {"run": "a"},
        "top_logprobs": 0,
        "user": "u1",
        "service_tier": "auto",
        "stream_options": {"include_usage": True, "include_obfuscation": False},
    }
    with caplog.at_level(logging.INFO, logger="moai_llm.serving.schemas"):
        response = post(server, "/v1/chat/completions", {**chat(), **fields, "max_tokens": 3})
    assert response.status_code == 200, response.text
    logged = caplog.text
    for name in ("store", "metadata", "parallel_tool_calls", "response_format"):
        assert f"request field {name}=" in logged
    # the official client's own typed arguments reach the server and are accepted
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)
    answer = client.chat.completions.create(
        model="tiny", messages=history, max_tokens=3, response_format={"type": "text"}, store=False, logit_bias={}
    )
    assert answer.usage.completion_tokens >= 1


def test_chat_message_forms_max_completion_tokens_and_an_omitted_model(server, registry):
    """docs/serving.md: `developer` is the system role, content may be a list of text parts, `max_completion_tokens`
    caps the answer like `max_tokens`, and `model` may be left out when one model is served."""
    tokenizer = registry.models["tiny"].tokenizer

    def answer(messages, **extra):
        body = {"model": "tiny", "messages": messages, "temperature": 0, "max_tokens": 6, "ignore_eos": True, **extra}
        response = post(server, "/v1/chat/completions", body)
        assert response.status_code == 200, response.text
        reply = response.json()
        return reply["choices"][0]["message"]["content"], reply["usage"], reply["model"]

    system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    expected = answer(system)
    prompt = tokenizer.apply_chat_template(system, add_generation_prompt=True)["input_ids"]
    assert expected[1]["prompt_tokens"] == len(prompt)
    assert answer([{"role": "developer", "content": "Be brief."}, system[1]]) == expected
    parts = [{"type": "text", "text": "Hello"}, {"type": "text", "text": " there"}]
    assert answer([system[0], {"role": "user", "content": parts}]) == expected
    assert answer(system, model=None) == expected  # sent as null
    body = {"messages": system, "temperature": 0, "max_tokens": 6, "ignore_eos": True}
    reply = post(server, "/v1/chat/completions", body).json()  # no model field at all
    assert (reply["choices"][0]["message"]["content"], reply["model"]) == (expected[0], "tiny")
    text, usage, _ = answer(system, max_tokens=None, max_completion_tokens=3)
    assert usage["completion_tokens"] == 3 and expected[0].startswith(text)
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)
    typed = client.chat.completions.create(model="tiny", messages=system, max_completion_tokens=2, temperature=0)
    assert typed.usage.completion_tokens <= 2 and typed.choices[0].finish_reason in ("length", "stop")


UNHONOURABLE = [
    ({"seed": 2**64}, "seed"),
    ({"seed": -(2**63) - 1}, "seed"),
    ({"response_format": {"type": "json_object"}}, "response_format.type"),
    ({"logit_bias": {"5": 2.0}}, "logit_bias"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"),  # without logprobs: true
    ({"stop": ["x" * 257]}, "stop"),
    ({"messages": [{"role": "assistant", "content": "a", "tool_calls": [{"id": "1"}]}]}, "messages.0.tool_calls"),
    ({"messages": [{"role": "user", "content": None}]}, "messages.0.content"),
    ({"modalities": ["text", "audio"]}, "modalities"),
]


@pytest.mark.parametrize("extra, param", UNHONOURABLE, ids=[p for _, p in UNHONOURABLE])
def test_values_the_server_cannot_honour_are_a_400_naming_the_field(server, extra, param):
    response = post(server, "/v1/chat/completions", {**chat(), **extra})
    assert response.status_code == 400 and response.json()["error"]["param"] == param, response.text


def test_chat_logprobs_whole_and_streamed_are_the_models(server, registry):
    body = chat("Name a colour.", max_tokens=6, temperature=0, ignore_eos=True, logprobs=True, top_logprobs=3)
    whole = post(server, "/v1/chat/completions", body).json()
    content = whole["choices"][0]["logprobs"]["content"]
    assert len(content) == whole["usage"]["completion_tokens"] == 6
    served = registry.models["tiny"]
    prompt = served.chat_prompt(body["messages"])
    generated = served.tokenizer(whole["choices"][0]["message"]["content"], add_special_tokens=False)["input_ids"]
    reference = reference_logprobs(registry, prompt + generated)[len(prompt) - 1 :]
    for position, entry in enumerate(content):
        assert len(entry["top_logprobs"]) == 3
        assert entry["logprob"] == entry["top_logprobs"][0]["logprob"]  # greedy: the chosen token is the likeliest
        top = reference[position].topk(3)
        assert torch.allclose(torch.tensor([t["logprob"] for t in entry["top_logprobs"]]), top.values, atol=1e-4)
        assert bytes(entry["bytes"]).decode("utf-8", "replace") in served.tokenizer.decode(generated)
    streamed = []
    with httpx.stream("POST", f"{server}/v1/chat/completions", json={**body, "stream": True}, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                choice = json.loads(line[6:])["choices"][0]
                streamed.extend((choice["logprobs"] or {}).get("content") or [])
    assert streamed == content


def test_completions_echo_scores_token_id_prompt_lists(server, registry):
    prompts = [[300, 301, 302, 303, 304], [900, 901, 902]]
    body = {"model": "tiny", "prompt": prompts, "max_tokens": 1, "logprobs": 2, "echo": True, "temperature": 0}
    answer = post(server, "/v1/completions", body).json()
    choices = sorted(answer["choices"], key=lambda c: c["index"])
    assert [c["index"] for c in choices] == [0, 1]
    assert answer["usage"] == {"prompt_tokens": 8, "completion_tokens": 2, "total_tokens": 10}
    tokenizer = registry.models["tiny"].tokenizer
    for ids, choice in zip(prompts, choices):
        logprobs = choice["logprobs"]
        assert len(logprobs["tokens"]) == len(ids) + 1 and logprobs["token_logprobs"][0] is None
        assert choice["text"].startswith(tokenizer.decode(ids))
        generated = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(choice["text"][len(tokenizer.decode(ids)) :]))
        reference = reference_logprobs(registry, ids + generated[:1])
        expected = [reference[i - 1, t].item() for i, t in enumerate(ids + generated[:1]) if i > 0]
        assert torch.allclose(torch.tensor(logprobs["token_logprobs"][1:]), torch.tensor(expected), atol=1e-4)
        assert all(len(top) in (2, 3) for top in logprobs["top_logprobs"][1:])  # top 2 and the chosen one
        assert logprobs["text_offset"] == sorted(logprobs["text_offset"])
    scored = post(server, "/v1/completions", {**body, "prompt": prompts[0], "max_tokens": 0}).json()["choices"][0]
    assert scored["logprobs"]["token_logprobs"] == choices[0]["logprobs"]["token_logprobs"][:-1]
    assert post(server, "/v1/completions", {**body, "echo": False, "max_tokens": 0}).status_code == 400


def test_tiny_temperature_is_greedy_and_a_bad_seed_fails_only_its_request(server, registry):
    greedy = post(server, "/v1/chat/completions", chat(max_tokens=8, temperature=0, ignore_eos=True)).json()
    tiny = post(server, "/v1/chat/completions", chat(max_tokens=8, temperature=1e-300, ignore_eos=True)).json()
    assert tiny["choices"][0]["message"]["content"] == greedy["choices"][0]["message"]["content"]

    from moai_llm.chat import SamplingParams
    from moai_llm.serving import Failed, Finished, GenerationRequest

    engine, events = registry.models["tiny"].engine, {}
    done = threading.Semaphore(0)

    def deliver_to(name):
        def deliver(event):
            if isinstance(event, (Finished, Failed)):
                events[name] = event
                done.release()

        return deliver

    prompt = registry.models["tiny"].text_prompt("Once upon a time")
    requests = [
        GenerationRequest(prompt, SamplingParams(temperature=1.0, max_new_tokens=20, seed=seed), deliver_to(seed))
        for seed in (1, 2**70, 3)  # past the schema's bounds: torch refuses it when the request is admitted
    ]
    engine.submit_all(requests)
    for _ in requests:
        assert done.acquire(timeout=30)
    assert isinstance(events[2**70], Failed) and events[2**70].status == 400
    assert isinstance(events[1], Finished) and isinstance(events[3], Finished)


def test_a_row_whose_sampling_fails_fails_alone(server, registry, monkeypatch):
    from moai_llm.chat import generation as sampling

    original = sampling.RowSampler.sample

    def sample(self, probs):
        if self.params.seed == 666:
            raise RuntimeError("bad row")
        return original(self, probs)

    monkeypatch.setattr(sampling.RowSampler, "sample", sample)
    results = {}

    def ask(seed):
        body = chat(max_tokens=30, temperature=1.0, seed=seed, ignore_eos=True)
        results[seed] = post(server, "/v1/chat/completions", body)

    threads = [threading.Thread(target=ask, args=(seed,)) for seed in (5, 666, 7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results[666].status_code == 500 and "bad row" in results[666].json()["error"]["message"]
    assert [results[s].json()["usage"]["completion_tokens"] for s in (5, 7)] == [30, 30]


def test_long_prompts_are_prefilled_in_chunks_between_decode_steps(server, registry, monkeypatch):
    engine = registry.models["tiny"].engine
    calls = []
    for name in ("extend", "prefill", "step"):
        method = getattr(engine.batch, name)
        monkeypatch.setattr(engine.batch, name, lambda *a, _m=method, _n=name, **k: calls.append(_n) or _m(*a, **k))
    long_prompt = "The quick brown fox jumps over the lazy dog. " * 30  # ~300 tokens: 5 chunks of 64
    running = chat(max_tokens=500, ignore_eos=True, stream=True)
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=running, timeout=60) as first:
        lines = first.iter_lines()
        while '"content": "' not in next(lines) or "step" not in calls:  # the first stream is decoding
            pass
        body = {"model": "tiny", "prompt": long_prompt, "max_tokens": 5, "temperature": 0}
        chunked = post(server, "/v1/completions", body).json()["choices"][0]["text"]
    chunks = [i for i, name in enumerate(calls) if name == "extend"]
    assert len(chunks) >= 5
    assert all("step" in calls[a:b] for a, b in zip(chunks, chunks[1:])), "the running stream waited for the prefill"
    model, tokenizer = engine.model, registry.models["tiny"].tokenizer
    ids = torch.tensor([tokenizer(long_prompt, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False)
    assert chunked == tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def test_a_full_waiting_line_is_a_429_with_retry_after(server, registry):
    streams = []
    long = chat(max_tokens=500, ignore_eos=True, stream=True)
    try:
        for _ in range(6):  # 4 running, 2 waiting: the line is full
            response = httpx.Client(timeout=60).send(
                httpx.Request("POST", f"{server}/v1/chat/completions", json=long), stream=True
            )
            streams.append(response)
            assert response.status_code == 200
        busy = post(server, "/v1/chat/completions", chat(max_tokens=2))
        assert busy.status_code == 429 and busy.json()["error"]["type"] == "rate_limit_error"
        assert int(busy.headers["Retry-After"]) >= 1
    finally:
        for response in streams:
            response.close()


def test_body_limit_early_length_check_cors_metrics_health_docs_and_shutdown(tmp_path, monkeypatch):
    model = save_tiny_model(tmp_path / "tiny", max_position_embeddings=256)  # holds at most ~17 KB of text
    registry = load_models([("tiny", model)], max_tokens=16)
    served = registry.models["tiny"]
    limits = {"cors_origins": ["http://page.example"], "max_body_bytes": 200_000}
    with running_server(registry, api_key="k", **limits) as url:
        key = {"Authorization": "Bearer k"}
        big = post(url, "/v1/completions", {"model": "tiny", "prompt": "x" * 300_000}, headers=key)
        assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
        monkeypatch.setattr(served, "text_prompt", lambda text: pytest.fail("tokenized a prompt that cannot fit"))
        long = post(url, "/v1/completions", {"model": "tiny", "prompt": "word " * 5_000}, headers=key)
        assert long.status_code == 400 and long.json()["error"]["code"] == "context_length_exceeded"
        monkeypatch.undo()
        preflight = httpx.options(
            f"{url}/v1/chat/completions",
            headers={"Origin": "http://page.example", "Access-Control-Request-Method": "POST"},
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "http://page.example"
        other = httpx.options(
            f"{url}/v1/models", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"}
        )
        assert "access-control-allow-origin" not in other.headers
        assert post(url, "/v1/chat/completions", chat(max_tokens=3), headers=key).status_code == 200
        assert httpx.get(f"{url}/health").json() == {"status": "ok"}
        for path in ("/docs", "/openapi.json", "/metrics"):
            assert httpx.get(f"{url}{path}").status_code == 401
            assert httpx.get(f"{url}{path}", headers=key).status_code == 200
        metrics = httpx.get(f"{url}/metrics", headers=key).text
        for line in (
            'moai_requests_total{finish_reason="length",model="tiny"} 1.0',
            'moai_time_to_first_token_seconds_count{model="tiny"} 1.0',
            'moai_request_latency_seconds_count{model="tiny"} 1.0',
            'moai_generation_tokens_total{model="tiny"} 3.0',
            'moai_requests_waiting{model="tiny"} 0.0',
            'moai_http_requests_total{route="/v1/completions",status="413"} 1.0',
        ):
            assert line in metrics, line
        served.engine.close()
        closing = post(url, "/v1/chat/completions", chat(max_tokens=3), headers=key)
        assert closing.status_code == 503 and closing.json()["error"]["code"] == "server_shutting_down"
