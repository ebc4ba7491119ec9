#!/usr/bin/env bash
# Launch pretraining with torchrun, from one GPU to many nodes (DDP, FSDP or DeepSpeed through the HF Trainer),
# or as CPU processes over gloo on a machine with no GPU. Every setting is an environment variable (docs/scaling.md
# lists them with their defaults); anything after `--` goes to train.py unchanged, except a flag this script passes
# itself (refused, naming the variable that sets it).
#
#   NUM_GPUS=8 ./pretrain.sh
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 MODEL_SIZE=3b ./pretrain.sh -- --learning_rate 2e-4
#   DRY_RUN=1 NUM_GPUS=8 GPU_MEMORY=80 MODEL_SIZE=3b ./pretrain.sh
set -euo pipefail

die() { echo "pretrain.sh: error: $*" >&2; exit 2; }
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python}"

# nvidia-smi's memory.total in MiB -> the card's nominal GB: the usable size reads below the label (an 80 GB H100
# reports 81,559 MiB = 79.6 GiB, a 24 GB L4 or A10G 23,028 MiB = 22.5 GiB), so take the smallest nominal size at
# or above it when it is within 10%; otherwise whole GiB.
nominal_gb() {
  awk 'NR == 1 { gib = $1 / 1024; n = split("6 8 10 11 12 16 20 24 32 40 48 80 94 96 141 144 180 192 288", sizes, " ")
         for (i = 1; i <= n; i++) if (sizes[i] >= gib) { if (sizes[i] <= gib * 1.1) { print sizes[i]; next } break }
         printf "%d\n", gib }'
}

# A path the caller gave (relative to their directory) or a default (relative to the repo), made absolute once,
# since torchrun starts from the repo directory. Prints it if the file "$1$2" exists there, else fails.
absolute_path() {  # PATH [SUFFIX]
  local candidate candidates=("$1")
  [[ "$1" = /* ]] || candidates=("$PWD/$1" "$here/$1")
  for candidate in "${candidates[@]}"; do
    if [ -f "$candidate${2:-}" ]; then
      printf '%s' "$candidate"
      return 0
    fi
  done
  return 1
}

positive_integers() {  # NAME...: each one that is set must be a positive integer
  local name
  for name; do
    [ -z "${!name:-}" ] || [[ "${!name}" =~ ^[1-9][0-9]*$ ]] || die "$name=${!name} is not a positive integer"
  done
}

TRAIN_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --) shift; TRAIN_ARGS=("$@"); break ;;
    *) die "unexpected argument '$1' (settings are environment variables; train.py flags go after --)" ;;
  esac
done

# ---- hardware --------------------------------------------------------------------------------------------
GPUS_FOUND=0
DETECTED_MEMORY=""
DETECTED_NAME=""
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  GPUS_FOUND=$(nvidia-smi -L | grep -c '^GPU ' || true)
  DETECTED_MEMORY=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | nominal_gb)
  DETECTED_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader | awk 'NR == 1')  # all read: no SIGPIPE
fi
DRY_RUN="${DRY_RUN:-0}"
ALLOW_CPU="${ALLOW_CPU:-0}"
GPU_NAME="${GPU_NAME:-$DETECTED_NAME}"

if [ -z "${NUM_GPUS:-}" ]; then
  if [ "$GPUS_FOUND" -gt 0 ]; then NUM_GPUS=$GPUS_FOUND
  elif [ "$ALLOW_CPU" = 1 ]; then NUM_GPUS=2
  else die "no GPU found; set ALLOW_CPU=1 to run 2 CPU processes (gloo), or NUM_GPUS with DRY_RUN=1 to plan a run"
  fi
fi
positive_integers NUM_GPUS

DEVICE=cuda
if [ "$GPUS_FOUND" -eq 0 ] && [ "$DRY_RUN" != 1 ]; then
  [ "$ALLOW_CPU" = 1 ] || die "NUM_GPUS=$NUM_GPUS but no GPU was found; set ALLOW_CPU=1 to run $NUM_GPUS CPU processes over gloo"
  DEVICE=cpu
elif [ "$GPUS_FOUND" -gt 0 ] && [ "$NUM_GPUS" -gt "$GPUS_FOUND" ]; then
  die "NUM_GPUS=$NUM_GPUS is more than the $GPUS_FOUND GPU(s) found"
fi
GPU_MEMORY="${GPU_MEMORY:-$DETECTED_MEMORY}"
if [ "$DEVICE" = cuda ]; then
  [ -n "$GPU_MEMORY" ] || die "GPU_MEMORY is unset and could not be read from nvidia-smi; set it in GB (e.g. GPU_MEMORY=80)"
  [[ "$GPU_MEMORY" =~ ^[1-9][0-9]*$ ]] || die "GPU_MEMORY=$GPU_MEMORY is not a whole number of GB"
fi

# ---- batch table -----------------------------------------------------------------------------------------
# configs/batch_table.yaml (or BATCH_TABLE) holds, per MODEL_SIZE, the model config, sequence length and target
# effective batch (and optionally a micro-batch override by GPU memory); the helper reads and checks it without
# importing torch. The engine, micro-batch and checkpointing are planned below from the memory model.
MODEL_SIZE="${MODEL_SIZE:-tiny}"
BATCH_TABLE="${BATCH_TABLE:-configs/batch_table.yaml}"
found=$(absolute_path "$BATCH_TABLE") || die "BATCH_TABLE=$BATCH_TABLE: file not found"
BATCH_TABLE=$found
memory=$([ "$DEVICE" = cpu ] && echo cpu || echo "$GPU_MEMORY")
plan=$("$PYTHON" "$here/moai_llm/training/batch_table.py" "$BATCH_TABLE" "$MODEL_SIZE" "$memory" 2>&1) || die "$plan"
{ read -r config; read -r seq; read -r target; read -r table_micro; } <<< "$plan"
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
EFFECTIVE_BATCH="${EFFECTIVE_BATCH:-$target}"
SEQ_LEN="${SEQ_LEN:-$seq}"
MAX_STEPS="${MAX_STEPS:-}"
positive_integers NNODES BATCH_SIZE EFFECTIVE_BATCH GRADIENT_ACCUMULATION_STEPS SEQ_LEN MAX_STEPS
[[ "$NODE_RANK" =~ ^[0-9]+$ ]] && [ "$NODE_RANK" -lt "$NNODES" ] || die "NODE_RANK=$NODE_RANK must be in 0..$((NNODES - 1))"
WORLD_SIZE=$((NUM_GPUS * NNODES))

# ---- paths -----------------------------------------------------------------------------------------------
MODEL_CONFIG="${MODEL_CONFIG:-$config}"
TOKENIZER_PATH="${TOKENIZER_PATH:-moai_llm/assets/tokenizer}"
if [ -n "${OUTPUT_DIR:-}" ]; then
  [[ "$OUTPUT_DIR" = /* ]] || OUTPUT_DIR="$PWD/$OUTPUT_DIR"
else
  OUTPUT_DIR="outputs/pretrain-$MODEL_SIZE"  # under the repo
fi
RESUME="${RESUME:-auto}"
found=$(absolute_path "$MODEL_CONFIG") || die "MODEL_CONFIG=$MODEL_CONFIG: file not found"
MODEL_CONFIG=$found
found=$(absolute_path "$TOKENIZER_PATH" /tokenizer.json) \
  || die "TOKENIZER_PATH=$TOKENIZER_PATH: no tokenizer.json there (train one with train_tokenizer.py)"
TOKENIZER_PATH=$found
if [ -n "${DATA_CONFIG:-}" ]; then
  found=$(absolute_path "$DATA_CONFIG") || die "DATA_CONFIG=$DATA_CONFIG: file not found"
  DATA_CONFIG=$found
fi

# ---- memory plan ---------------------------------------------------------------------------------------
# On GPUs: the cheapest engine, the largest micro-batch and checkpointing only when needed, from the memory model
# (moai_llm/training/launch_plan.py, no torch import); what the user set is kept, and refused when it cannot fit
# (FORCE_PLAN=1 launches it anyway). CPU processes: DDP and the table's cpu_micro_batch.
GRADIENT_CHECKPOINTING="${GRADIENT_CHECKPOINTING:-}"
[ -z "$GRADIENT_CHECKPOINTING" ] || [[ "$GRADIENT_CHECKPOINTING" =~ ^[01]$ ]] || die "GRADIENT_CHECKPOINTING=$GRADIENT_CHECKPOINTING is not 0 or 1"
case "${PARALLEL:-}" in
  "" | ddp | fsdp_grad_op | fsdp | deepspeed) ;;
  *) die "PARALLEL=$PARALLEL is not one of ddp fsdp_grad_op fsdp deepspeed" ;;
esac
DEEPSPEED_CONFIG="${DEEPSPEED_CONFIG:-configs/deepspeed_zero2.json}"
PLAN_REPORT=""
ESTIMATE_GB=""
if [ "$DEVICE" = cpu ]; then
  BATCH_SIZE="${BATCH_SIZE:-$table_micro}"
  PARALLEL="${PARALLEL:-ddp}"
  GRADIENT_CHECKPOINTING="${GRADIENT_CHECKPOINTING:-0}"
else
  request=()
  micro_given="${BATCH_SIZE:-}"
  [ -z "$micro_given" ] && [ "$table_micro" != 0 ] && micro_given=$table_micro
  [ -n "$micro_given" ] && request+=(--batch_size "$micro_given")
  [ -n "${PARALLEL:-}" ] && request+=(--parallel "$PARALLEL")
  if [ "${PARALLEL:-}" = deepspeed ]; then
    found=$(absolute_path "$DEEPSPEED_CONFIG") || die "DEEPSPEED_CONFIG=$DEEPSPEED_CONFIG: file not found"
    stage=$(grep -o '"stage"[[:space:]]*:[[:space:]]*[0-9]' "$found" | grep -o '[0-9]$' || echo 2)  # ZeRO stage
    request+=(--deepspeed_stage "$stage")
  fi
  [ -n "$GRADIENT_CHECKPOINTING" ] && request+=(--gradient_checkpointing "$GRADIENT_CHECKPOINTING")
  [ -z "${GRADIENT_ACCUMULATION_STEPS:-}" ] && request+=(--effective_batch "$EFFECTIVE_BATCH")
  [ "${FORCE_PLAN:-0}" = 1 ] && request+=(--force)
  plan=$("$PYTHON" "$here/moai_llm/training/launch_plan.py" "$MODEL_CONFIG" "$GPU_MEMORY" "$WORLD_SIZE" "$SEQ_LEN" "${request[@]}" 2>&1) \
    || die "MODEL_SIZE=$MODEL_SIZE $plan"
  while IFS= read -r line; do
    case "$line" in
      micro_batch=*) BATCH_SIZE=${line#*=} ;;
      parallel=*) PARALLEL=${line#*=} ;;
      gradient_checkpointing=*) GRADIENT_CHECKPOINTING=${line#*=} ;;
      estimate_gb=*) ESTIMATE_GB=${line#*=} ;;
      "# "*) PLAN_REPORT+="  ${line#\# }"$'\n' ;;
    esac
  done <<< "$plan"
fi
if [ -n "${GRADIENT_ACCUMULATION_STEPS:-}" ]; then
  EFFECTIVE_BATCH=$((BATCH_SIZE * WORLD_SIZE * GRADIENT_ACCUMULATION_STEPS))
else
  per_step=$((BATCH_SIZE * WORLD_SIZE))
  [ $((EFFECTIVE_BATCH % per_step)) -eq 0 ] || die "effective batch $EFFECTIVE_BATCH does not divide by BATCH_SIZE x processes = $BATCH_SIZE x $WORLD_SIZE = $per_step"
  GRADIENT_ACCUMULATION_STEPS=$((EFFECTIVE_BATCH / per_step))
fi

# ---- rendezvous ------------------------------------------------------------------------------------------
if [ "$NNODES" -gt 1 ]; then
  [ -n "${MASTER_ADDR:-}" ] || die "NNODES=$NNODES needs MASTER_ADDR (the address of node 0)"
  MASTER_PORT="${MASTER_PORT:-29500}"
else
  MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
  MASTER_PORT="${MASTER_PORT:-$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')}"
fi
[[ "$MASTER_PORT" =~ ^[0-9]+$ ]] || die "MASTER_PORT=$MASTER_PORT is not a port number"

# ---- environment for the engine --------------------------------------------------------------------------
# A slow checkpoint save must not kill the job (long ddp_timeout), but a dead rank must end it: torchrun's agent
# tears the group down as soon as one worker exits non-zero, and NCCL's async error handling aborts collectives
# that wait on a dead peer instead of hanging.
DDP_TIMEOUT="${DDP_TIMEOUT:-5400}"
# If torchrun itself is signalled (it runs in its own session, see the end), it forwards the signal and SIGKILLs the
# workers after TORCH_ELASTIC_SHUTDOWN_TIMEOUT (30 s by default): too short to finish a step and save a 2B-16B
# model with its optimizer.
SHUTDOWN_TIMEOUT="${SHUTDOWN_TIMEOUT:-900}"
[[ "$SHUTDOWN_TIMEOUT" =~ ^[0-9]+$ ]] || die "SHUTDOWN_TIMEOUT=$SHUTDOWN_TIMEOUT is not a whole number of seconds"
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT="$SHUTDOWN_TIMEOUT"
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
if [ "$DEVICE" = cuda ]; then
  if [[ "$GPU_NAME" =~ (GeForce|RTX\ [0-9]{4}|TITAN) ]]; then
    export NCCL_P2P_DISABLE=1  # consumer cards: peer-to-peer over PCIe is unsupported or slower than host copies
  else
    export NCCL_P2P_DISABLE=0
  fi
fi

ARGS=(--mode pretrain --model_config "$MODEL_CONFIG" --tokenizer_path "$TOKENIZER_PATH" --output_dir "$OUTPUT_DIR"
      --batch_size "$BATCH_SIZE" --gradient_accumulation_steps "$GRADIENT_ACCUMULATION_STEPS"
      --max_seq_length "$SEQ_LEN" --resume_from_checkpoint "$RESUME" --ddp_timeout "$DDP_TIMEOUT")
[ -n "$MAX_STEPS" ] && ARGS+=(--max_steps "$MAX_STEPS")
[ -n "${DATA_CONFIG:-}" ] && ARGS+=(--config "$DATA_CONFIG")
if [ "$DEVICE" = cpu ]; then
  ARGS+=(--use_cpu true --ddp_backend gloo)
else
  ARGS+=(--ddp_backend nccl)  # precision is train.py's choice: bf16 where supported, else fp16; TF32 on Ampere+
fi
[ "$GRADIENT_CHECKPOINTING" = 1 ] && ARGS+=(--activation_checkpointing true)  # transformers 5: gradient_checkpointing
case "$PARALLEL" in
  ddp) ;;
  fsdp) ARGS+=(--fsdp --fsdp_config configs/fsdp_config.json) ;;  # FSDP2; sharding and wrapping are in the config
  fsdp_grad_op) ARGS+=(--fsdp --fsdp_config configs/fsdp_grad_op_config.json) ;;  # weights kept gathered to backward
  deepspeed)
    [ "$DRY_RUN" = 1 ] || "$PYTHON" -c "import deepspeed" 2>/dev/null || die "PARALLEL=deepspeed but deepspeed is not installed (pip install deepspeed)"
    ( cd "$here" && [ -f "$DEEPSPEED_CONFIG" ] ) || [ -f "$DEEPSPEED_CONFIG" ] || die "DEEPSPEED_CONFIG=$DEEPSPEED_CONFIG: file not found"
    ARGS+=(--deepspeed "$DEEPSPEED_CONFIG") ;;
esac

# A flag after `--` that pretrain.sh passes too would reach train.py twice (train.py refuses that): name the
# setting that controls it instead. BATCH_SIZE and GRADIENT_ACCUMULATION_STEPS also enter the effective batch.
instead_of() {
  case "$1" in
    --model_config) echo "set MODEL_CONFIG instead" ;;
    --tokenizer_path) echo "set TOKENIZER_PATH instead" ;;
    --output_dir) echo "set OUTPUT_DIR instead" ;;
    --batch_size) echo "set BATCH_SIZE instead" ;;
    --gradient_accumulation_steps) echo "set GRADIENT_ACCUMULATION_STEPS instead" ;;
    --max_seq_length) echo "set SEQ_LEN instead" ;;
    --resume_from_checkpoint) echo "set RESUME instead" ;;
    --ddp_timeout) echo "set DDP_TIMEOUT instead" ;;
    --max_steps) echo "set MAX_STEPS instead" ;;
    --config) echo "set DATA_CONFIG instead" ;;
    --fsdp | --fsdp_config | --deepspeed) echo "set PARALLEL (and DEEPSPEED_CONFIG) instead" ;;
    --activation_checkpointing) echo "set GRADIENT_CHECKPOINTING=0 or 1 instead" ;;
    --use_cpu | --ddp_backend) echo "it follows the device (ALLOW_CPU=1 without a GPU)" ;;
    --mode) echo "it only pretrains (fine-tune with python train.py --mode sft)" ;;
  esac
}
for arg in "${TRAIN_ARGS[@]}"; do
  flag=${arg%%=*}
  [[ "$flag" == --* ]] || continue  # a value, not a flag
  case "$flag" in
    --per_device_train_batch_size) own=--batch_size ;;
    --gradient_checkpointing) own=--activation_checkpointing ;;  # transformers' deprecated name of the same flag
    *) own=$flag ;;
  esac
  for passed in "${ARGS[@]}"; do
    [ "$passed" = "$own" ] && die "$flag after --: pretrain.sh passes $own itself; $(instead_of "$own")"
  done
done

CMD=(torchrun --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$NUM_GPUS"
     --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" --max_restarts 0 --monitor_interval 1
     --local_ranks_filter 0 train.py "${ARGS[@]}" "${TRAIN_ARGS[@]}")

cat <<EOF
pretrain.sh: $NNODES node(s) x $NUM_GPUS $DEVICE process(es) = $WORLD_SIZE, parallel=$PARALLEL
  model: MODEL_SIZE=$MODEL_SIZE MODEL_CONFIG=$MODEL_CONFIG GPU_MEMORY=${GPU_MEMORY:-n/a} GPU_NAME=${GPU_NAME:-n/a}
  batch: per-device $BATCH_SIZE x processes $WORLD_SIZE x accumulation $GRADIENT_ACCUMULATION_STEPS = effective $EFFECTIVE_BATCH sequences of $SEQ_LEN tokens
  env: NCCL_P2P_DISABLE=${NCCL_P2P_DISABLE:-n/a} TORCH_NCCL_ASYNC_ERROR_HANDLING=$TORCH_NCCL_ASYNC_ERROR_HANDLING PYTORCH_CUDA_ALLOC_CONF=$PYTORCH_CUDA_ALLOC_CONF OMP_NUM_THREADS=$OMP_NUM_THREADS TORCH_ELASTIC_SHUTDOWN_TIMEOUT=$TORCH_ELASTIC_SHUTDOWN_TIMEOUT
EOF
[ -n "$PLAN_REPORT" ] && printf 'plan:\n%s' "$PLAN_REPORT"
printf 'command:'; printf ' %q' "${CMD[@]}"; printf '\n'
if [ "$DRY_RUN" = 1 ]; then
  exit 0
fi
cd "$here"

# ---- launch and preemption -------------------------------------------------------------------------------
# Schedulers preempt by signalling the job's whole process group, often twice (SLURM, Kubernetes). torchrun's agent
# turns any SIGTERM/SIGINT into an exception: it stops the workers and exits 1 with a traceback, and a second
# signal during its shutdown wait cuts that wait short. So torchrun runs in its own session (the group's signals
# never reach it or its workers) and this script, on the first signal, sends SIGTERM once to the workers only:
# they finish the step, save a checkpoint and exit 0, and so does torchrun. Later signals are logged and ignored.
# SHUTDOWN_TIMEOUT seconds after the first signal, workers still running are killed (exit 1).
setsid "${CMD[@]}" &
agent=$!
signals=0
stop_deadline=""
on_signal() {
  signals=$((signals + 1))
  if [ "$signals" -eq 1 ]; then
    echo "pretrain.sh: received $1: the workers finish their step, save a checkpoint and stop (up to SHUTDOWN_TIMEOUT=${SHUTDOWN_TIMEOUT}s)" >&2
    stop_deadline=$((SECONDS + SHUTDOWN_TIMEOUT))
    workers=$(pgrep -P "$agent" || true)
    [ -z "$workers" ] || kill -TERM $workers 2>/dev/null || true
  else
    echo "pretrain.sh: received $1 again: still saving, ignored (SIGKILL aborts)" >&2
  fi
}
trap 'on_signal SIGTERM' TERM
trap 'on_signal SIGINT' INT
while kill -0 "$agent" 2>/dev/null; do
  if [ -n "$stop_deadline" ] && [ "$SECONDS" -ge "$stop_deadline" ]; then
    echo "pretrain.sh: the workers did not stop within SHUTDOWN_TIMEOUT=${SHUTDOWN_TIMEOUT}s: killing them" >&2
    workers=$(pgrep -P "$agent" || true)
    [ -z "$workers" ] || kill -KILL $workers 2>/dev/null || true
    kill -KILL "$agent" 2>/dev/null || true
    wait "$agent" 2>/dev/null || true
    exit 1
  fi
  sleep 1 &
  wait $! 2>/dev/null || true  # returns at once when a signal arrives: the trap runs
done
status=0
wait "$agent" || status=$?
exit "$status"
