"""Training: MoaiTrainer (transformers Trainer), arguments, callbacks, stages; train.py is the CLI."""
