"""What the scripts share on their command lines: integer argument types and the check that an
output does not overwrite an input."""
from argparse import ArgumentTypeError
from pathlib import Path


def integer_at_least(low):
    """An argparse type: a whole number >= low, else "must be an integer >= low, received ..."."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise ArgumentTypeError(f"must be an integer >= {low}, received {text!r}") from None
        if value < low:
            raise ArgumentTypeError(f"must be an integer >= {low}, received {text}")
        return value
    parse.__name__ = f"integer >= {low}"       # argparse names the type by it
    return parse


positive_int = integer_at_least(1)
non_negative_int = integer_at_least(0)


def same_file(a, b):
    """True when paths a and b name one file, through symbolic or hard links too, or would once written."""
    a, b = Path(a), Path(b)
    if a.exists() and b.exists():
        return a.samefile(b)
    return a.resolve() == b.resolve()
