"""The Trainer's accelerator beyond transformers' defaults: FSDP2 on CPU, DDP without the unused-parameter search.

Both are decided once, right after the Trainer builds its `Accelerator` and before anything is wrapped.
"""

import logging

from ..errors import UsageError

logger = logging.getLogger(__name__)

# Config fields that make a model a Mixture-of-Experts (transformers' names across model families).
EXPERT_COUNT_FIELDS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")


def may_leave_parameters_unused(model) -> bool:
    """Whether a training step can leave a trainable parameter without a gradient (then DDP must search for it).

    MOAI models never do, dense or MoE: the experts are fused parameters that get a (zero) gradient when idle, and the
    router and the shared-expert gate see every token (tests/test_moe_gradients.py, tests/test_moe_ddp.py). Another
    model is assumed to when its config counts experts; a dense one does not.
    """
    config = getattr(model, "config", None)
    if config is None:
        return True
    if getattr(config, "model_type", None) == "moai":
        return False
    return any(getattr(config, name, None) for name in EXPERT_COUNT_FIELDS)


def enable_fsdp_on_cpu(accelerator, plugin_args: dict) -> bool:
    """Turn `--fsdp` on for CPU processes (gloo); True if it was turned on here.

    accelerate makes `--fsdp` FSDP only on accelerators: for CPU processes (`MULTI_CPU`) it drops the plugin without a
    word and the Trainer runs plain DDP, so a CPU run would never test sharding. torch's FSDP2 `fully_shard` runs on
    CPU over gloo, so the accelerator is switched to FSDP here, before the model is prepared.
    """
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
