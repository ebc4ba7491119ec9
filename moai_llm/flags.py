"""argparse as every MOAI command line uses it: errors on one line, and a flag that takes a value takes it once.

argparse keeps the last of two values without a word; `refuse_repeated_flags` turns that into an error for every
CLI (train.py calls it before transformers' HfArgumentParser parses, the others through `Parser`)."""

import argparse
import sys


def dest_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Every accepted option spelling, without dashes (as YAML keys name them too) -> argparse dest."""
    return {option.lstrip("-"): action.dest for action in parser._actions for option in action.option_strings}


def refuse_repeated_flags(argv: list[str], parser: argparse.ArgumentParser) -> None:
    """`parser.error` for a flag given twice, under two of its spellings (--batch_size and
    --per_device_train_batch_size, --packing and --no_packing) or abbreviated as argparse allows. Flags meant to
    repeat say so: `action="append"`/`"extend"`, or an action with `repeats = True` (train.py's source flags)."""
    names = dest_names(parser)
    repeatable = {
        action.dest
        for action in parser._actions
        if getattr(action, "repeats", False) or isinstance(action, (argparse._AppendAction, argparse._ExtendAction))
    }
    several = {action.dest for action in parser._actions if action.nargs in ("+", "*")}
    seen: dict[str, str] = {}
    for token in argv:
        if token == "--":
            break
        if not token.startswith("--"):
            continue
        name = token[2:].split("=", 1)[0]
        if name not in names and parser.allow_abbrev:  # argparse takes a unique prefix for the whole name
            matches = [option for option in names if option.startswith(name)]
            name = matches[0] if len(matches) == 1 else name
        dest = names.get(name)
        if dest is None or dest in repeatable:
            continue
        if seen.get(dest) == name:
            hint = f"list every value after one --{name}" if dest in several else "it takes one value"
            parser.error(f"--{name} is given twice ({hint})")
        if dest in seen:
            parser.error(f"--{seen[dest]} and --{name} set the same argument ({dest}); give one of them")
        seen[dest] = name


class Parser(argparse.ArgumentParser):
    """`PROG: error: message` on one line (no usage dump), exit code 2, like every other user mistake; a repeated
    flag is such a mistake (`refuse_repeated_flags`)."""

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        refuse_repeated_flags(args, self)
        return super().parse_known_args(args, namespace)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")
