"""Mixture-of-Experts blocks for MoaiForCausalLM, written as transformers' `modular_qwen3_moe.py` is: only the
differences from Qwen3-MoE / Qwen2-MoE are here.
- `MoaiTopKRouter`: Qwen3-MoE's router plus Switch-Transformer jitter on the router input in training.
- `MoaiSparseMoeBlock`: Qwen3-MoE's block; `MoaiSharedExpertMoeBlock`: Qwen2-MoE's, with its sigmoid-gated
  shared expert. Both use transformers' fused `Qwen3MoeExperts` (eager / grouped_mm / batched_mm), one parameter
  per weight, so an expert that gets no token still gets a (zero) gradient and DDP sees no unused parameters.
The router losses and expert load are functions of the recorded router logits, so the causal-LM forward stays one.
Imports only torch, transformers and flat siblings: `save_pretrained` ships it as remote code.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.modeling_outputs import MoeCausalLMOutputWithPast
from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock
from transformers.models.qwen3_moe.modeling_qwen3_moe import (
    Qwen3MoeExperts,
    Qwen3MoeMLP,
    Qwen3MoeSparseMoeBlock,
    Qwen3MoeTopKRouter,
    load_balancing_loss_func,
)
from transformers.utils import logging

from .configuration_moai import MoaiConfig

logger = logging.get_logger(__name__)

# Checkpoint files hold one tensor per expert, as Qwen3-MoE's do (transformers fuses them into `gate_up_proj` /
# `down_proj` on load and splits them on save): Qwen3-MoE checkpoints load into MOAI and MOAI MoE checkpoints are
# laid out for tools that read Qwen3-MoE files. Registered by model type, so it also holds for remote code.
register_checkpoint_conversion_mapping("moai", get_checkpoint_conversion_mapping("qwen2_moe"), overwrite=True)


class MoaiTopKRouter(Qwen3MoeTopKRouter):
    """Qwen3-MoE's router; in training its input is scaled by uniform noise in [1 - eps, 1 + eps] when eps > 0."""

    def __init__(self, config: MoaiConfig):
        super().__init__(config)
        self.jitter_noise = config.router_jitter_noise

    def forward(self, hidden_states: torch.Tensor):
        if self.training and self.jitter_noise > 0:
            noise = torch.empty_like(hidden_states).uniform_(1.0 - self.jitter_noise, 1.0 + self.jitter_noise)
            hidden_states = hidden_states * noise  # router only: the experts see the clean input
        return super().forward(hidden_states)


class MoaiSparseMoeBlock(Qwen3MoeSparseMoeBlock):
    """Qwen3-MoE's block (gate + experts) with the jittering router."""

    def __init__(self, config: MoaiConfig):
        nn.Module.__init__(self)
        self.experts = Qwen3MoeExperts(config)
        self.gate = MoaiTopKRouter(config)


class MoaiSharedExpertMoeBlock(Qwen2MoeSparseMoeBlock):
    """Qwen2-MoE's block: routed experts + sigmoid(shared_expert_gate(x)) * shared_expert(x)."""

    def __init__(self, config: MoaiConfig):
        # Skip Qwen2MoeSparseMoeBlock.__init__: its experts read Mixtral's `num_local_experts`; Qwen3-MoE's
        # experts have the same parameters and names.
        nn.Module.__init__(self)
        self.gate = MoaiTopKRouter(config)
        self.experts = Qwen3MoeExperts(config)
        self.shared_expert = Qwen3MoeMLP(config, intermediate_size=config.shared_expert_intermediate_size)
        self.shared_expert_gate = nn.Linear(config.hidden_size, 1, bias=False)


def moe_block(config: MoaiConfig) -> nn.Module:
    """The MoE feed-forward of one layer: with a shared expert when its size is > 0."""
    if config.shared_expert_intermediate_size:
        return MoaiSharedExpertMoeBlock(config)
    return MoaiSparseMoeBlock(config)


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(total, active per token): every parameter once (tied counted once), and all but the routed experts a token
    does not use (num_experts - top-k per MoE layer); embeddings count as active. For FLOPs/MFU estimates."""
    total = sum(param.numel() for param in model.parameters())
    idle = 0
    for module in model.modules():
        if isinstance(module, Qwen3MoeExperts):
            per_expert = (module.gate_up_proj.numel() + module.down_proj.numel()) // module.num_experts
            idle += (module.num_experts - module.config.num_experts_per_tok) * per_expert
    return total, total - idle


@dataclass
class MoaiMoeCausalLMOutputWithPast(MoeCausalLMOutputWithPast):
    r"""
    MoeCausalLMOutputWithPast (aux_loss over real tokens only) plus what training logs from the same forward pass.

    router_z_loss (`torch.FloatTensor`, *optional*):
        Router z-loss (ST-MoE): mean over MoE layers and real tokens of logsumexp(router_logits)^2; not the logit
        z-loss of `--z_loss_coef` (`moai_llm.losses`).
    expert_load (`torch.FloatTensor` of shape `(moe_layers, num_experts)`, *optional*):
        Per MoE layer, each expert's share of the token-to-expert assignments (`expert_load`), no gradient.
    """

    router_z_loss: torch.FloatTensor | None = None
    expert_load: torch.FloatTensor | None = None


def routed_token_mask(
    config: MoaiConfig, input_ids: torch.Tensor | None, attention_mask, num_tokens: int
) -> torch.Tensor | None:
    """[batch, seq] True for the tokens the router losses count, or None when nothing says which are padding:
    padding is where a 2-D `attention_mask` (its last `num_tokens` columns) is 0 and, as packed rows carry no mask,
    the pad token, unless it is also EOS/BOS (then it may be a real document separator)."""
    mask = None
    if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2:
        mask = attention_mask[:, -num_tokens:].bool()
    special = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    pad = config.pad_token_id
    if input_ids is not None and pad is not None and pad not in special + [config.bos_token_id]:
        not_pad = input_ids != pad
        mask = not_pad if mask is None else mask & not_pad
    return mask


def router_losses(
    router_logits: tuple[torch.Tensor, ...], config: MoaiConfig, token_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(aux_loss, router_z_loss) from each MoE layer's router logits [tokens, experts], counting only masked-in
    tokens; aux_loss is transformers' `load_balancing_loss_func` with the token mask as its attention mask."""
    logits = tuple(layer.float() for layer in router_logits)
    aux_loss = load_balancing_loss_func(logits, config.num_experts, config.num_experts_per_tok, token_mask)
    # ST-MoE z-loss; hand-written because transformers has it only unmasked (switch_transformers' router_z_loss_func)
    log_z_squared = torch.stack([torch.logsumexp(layer, dim=-1) for layer in logits]).pow(2)  # [layers, tokens]
    if token_mask is None:
        z_loss = log_z_squared.mean()
    else:
        weight = token_mask.reshape(1, -1).to(log_z_squared)  # [1, tokens]
        z_loss = (log_z_squared * weight).sum() / (weight.sum() * len(logits)).clamp_min(1)
    return aux_loss, z_loss


@torch.no_grad()
def expert_load(
    router_logits: tuple[torch.Tensor, ...], top_k: int, token_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """[moe_layers, experts]: share of each layer's top-k assignments per expert (rows sum to 1), real tokens only."""
    stacked = torch.stack([layer.float() for layer in router_logits])  # [layers, tokens, experts]
    chosen = stacked.softmax(dim=-1).topk(top_k, dim=-1).indices  # [layers, tokens, top_k]
    weight = torch.ones_like(chosen, dtype=torch.float32)
    if token_mask is not None:
        weight = weight * token_mask.reshape(1, -1, 1).to(weight)
    counts = torch.zeros(stacked.shape[0], stacked.shape[-1], device=stacked.device)
    counts.scatter_add_(1, chosen.flatten(1), weight.flatten(1))
    return counts / counts.sum(dim=-1, keepdim=True).clamp_min(1)


def balance_metrics(load: torch.Tensor) -> dict[str, float]:
    """Scalars for logging from `expert_load` [moe_layers, experts], worst layer each: 1.0 is perfect balance."""
    num_experts = load.shape[-1]
    max_load, min_load = load.max(dim=-1).values, load.min(dim=-1).values  # [layers]
    ratio = (max_load / min_load).max().item() if bool((min_load > 0).all()) else float("inf")
    return {
        "moe/max_load_over_mean": (max_load.max() * num_experts).item(),
        "moe/min_load_over_mean": (min_load.min() * num_experts).item(),
        "moe/max_min_load_ratio": ratio,
    }


def moe_causal_lm_output(
    config: MoaiConfig, loss, logits, model_outputs, input_ids=None, attention_mask=None
) -> MoaiMoeCausalLMOutputWithPast:
    """The causal-LM output of a MoE model; with router logits, the router losses are added to `loss` (if any)."""
    router_logits = getattr(model_outputs, "router_logits", None)
    aux_loss = router_z_loss = load = None
    if router_logits:
        mask = routed_token_mask(config, input_ids, attention_mask, model_outputs.last_hidden_state.shape[1])
        aux_loss, router_z_loss = router_losses(router_logits, config, mask)
        load = expert_load(router_logits, config.num_experts_per_tok, mask)
        if torch.is_grad_enabled() and model_outputs.last_hidden_state.requires_grad and not aux_loss.requires_grad:
            logger.warning_once(
                "MoE router losses have no gradient although the model does: the router logits were recorded "
                "outside autograd (reentrant gradient checkpointing?). Use the default non-reentrant checkpointing."
            )
        if loss is not None:
            loss = loss + config.router_aux_loss_coef * aux_loss.to(loss.device)
            if config.router_z_loss_coef > 0:
                loss = loss + config.router_z_loss_coef * router_z_loss.to(loss.device)
    return MoaiMoeCausalLMOutputWithPast(
        loss=loss,
        aux_loss=aux_loss,
        router_z_loss=router_z_loss,
        expert_load=load,
        logits=logits,
        cache=model_outputs.cache,
        hidden_states=model_outputs.hidden_states,
        attentions=model_outputs.attentions,
        router_logits=router_logits,
    )


__all__ = [
    "MoaiMoeCausalLMOutputWithPast",
    "MoaiSharedExpertMoeBlock",
    "MoaiSparseMoeBlock",
    "MoaiTopKRouter",
    "balance_metrics",
    "expert_load",
    "moe_block",
    "parameter_counts",
    "router_losses",
    "routed_token_mask",
]
