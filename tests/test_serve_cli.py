"""serve.py as a user runs it (a subprocess with --models_dir and MOAI_API_KEY), its one-line errors, and
`transformers serve` answering on a model exported with `python -m moai_llm.export`."""

import os
import re
import signal
import subprocess
import sys
from contextlib import contextmanager

import httpx
import pytest

import serve as serve_cli
from moai_llm import export as export_cli
from moai_llm.serving import load_models

from .conftest import REPO
from .serve_helpers import free_port, running_server, save_tiny_model, wait_until_up


@contextmanager
def server_process(args, env=None, timeout=90):
    """A server subprocess on a free port: yields (url, process); always stopped (SIGTERM, then SIGKILL)."""
    port = free_port()
    environment = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        **(env or {}),
    }
    process = subprocess.Popen(
        [*args, "--port", str(port)],
        cwd=REPO,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, timeout, process)
        yield url, process
    except (TimeoutError, RuntimeError) as err:
        process.kill()
        raise AssertionError(f"{err}; server output:\n{process.communicate(timeout=10)[0][-3000:]}") from None
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


@pytest.mark.integration
def test_serve_py_models_dir_and_key_from_the_environment(tmp_path):
    save_tiny_model(tmp_path / "runs" / "alpha" / "final_model")
    save_tiny_model(tmp_path / "runs" / "beta" / "sft" / "final_model", seed=1)
    (tmp_path / "runs" / "alpha" / "checkpoint-5").mkdir()  # not a final_model: not served
    args = [sys.executable, "serve.py", "--models_dir", str(tmp_path / "runs"), "--max_batch_size", "4"]
    with server_process(args, env={"MOAI_API_KEY": "k3y"}) as (url, process):
        key = {"Authorization": "Bearer k3y"}
        assert httpx.get(f"{url}/v1/models", timeout=10).status_code == 401
        models = httpx.get(f"{url}/v1/models", headers=key, timeout=10).json()["data"]
        assert [m["id"] for m in models] == ["alpha", "beta/sft"]
        body = {"model": "beta/sft", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        answer = httpx.post(f"{url}/v1/chat/completions", json=body, headers=key, timeout=30).json()
        assert answer["model"] == "beta/sft" and answer["usage"]["completion_tokens"] <= 3
        page = httpx.get(f"{url}/", timeout=10)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", page.text), "the page must work offline"
        process.send_signal(signal.SIGTERM)  # uvicorn shuts down cleanly, then re-raises the signal
        assert process.wait(timeout=15) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in process.stdout.read()


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "no model to serve"),
        (["--model_path", "/nonexistent/run"], "no such directory"),
        (["--models_dir", "/nonexistent"], "no such directory"),
        (["--models_dir", "EMPTY"], "no final_model directory"),
        (["--model_path", "a=X", "--model_path", "a=Y"], "two models are both named 'a'"),
    ],
)
def test_serve_py_bad_arguments_are_one_line_errors(tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    args = [str(tmp_path / "empty") if a == "EMPTY" else a for a in args]
    assert serve_cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("serve.py: error:")


@pytest.mark.integration
def test_transformers_serve_answers_an_exported_model(tmp_path):
    moai = save_tiny_model(tmp_path / "run" / "final_model")
    exported = tmp_path / "qwen3"
    assert export_cli.main(["--model_path", str(moai), "--output_dir", str(exported)]) == 0  # python -m moai_llm.export
    messages = [{"role": "user", "content": "What is the capital of Korea?"}]
    args = [sys.executable, "-m", "transformers.cli.transformers", "serve", str(exported), "--device", "cpu"]
    with server_process(args, timeout=120) as (url, _):
        body = {"model": str(exported), "messages": messages, "max_tokens": 8, "temperature": 0}
        theirs = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert theirs.status_code == 200, theirs.text
    with running_server(load_models([("run", moai)])) as url:
        ours = httpx.post(f"{url}/v1/chat/completions", json={**body, "model": "run"}, timeout=60).json()
    # the same weights answer the same greedy text through both servers
    assert theirs.json()["choices"][0]["message"]["content"] == ours["choices"][0]["message"]["content"]
