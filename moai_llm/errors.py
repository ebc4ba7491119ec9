"""The library's one error type for user mistakes; the CLIs catch only it, print its message on one line and exit 2
(any other exception is a bug and keeps its traceback)."""


class UsageError(ValueError):
    """A user mistake (a bad flag, file, field or value): the message is one line naming it.

    A ValueError still, as Python and transformers name a bad value: callers of the public API that catch ValueError
    (around `MoaiTrainingArguments`, `parse_mixture`, the `moai_llm.export` and tokenizer functions) keep working,
    and the files that ship as remote code and cannot import this one (configuration_moai.py, losses.py) raise a
    plain ValueError that the boundary reading the user's file or flag turns into a UsageError."""
