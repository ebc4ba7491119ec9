"""Pretrain or fine-tune a MOAI model: `python train.py --mode pretrain|sft [flags]` (see docs/training.md).

With no arguments: the tiny model on the bundled sample corpus and tokenizer, a couple of minutes on a laptop CPU.
"""

import logging
import sys

from transformers.utils import logging as hf_logging

from moai_llm.errors import UsageError
from moai_llm.training.cli import parse_args


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    hf_logging.set_verbosity_warning()
    try:
        model_args, data_args, training_args = parse_args(argv)
        if data_args.prepare_only:
            from moai_llm.training.data_setup import prepare_only

            lines = prepare_only(model_args, data_args, training_args)
            if training_args.process_index == 0:  # every rank prepared its share; one reports
                print("\n".join(lines))
            return 0
        from moai_llm.training.stages import run_all

        results = run_all(model_args, data_args, training_args)
    except UsageError as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 2
    for result in results:
        if result.final_model:
            print(f"final model: {result.final_model}")
        else:
            print(f"stopped at step {result.stopped_at_step}; checkpoint in {result.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
