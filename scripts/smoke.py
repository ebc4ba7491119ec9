"""Smoke job: build the tiny model, take a few optimizer steps, generate, save and reload with the Auto classes.

Runs on CPU in seconds; `python train.py --mode pretrain` is the real job.
"""

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from moai_llm import MoaiConfig, MoaiForCausalLM

logger = logging.getLogger("smoke")
REPO = Path(__file__).resolve().parents[1]


def byte_batch(config: MoaiConfig, batch: int, seq: int) -> torch.Tensor:
    """Token ids from the bundled corpus's UTF-8 bytes (no tokenizer needed): [batch, seq]."""
    data = (REPO / "moai_llm/assets/sample/pretrain.jsonl").read_bytes()[: batch * seq]
    return (torch.tensor(list(data)) % config.vocab_size).view(batch, seq)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model_config", default=str(REPO / "configs/model_config_tiny.json"))
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    torch.manual_seed(0)
    config = MoaiConfig.from_json_file(args.model_config)
    model = MoaiForCausalLM(config)
    logger.info("model: %s parameters", f"{model.num_parameters():,}")
    ids = byte_batch(config, batch=4, seq=128)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    start = time.perf_counter()
    for step in range(args.steps):
        loss = model(ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        logger.info("step %d loss %.4f", step, loss.item())
    logger.info("train tokens/s: %.0f", args.steps * ids.numel() / (time.perf_counter() - start))

    model.eval()
    generated = model.generate(ids[:1, :16], max_new_tokens=16, do_sample=False)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        reloaded = AutoModelForCausalLM.from_pretrained(tmp).eval()
        same = torch.equal(reloaded.generate(ids[:1, :16], max_new_tokens=16, do_sample=False), generated)
    logger.info("generated %d tokens; reloaded model generates the same: %s", generated.shape[1] - 16, same)
    if not same:
        raise SystemExit("smoke: reloaded model differs")


if __name__ == "__main__":
    main()
