"""ChatSession without a terminal: building a prompt changes no setting, a one-shot prompt leaves the conversation
alone, and the answer budget (half the context at most) still applies to every answer."""

import pytest
import torch

from moai_llm import MoaiForCausalLM
from moai_llm.chat import ChatSession, SamplingParams
from moai_llm.chat.session import chat_prompt_ids
from moai_llm.evaluation.samples import generate_samples
from moai_llm.loading import load_tokenizer

from .conftest import tiny_config


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.mark.parametrize("raw", [False, True])
def test_building_a_prompt_keeps_the_users_max_new_tokens(tokenizer, raw):
    params = SamplingParams(max_new_tokens=100, temperature=0.3)
    session = ChatSession(tokenizer, max_context=64, params=params, raw=raw)
    for prompt in (session.add_user_turn("hello there"), session.one_shot_prompt("a one-shot question")):
        assert prompt.max_new_tokens == 32  # capped at half the context for this answer only
        assert prompt.ids.shape[1] + prompt.max_new_tokens <= 64
        sampling = session.sampling(prompt)
        assert sampling.max_new_tokens == 32 and sampling.temperature == 0.3
    assert session.params is params and params.max_new_tokens == 100
    params.max_new_tokens = 8  # a later /params is honoured as set
    assert session.one_shot_prompt("again").max_new_tokens == 8


def test_one_shot_prompt_leaves_the_conversation_alone(tokenizer):
    session = ChatSession(tokenizer, max_context=512, system="Be brief.")
    session.add_user_turn("What is Seoul?")
    session.add_answer("The capital of Korea.")
    conversation = [dict(m) for m in session.messages]
    alone = session.one_shot_prompt("Who wrote Hamlet?")
    given = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Who wrote Hamlet?"},
    ]
    history = session.one_shot_prompt(given)
    assert session.messages == conversation
    system = {"role": "system", "content": "Be brief."}
    assert alone.ids[0].tolist() == chat_prompt_ids(tokenizer, [system, given[-1]])
    assert history.ids[0].tolist() == chat_prompt_ids(tokenizer, [system, *given])
    turn = session.add_user_turn("And Busan?")  # the conversation goes on where it was
    assert "What is Seoul?" in tokenizer.decode(turn.ids[0]) and "Hamlet" not in tokenizer.decode(turn.ids[0])


def test_only_reset_clears_the_conversation(tokenizer):
    session = ChatSession(tokenizer, max_context=512, system="Be brief.")
    session.add_user_turn("What is Seoul?")
    session.add_answer("The capital of Korea.")
    assert len(session.messages) == 2
    assert session.command("/params temperature=0")[0].startswith("[")
    assert len(session.messages) == 2
    session.command("/reset")
    assert session.messages == [] and session.system == "Be brief."
    session.add_user_turn("hi")
    session.command("/system Be kind.")
    assert session.messages == [] and session.system == "Be kind."


def test_samples_keep_the_callers_params(tokenizer):
    torch.manual_seed(0)
    model = MoaiForCausalLM(tiny_config(vocab_size=len(tokenizer), max_position_embeddings=64)).eval()
    params = SamplingParams(temperature=0, max_new_tokens=100)
    samples = generate_samples(model, tokenizer, ["Once upon a time", "The king said"], params, chat=True)
    assert [s["tokens"] for s in samples] == [32, 32]  # half the context, as chat.py answers
    assert params.max_new_tokens == 100
