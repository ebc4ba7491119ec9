"""transformers' continuous batching (`generate_batch`, a paged cache that packs every request into one flat row)
answers each request as `generate` answers it alone: the packed-row detection stays out of its way."""

import pytest
import torch
from transformers import ContinuousBatchingConfig, GenerationConfig

from moai_llm import MoaiForCausalLM

from .conftest import moe_config, tiny_config


@pytest.mark.parametrize("config", [tiny_config, moe_config], ids=["dense", "moe"])
def test_generate_batch_equals_generate_per_request(config):
    torch.manual_seed(0)
    model = MoaiForCausalLM(config(vocab_size=256)).eval()
    generation = GenerationConfig(max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
    requests = [[3, 4, 5, 6, 7], [8, 9, 10], [11, 12, 13, 14, 15, 16, 17]]
    # a small paged cache: the default sizes it from free memory and pins it (seconds on CPU)
    small = ContinuousBatchingConfig(page_size=16, num_blocks=16, max_batch_tokens=64, max_requests_per_batch=4)
    batched = model.generate_batch(
        inputs=requests, generation_config=generation, continuous_batching_config=small, warmup=False
    )
    answers = [batched[f"req_{index}"].generated_tokens for index in range(len(requests))]
    alone = [
        model.generate(torch.tensor([ids]), generation_config=generation)[0, len(ids) :].tolist() for ids in requests
    ]
    assert answers == alone and all(len(answer) == 6 for answer in answers)
