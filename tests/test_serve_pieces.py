"""The server's pieces that need no server: stop strings held back across token boundaries, the per-row sampler."""

import torch

from moai_llm.chat import SamplingParams
from moai_llm.serving.sampling import RowSampler
from moai_llm.serving.text import TextAssembler
from moai_llm.tokenizer import load_tokenizer


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
