"""MoaiForCausalLM: transformers' Qwen3, written as its `modular_qwen3.py` is: subclass the Qwen3 modules and write
only the difference. Parameter names are Qwen3's, so dense checkpoints move between the two with `strict=True`.
- `MoaiRMSNorm` picks its backend once: flash-attn's fused Triton kernel on CUDA, else Qwen3's torch path.
- `use_qk_norm=False` removes q_norm/k_norm (no parameters), `True` is Qwen3 exactly.
- Packed rows (`position_ids` restarting inside a row) stay isolated on every attention backend, also when an
  attention mask is passed or a cache is in use, where stock transformers only detects packing with neither.
- With `num_experts > 0` the feed-forward of the chosen layers is a Qwen3-MoE block (moe.py); the outputs then
  are Qwen3-MoE's, plus router z-loss and expert load.
- With labels, the loss is the fused chunked one (losses.py), computed inside the `lm_head` module's forward
  (`MoaiLMHead`), so FSDP2 / ZeRO-3 gather a sharded output weight for it; no `[tokens, vocab]` logits exist.
This file imports only torch, transformers and flat siblings, so `save_pretrained` can ship it as remote code.
"""

import functools

import torch
from torch import nn
from transformers.cache_utils import Cache
from transformers.masking_utils import (
    create_causal_mask,
    create_sliding_window_causal_mask,
    find_packed_sequence_indices,
    packed_sequence_mask_function,
)
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast, MoeModelOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep
from transformers.models.qwen3.modeling_qwen3 import (
    Qwen3Attention,
    Qwen3DecoderLayer,
    Qwen3ForCausalLM,
    Qwen3MLP,
    Qwen3Model,
    Qwen3PreTrainedModel,
    Qwen3RMSNorm,
    Qwen3RotaryEmbedding,
)
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoePreTrainedModel
from transformers.utils import can_return_tuple, logging
from transformers.utils.output_capturing import OutputRecorder

from .batch_format import IGNORE_INDEX, flash_varlen_kwargs
from .configuration_moai import MoaiConfig
from .losses import Objective, causal_lm_loss, chunked_cross_entropy_loss, objective_from_spec
from .moe import MoaiTopKRouter, moe_block, moe_causal_lm_output

logger = logging.get_logger(__name__)


@functools.cache
def fused_rms_norm():
    """flash-attn's Triton RMSNorm when CUDA is present and flash-attn importable, else None; decided once."""
    rms_norm_fn = None
    if torch.cuda.is_available():
        try:
            from flash_attn.ops.triton.layer_norm import rms_norm_fn
        except ImportError:
            pass
    logger.info("MoaiRMSNorm backend: %s", "flash-attn triton" if rms_norm_fn else "torch (fp32 upcast)")
    return rms_norm_fn


class MoaiRMSNorm(Qwen3RMSNorm):
    """Qwen3RMSNorm, through flash-attn's fused kernel for CUDA tensors when it is installed."""

    def __init__(self, hidden_size, eps: float = 1e-6) -> None:
        super().__init__(hidden_size, eps=eps)
        self.fused = fused_rms_norm()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.fused is not None and hidden_states.is_cuda:
            return self.fused(hidden_states, self.weight, None, eps=self.variance_epsilon)
        return super().forward(hidden_states)


class MoaiAttention(Qwen3Attention):
    """Qwen3 attention; QK-norm is optional and uses MoaiRMSNorm."""

    def __init__(self, config: MoaiConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        if config.use_qk_norm:
            self.q_norm = MoaiRMSNorm(self.head_dim, eps=config.rms_norm_eps)
            self.k_norm = MoaiRMSNorm(self.head_dim, eps=config.rms_norm_eps)
        else:
            self.q_norm = nn.Identity()
            self.k_norm = nn.Identity()


class MoaiDecoderLayer(Qwen3DecoderLayer):
    def __init__(self, config: MoaiConfig, layer_idx: int):
        # Skip Qwen3DecoderLayer.__init__: it would build a Qwen3 attention and norms only to replace them.
        GradientCheckpointingLayer.__init__(self)
        self.hidden_size = config.hidden_size
        self.self_attn = MoaiAttention(config=config, layer_idx=layer_idx)
        self.mlp = moe_block(config) if config.is_moe_layer(layer_idx) else Qwen3MLP(config)
        self.input_layernorm = MoaiRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = MoaiRMSNorm(config.hidden_size, eps=config.rms_norm_eps)


class MoaiPreTrainedModel(Qwen3PreTrainedModel, Qwen3MoePreTrainedModel):
    """Qwen3's pretrained-model class, with Qwen3-MoE's weight init for the experts and router."""

    config_class = MoaiConfig
    config: MoaiConfig
    _no_split_modules = ["MoaiDecoderLayer"]
    _can_record_outputs = {
        "hidden_states": MoaiDecoderLayer,
        "attentions": MoaiAttention,
        "router_logits": OutputRecorder(MoaiTopKRouter, index=0),
    }
    _auto_class_name = "AutoModel"  # what save_pretrained's auto_map names this class under
    # The experts are transformers' `Qwen3MoeExperts` (moe.py); transformers' own check only greps this file for
    # `@use_experts_implementation`, and would leave MoE models on the slow eager experts loop.
    _can_set_experts_implementation_cached_value = True

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """Safetensors only: never unpickle a checkpoint."""
        kwargs.setdefault("use_safetensors", True)
        return super().from_pretrained(*args, **kwargs)

    def save_pretrained(self, *args, **kwargs):
        """Also writes this code and an `auto_map`, so the checkpoint loads with `trust_remote_code=True`.

        The auto classes are registered only while saving: a registered class counts as remote code, which
        `GenerationMixin` re-inspects at every decoding step (benchmarks/README.md, Model). FSDP2's `fully_shard`
        swaps in a generated `FSDP<Name>` class from torch; while saving the model is its own class again, so the
        `auto_map` and the shipped code name MOAI's class."""
        sharded_class = type(self)
        own_class = next(cls for cls in sharded_class.__mro__ if not cls.__module__.startswith("torch."))
        auto_classes = {type(self.config): "AutoConfig", own_class: self._auto_class_name}
        previous = {cls: cls.__dict__.get("_auto_class") for cls in auto_classes}
        for cls, name in auto_classes.items():
            cls._auto_class = previous[cls] or name
        self.__class__ = own_class
        try:
            return super().save_pretrained(*args, **kwargs)
        finally:
            self.__class__ = sharded_class
            for cls, name in previous.items():
                cls._auto_class = name


def packed_document_ids(position_ids: torch.Tensor | None, cache: Cache | None, batch_size: int):
    """Document index of every token when `position_ids` restart inside a row ([batch, seq]), in a fresh forward
    only (decoding steps extend one sequence; continuous batching's paged cache brings its own masks); else None."""
    if position_ids is None or position_ids.shape[-1] < 2:
        return None
    if cache is not None and (not isinstance(cache, Cache) or cache.get_seq_length() > 0):
        return None
    return find_packed_sequence_indices(position_ids.expand(batch_size, -1))


class MoaiModel(MoaiPreTrainedModel, Qwen3Model):
    def __init__(self, config: MoaiConfig):
        # Skip Qwen3Model.__init__: it would build Qwen3 layers only to replace them.
        MoaiPreTrainedModel.__init__(self, config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList([MoaiDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = MoaiRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = Qwen3RotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.has_sliding_layers = "sliding_attention" in config.layer_types
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | dict | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ):
        if "past_key_values" in kwargs:
            cache = kwargs.pop("past_key_values")
        if inputs_embeds is None and input_ids is not None:
            inputs_embeds = self.embed_tokens(input_ids)
            input_ids = None
        if inputs_embeds is not None and not isinstance(attention_mask, dict):
            doc_ids = packed_document_ids(position_ids, cache, inputs_embeds.shape[0])
            if doc_ids is not None:
                attention_mask = self._packed_masks(inputs_embeds, attention_mask, position_ids, cache, doc_ids, kwargs)
        outputs = super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        if self.config.num_experts and isinstance(outputs, BaseModelOutputWithPast):
            outputs = MoeModelOutputWithPast(**outputs)  # as Qwen3-MoE: router_logits when recorded
        return outputs

    def _packed_masks(self, inputs_embeds, attention_mask, position_ids, cache, doc_ids, kwargs):
        """Masks that keep each packed document to itself; for flash, varlen boundaries instead of a mask."""
        if "flash" in (self.config._attn_implementation or ""):
            if "cu_seq_lens_q" not in kwargs:
                kwargs.update(flash_varlen_kwargs(position_ids.expand(inputs_embeds.shape[0], -1)))
            return None
        mask_kwargs = {
            "config": self.config,
            "inputs_embeds": inputs_embeds,
            "attention_mask": attention_mask,
            "cache": cache,
            # No position_ids: transformers would remap mask indices to positions, which the document mask
            # (indexed by token) must not see. The document mask already carries all that packing needs.
            "position_ids": None,
            "and_mask_function": packed_sequence_mask_function(doc_ids),
        }
        masks = {"full_attention": create_causal_mask(**mask_kwargs)}
        if self.has_sliding_layers:
            masks["sliding_attention"] = create_sliding_window_causal_mask(**mask_kwargs)
        return masks


class MoaiLMHead(nn.Linear):
    """The output projection `nn.Linear(hidden, vocab)`; called with labels it returns the fused chunked loss, inside
    its own forward, where FSDP2 and ZeRO-3 have gathered the sharded weight (outside it is a shard or empty)."""

    def forward(self, hidden_states: torch.Tensor, labels: torch.Tensor | None = None, **loss_kwargs) -> torch.Tensor:
        if labels is None:
            return super().forward(hidden_states)  # logits [..., vocab]
        return causal_lm_loss(hidden_states, self.weight, labels, lm_head_bias=self.bias, **loss_kwargs)


class MoaiForCausalLM(MoaiPreTrainedModel, Qwen3ForCausalLM):
    _auto_class_name = "AutoModelForCausalLM"

    def __init__(self, config: MoaiConfig):
        objective_from_spec(config.loss_config)  # a bad loss config fails here, naming the field
        # Skip Qwen3ForCausalLM.__init__: it would build a whole Qwen3Model only to replace it.
        MoaiPreTrainedModel.__init__(self, config)
        self.model = MoaiModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = MoaiLMHead(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def set_output_embeddings(self, new_embeddings):
        """`resize_token_embeddings` builds a plain `nn.Linear`; it becomes a MoaiLMHead (no extra state) so the loss
        stays fused. Any other module (a peft LoRA wrapper, say) is kept, and the loss then goes through its logits."""
        if type(new_embeddings) is nn.Linear:
            new_embeddings.__class__ = MoaiLMHead
        self.lm_head = new_embeddings

    def prepare_inputs_for_generation(self, *args, **kwargs):
        """`generate` returns no router logits: MoE models skip the router losses while decoding unless asked."""
        inputs = super().prepare_inputs_for_generation(*args, **kwargs)
        if self.config.num_experts:
            inputs.setdefault("output_router_logits", False)
        return inputs

    @can_return_tuple
    def _logits_loss(self, logits, labels, shift_labels=None, num_items_in_batch=None, **kwargs):
        """The loss on full logits (`loss_chunk_size=0`, or a head that is not a `MoaiLMHead`, e.g. LoRA on
        lm_head): transformers' loss for plain cross-entropy, else the configured objective (focal, smoothing,
        z-loss) on the same logits, chunk by chunk, so no objective is dropped when the fused loss is off."""
        objective = objective_from_spec(self.config.loss_config)
        if objective == Objective():
            return self.loss_function(
                logits=logits,
                labels=labels,
                vocab_size=self.config.vocab_size,
                shift_labels=shift_labels,
                num_items_in_batch=num_items_in_batch,
                **kwargs,
            )
        if shift_labels is None:  # [batch, seq], shifted as transformers does
            shift_labels = nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
        return chunked_cross_entropy_loss(
            logits, shift_labels.to(logits.device), num_items_in_batch=num_items_in_batch, objective=objective
        )

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        return_logits: bool = False,
        output_router_logits: bool | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Qwen3's forward (Qwen3-MoE's with `num_experts > 0`), except that with labels the loss is the fused chunked
        one (config.loss_chunk_size > 0) and `logits` is None unless `return_logits=True`. MoE models return
        `MoaiMoeCausalLMOutputWithPast`, with the router losses in `loss` when `output_router_logits`."""
        if "past_key_values" in kwargs:
            cache = kwargs.pop("past_key_values")
        if self.config.num_experts:
            kwargs["output_router_logits"] = (
                self.config.output_router_logits if output_router_logits is None else output_router_logits
            )
        fused = labels is not None and self.config.loss_chunk_size > 0 and isinstance(self.lm_head, MoaiLMHead)
        loss_kwargs = {name: kwargs.pop(name, None) for name in ("shift_labels", "num_items_in_batch")}
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state  # [batch, seq, hidden]
        loss = logits = None
        if fused:
            chunk_size, loss_config = self.config.loss_chunk_size, self.config.loss_config
            loss = self.lm_head(hidden_states, labels, chunk_size=chunk_size, loss_config=loss_config, **loss_kwargs)
        if return_logits or not fused:
            logits = self.lm_head(slice_logits_to_keep(hidden_states, logits_to_keep))  # [batch, kept, vocab]
        if labels is not None and not fused:
            loss = self._logits_loss(logits, labels, **loss_kwargs, **kwargs)
        if self.config.num_experts:
            return moe_causal_lm_output(self.config, loss, logits, outputs, input_ids, attention_mask)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


__all__ = ["MoaiForCausalLM", "MoaiLMHead", "MoaiModel", "MoaiPreTrainedModel", "MoaiRMSNorm"]
