"""What every rank must agree on before training starts: how the run was launched, and which checkpoint resumes it.

Without a shared filesystem a rank resolving `--resume_from_checkpoint auto` alone could start fresh while the
others resume (drifting replicas, or a deadlock): rank 0 decides, every rank checks it can read that checkpoint.
"""

import logging
import os
import socket

import torch.distributed as dist

from ..errors import UsageError
from ..loading import COMPLETE_MARKER
from .trainer import latest_complete_checkpoint

logger = logging.getLogger(__name__)
NO_RESUME = (None, "", "false", "False", "no")


def data_parallel_error(n_gpu: int) -> str | None:
    """Why one process must not drive several GPUs, or None: without torchrun the Trainer wraps the model in
    `nn.DataParallel`, which splits the packed collator's 1-D `cu_seq_lens` too (wrong document boundaries)."""
    if n_gpu <= 1:
        return None
    return (
        f"{n_gpu} GPUs are visible but train.py was not started by torchrun, and nn.DataParallel would split packed "
        f"batches wrongly: run ./pretrain.sh (NUM_GPUS={n_gpu}) or torchrun --nproc_per_node {n_gpu} train.py ..., "
        "or pick one GPU with CUDA_VISIBLE_DEVICES=0"
    )


def node_name() -> str:
    """This process's node for error messages: host name, node rank and global rank as torchrun set them."""
    node_rank = os.environ.get("GROUP_RANK", os.environ.get("NODE_RANK", "0"))
    return f"{socket.gethostname()} (node rank {node_rank}, rank {os.environ.get('RANK', '0')})"


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def from_rank_zero(value):
    """Rank 0's `value` on every rank (picklable; the value itself when not distributed)."""
    if not _distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def require_on_every_rank(present: bool, path: str, what: str) -> None:
    """Collective: unless `present` holds on every rank, every rank raises one UsageError naming each node (and its
    path) where it does not, so no rank goes on alone into a collective the others never join."""
    mine = None if present else (node_name(), path)
    values = [mine]
    if _distributed():
        values = [None] * dist.get_world_size()
        dist.all_gather_object(values, mine)
    missing = [entry for entry in values if entry is not None]
    if missing:
        places = "; ".join(f"node {node}: {where}" for node, where in missing)
        raise UsageError(
            f"{what} is missing or incomplete on {places}; put output_dir on a shared filesystem, or save with "
            "--save_on_each_node true (DDP) / copy it to every node"
        )


def resolve_resume(training_args) -> str | None:
    """The checkpoint to resume from, the same on every rank, or None to start fresh. `auto`: rank 0's latest
    complete checkpoint, looked for by name in every rank's output_dir; any rank missing it stops them all."""
    value = training_args.resume_from_checkpoint
    if value in NO_RESUME:
        return None
    is_main = training_args.process_index == 0  # also sets up the process group under torchrun
    if value == "auto":
        latest = latest_complete_checkpoint(training_args.output_dir) if is_main else None
        name = from_rank_zero(os.path.basename(latest) if latest else None)
        if name is None:
            logger.info("resume auto: no complete checkpoint in %s, starting fresh", training_args.output_dir)
            return None
        path = os.path.join(training_args.output_dir, name)
        require_on_every_rank(
            os.path.isfile(os.path.join(path, COMPLETE_MARKER)),
            path,
            f"--resume_from_checkpoint auto: {name} (the latest complete checkpoint on rank 0)",
        )
    else:
        path = value
        if not _distributed() and not os.path.isdir(path):
            raise UsageError(f"--resume_from_checkpoint {path}: directory not found")
        require_on_every_rank(os.path.isdir(path), path, f"--resume_from_checkpoint {path}")
    logger.info("resuming from %s", path)
    return path
