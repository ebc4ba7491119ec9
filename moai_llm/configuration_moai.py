"""MoaiConfig: Qwen3Config's fields and meanings, plus the switches MOAI adds.

Only the differences from Qwen3 live here: optional QK-norm, an explicit-or-derived head_dim, the legacy
`rope_scaling` YaRN form, and validation that names the offending field instead of failing deep in the model.
"""

from huggingface_hub.dataclasses import strict
from transformers.models.qwen3.configuration_qwen3 import Qwen3Config

from .losses import create_loss_function

# Legacy YaRN keys some MOAI/moellama configs used, mapped to transformers' names.
_LEGACY_YARN_KEYS = {"alpha": "beta_slow", "beta": "beta_fast", "type": "rope_type"}
_KNOWN_ROPE_TYPES = {"default", "linear", "dynamic", "yarn", "longrope", "llama3"}


def _normalise_rope(rope: dict | None) -> dict | None:
    """Rename legacy keys and insist on what YaRN cannot guess (its pretraining context length)."""
    if rope is None:
        return None
    rope = {_LEGACY_YARN_KEYS.get(key, key): value for key, value in rope.items()}
    rope_type = rope.setdefault("rope_type", "default")
    if rope_type not in _KNOWN_ROPE_TYPES:
        raise ValueError(f"rope_parameters.rope_type={rope_type!r} is not one of {sorted(_KNOWN_ROPE_TYPES)}")
    if rope_type == "yarn":
        if "original_max_position_embeddings" not in rope:
            raise ValueError(
                "rope_parameters: YaRN needs original_max_position_embeddings (the pretraining context length); "
                "it is not guessed from max_position_embeddings"
            )
        if "factor" not in rope:
            raise ValueError("rope_parameters: YaRN needs factor (the context extension ratio)")
    return rope


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
        The training objective, as `moai_llm.losses.create_loss_function` takes it, e.g.
        `{"type": "multi_objective", "params": {"ce_weight": 1.0, "focal_weight": 0.5}}`. None = cross-entropy.
    """

    model_type = "moai"

    num_key_value_heads: int | None = None
    head_dim: int | None = None
    use_qk_norm: bool = True
    loss_chunk_size: int = 1024
    loss_config: dict | None = None

    def __post_init__(self, **kwargs):
        rope = kwargs.pop("rope_scaling", None) or self.rope_parameters
        self.rope_parameters = _normalise_rope(dict(rope) if rope else None)
        self._check_sizes()
        create_loss_function(self.loss_config)  # a bad loss config fails here, naming the field
        super().__post_init__(**kwargs)

    def _check_sizes(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
            value = getattr(self, name)
            if value is None or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.num_key_value_heads <= 0:
            raise ValueError(f"num_key_value_heads must be a positive integer, got {self.num_key_value_heads}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not divisible by "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.loss_chunk_size is None or self.loss_chunk_size < 0:
            raise ValueError(f"loss_chunk_size must be >= 0 (0 = plain loss), got {self.loss_chunk_size}")
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(
                    f"hidden_size={self.hidden_size} is not divisible by num_attention_heads="
                    f"{self.num_attention_heads}; set head_dim explicitly"
                )
            self.head_dim = self.hidden_size // self.num_attention_heads
        elif self.head_dim <= 0:
            raise ValueError(f"head_dim must be a positive integer, got {self.head_dim}")


__all__ = ["MoaiConfig"]
