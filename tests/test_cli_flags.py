"""Every command line refuses a flag given twice with one line (exit 2) instead of keeping the last value; flags
meant to repeat (serve.py --model_path, train.py --train_file) still add up."""

import pytest

import chat
import eval as eval_cli  # the repo's eval.py
import serve
import train_tokenizer


@pytest.mark.parametrize(
    "tool, argv, message",
    [
        (chat, ["--model_path", "a", "--temperature", "0", "--temperature=1"], "--temperature is given twice"),
        (
            chat,
            ["--model_path", "a", "--temp", "0", "--temperature", "1"],
            "--temperature is given twice",
        ),  # abbreviated
        (serve, ["--port", "1", "--port", "2"], "--port is given twice (it takes one value)"),
        (eval_cli, ["--tasks", "piqa", "--tasks", "arc_easy"], "--tasks is given twice"),
        (
            train_tokenizer,
            ["--input_files", "a", "--input_files", "b"],
            "--input_files is given twice (list every value after one --input_files)",
        ),
    ],
)
def test_a_repeated_flag_is_one_line(tool, argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        tool.parse_args(argv)
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2
    assert len(err.splitlines()) == 1 and err.startswith(f"{tool.__name__}.py: error: {message}"), err


def test_repeatable_flags_add_up():
    assert serve.parse_args(["--model_path", "a", "--model_path", "b"]).model_path == ["a", "b"]
    assert train_tokenizer.parse_args(["--input_files", "a", "b"]).input_files == ["a", "b"]
