"""Part 4: fine-tuning in bf16 from a pretrained model with train.py --mode sft: full fine-tuning keeps fp32 master
weights and every layer weight moves at lr 2e-5 (bf16 weights would round most steps away); LoRA trains and merges
(target weights change, the rest stay the base's); QLoRA when bitsandbytes is importable.

The "pretrained" model is a random-weight MOAI model saved in bf16 (what a released checkpoint holds)."""

import sys
from pathlib import Path

import torch
from common import NO_CUDA, REPO, Peak, Report, error_line, part_arguments, release, time_left
from safetensors.torch import load_file

SFT_FILE = REPO / "moai_llm" / "assets" / "sample" / "sft_messages.jsonl"
BASE = dict(hidden_size=1024, intermediate_size=3584, num_hidden_layers=8, num_attention_heads=16)
BASE |= dict(num_key_value_heads=8, head_dim=64, vocab_size=122_880, max_position_embeddings=4096)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
TINY |= dict(head_dim=16, vocab_size=8192, max_position_embeddings=512)
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def save_base(path: Path, cuda: bool) -> None:
    from moai_llm import MoaiConfig, MoaiForCausalLM
    from moai_llm.loading import load_tokenizer

    torch.manual_seed(0)
    config = MoaiConfig(**(BASE if cuda else TINY), pad_token_id=0, bos_token_id=1, eos_token_id=2)
    MoaiForCausalLM(config).to(torch.bfloat16).save_pretrained(path)
    load_tokenizer().save_pretrained(path)


def sft(base: Path, run_dir: Path, cuda: bool, *extra: str) -> Path:
    import train

    steps = "10" if cuda else "3"
    argv = ["--mode", "sft", "--pretrained_model", str(base), "--train_file", str(SFT_FILE)]
    argv += ["--output_dir", str(run_dir), "--max_steps", steps, "--logging_steps", "1", "--eval_strategy", "no"]
    argv += ["--save_steps", "100000", "--warmup_steps", "0", "--lr_scheduler_type", "constant"]
    argv += ["--max_seq_length", "512", "--disable_tqdm", "true", "--report_to", "none"]
    argv += ["--dataloader_num_workers", "0"]
    argv += ["--bf16", "true"] if cuda else ["--use_cpu", "true", "--bf16", "false"]
    if train.main([*argv, *extra]) != 0:
        raise RuntimeError("train.py exited non-zero")
    return run_dir / "final_model"


def moved(before: dict, after: dict, names: list[str]) -> float:
    """The smallest fraction of elements that changed, over the named tensors."""
    return min((before[n].float() != after[n].float()).float().mean().item() for n in names)


def main() -> int:
    args = part_arguments(__doc__)
    cuda = torch.cuda.is_available() and not args.cpu_smoke
    workdir = Path(args.workdir)
    columns = {"run": "run", "check": "check", "value": "value", "ok": "holds", "peak_gib": "peak GiB"}
    columns |= {"seconds": "s", "note": "note"}
    report = Report(
        args, f"Fine-tuning from a bf16 checkpoint, train.py --mode sft, {10 if cuda else 3} steps", columns
    )
    base = workdir / "base"
    save_base(base, cuda)
    before = load_file(str(base / "model.safetensors"))
    layers = [n for n in before if ".layers." in n and n.endswith("proj.weight")]

    def check(run: str, name: str, value, holds: bool, peak=None, note=None) -> None:
        report.add(run=run, check=name, value=value, ok=holds, peak_gib=peak and peak.allocated, note=note)
        if peak is not None:
            report.rows[-1]["seconds"] = peak.seconds
        if not holds:
            report.fail(f"{run}: {name} = {value}")

    try:
        with Peak() as peak:
            after = load_file(str(sft(base, workdir / "full", cuda, "--learning_rate", "2e-5") / "model.safetensors"))
        dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in after.values()})
        check("full, lr 2e-5", "saved dtypes (fp32 master weights)", ",".join(dtypes), dtypes == ["float32"], peak)
        fraction = moved(before, after, layers)
        check("full, lr 2e-5", "least moved fraction of a layer weight", fraction, fraction > 0.95)
    except Exception as error:
        report.add(run="full, lr 2e-5", note=error_line(error))
        report.fail(f"full fine-tuning: {error_line(error)}")
    release()

    try:
        with Peak() as peak:
            lora = ["--use_lora", "true", "--merge_lora", "true", "--learning_rate", "1e-3"]
            after = load_file(str(sft(base, workdir / "lora", cuda, *lora) / "model.safetensors"))
        targets = [n for n in layers if n.split(".")[-2] in LORA_TARGETS]
        others = [n for n in before if n not in targets and n in after]
        fraction = moved(before, after, targets)
        check("LoRA merged", "least moved fraction of a target weight", fraction, fraction > 0.5, peak)
        unchanged = all(torch.equal(before[n].float(), after[n].float()) for n in others)
        check("LoRA merged", f"the {len(others)} other tensors equal the base's", unchanged, unchanged)
    except Exception as error:
        report.add(run="LoRA merged", note=error_line(error))
        report.fail(f"LoRA: {error_line(error)}")
    release()

    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        report.add(run="QLoRA", note="skipped: bitsandbytes not installed (its 41 MiB wheel is not carried)")
    else:
        if not cuda:
            report.add(run="QLoRA", note=NO_CUDA)
        elif time_left(args) < 30:
            report.add(run="QLoRA", note=f"skipped: {time_left(args):.0f} s left of the part's budget")
        else:
            try:
                with Peak() as peak:
                    qlora = ["--use_qlora", "true", "--merge_lora", "true", "--learning_rate", "1e-3"]
                    after = load_file(str(sft(base, workdir / "qlora", cuda, *qlora) / "model.safetensors"))
                fraction = moved(before, after, [n for n in layers if n.split(".")[-2] in LORA_TARGETS])
                check("QLoRA merged", "least moved fraction of a target weight", fraction, fraction > 0.5, peak)
            except Exception as error:
                report.add(run="QLoRA", note=error_line(error))
                report.fail(f"QLoRA: {error_line(error)}")
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
