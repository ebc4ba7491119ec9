"""MoaiConfig: Qwen3Config plus optional QK-norm, a derived head_dim, the legacy `rope_scaling` YaRN form, the
Mixture-of-Experts fields (Qwen3-MoE's and Qwen2-MoE's names and meanings), and validation naming the bad field."""

from huggingface_hub.dataclasses import strict
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.qwen3.configuration_qwen3 import Qwen3Config

# Legacy YaRN keys some MOAI/moellama configs used, mapped to transformers' names.
_LEGACY_YARN_KEYS = {"alpha": "beta_slow", "beta": "beta_fast", "type": "rope_type"}


def _normalise_rope(rope: dict | None) -> dict | None:
    """Rename legacy keys and insist on what YaRN cannot guess (its pretraining context length and factor)."""
    if rope is None:
        return None
    rope = {_LEGACY_YARN_KEYS.get(key, key): value for key, value in rope.items()}
    rope_type = rope.setdefault("rope_type", "default")
    known = sorted({"default", *ROPE_INIT_FUNCTIONS})
    if rope_type not in known:
        raise ValueError(f"rope_parameters.rope_type={rope_type!r} is not one of {known}")
    missing = [key for key in ("original_max_position_embeddings", "factor") if key not in rope]
    if rope_type == "yarn" and missing:
        raise ValueError(
            f"rope_parameters: YaRN needs {' and '.join(missing)} (the pretraining context length and the context "
            "extension ratio); neither is guessed from max_position_embeddings"
        )
    return rope


def is_moe_layer(config, layer_idx: int) -> bool:
    """Qwen3-MoE's rule, for any config that has its fields (Qwen3-MoE's own too): MoE unless listed in
    mlp_only_layers or off the decoder_sparse_step grid."""
    return (
        (getattr(config, "num_experts", 0) or 0) > 0
        and layer_idx not in (getattr(config, "mlp_only_layers", None) or [])
        and (layer_idx + 1) % max(1, getattr(config, "decoder_sparse_step", 1) or 1) == 0
    )


@strict
class MoaiConfig(Qwen3Config):
    r"""
    Configuration of a MOAI model: every Qwen3Config field with the same meaning, plus

    use_qk_norm (`bool`, defaults to `True`):
        RMSNorm on each query and key head before RoPE (as Qwen3). With `False` the attention has no
        q_norm/k_norm parameters at all.
    num_key_value_heads (`int`, *optional*):
        Key/value heads for GQA; unset means as many as query heads (MHA).
    head_dim (`int`, *optional*):
        Width of one attention head. When unset it is `hidden_size // num_attention_heads`, which must divide.
    loss_chunk_size (`int`, defaults to 1024):
        Tokens per chunk of the fused linear cross-entropy used when labels are given (never more than
        `[loss_chunk_size, vocab_size]` logits alive). 0 = transformers' plain loss on full logits.
    loss_config (`dict`, *optional*):
        The training objective, as `moai_llm.losses.objective_from_spec` reads it, e.g.
        `{"type": "multi_objective", "params": {"ce_weight": 1.0, "focal_weight": 0.5}}`. None = cross-entropy.
        Checked when the causal LM is built (the config does not import the losses).

    Mixture of Experts (all ignored when `num_experts == 0`, the dense model):

    num_experts (`int`, defaults to 0):
        Routed experts per MoE layer; 0 = dense.
    num_experts_per_tok (`int`, defaults to 2):
        Experts each token is routed to (top-k), 1..num_experts.
    moe_intermediate_size (`int`, *optional*):
        Hidden width of one routed expert; required when `num_experts > 0`.
    shared_expert_intermediate_size (`int`, defaults to 0):
        Width of the always-on shared expert, gated by a sigmoid as in Qwen2-MoE; 0 = none (Qwen3-MoE layout).
    decoder_sparse_step (`int`, defaults to 1) and mlp_only_layers (`list[int]`, defaults to `[]`):
        Layer `i` is MoE when `i` is not in `mlp_only_layers` and `(i + 1) % decoder_sparse_step == 0`, else a
        dense MLP of `intermediate_size` (Qwen3-MoE's rule); e.g. `mlp_only_layers=[0]` keeps the first layer dense.
    norm_topk_prob (`bool`, defaults to `True`):
        Renormalise the top-k routing weights to sum to 1 (as Qwen3-MoE checkpoints do).
    router_aux_loss_coef (`float`, defaults to 0.001):
        Weight of the Switch-Transformer load-balancing loss added to `loss`.
    router_z_loss_coef (`float`, defaults to 0.0):
        Weight of the ST-MoE router z-loss (mean squared log-sum-exp of the router logits); added when > 0.
    router_jitter_noise (`float`, defaults to 0.0):
        In training, the router input is multiplied by uniform noise in `[1 - eps, 1 + eps]` (Switch Transformer).
    output_router_logits (`bool`, *optional*):
        Return router logits, aux/z losses and expert load. Unset means on for MoE models, so training balances
        the experts without a flag; set False for inference-only use.
    """

    model_type = "moai"

    num_key_value_heads: int | None = None
    head_dim: int | None = None
    use_qk_norm: bool = True
    loss_chunk_size: int = 1024
    loss_config: dict | None = None
    num_experts: int = 0
    num_experts_per_tok: int = 2
    moe_intermediate_size: int | None = None
    shared_expert_intermediate_size: int = 0
    decoder_sparse_step: int = 1
    mlp_only_layers: list[int] | None = None
    norm_topk_prob: bool = True
    router_aux_loss_coef: float = 0.001
    router_z_loss_coef: float = 0.0
    router_jitter_noise: float = 0.0
    output_router_logits: bool | None = None

    def __post_init__(self, **kwargs):
        rope = kwargs.pop("rope_scaling", None) or self.rope_parameters
        self.rope_parameters = _normalise_rope(dict(rope) if rope else None)
        if "num_local_experts" in kwargs:  # how transformers writes Qwen3-MoE's num_experts in config.json
            self.num_experts = kwargs.pop("num_local_experts")
        # A Qwen3(-MoE) config.json would leave its model_type on the instance; transformers picks the checkpoint
        # conversion (per-expert files -> fused experts) by it, so a Qwen3-MoE checkpoint must read as "moai".
        kwargs.pop("model_type", None)
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        sizes = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        self._at_least(1, *sizes, "num_key_value_heads")
        self._at_least(0, "loss_chunk_size", "num_experts", "shared_expert_intermediate_size")
        self._at_least(0, "router_aux_loss_coef", "router_z_loss_coef")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not divisible by "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(
                    f"hidden_size={self.hidden_size} is not divisible by num_attention_heads="
                    f"{self.num_attention_heads}; set head_dim explicitly"
                )
            self.head_dim = self.hidden_size // self.num_attention_heads
        self._at_least(1, "head_dim")
        if not 0 <= self.router_jitter_noise < 1:
            raise ValueError(f"router_jitter_noise must be in [0, 1), got {self.router_jitter_noise}")
        self.mlp_only_layers = list(self.mlp_only_layers or [])
        if self.output_router_logits is None:
            self.output_router_logits = self.num_experts > 0
        if self.num_experts:
            self._check_moe()
        super().__post_init__(**kwargs)

    def _at_least(self, minimum: int, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if value is None or value < minimum:
                bound = "a positive integer" if minimum == 1 else f">= {minimum}"
                raise ValueError(f"{name} must be {bound}, got {value}")

    def _check_moe(self) -> None:
        if not 1 <= self.num_experts_per_tok <= self.num_experts:
            raise ValueError(
                f"num_experts_per_tok={self.num_experts_per_tok} must be between 1 and num_experts={self.num_experts}"
            )
        self._at_least(1, "moe_intermediate_size", "decoder_sparse_step")
        outside = [i for i in self.mlp_only_layers if not 0 <= i < self.num_hidden_layers]
        if outside:
            raise ValueError(
                f"mlp_only_layers has layer indices {outside} outside 0..{self.num_hidden_layers - 1} "
                f"(num_hidden_layers={self.num_hidden_layers})"
            )
        if not any(self.is_moe_layer(i) for i in range(self.num_hidden_layers)):
            raise ValueError(
                f"num_experts={self.num_experts} but no layer is MoE (decoder_sparse_step={self.decoder_sparse_step}, "
                f"mlp_only_layers={self.mlp_only_layers}); set num_experts=0 for a dense model"
            )

    is_moe_layer = is_moe_layer  # the module function above, as a method


__all__ = ["MoaiConfig"]
