"""Chat with a MOAI model: interactive streaming chat, one-shot --prompt, or batched --prompts_file.

python chat.py --model_path outputs/run/final_model
python chat.py --model_path outputs/run/final_model --prompt "What is the capital of Korea?"
python chat.py --model_path DIR --prompts_file prompts.jsonl --output_file answers.jsonl --temperature 0
"""

import argparse
import json
import signal
import sys
from functools import partial
from pathlib import Path

from transformers.utils import logging as hf_logging

from moai_llm.chat import DECODINGS, ChatSession, SamplingParams, StopFlag, batch_answers, stream_answer
from moai_llm.errors import UsageError
from moai_llm.flags import Parser
from moai_llm.loading import load_model


def parse_args(argv=None):
    p = Parser("chat.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_path", required=True, help="final_model, a checkpoint, or a LoRA adapter directory")
    p.add_argument("--tokenizer_path", help="default: the model's own")
    p.add_argument("--base_model", help="base model of a LoRA adapter (default: from adapter_config.json)")
    p.add_argument("--device", help="cuda | mps | cpu (default: the best found)")
    p.add_argument("--raw", action="store_true", help="plain continuation, no chat template")
    p.add_argument("--system", help="system prompt")
    p.add_argument("--prompt", help="answer this one prompt and exit")
    p.add_argument("--prompts_file", help="txt (one prompt per line) or jsonl (prompt or messages per line)")
    p.add_argument("--output_file", help="jsonl answers for --prompts_file (default: stdout)")
    p.add_argument("--batch_size", type=int, default=8)
    defaults = SamplingParams()
    for name, value in defaults.__dict__.items():
        p.add_argument(f"--{name}", type=type(value) if value is not None else int, default=value)
    p.add_argument(
        "--decoding",
        default="dynamic",
        choices=DECODINGS,
        help="KV cache: dynamic (default), static, or static + torch.compile (on CPU the first answer waits for the "
        "compilation; benchmarks/README.md, Decoding)",
    )
    p.add_argument("--verbose", action="store_true", help="tokens/s and token counts after each answer")
    p.add_argument("--log_prompts", help="append every prompt sent to the model to this file (debugging)")
    return p.parse_args(argv)


ROLES = ("system", "user", "assistant")


def prompt_from_row(row, where: str):
    """A jsonl line's prompt: a non-empty 'prompt' string, or a non-empty 'messages' list of {role, content}."""
    if not isinstance(row, dict):
        raise UsageError(f"{where}: expected a JSON object with a 'prompt' or 'messages' field")
    if "prompt" in row and "messages" in row:
        raise UsageError(f"{where}: has both 'prompt' and 'messages'; give one")
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages:
            raise UsageError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in ROLES:
                raise UsageError(f"{where}: messages[{index}] needs a 'role' ({', '.join(ROLES)})")
            if not isinstance(message.get("content"), str):
                raise UsageError(f"{where}: messages[{index}] needs a string 'content'")
        return messages
    prompt = row.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise UsageError(f"{where}: needs a non-empty 'prompt' string or a 'messages' list")
    return prompt


def read_prompts(path: str) -> list:
    """The prompts of a .txt (one a line) or .jsonl file; blank lines are skipped, an empty file is an error."""
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"--prompts_file {path}: no such file")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(f"--prompts_file {path}: not UTF-8 text (byte {err.start})") from None
    prompts = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if file.suffix == ".jsonl":
            try:
                row = json.loads(line)
            except ValueError:
                raise UsageError(f"{path}:{number}: malformed JSON line") from None
            prompts.append(prompt_from_row(row, f"{path}:{number}"))
        else:
            prompts.append(line)
    if not prompts:
        raise UsageError(f"--prompts_file {path}: no prompts in the file")
    return prompts


def log_prompt(args, tokenizer, ids) -> None:
    if args.log_prompts:
        with open(args.log_prompts, "a", encoding="utf-8") as f:
            f.write(json.dumps({"prompt": tokenizer.decode(ids[0])}, ensure_ascii=False) + "\n")


def answer(session, model, tokenizer, text, args, stop) -> None:
    prompt = session.add_user_turn(text)
    if prompt.notice:
        print(prompt.notice, flush=True)
    log_prompt(args, tokenizer, prompt.ids)
    show = partial(print, end="", flush=True)
    previous = signal.signal(signal.SIGINT, lambda *_: stop.event.set())
    try:
        sampling = session.sampling(prompt)
        reply, tokens, seconds = stream_answer(model, tokenizer, prompt.ids, sampling, stop, show, args.decoding)
    finally:
        signal.signal(signal.SIGINT, previous)
    print(" [stopped]" if stop.event.is_set() else "", flush=True)
    session.add_answer(reply)
    if args.verbose:
        print(
            f"[{tokens} tokens in {seconds:.2f}s, {tokens / max(seconds, 1e-9):.1f} tokens/s; "
            f"prompt {prompt.ids.shape[1]} tokens]",
            flush=True,
        )


def interactive(session, model, tokenizer, args) -> None:
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    stop = StopFlag()
    print(f"MOAI chat ({'raw continuation' if session.raw else 'chat template'}); /help for commands", flush=True)
    while True:
        try:
            line = input("You: ")
        except EOFError:
            print()
            return
        except KeyboardInterrupt:
            print()
            continue
        if not line.strip():
            continue
        if line.startswith("/"):
            text, leave = session.command(line)
            print(text, flush=True)
            if leave:
                return
            continue
        print("MOAI: ", end="", flush=True)
        answer(session, model, tokenizer, line, args, stop)


def main(argv=None) -> int:
    args = parse_args(argv)
    hf_logging.disable_progress_bar()  # a chat screen has no place for weight-loading bars
    hf_logging.set_verbosity_error()
    params = SamplingParams(**{k: getattr(args, k) for k in SamplingParams.__dataclass_fields__})
    try:
        prompts = read_prompts(args.prompts_file) if args.prompts_file else None  # before the model: fail fast
        model, tokenizer = load_model(args.model_path, args.tokenizer_path, args.base_model, args.device)
    except UsageError as err:
        print(f"chat.py: error: {err}", file=sys.stderr)
        return 2
    context = getattr(model.config, "max_position_embeddings", 2048)
    session = ChatSession(tokenizer, context, params, raw=args.raw, system=args.system)
    if args.prompt is not None:
        prompt = session.one_shot_prompt(args.prompt)
        log_prompt(args, tokenizer, prompt.ids)
        print(batch_answers(model, tokenizer, [prompt.ids[0]], session.sampling(prompt), 1, args.decoding)[0])
        return 0
    if prompts is not None:
        encoded = [session.one_shot_prompt(p) for p in prompts]
        for prompt in encoded:
            log_prompt(args, tokenizer, prompt.ids)
        sampling = session.sampling(encoded[0])  # every prompt gets the same answer budget
        answers = batch_answers(model, tokenizer, [p.ids[0] for p in encoded], sampling, args.batch_size, args.decoding)
        rows = [json.dumps({"prompt": p, "answer": a}, ensure_ascii=False) + "\n" for p, a in zip(prompts, answers)]
        if args.output_file:
            Path(args.output_file).write_text("".join(rows), encoding="utf-8")
        else:
            sys.stdout.writelines(rows)
        return 0
    interactive(session, model, tokenizer, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
