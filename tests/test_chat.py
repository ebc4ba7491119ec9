"""chat.py on a tiny random model: a real terminal session (pexpect), one-shot and batched answers, bad input."""

import json
import sys

import pexpect
import pytest
import torch

import chat as chat_cli
from moai_llm import MoaiForCausalLM
from moai_llm.chat import ChatSession, SamplingParams
from moai_llm.loading import load_tokenizer

from .conftest import REPO, tiny_config


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("chat_model")
    torch.manual_seed(0)
    MoaiForCausalLM(tiny_config(vocab_size=8192, max_position_embeddings=4096)).save_pretrained(path)
    load_tokenizer().save_pretrained(path)
    return path


def _prompts(log):
    return [json.loads(line)["prompt"] for line in log.read_text(encoding="utf-8").splitlines()]


@pytest.mark.integration
def test_interactive_session(model_dir, tmp_path):
    log = tmp_path / "prompts.jsonl"
    child = pexpect.spawn(
        sys.executable,
        [
            "chat.py",
            "--model_path",
            str(model_dir),
            "--log_prompts",
            str(log),
            "--max_new_tokens",
            "6",
            "--temperature",
            "0",
            "--verbose",
        ],
        cwd=REPO,
        encoding="utf-8",
        timeout=60,
    )
    child.expect("You: ")
    child.sendline("hello there")
    child.expect(r"tokens/s")
    child.expect("You: ")
    first_answer = child.before
    child.sendline("and a second question")
    child.expect("You: ")
    second = _prompts(log)[-1]
    assert "hello there" in second and "and a second question" in second
    assert second.count("<|im_start|>assistant") == 2  # the first answer is in the history
    child.sendline("/reset")
    child.expect("cleared")
    child.expect("You: ")
    child.sendline("same words")
    child.expect("MOAI: (.*?)\\[")
    answer_one = child.match.group(1)
    child.expect("You: ")
    assert "hello there" not in _prompts(log)[-1]
    child.sendline("/reset")
    child.expect("You: ")
    child.sendline("/params temperature=0 max_new_tokens=6")
    child.expect("You: ")
    child.sendline("same words")
    child.expect("MOAI: (.*?)\\[")
    assert child.match.group(1) == answer_one  # greedy answers are deterministic
    child.expect("You: ")
    child.sendline("/params max_new_tokens=5000")  # above half the 4096 context: each answer gets 2048 at most
    child.expect("You: ")
    child.sendline("a long answer please")
    child.expect("MOAI: ")
    child.expect(r"\S")  # the answer has started streaming
    child.sendintr()
    child.expect(r"\[stopped\]")
    child.expect("You: ")  # the session goes on
    child.sendline("/params")
    child.expect(r"max_new_tokens=(\d+)")
    assert child.match.group(1) == "5000"  # answering did not rewrite the setting
    child.expect("You: ")
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert first_answer is not None


@pytest.mark.integration
def test_ctrl_d_leaves(model_dir):
    child = pexpect.spawn(
        sys.executable, ["chat.py", "--model_path", str(model_dir)], cwd=REPO, encoding="utf-8", timeout=60
    )
    child.expect("You: ")
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_prompts_file_batched_equals_one_by_one(model_dir, tmp_path, capsys):
    prompts = [
        "What is Seoul?",
        "Tell me about Hamlet, prince of Denmark.",
        "안녕하세요",
        "x",
        "A longer prompt that will need more left padding than the others in its batch.",
    ]
    src = tmp_path / "p.jsonl"
    src.write_text("\n".join(json.dumps({"prompt": p}, ensure_ascii=False) for p in prompts), encoding="utf-8")
    outputs = {}
    for batch, decoding in ((1, "dynamic"), (3, "dynamic"), ("static", "static")):
        out = tmp_path / f"a{batch}.jsonl"
        assert (
            chat_cli.main(
                [
                    "--model_path",
                    str(model_dir),
                    "--prompts_file",
                    str(src),
                    "--output_file",
                    str(out),
                    "--batch_size",
                    str(3 if batch == "static" else batch),
                    "--temperature",
                    "0",
                    "--max_new_tokens",
                    "8",
                    "--decoding",
                    decoding,
                    "--log_prompts",
                    str(tmp_path / f"log{batch}.jsonl"),
                ]
            )
            == 0
        )
        logged = [json.loads(line)["prompt"] for line in (tmp_path / f"log{batch}.jsonl").read_text().splitlines()]
        assert len(logged) == 5 and all(p in text for p, text in zip(prompts, logged))  # every prompt, in order
        outputs[batch] = [json.loads(line)["answer"] for line in out.read_text(encoding="utf-8").splitlines()]
    assert outputs[1] == outputs[3] == outputs["static"] and len(outputs[1]) == 5  # a static KV cache changes nothing
    capsys.readouterr()
    assert (
        chat_cli.main(
            ["--model_path", str(model_dir), "--prompt", prompts[1], "--temperature", "0", "--max_new_tokens", "8"]
        )
        == 0
    )
    assert capsys.readouterr().out.strip() == outputs[1][1].strip()


def test_context_overflow_drops_oldest_turns():
    tokenizer = load_tokenizer()
    session = ChatSession(tokenizer, max_context=80, params=SamplingParams(max_new_tokens=20))
    for i in range(6):
        prompt = session.add_user_turn(f"question number {i} about the weather in Seoul today")
        session.add_answer(f"answer number {i} is sunny")
    assert prompt.notice and "dropped" in prompt.notice
    assert prompt.ids.shape[1] + 20 <= 80
    assert session.messages[-1]["content"].startswith("answer number 5")


def test_raw_mode_without_chat_template(model_dir, tmp_path):
    tokenizer = load_tokenizer()
    tokenizer.chat_template = None
    session = ChatSession(tokenizer, 512)
    assert session.raw
    assert tokenizer.decode(session.add_user_turn("To be, or not").ids[0]) == "To be, or not"


def test_bad_model_dirs_are_one_line_errors(model_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text((model_dir / "config.json").read_text())
    small = tmp_path / "small"
    MoaiForCausalLM(tiny_config(vocab_size=1000)).save_pretrained(small)
    load_tokenizer().save_pretrained(small)
    cases = [
        (tmp_path / "missing", "no such directory"),
        (tmp_path / "empty", "no config.json"),
        (tmp_path / "noweights", "no model.safetensors"),
        (small, "8192 tokens but the model has 1000"),
    ]
    capsys.readouterr()
    for path, message in cases:
        assert chat_cli.main(["--model_path", str(path), "--prompt", "hi"]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
