"""Bytes per device of a training run: weights, gradients, optimizer states, activations, loss buffers, overhead.

Pure Python (no torch): pretrain.sh plans from it before anything starts (`launch_plan.py`), train.py logs it at the
start of every run. Hand-written because no maintained library estimates a run for this model family, its fused loss
and the Trainer's engines (accelerate's `estimate-memory` and DeepSpeed's estimators count model states only).
docs/scaling.md lists what each engine holds per rank; tests/test_memory_model.py checks the estimate against
measured peaks.
"""

import json
import logging
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

ENGINES = ("ddp", "zero2", "zero3")
ATTENTION = {"flash": "flash_attention_2", "sdpa": "sdpa", "eager": "eager"}  # -> transformers' implementation
CUDA_CONTEXT_BYTES = 1.0e9  # CUDA context, cuBLAS/NCCL workspaces: outside the allocator's statistics
ALLOCATOR_OVERHEAD = 0.05  # caching allocator: reserved beyond allocated (expandable segments keep it low)
NF4_BYTES = 0.52  # bitsandbytes NF4 with double quantization: 4 bits + absmax scales per 64 weights


@dataclass(frozen=True)
class Shape:
    """The sizes of a MOAI (Qwen3 / Qwen3-MoE) model that memory depends on."""

    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    tied: bool = True
    experts: int = 0
    top_k: int = 0
    moe_intermediate: int = 0
    shared_intermediate: int = 0
    moe_layers: int = 0

    @classmethod
    def from_config(cls, config: dict) -> "Shape":
        """From a config.json mapping (MoaiConfig fields, Qwen3 names)."""
        layers, heads = config["num_hidden_layers"], config["num_attention_heads"]
        experts = config.get("num_experts") or config.get("num_local_experts") or 0
        step = max(1, config.get("decoder_sparse_step") or 1)
        dense_only = set(config.get("mlp_only_layers") or [])
        moe_layers = sum(1 for i in range(layers) if experts and i not in dense_only and (i + 1) % step == 0)
        return cls(
            vocab=config["vocab_size"],
            hidden=config["hidden_size"],
            layers=layers,
            heads=heads,
            kv_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            intermediate=config["intermediate_size"],
            tied=bool(config.get("tie_word_embeddings", True)),
            experts=experts,
            top_k=config.get("num_experts_per_tok") or 0,
            moe_intermediate=config.get("moe_intermediate_size") or 0,
            shared_intermediate=config.get("shared_expert_intermediate_size") or 0,
            moe_layers=moe_layers,
        )

    @classmethod
    def from_file(cls, path: str) -> "Shape":
        with open(path, encoding="utf-8") as handle:
            return cls.from_config(json.load(handle))

    @property
    def q(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv(self) -> int:
        return self.kv_heads * self.head_dim

    def attention_params(self) -> int:
        return 2 * self.hidden * (self.q + self.kv) + 2 * self.head_dim + 2 * self.hidden  # projections, norms

    def mlp_params(self, moe: bool) -> int:
        if not moe:
            return 3 * self.hidden * self.intermediate
        shared = 3 * self.hidden * self.shared_intermediate + (self.hidden if self.shared_intermediate else 0)
        return self.experts * 3 * self.hidden * self.moe_intermediate + self.hidden * self.experts + shared

    def layer_params(self, moe: bool) -> int:
        return self.attention_params() + self.mlp_params(moe)

    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)

    def params(self) -> int:
        dense = self.layers - self.moe_layers
        blocks = dense * self.layer_params(False) + self.moe_layers * self.layer_params(True)
        return blocks + self.embedding_params() + self.hidden  # + final norm

    def largest_unit(self) -> int:
        """Parameters of the largest FSDP unit: a decoder layer, or the embedding / head matrix."""
        return max(self.layer_params(self.moe_layers > 0), self.vocab * self.hidden)

    def lora_params(self, rank: int, targets: tuple[str, ...]) -> int:
        """Adapter parameters for LoRA rank `rank` on the named projections of every dense layer and attention."""
        h, q, kv, inter = self.hidden, self.q, self.kv, self.intermediate
        sizes = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h)}
        sizes.update({"gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)})
        per_layer = sum(rank * sum(sizes[name]) for name in targets if name in sizes)
        return self.layers * per_layer


@dataclass(frozen=True)
class Setup:
    """How the model is trained, as far as memory goes."""

    engine: str = "ddp"
    world: int = 1  # ranks the states are sharded over
    micro_batch: int = 1  # rows per device per micro-step
    seq_len: int = 4096
    mixed: bool = True  # bf16/fp16 autocast (fp32 master weights)
    gradient_checkpointing: bool = False
    attention: str = "flash"
    loss_chunk: int = 1024  # fused loss's tokens per chunk; 0: plain logits
    packed: bool = True  # several documents per row: sdpa / eager get a [batch, seq, seq] mask
    lora_rank: int = 0
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    qlora: bool = False
    cuda: bool = True

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise ValueError(f"engine {self.engine!r} is not one of {', '.join(ENGINES)}")
        if self.attention not in ATTENTION:
            raise ValueError(f"attention {self.attention!r} is not one of {', '.join(ATTENTION)}")


@dataclass
class Estimate:
    """Bytes per device by item; `tensor_bytes` compares with a measured tensor peak, `total` with the card."""

    items: dict[str, float] = field(default_factory=dict)

    @property
    def tensor_bytes(self) -> float:
        return sum(v for k, v in self.items.items() if k not in ("allocator overhead", "CUDA context"))

    @property
    def total(self) -> float:
        return sum(self.items.values())

    def lines(self) -> list[str]:
        """One `item: N.NN GB` line per item, then the total."""
        rows = [f"{name}: {value / 1e9:.2f} GB" for name, value in self.items.items() if value]
        return [*rows, f"total: {self.total / 1e9:.2f} GB"]


def layer_activation_bytes(shape: Shape, setup: Setup, moe: bool) -> float:
    """Bytes autograd keeps per token for one decoder layer until backward.

    Norms compute in fp32 and keep their input and normalised output (8h each, per norm); with autocast every
    projection keeps its own bf16 copy of its input (q, k, v, gate, up: 2h each), without it the fp32 input once.
    q and k: projection output, q/k-norm input and output, RoPE output; v once; attention output and o_proj's
    input. The MLP keeps gate, SiLU, up and their product (4I).
    """
    h, q, kv, a = shape.hidden, shape.q, shape.kv, 2 if setup.mixed else 4
    if setup.mixed:
        norms, attention, mlp_inputs = 16 * h + 6 * h, 12 * q + 10 * kv, 4 * h
    else:
        norms, attention, mlp_inputs = 16 * h + 4 * h, 20 * q + 16 * kv, 4 * h
    attention += 4 * shape.heads  # log-sum-exp
    if setup.attention == "eager":  # scores (fp32 softmax) and probabilities: [heads, seq] per token
        attention += shape.heads * setup.seq_len * (4 + a)
    if not moe:
        mlp = 4 * a * shape.intermediate
    else:
        routed = shape.top_k * (2 * h + 5 * shape.moe_intermediate) * a  # gathered input, gate/up, act, product
        mlp = routed + 8 * shape.experts + 4 * a * shape.shared_intermediate
    lora = 0.0
    if setup.lora_rank:  # peft's dropout keeps its output and mask for every adapted projection
        widths = {"q_proj": h, "k_proj": h, "v_proj": h, "o_proj": q, "gate_proj": h, "up_proj": h}
        widths["down_proj"] = shape.intermediate
        lora = sum((a + 1) * widths.get(name, 0) for name in setup.lora_targets)
    return norms + attention + mlp_inputs + mlp + lora


def estimate(shape: Shape, setup: Setup) -> Estimate:
    """Peak bytes per device of one training step (the end of forward / start of backward, with the gradients of
    the previous micro-batches of gradient accumulation alive), by item."""
    n = setup.world if setup.engine != "ddp" else 1
    params = shape.params()
    items: dict[str, float] = {}
    if setup.lora_rank or setup.qlora:
        trainable = shape.lora_params(setup.lora_rank or 16, setup.lora_targets)
        base_bytes = 2 if (setup.mixed and setup.cuda) else 4
        if setup.qlora:
            linear = params - shape.embedding_params() - shape.hidden * (2 * shape.layers + 1)
            items["frozen base weights"] = NF4_BYTES * linear + base_bytes * (params - linear)
        else:
            items["frozen base weights"] = base_bytes * params / n
        items["trainable weights (fp32)"] = 4 * trainable / n
    else:
        trainable = params
        items["weights (fp32)"] = 4 * params / n
        if setup.engine == "zero2" and setup.mixed:
            items["gathered bf16 weights"] = 2 * params
        elif setup.engine == "ddp" and setup.mixed:
            items["bf16 weight copies (autocast cache)"] = 2 * params
    items["gradients (fp32)"] = 4 * trainable / n
    items["AdamW states (fp32)"] = 8 * trainable / n
    a = 2 if setup.mixed else 4
    if setup.engine == "zero3":
        items["gathered units (FSDP)"] = 2 * a * shape.largest_unit() + 4 * shape.largest_unit()
    elif setup.engine == "zero2":
        items["gathered units (FSDP)"] = 4 * shape.largest_unit()

    tokens = setup.micro_batch * setup.seq_len
    dense_layers = shape.layers - shape.moe_layers
    per_layer = [layer_activation_bytes(shape, setup, False)] * dense_layers
    per_layer += [layer_activation_bytes(shape, setup, True)] * shape.moe_layers
    if setup.gradient_checkpointing:  # each layer's input (fp32 residual stream); a layer is recomputed in backward
        # Non-reentrant checkpointing frees recomputed tensors as backward unpacks them: on CPU the recomputed layer
        # and its gradients peak at about 1.5 layers of activations, not 2 (tests/test_memory_model.py).
        saved, recomputed = shape.layers * 4 * shape.hidden, max(per_layer) / 2
    else:
        saved, recomputed = sum(per_layer), 0
    items["activations"] = tokens * (saved + 12 * shape.hidden)  # + the final norm's
    if setup.packed and setup.attention != "flash":
        items["attention mask"] = setup.micro_batch * setup.seq_len * setup.seq_len  # bool [batch, seq, seq]
    head_trains = not (setup.lora_rank or setup.qlora)
    # The peak is at the end of forward (the loss's logits) or in backward (a layer's gradients, and its
    # recomputed activations with checkpointing), whichever is larger; both hold the items above.
    backward = tokens * (max(per_layer) + recomputed)
    if setup.loss_chunk > 0:
        forward = min(tokens, setup.loss_chunk) * shape.vocab * (4 + (2 if setup.mixed else 0))
        items["fused loss: hidden gradient"] = tokens * 4 * shape.hidden
        if head_trains:
            items["fused loss: head gradient (fp32)"] = 4 * shape.vocab * shape.hidden
        forward_name = "fused loss: logits chunk"
    else:  # logits kept for backward, then their gradient, plus fp32 blocks of the chunked objective
        items["logits"] = tokens * shape.vocab * a
        forward = tokens * shape.vocab * a + min(tokens, 2048) * shape.vocab * 4
        backward += tokens * shape.vocab * a
        forward_name = "logits gradient"
    if forward >= backward:
        items[f"peak at end of forward: {forward_name}"] = forward
    else:
        name = "a layer's gradients" + (" and recomputed activations" if recomputed else "")
        items[f"peak in backward: {name}"] = backward
    if setup.cuda:
        items["allocator overhead"] = ALLOCATOR_OVERHEAD * sum(items.values())
        items["CUDA context"] = CUDA_CONTEXT_BYTES
    return Estimate(items)


def setup_for_run(config, model_args, data_args, training_args, cuda: bool) -> Setup:
    """The `Setup` of a train.py run from its resolved arguments and model config (no torch needed)."""
    engine = "ddp"
    if training_args.fsdp:
        reshard = (training_args.fsdp_config or {}).get("reshard_after_forward", True)
        engine = "zero2" if reshard in (False, "false", "SHARD_GRAD_OP") else "zero3"
    elif training_args.deepspeed:
        deepspeed = training_args.deepspeed
        if isinstance(deepspeed, str):
            with open(deepspeed, encoding="utf-8") as handle:
                deepspeed = json.load(handle)
        engine = "zero3" if deepspeed.get("zero_optimization", {}).get("stage") == 3 else "zero2"
    implementation = getattr(config, "_attn_implementation", None)
    attention = next((name for name, value in ATTENTION.items() if value == implementation), "sdpa")
    lora = model_args.use_lora or model_args.use_qlora
    return Setup(
        engine=engine,
        world=max(1, training_args.world_size),
        micro_batch=training_args.per_device_train_batch_size,
        seq_len=data_args.max_seq_length,
        mixed=bool(training_args.bf16 or training_args.fp16),
        gradient_checkpointing=bool(
            getattr(training_args, "activation_checkpointing", None) or training_args.gradient_checkpointing
        ),
        attention=attention,
        loss_chunk=getattr(config, "loss_chunk_size", 0) or 0,
        packed=data_args.packing,
        lora_rank=model_args.lora_r if lora else 0,
        lora_targets=tuple(name.strip() for name in model_args.lora_target_modules.split(",") if name.strip()),
        qlora=model_args.use_qlora,
        cuda=cuda,
    )


def log_estimate(config: dict, setup: Setup) -> Estimate | None:
    """Log the estimate of a run by item (train.py, at the start); None for a config this model cannot read."""
    try:
        shape = Shape.from_config(config)
    except (KeyError, TypeError) as err:
        logger.info("memory estimate: not available for this model config (%s missing)", err)
        return None
    found = estimate(shape, setup)
    ckpt = ", gradient checkpointing" if setup.gradient_checkpointing else ""
    run = f"{setup.engine} over {setup.world}, micro-batch {setup.micro_batch} x {setup.seq_len} tokens"
    logger.info(
        "memory estimate per device (%s, %s attention%s): %s", run, setup.attention, ckpt, "; ".join(found.lines())
    )
    return found
