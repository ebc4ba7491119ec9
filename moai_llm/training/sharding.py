"""The Trainer's accelerator beyond transformers' defaults: FSDP2 on CPU, DDP without the unused-parameter search, and
a sharded start (every rank creates only its own shards of a new model).

The first two are decided once, right after the Trainer builds its `Accelerator` and before anything is wrapped.
"""

import hashlib
import logging
import math

import torch
from torch import nn

from ..errors import UsageError

logger = logging.getLogger(__name__)

# Config fields that make a model a Mixture-of-Experts (transformers' names across model families).
EXPERT_COUNT_FIELDS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")


def may_leave_parameters_unused(model) -> bool:
    """Whether a training step can leave a trainable parameter without a gradient (then DDP must search for it).
    MOAI models never do (idle fused experts get a zero gradient; tests/test_ddp_unused_parameters.py); another model
    is assumed to when its config counts experts."""
    config = getattr(model, "config", None)
    if config is None:
        return True
    if getattr(config, "model_type", None) == "moai":
        return False
    return any(getattr(config, name, None) for name in EXPERT_COUNT_FIELDS)


def enable_fsdp_on_cpu(accelerator, plugin_args: dict) -> bool:
    """Turn `--fsdp` on for CPU processes (gloo); True if it was turned on here. accelerate silently drops the plugin
    for `MULTI_CPU` and trains plain DDP, though FSDP2's `fully_shard` runs on CPU over gloo."""
    from accelerate import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = accelerator.state
    if state.distributed_type != DistributedType.MULTI_CPU:
        return False
    if plugin_args.get("fsdp_version") != 2:
        raise UsageError('--fsdp on CPU needs FSDP2: set "version": 2 in --fsdp_config (FSDP1 needs a GPU)')
    state.fsdp_plugin = FullyShardedDataParallelPlugin(**plugin_args)
    state.distributed_type = DistributedType.FSDP
    # As AcceleratorState.__init__ does: every later AcceleratorState() copies its distributed type from here.
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    logger.info("FSDP2 on %d CPU processes (gloo)", state.num_processes)
    return True


def module_seed(seed: int, name: str) -> int:
    """The seed of torch's generator while the module `name` of a run seeded with `seed` is initialised."""
    for wrapper in ("._checkpoint_wrapped_module", "_checkpoint_wrapped_module.", "._orig_mod", "_orig_mod."):
        name = name.replace(wrapper, "")  # activation checkpointing and torch.compile wrappers: the model's own name
    return int.from_bytes(hashlib.sha256(f"{seed}/{name}".encode()).digest()[:8], "little") >> 1


@torch.no_grad()
def initialise(model: nn.Module, seed: int) -> None:
    """Every parameter and buffer of `model` (allocated, contents undefined: after `to_empty`) set by the model's own
    `_init_weights`, with torch's generator seeded from (seed, module name) for each module.

    So initial weights do not depend on build order or sharding: a rank of a sharded model creates each module's
    whole tensors in turn on the host, keeps its shard, and ends with the weights of a one-process build. A tied
    weight is set once (by the input embedding); a tensor `_init_weights` leaves unset is refused.
    """
    seen: set[int] = set()
    for name, module in model.named_modules():
        params = {key: p for key, p in module._parameters.items() if p is not None and id(p) not in seen}
        buffers = {key: b for key, b in module._buffers.items() if b is not None}
        if not params and not buffers:
            continue
        seen.update(id(p) for p in params.values())
        stand_in = object.__new__(type(module))  # same class and attributes, whole tensors of its own on the CPU
        stand_in.__dict__.update(module.__dict__)  # (copy.copy would call FSDP's __new__, which re-runs __init__)
        stand_in._parameters = {
            key: p if p is None else nn.Parameter(_unset_like(p), p.requires_grad)
            for key, p in module._parameters.items()
        }
        stand_in._buffers = {key: b if b is None else _unset_like(b) for key, b in module._buffers.items()}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(module_seed(seed, name))
            model._init_weights(stand_in)
        for key, tensor in [*params.items(), *buffers.items()]:
            whole = stand_in._parameters[key] if key in params else stand_in._buffers[key]
            if whole.is_floating_point() and whole.isnan().any():
                raise RuntimeError(f"{type(model).__name__}._init_weights left {name}.{key} uninitialised")
            _copy_own_part(tensor, whole)


def _unset_like(tensor: torch.Tensor) -> torch.Tensor:
    """A whole CPU tensor of `tensor`'s shape and dtype, NaN where floating point (so that an unset one shows)."""
    whole = torch.empty(tensor.shape, dtype=tensor.dtype)
    return whole.fill_(math.nan) if whole.is_floating_point() else whole


def _copy_own_part(target: torch.Tensor, whole: torch.Tensor) -> None:
    """`whole` (on the CPU) into `target`, or only this rank's shard of it when `target` is a DTensor: the shard is
    cut on the CPU, so only it moves to the accelerator (no communication). torch has no public call for a shard's
    place in the whole tensor (`distribute_tensor` would first move the whole tensor to the mesh's device)."""
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    if isinstance(target, DTensor):
        shape, offset = compute_local_shape_and_global_offset(target.shape, target.device_mesh, target.placements)
        for dim, (start, size) in enumerate(zip(offset, shape, strict=True)):
            whole = whole.narrow(dim, start, size)
        target = target.to_local()
    target.copy_(whole)


def starts_sharded(training_args, lora: bool) -> bool:
    """Whether a new model is built on the meta device on every rank and sharded before its weights exist: FSDP2 and
    whole-model training (LoRA's adapters are initialised by peft, not by the model)."""
    plugin_args = training_args.fsdp_plugin_args if training_args.fsdp else None
    return bool(plugin_args) and plugin_args.get("fsdp_version") == 2 and not lora


def start_sharded(accelerator, model: nn.Module, seed: int) -> nn.Module:
    """Shard `model` (on the meta device) as accelerate's FSDP2 preparation does, then create this rank's shards with
    `initialise`, instead of rank 0 building the whole model on the host and broadcasting it (16B: 64 GB). The
    Trainer's later `accelerator.prepare` finds the model sharded and keeps it."""
    from accelerate.utils.fsdp_utils import fsdp2_apply_ac, fsdp2_prepare_model
    from torch.distributed.fsdp import CPUOffloadPolicy

    plugin = accelerator.state.fsdp_plugin
    plugin.set_auto_wrap_policy(model)
    if plugin.activation_checkpointing:  # accelerate applies it before sharding, and skips a model already sharded
        model = fsdp2_apply_ac(accelerator, model)
    broadcast = plugin.cpu_ram_efficient_loading
    plugin.cpu_ram_efficient_loading = False  # nothing to broadcast: every rank creates its own shards
    try:
        model = fsdp2_prepare_model(accelerator, model)
    finally:
        plugin.cpu_ram_efficient_loading = broadcast
    offload = isinstance(plugin.cpu_offload, CPUOffloadPolicy)
    model.to_empty(device="cpu" if offload else accelerator.device)
    if offload:  # FSDP2 offloads the parameters only: buffers stay on the accelerator
        for module in model.modules():
            module._buffers = {key: b if b is None else b.to(accelerator.device) for key, b in module._buffers.items()}
    initialise(model, seed)
    logger.info("rank %d: created its shards of the new model", accelerator.process_index)
    return model
