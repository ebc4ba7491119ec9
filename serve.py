"""Serve MOAI models over the OpenAI API, with a web chat page at http://HOST:PORT/.

python serve.py --model_path outputs/pretrain-tiny/final_model
python serve.py --models_dir outputs --port 8080 --api_key secret
python serve.py --model_path tiny=outputs/pretrain-tiny/final_model --model_path sft=outputs/sft/final_model
"""

import argparse
import logging
import os
import sys

from transformers.utils import logging as hf_logging

from moai_llm.errors import UsageError
from moai_llm.flags import Parser
from moai_llm.serving import MAX_BATCH_SIZE, build_app, load_models, model_entries


def parse_args(argv=None):
    p = Parser("serve.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model_path",
        action="append",
        default=[],
        metavar="[NAME=]DIR",
        help="a final_model, checkpoint or LoRA adapter directory; repeatable (default name: the run "
        "directory of a final_model, else the directory's own name)",
    )
    p.add_argument("--models_dir", help="serve every final_model under this directory")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--api_key",
        default=os.environ.get("MOAI_API_KEY"),
        help="require 'Authorization: Bearer KEY' on /v1 (default: $MOAI_API_KEY; unset: no key)",
    )
    p.add_argument("--max_batch_size", type=int, default=MAX_BATCH_SIZE, help="sequences decoded together per model")
    p.add_argument("--max_tokens", type=int, default=4096, help="largest max_tokens a request may ask for")
    p.add_argument(
        "--max_prefill_tokens",
        type=int,
        default=4096,
        help="prompt tokens prefilled per engine step: prompts join while they fit (rows x longest prompt), a longer "
        "prompt is prefilled in chunks of this size between decode steps",
    )
    p.add_argument(
        "--max_waiting", type=int, default=256, help="requests waiting per model beyond the batch; more get 429"
    )
    p.add_argument("--max_request_bytes", type=int, default=8 * 2**20, help="largest request body; larger ones get 413")
    p.add_argument(
        "--cors_origins",
        default="",
        metavar="ORIGIN[,ORIGIN...]",
        help="browser origins allowed to call the API from their pages (comma-separated, or *; default: none)",
    )
    p.add_argument("--device", help="cuda | mps | cpu (default: the best found)")
    p.add_argument("--log_level", default="info", choices=["debug", "info", "warning", "error"])
    args = p.parse_args(argv)
    for flag in ("max_batch_size", "max_tokens", "max_prefill_tokens", "max_waiting", "max_request_bytes"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag} must be at least 1")
    args.cors_origins = [origin.strip() for origin in args.cors_origins.split(",") if origin.strip()]
    if not 0 <= args.port <= 65535:
        p.error(f"--port {args.port}: not a port number")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import uvicorn

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        registry = load_models(
            model_entries(args.model_path, args.models_dir),
            args.max_batch_size,
            args.max_tokens,
            args.device,
            args.max_prefill_tokens,
            args.max_waiting,
        )
    except UsageError as err:
        print(f"serve.py: error: {err}", file=sys.stderr)
        return 2
    app = build_app(registry, args.api_key, args.cors_origins, args.max_request_bytes)
    key = "required" if args.api_key else "none"
    logging.getLogger("serve").info(
        "chat page: http://%s:%d/  models: %s  API key: %s", args.host, args.port, ", ".join(registry.models), key
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
