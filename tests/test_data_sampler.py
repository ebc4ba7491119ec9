"""The order packed rows are trained in: balanced steps, memory that does not grow with the corpus, and
--train_sampling_strategy honoured."""

import tracemalloc

import numpy as np
import pytest

from moai_llm.data import DataError, DataSpec, row_datasets
from moai_llm.data.packing import interleaved_order
from moai_llm.data.rows import StepSampler
from moai_llm.loading import load_tokenizer


def test_interleaved_order_takes_each_cost_group_in_turn():
    for steps, bins in [(1, 1), (7, 4), (100, 8), (1001, 3), (5, 8)]:
        order = interleaved_order(steps, bins, [1])
        assert sorted(order.tolist()) == list(range(steps))
        groups = np.array_split(np.arange(steps), min(bins, steps))
        owner = {int(s): g for g, members in enumerate(groups) for s in members}
        rounds = len(groups[-1])
        assert [owner[int(s)] for s in order[: rounds * len(groups)]] == list(range(len(groups))) * rounds
    assert not np.array_equal(interleaved_order(100, 2, [1]), interleaved_order(100, 2, [2]))


def test_the_sampler_computes_its_order_a_chunk_at_a_time():
    sampler = StepSampler(1003, 4, 4, seed=0)
    rows = list(sampler)
    assert sorted(rows) == list(range(1003)) and rows[-3:] == [1000, 1001, 1002]  # the partial block last
    sampler.CHUNK = 7
    assert list(sampler) == rows
    sampler.set_epoch(1)
    assert list(sampler) != rows

    big = StepSampler(10**7, 8, 8, seed=0)
    tracemalloc.start()
    first = next(iter(big))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert 0 <= first < 10**7 and peak < 16e6, peak  # before: every row as a Python int (~360 MB here)


@pytest.fixture(scope="module")
def sample_rows(tmp_path_factory):
    train, _ = row_datasets(
        DataSpec(cache_dir=str(tmp_path_factory.mktemp("cache")), eval_fraction=0), load_tokenizer(), 64
    )
    return train


def test_train_sampling_strategy_reaches_packed_rows(sample_rows, tmp_path):
    from transformers import TrainingArguments

    from moai_llm import MoaiForCausalLM
    from moai_llm.training.trainer import MoaiTrainer

    from .conftest import tiny_config

    def order(strategy):
        args = TrainingArguments(str(tmp_path), use_cpu=True, train_sampling_strategy=strategy, report_to="none")
        trainer = MoaiTrainer(model=MoaiForCausalLM(tiny_config(vocab_size=8192)), args=args, train_dataset=sample_rows)
        return list(trainer._get_train_sampler())

    sequential, shuffled = order("sequential"), order("random")
    assert sequential == list(range(len(sample_rows)))  # before: ignored, always the shuffled steps
    assert sorted(shuffled) == sequential and shuffled != sequential
    assert order("group_by_length") == shuffled
    with pytest.raises(DataError, match="--train_sampling_strategy batch_rebalance: packed rows are read random"):
        sample_rows.train_sampler(8, 0, "batch_rebalance")
