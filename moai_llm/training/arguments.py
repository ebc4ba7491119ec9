"""Dataclass arguments for train.py: model, data and `MoaiTrainingArguments(TrainingArguments)`.

Every `TrainingArguments` flag works; the old tool's flag names (`--batch_size`, `--num_epochs`) are argparse
aliases of the Trainer's own fields, so YAML and CLI may use either name.
"""

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from transformers import TrainingArguments

from ..data.mixing import MixtureSource
from ..data.pipeline import DataOptions
from ..errors import UsageError

# configs/ is installed as the package moai_llm.configs (setup.py package_dir); a source checkout reads it in place.
_PACKAGE = Path(__file__).absolute().parents[1]
CONFIGS_DIR = _PACKAGE / "configs" if (_PACKAGE / "configs").is_dir() else _PACKAGE.parent / "configs"
TINY_MODEL_CONFIG = str(CONFIGS_DIR / "model_config_tiny.json")
LORA_TARGET_MODULES = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
TRANSFORMERS_LEARNING_RATE = next(f.default for f in dataclasses.fields(TrainingArguments) if f.name == "learning_rate")
# Schedule names transformers' SchedulerType does not know, mapped to the one it does.
SCHEDULER_ALIASES = {"wsd": "warmup_stable_decay"}


@dataclass
class ModelArguments:
    model_config: str | None = field(
        default=None, metadata={"help": "Model config JSON for a new model (default: configs/model_config_tiny.json)."}
    )
    pretrained_model: str | None = field(
        default=None, metadata={"help": "Model directory or hub id to start from (required for --mode sft)."}
    )
    tokenizer_path: str | None = field(
        default=None, metadata={"help": "Tokenizer directory (default: the bundled moai_llm/assets/tokenizer)."}
    )
    attn_implementation: str | None = field(
        default=None, metadata={"help": "sdpa | eager | flex_attention | flash_attention_2 (default: auto)."}
    )
    loss_type: Literal["cross_entropy", "focal", "label_smoothing", "multi_objective"] = field(
        default="cross_entropy", metadata={"help": "Training loss (fused from hidden states, or on logits)."}
    )
    loss_params: str | None = field(
        default=None, metadata={"help": "Loss parameters as JSON, e.g. '{\"gamma\": 2.0}' or ce/focal/smooth weights."}
    )
    loss_chunk_size: int | None = field(
        default=None, metadata={"help": "Tokens per fused-loss chunk (0: the loss on full logits)."}
    )
    z_loss_coef: float = field(default=0.0, metadata={"help": "Logit z-loss coefficient (PaLM), 0 = off."})
    use_lora: bool = field(default=False, metadata={"help": "Train LoRA adapters (peft) instead of all weights."})
    use_qlora: bool = field(default=False, metadata={"help": "LoRA on a 4-bit (bitsandbytes NF4) base; needs CUDA."})
    merge_lora: bool = field(default=False, metadata={"help": "Merge the adapters into the base in final_model."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: str = field(
        default=LORA_TARGET_MODULES, metadata={"help": "Comma-separated module names that get adapters."}
    )


class AddSources(argparse.Action):
    """`--train_file a --train_file b` adds both (argparse's nargs="+" would keep only the last); the first use on
    the command line replaces a list from the YAML config, so the command line still wins over the file."""

    repeats = True  # each use adds sources (moai_llm.flags.refuse_repeated_flags lets it repeat)

    def __call__(self, parser, namespace, values, option_string=None):
        current = getattr(namespace, self.dest, None)
        first = current is None or current is self.default
        setattr(namespace, self.dest, list(values) if first else [*current, *values])


@dataclass
class DataArguments(DataOptions):
    """The data flags: the options how to read and cut (`DataOptions`, declared once with `DataSpec`) and the sources
    as the command line names them; `data_setup.data_spec` turns them into the `DataSpec` the readers take."""

    dataset: list[str] | None = field(
        default=None,
        metadata={
            "action": AddSources,
            "help": "Hub datasets, `name` or `name:config`; repeatable, each use adds (default: bundled sample).",
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Config name for every --dataset."})
    train_file: list[str] | None = field(
        default=None,
        metadata={
            "action": AddSources,
            "help": "Local files, folders or globs (.txt .jsonl .json .parquet .csv); repeatable, each use adds.",
        },
    )
    mixture: list[MixtureSource] | None = field(
        default=None, metadata={"help": "Data mixture (YAML only, see training_config.yaml)."}
    )
    max_seq_length: int = field(default=256, metadata={"help": "Tokens per packed row / truncation length."})
    data_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Prepared data (token stores, packing plans). Given: treated as shared by every node, "
            "prepared once, every rank tokenizing a share. Default: <output_dir>/data_cache, once per node "
            "(shared by the node's ranks)."
        },
    )
    prepare_only: bool = field(
        default=False, metadata={"help": "Tokenize and plan the data into the data cache, print its size, and exit."}
    )


MUON = "muon"  # --optim muon: Muon for hidden matrices, AdamW for the rest (training/muon.py)


@dataclass
class MoaiTrainingArguments(TrainingArguments):
    mode: Literal["pretrain", "sft"] = field(default="pretrain", metadata={"help": "pretrain | sft."})
    config: str | None = field(
        default=None, metadata={"help": "YAML config (configs/training_config.yaml); command-line flags override it."}
    )
    stages: "list[Stage] | None" = field(default=None, metadata={"help": "Training stages (YAML only)."})
    output_dir: str | None = field(
        default=None, metadata={"help": "Run directory (default: outputs/<mode>-<model config or model name>)."}
    )
    per_device_train_batch_size: int = field(
        # 2 rows of 256 = 512 tokens per step: the best loss per hour in bench_time_to_loss.py's sweep (AdamW)
        default=2,
        metadata={"aliases": ["--batch_size"], "help": "Sequences (packed rows) per device per step."},
    )
    num_train_epochs: float = field(default=2.0, metadata={"aliases": ["--num_epochs"], "help": "Epochs."})
    optim: str = field(
        default="adamw_torch_fused",
        metadata={"help": "muon (Muon for hidden matrices, AdamW for the rest) or any transformers optimizer name."},
    )
    learning_rate: float | None = field(
        default=None,
        metadata={"help": "Peak learning rate (default: 1e-3 pretrain, less above hidden 384; 2e-5 sft, 2e-4 LoRA)."},
    )
    lr_scheduler_type: str = field(
        default="warmup_stable_decay",
        metadata={"help": "Schedule: warmup_stable_decay (alias wsd) or any transformers one (cosine, linear, ...)."},
    )
    warmup_steps: float = field(default=0.05, metadata={"help": "Warmup steps (or fraction of all steps if < 1)."})
    wsd_decay_ratio: float = field(default=0.2, metadata={"help": "WSD: fraction of steps spent decaying."})
    wsd_decay_type: Literal["linear", "cosine", "1-sqrt"] = field(default="1-sqrt", metadata={"help": "WSD decay."})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "WSD: final learning rate / peak learning rate."})
    peak_tflops: float | None = field(
        default=None, metadata={"help": "Peak TFLOP/s per device for MFU (default: known GPUs; none on CPU)."}
    )
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})
    eval_strategy: str = field(default="steps", metadata={"help": "no | steps | epoch."})
    eval_steps: float | None = field(default=100, metadata={"help": "Evaluate every N steps."})
    save_steps: float = field(default=100, metadata={"help": "Checkpoint every N steps."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept (oldest removed)."})
    report_to: None | str | list[str] = field(default="none", metadata={"help": "tensorboard, wandb, ... or none."})
    bf16: bool | None = field(
        default=None,
        # nargs/const: a bare `--bf16` (the old tool's spelling) means true; HfArgumentParser only does that for
        # bool fields whose default is not None.
        metadata={
            "nargs": "?",
            "const": True,
            "help": "bf16 mixed precision (default: on for GPUs and CPUs (AMX/AVX512-BF16) that compute it natively).",
        },
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep dataset columns for the collator (it builds the model inputs)."}
    )
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "Checkpoint directory, or `auto` for the latest complete one in output_dir."}
    )
    eval_tasks: str | None = field(
        default=None,
        metadata={"help": "lm-eval tasks scored at every evaluation on the model in memory, e.g. arc_easy,hellaswag."},
    )
    eval_tasks_limit: float | None = field(
        default=100, metadata={"help": "Documents per --eval_tasks task at each evaluation (< 1: a fraction)."}
    )
    eval_tasks_include_path: str | None = field(
        default=None, metadata={"help": "Folder of extra lm-eval task YAMLs for --eval_tasks."}
    )

    def __post_init__(self):
        """Validation only: the defaults that depend on other arguments or the machine are `resolve.py`'s (train.py
        runs it first); constructed directly, a field left unset takes transformers' own default."""
        if self.learning_rate is None:
            self.learning_rate = TRANSFORMERS_LEARNING_RATE
        self.bf16 = bool(self.bf16)
        for name in ("wsd_decay_ratio", "min_lr_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UsageError(f"--{name} must be in [0, 1], got {getattr(self, name)}")
        self.lr_scheduler_type = SCHEDULER_ALIASES.get(self.lr_scheduler_type, self.lr_scheduler_type)
        muon = str(self.optim) == MUON
        if muon and self.deepspeed:
            raise UsageError("--optim muon does not work with DeepSpeed (it shards the optimizer itself): use --fsdp")
        if muon:
            self.optim = "adamw_torch"  # TrainingArguments validates transformers' names; Muon's AdamW side
        super().__post_init__()
        if muon:
            self.optim = MUON  # MoaiTrainer.create_optimizer builds it (training/muon.py)
        if self.save_on_each_node and (self.fsdp or self.deepspeed):
            raise UsageError(
                "--save_on_each_node works with DDP only: FSDP and DeepSpeed checkpoints are sharded "
                "over all ranks, so every node needs them all (use a shared filesystem)"
            )


def training_arguments(values: dict) -> MoaiTrainingArguments:
    """MoaiTrainingArguments(**values), the user's values: transformers' own checks (ValueError, TypeError, OSError
    for a config file it cannot read) become a UsageError with their first line."""
    try:
        return MoaiTrainingArguments(**values)
    except UsageError:
        raise
    except (OSError, TypeError, ValueError) as error:
        raise UsageError(str(error).splitlines()[0]) from None


@dataclass(frozen=True)
class Stage:
    """One training stage, resolved when the YAML is read: its name and its own arguments (see stages.py)."""

    name: str
    model_args: ModelArguments
    data_args: DataArguments
    training_args: MoaiTrainingArguments
