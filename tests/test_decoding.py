"""chat's decoding options: a static KV cache answers what the dynamic one does (greedy, streamed and batched, dense
and MoE); temperatures below 1e-5 are greedy everywhere; an unknown option is refused."""

import pytest
import torch

from moai_llm import MoaiForCausalLM
from moai_llm.chat import SamplingParams, StopFlag, batch_answers, stream_answer
from moai_llm.chat.generation import decoding_kwargs
from moai_llm.loading import load_tokenizer

from .conftest import tiny_config


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_static_cache_answers_equal_dynamic(moe):
    torch.manual_seed(0)
    extra = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32) if moe else {}
    model = MoaiForCausalLM(tiny_config(vocab_size=8192, **extra)).eval()
    tokenizer = load_tokenizer()
    prompts = [torch.tensor(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in ("Once upon", "The king of")]
    params = SamplingParams(temperature=0, repetition_penalty=1.0, max_new_tokens=12)
    answers = {
        decoding: batch_answers(model, tokenizer, prompts, params, batch_size=2, decoding=decoding)
        for decoding in ("dynamic", "static")
    }
    assert answers["static"] == answers["dynamic"] and all(answers["static"])
    streamed = stream_answer(model, tokenizer, prompts[0][None], params, StopFlag(), lambda _: None, "static")
    assert streamed[0] == answers["dynamic"][0]
    tiny = SamplingParams(temperature=1e-300, top_p=1.0, top_k=0, repetition_penalty=1.0, max_new_tokens=12)
    assert tiny.greedy and batch_answers(model, tokenizer, prompts, tiny, batch_size=2) == answers["dynamic"]


def test_decoding_options():
    assert decoding_kwargs("dynamic", torch.device("cpu")) == {}
    compiled = decoding_kwargs("compiled", torch.device("cpu"))
    assert compiled["cache_implementation"] == "static" and compiled["compile_config"].mode == "default"
    assert compiled["compile_config"]._compile_all_devices
    with pytest.raises(ValueError, match="one of dynamic, static, compiled"):
        decoding_kwargs("fast", torch.device("cpu"))
