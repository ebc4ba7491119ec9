"""MoaiTrainer: transformers.Trainer plus WSD, correctly scaled MoE terms, metering and complete-only checkpoints."""

import contextlib
import logging
import math
import os
import re

import torch
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from ..batch_format import IGNORE_INDEX
from ..loading import COMPLETE_MARKER, write_step_marker
from .arguments import MUON
from .callbacks import ThroughputCallback
from .data_setup import global_batch, write_data_position
from .schedule import create_wsd_schedule
from .sharding import enable_fsdp_on_cpu, may_leave_parameters_unused, start_sharded, starts_sharded

logger = logging.getLogger(__name__)

PLAIN_CROSS_ENTROPY = {"type": "cross_entropy", "params": {}}
_CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def latest_complete_checkpoint(output_dir: str) -> str | None:
    """The highest-step `checkpoint-N` in `output_dir` whose save finished (marker present); others are skipped."""
    if not os.path.isdir(output_dir):
        return None
    found = []
    for name in os.listdir(output_dir):
        match = _CHECKPOINT_RE.match(name)
        path = os.path.join(output_dir, name)
        if match and os.path.isdir(path):
            if os.path.isfile(os.path.join(path, COMPLETE_MARKER)):
                found.append((int(match.group(1)), path))
            else:
                logger.warning("ignoring %s: the save did not finish (no %s)", path, COMPLETE_MARKER)
    return max(found)[1] if found else None


@contextlib.contextmanager
def writes_on_this_node(model, args):
    """With --save_on_each_node (DDP: every rank holds the whole model), let each node's writer rank save the weights:
    transformers' `save_pretrained` writes only on global rank 0 once torch.distributed is up."""
    if not (args.save_on_each_node and args.should_save and args.process_index != 0):
        yield
        return
    model.should_save_on_this_rank = lambda is_main_process: is_main_process
    try:
        yield
    finally:
        del model.should_save_on_this_rank


def router_terms(outputs, config) -> dict[str, torch.Tensor]:
    """The per-micro-batch MoE terms the model added to `loss`, already multiplied by their coefficients."""
    terms = {}
    for key, coefficient in (("aux_loss", "router_aux_loss_coef"), ("router_z_loss", "router_z_loss_coef")):
        value = outputs.get(key) if hasattr(outputs, "get") else None
        if value is not None and getattr(config, coefficient, 0.0):
            terms[key] = getattr(config, coefficient) * value
    return terms


@contextlib.contextmanager
def router_terms_outside_loss(model):
    """Inside: the model's `loss` leaves out the MoE router terms it added (`router_terms`), which are collected in
    the yielded dict instead, so the Trainer scales the language-model loss alone."""
    terms: dict[str, torch.Tensor] = {}

    def take_out(module, args, output):
        found = router_terms(output, module.config)
        if found and output.get("loss") is not None:
            output["loss"] = output["loss"] - sum(found.values())
            terms.update(found)
        return output

    handle = model.register_forward_hook(take_out)
    try:
        yield terms
    finally:
        handle.remove()


class MoaiTrainer(Trainer):
    """Trainer for MoaiForCausalLM (any causal LM works): it overrides only what the stock Trainer gets wrong or
    lacks (ARCHITECTURE.md lists each override and why) and calls `super()` for the rest."""

    def __init__(self, *args, throughput: ThroughputCallback | None = None, streaming: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.throughput = throughput
        self.streaming = streaming  # recorded in each checkpoint's data position
        if throughput is not None:
            self.add_callback(throughput)
        self._component_sums: dict[str, torch.Tensor] = {}
        self._component_micro_batches = 0
        self._expert_load: torch.Tensor | None = None  # [moe_layers, experts], summed over micro-batches
        self._eval_sums: torch.Tensor | None = None  # [loss x tokens, tokens, bytes] of this rank's eval batches
        self._token_bytes: dict[int, int] = {}  # UTF-8 bytes per token id, filled as eval targets show up
        # a new model on the meta device (FSDP2, run.new_model): each rank creates its shards before any read
        on_meta = any(p.device.type == "meta" for p in self.model.parameters())
        if on_meta and self.is_fsdp_enabled and starts_sharded(self.args, hasattr(self.model, "peft_config")):
            start_sharded(self.accelerator, self.model, self.args.seed)

    def create_accelerator_and_postprocess(self):
        super().create_accelerator_and_postprocess()
        if self.args.fsdp_plugin_args is not None and not self.is_fsdp_enabled:
            self.is_fsdp_enabled = enable_fsdp_on_cpu(self.accelerator, self.args.fsdp_plugin_args)
        handler = self.accelerator.ddp_handler  # transformers' default, when the user did not choose: search
        if self.args.ddp_find_unused_parameters is None and not may_leave_parameters_unused(self.model):
            handler.find_unused_parameters = False
        # Gradients as views of DDP's all-reduce buckets: without it DDP keeps a second gradient-sized copy (4 bytes
        # per parameter, what memory.py counts once).
        handler.gradient_as_bucket_view = True

    def create_optimizer(self, model=None):
        """--optim muon: Muon for the hidden matrices and AdamW for the rest, one optimizer (training/muon.py)."""
        if str(self.args.optim) != MUON or self.optimizer is not None:
            return super().create_optimizer(model)
        from ..errors import UsageError
        from .muon import MuonAdamW, muon_param_groups

        model = self.model if model is None else model
        if hasattr(model, "peft_config"):
            raise UsageError("--optim muon trains whole matrices: it does not work with --use_lora / --use_qlora")
        groups = muon_param_groups(model, self.args.weight_decay, set(self.get_decay_parameter_names(model)))
        self.optimizer = MuonAdamW(
            groups,
            lr=self.args.learning_rate,
            betas=(self.args.adam_beta1, self.args.adam_beta2),
            eps=self.args.adam_epsilon,
            weight_decay=self.args.weight_decay,
        )
        counts = [sum(p.numel() for p in g["params"]) for g in groups]
        logger.info("Muon for %s parameters, AdamW for %s", f"{counts[0]:,}", f"{counts[1] + counts[2]:,}")
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """Warmup-Stable-Decay from `args.wsd_*` when `lr_scheduler_type` names it; the stock scheduler otherwise."""
        name = str(getattr(self.args.lr_scheduler_type, "value", self.args.lr_scheduler_type))
        if self.lr_scheduler is None and name == "warmup_stable_decay":  # arguments.py maps its alias wsd
            self.lr_scheduler = create_wsd_schedule(
                self.optimizer if optimizer is None else optimizer,
                num_training_steps=num_training_steps,
                num_warmup_steps=self.args.get_warmup_steps(num_training_steps),
                decay_ratio=self.args.wsd_decay_ratio,
                decay_type=self.args.wsd_decay_type,
                min_lr_ratio=self.args.min_lr_ratio,
            )
            self._created_lr_scheduler = True
            return self.lr_scheduler
        return super().create_scheduler(num_training_steps, optimizer)

    def _get_train_sampler(self, train_dataset=None):
        """Packed rows (`moai_llm.data.PackedRows`) are read in balanced steps whose order is shuffled by seed."""
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if hasattr(dataset, "train_sampler"):
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            strategy = str(getattr(self.args, "train_sampling_strategy", "random"))
            return dataset.train_sampler(global_batch(self.args), seed, strategy)
        return super()._get_train_sampler(train_dataset)

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.throughput is not None:
            pad = getattr(self.processing_class, "pad_token_id", None)
            self.throughput.observe(inputs["input_ids"], inputs.get("labels"), pad)
        return super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The stock loss on the language-model loss alone, then the MoE router terms added once on top (as TRL adds
        its aux loss) as a mean over micro-batches and ranks. Evaluation reports plain cross-entropy."""
        plain = contextlib.nullcontext() if model.training else self._plain_cross_entropy(model)
        if not model.training and self._eval_sums is not None:
            num_items_in_batch = None  # this rank's mean: `prediction_step` weighs it by this rank's tokens
        with plain, router_terms_outside_loss(self.accelerator.unwrap_model(model)) as terms:
            loss, outputs = super().compute_loss(
                model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
            )
        if model.training:
            if terms:
                loss = loss + sum(terms.values()) / self._micro_batches_in_loss(num_items_in_batch)
            self._record_router_statistics(terms, outputs)
        return (loss, outputs) if return_outputs else loss

    def _micro_batches_in_loss(self, num_items_in_batch) -> int:
        """How many micro-batches' losses are summed before the optimizer step without being divided: all GA of
        them when the loss was normalised by `num_items_in_batch` (transformers' contract for models that accept
        loss kwargs: `training_step` then does not divide by GA), else 1 (`training_step` divides)."""
        if self.loss_is_scaled_for_ga is not None:
            scaled = self.loss_is_scaled_for_ga
        else:
            scaled = num_items_in_batch is not None and bool(self.model_accepts_loss_kwargs or self.compute_loss_func)
        return self.current_gradient_accumulation_steps if scaled else 1

    def _record_router_statistics(self, terms: dict, outputs) -> None:
        """Router terms and expert load of one micro-batch, summed until the next log line."""
        if terms:
            for key, value in terms.items():
                self._component_sums[key] = self._component_sums.get(key, 0.0) + value.detach().float()
            self._component_micro_batches += 1
        load = outputs.get("expert_load") if hasattr(outputs, "get") else None
        if load is not None:
            self._expert_load = load.float() if self._expert_load is None else self._expert_load + load.float()

    @contextlib.contextmanager
    def _plain_cross_entropy(self, model):
        """Inside: the model's `loss_config` and the Trainer's label smoother are plain cross-entropy, since smoothing,
        focal loss or z-loss would make eval_loss and eval_perplexity neither cross-entropy nor perplexity."""
        config = self.accelerator.unwrap_model(model).config
        objective, smoother = getattr(config, "loss_config", None), self.label_smoother
        if objective is not None:
            config.loss_config = PLAIN_CROSS_ENTROPY
        self.label_smoother = None
        try:
            yield
        finally:
            self.label_smoother = smoother
            if objective is not None:
                config.loss_config = objective

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        """`eval_loss` as total loss / total tokens over every batch of every rank (the stock loop averages batch
        means); `eval_bits_per_byte`: the same total loss (nats) / (ln 2 x bytes of the scored tokens), as eval.py."""
        self._eval_sums = torch.zeros(3, dtype=torch.float64, device=self.args.device)  # every rank reduces
        try:
            output = super().evaluation_loop(
                dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
            )
            total = self.accelerator.reduce(self._eval_sums, reduction="sum")
        finally:
            self._eval_sums = None
        if total[1] > 0 and f"{metric_key_prefix}_loss" in output.metrics:
            output.metrics[f"{metric_key_prefix}_loss"] = (total[0] / total[1]).item()
            if total[2] > 0:
                output.metrics[f"{metric_key_prefix}_bits_per_byte"] = (total[0] / (math.log(2) * total[2])).item()
        return output

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        labels = inputs.get("shift_labels", inputs.get("labels")) if isinstance(inputs, dict) else None
        if self._eval_sums is None or labels is None:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        inputs = self._only_real_rows(inputs)
        loss, logits, out_labels = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        if loss is not None:
            shifted = inputs["shift_labels"] if "shift_labels" in inputs else inputs["labels"][..., 1:]
            tokens = shifted.ne(IGNORE_INDEX).sum().double()
            text_bytes = torch.tensor(float(self._scored_bytes(shifted)), dtype=torch.float64, device=tokens.device)
            sums = torch.stack([loss.detach().double() * tokens, tokens, text_bytes])
            self._eval_sums += sums.to(self._eval_sums.device)
        return loss, logits, out_labels

    def _scored_bytes(self, shifted_labels: torch.Tensor) -> int:
        """UTF-8 bytes of the scored targets' text (eval.py's count, `perplexity.scored_bytes`); 0 without a
        tokenizer, and then no bits per byte is logged."""
        tokenizer = self.processing_class
        if not hasattr(tokenizer, "convert_ids_to_tokens"):
            return 0
        from ..evaluation.perplexity import scored_bytes

        return scored_bytes(tokenizer, shifted_labels[shifted_labels.ne(IGNORE_INDEX)], self._token_bytes)

    def _only_real_rows(self, inputs: dict) -> dict:
        """The last eval batch with the rows accelerate repeated to even the ranks out (from the dataset's start)
        left untrained: their labels become IGNORE_INDEX, so they count no token. Every rank still runs the
        forward (FSDP's collectives). Rank r's real rows are those of the first `remainder` of the global batch."""
        state = self.accelerator.gradient_state
        if not state.end_of_dataloader or state.remainder <= 0:
            return inputs
        key = "shift_labels" if "shift_labels" in inputs else "labels"
        rows = inputs[key].shape[0]
        real = min(max(state.remainder - self.args.process_index * rows, 0), rows)
        if real == rows:
            return inputs
        labels = inputs[key].clone()
        labels[real:] = IGNORE_INDEX
        return {**inputs, key: labels}

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            if self.throughput is not None:
                logs.update(self.throughput.pop_logs())
            if self._component_micro_batches:
                extras = 0.0
                for key, total in self._component_sums.items():
                    mean = float(self.accelerator.gather(total.reshape(1)).mean()) / self._component_micro_batches
                    logs[key] = round(mean, 6)
                    extras += mean
                logs["lm_loss"] = round(logs["loss"] - extras, 6)
                self._component_sums, self._component_micro_batches = {}, 0
            if self._expert_load is not None:
                from ..moe import balance_metrics

                load = self.accelerator.gather(self._expert_load[None]).sum(0)  # all ranks: [moe_layers, experts]
                logs.update({k: round(v, 4) for k, v in balance_metrics(load / load.sum(-1, keepdim=True)).items()})
                self._expert_load = None
        super().log(logs, start_time)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        loss = metrics.get(f"{metric_key_prefix}_loss")
        if loss is not None:
            metrics[f"{metric_key_prefix}_perplexity"] = math.exp(min(loss, 50.0))
            self.log({f"{metric_key_prefix}_perplexity": metrics[f"{metric_key_prefix}_perplexity"]})
        return metrics

    def _save(self, output_dir=None, state_dict=None):
        with writes_on_this_node(self.accelerator.unwrap_model(self.model, keep_torch_compile=False), self.args):
            super()._save(output_dir, state_dict)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None):
        """Resume the weights as `from_pretrained` reads them, strictly: the stock path loads the state dict without
        transformers' key conversions, so an MoE checkpoint's per-expert tensors silently missed the live model's
        stacked experts. Sharded (FSDP, DeepSpeed) and adapter checkpoints keep the stock path."""
        model = self.model if model is None else model
        plain = not (self.is_fsdp_enabled or self.is_deepspeed_enabled or hasattr(model, "peft_config"))
        if not plain or not os.path.isfile(os.path.join(resume_from_checkpoint, "config.json")):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        loaded = type(model).from_pretrained(resume_from_checkpoint, dtype=model.dtype, device_map="cpu")
        model.load_state_dict(loaded.state_dict(), strict=True)  # a key missing either way is an error now
        del loaded
        logger.info("weights resumed from %s", resume_from_checkpoint)

    def _run_epoch(self, *args, **kwargs):
        # transformers checks max_steps only after a step: resuming from a checkpoint already at max_steps (a run
        # killed during its final save) would train one step past the end.
        if 0 < self.state.max_steps <= self.state.global_step:
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    def _save_checkpoint(self, model, trial):
        limit = self.args.save_total_limit
        self.args.save_total_limit = None  # rotate only once the new checkpoint is complete
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        self.accelerator.wait_for_everyone()
        run_dir = self._get_output_dir(trial=trial)
        if self.args.should_save:
            path = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            write_data_position(path, self.args, self.streaming)
            write_step_marker(os.path.join(path, COMPLETE_MARKER), self.state.global_step)
            rotate_checkpoints(run_dir, save_total_limit=limit, best_model_checkpoint=self.state.best_model_checkpoint)
