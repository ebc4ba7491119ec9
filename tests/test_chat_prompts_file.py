"""chat.py --prompts_file: every line becomes a prompt, and a bad line is a one-line error naming file and line."""

import json
import re

import pytest

import chat as chat_cli
from moai_llm.errors import UsageError


def write(tmp_path, name, lines):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_txt_and_jsonl_prompts_are_read_in_order(tmp_path):
    assert chat_cli.read_prompts(write(tmp_path, "p.txt", ["first", "", "second"])) == ["first", "second"]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    rows = [json.dumps({"prompt": "one"}), json.dumps({"messages": messages})]
    assert chat_cli.read_prompts(write(tmp_path, "p.jsonl", rows)) == ["one", messages]


@pytest.mark.parametrize(
    "row, message",
    [
        ({"messages": []}, "'messages' must be a non-empty list"),
        ({"messages": "hi"}, "'messages' must be a non-empty list"),
        ({"messages": [{"content": "hi"}]}, "messages[0] needs a 'role'"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0] needs a string 'content'"),
        ({"prompt": ""}, "needs a non-empty 'prompt' string"),
        ({"prompt": ["a"]}, "needs a non-empty 'prompt' string"),
        ({"text": "hi"}, "needs a non-empty 'prompt' string"),
        ({"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, "has both 'prompt' and 'messages'"),
        (["hi"], "expected a JSON object"),
    ],
)
def test_bad_jsonl_lines_name_file_and_line(tmp_path, row, message):
    path = write(tmp_path, "p.jsonl", [json.dumps({"prompt": "fine"}), json.dumps(row)])
    with pytest.raises(UsageError, match=f"^{path}:2: .*{re.escape(message)}"):
        chat_cli.read_prompts(path)


def test_malformed_missing_and_empty_files(tmp_path):
    bad = write(tmp_path, "bad.jsonl", ["{not json"])
    with pytest.raises(UsageError, match=f"{bad}:1: malformed JSON line"):
        chat_cli.read_prompts(bad)
    with pytest.raises(UsageError, match="no such file"):
        chat_cli.read_prompts(str(tmp_path / "missing.jsonl"))
    empty = write(tmp_path, "empty.txt", ["", "  "])
    with pytest.raises(UsageError, match="no prompts in the file"):
        chat_cli.read_prompts(empty)


def test_a_bad_prompts_file_stops_chat_py_before_the_model_loads(tmp_path, capsys):
    bad = write(tmp_path, "p.jsonl", [json.dumps({"messages": []})])
    assert chat_cli.main(["--model_path", str(tmp_path / "no-model"), "--prompts_file", bad]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [
        f"chat.py: error: {bad}:1: 'messages' must be a non-empty list of {{role, content}} objects"
    ]
