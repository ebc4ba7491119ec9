"""The server's pieces that need no server: stop strings held back across token boundaries, the per-row sampler, the
engine's default batch."""

import threading

import torch

from moai_llm import MoaiForCausalLM
from moai_llm.chat import SamplingParams
from moai_llm.chat.generation import RowSampler
from moai_llm.loading import load_tokenizer
from moai_llm.serving import BatchEngine, Finished, GenerationRequest
from moai_llm.serving.text import TextAssembler

from .conftest import tiny_config


def test_stop_string_split_across_tokens_never_leaks():
    tokenizer = load_tokenizer()
    ids = tokenizer("Hello world, STOP here and more", add_special_tokens=False)["input_ids"]
    assembler, sent, hit = TextAssembler(tokenizer, ["STOP", "zzz"]), "", False
    for token in ids:
        piece, hit = assembler.add(token)
        sent += piece
        if hit:
            break
    assert hit and sent == "Hello world, "
    plain = TextAssembler(tokenizer, ["here!"])
    text = "".join(plain.add(t)[0] for t in ids) + plain.flush()
    assert text == "Hello world, STOP here and more"


def test_row_sampler_draws_from_the_processed_distribution():
    def sampler(seed):
        return RowSampler(SamplingParams(temperature=1.0, top_p=1.0, top_k=0, repetition_penalty=1.0, seed=seed))

    probs = torch.tensor([0.5, 0.0, 0.3, 0.2])
    first = sampler(0)
    counts = torch.bincount(torch.tensor([first.sample(probs) for _ in range(20000)]), minlength=4) / 20000
    assert counts[1] == 0 and torch.allclose(counts, probs, atol=0.02)
    same, other = sampler(3), sampler(3)
    assert [same.sample(probs) for _ in range(50)] == [other.sample(probs) for _ in range(50)]


def test_thirty_two_clients_share_each_decode_step_by_default():
    """serve.py's default batch holds 32 rows: 32 requests sent at once are decoded together, not 16 and then 16."""
    torch.manual_seed(0)
    engine = BatchEngine(MoaiForCausalLM(tiny_config()).eval(), load_tokenizer())
    done, lock, tokens = [], threading.Lock(), 6
    finished = threading.Event()

    def deliver(event):
        if isinstance(event, Finished):
            with lock:
                done.append(event)
                if len(done) == 32:
                    finished.set()

    params = SamplingParams(temperature=0, repetition_penalty=1.0, max_new_tokens=tokens)
    try:
        engine.submit_all([GenerationRequest([5, 6, 7 + i], params, deliver, ignore_eos=True) for i in range(32)])
        assert finished.wait(60)
    finally:
        engine.close()
    assert all(event.completion_tokens == tokens for event in done)
    assert engine.tokens_generated / engine.decode_steps > 30  # 32 rows per step (the first token comes from prefill)
