"""argparse as every MOAI command line uses it: errors on one line, and a flag that takes a value takes it once.

train.py parses with transformers' HfArgumentParser and checks repeats itself (`training/cli.py`)."""

import argparse


class Once(argparse.Action):
    """The default action: a flag's second use is an error, never a silent override of the first. Flags meant to
    repeat say so (`action="append"`, or an action of their own)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(self, "given", False):
            several = self.nargs in ("+", "*")
            hint = f"list every value after one {option_string}" if several else "it takes one value"
            parser.error(f"{option_string} is given twice ({hint})")
        self.given = True
        setattr(namespace, self.dest, values)


class Parser(argparse.ArgumentParser):
    """`PROG: error: message` on one line (no usage dump), exit code 2, like every other user mistake; `Once` is the
    default action. Build one per parse: `Once` remembers what it has seen."""

    def __init__(self, prog: str, **kwargs):
        super().__init__(prog=prog, **kwargs)
        self.register("action", None, Once)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")
