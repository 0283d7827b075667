"""Pieces shared by the command-line programs (``demos/``, ``python -m datasets.synthetic``):
an argument parser whose errors are one line with exit code 2, and number parsers for
``type=`` that say what was expected.

>>> positive_int("3")
3
>>> non_negative_int("-1")
Traceback (most recent call last):
...
argparse.ArgumentTypeError: expected an integer >= 0, got '-1'
>>> assignments(["top_k=6", "sampling=bilinear", "occlusion=[0, 0.5]"])
{'top_k': 6, 'sampling': 'bilinear', 'occlusion': (0, 0.5)}
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterable

__all__ = ["Parser", "assignments", "positive_int", "non_negative_int", "positive_float"]


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one line, ``PROG: error: ...``,
    with exit code 2 (``PROG`` is the parser's ``prog``)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _int_at_least(text: str, low: int, words: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {words}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected {words}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    return _int_at_least(text, 0, "an integer >= 0")


def positive_float(text: str) -> float:
    """A finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def assignments(items: Iterable[str]) -> dict:
    """``NAME=VALUE`` strings (e.g. repeated ``--fit`` flags) as a dict: ``VALUE`` parsed as
    JSON when it is JSON (numbers, ``true``/``false``, ``null``, lists, which become
    tuples), else kept as a string; a later item wins over an earlier one.

    Raises:
        ValueError: an item without ``=`` or without a name.
    """
    out = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"expected NAME=VALUE, got {item!r}")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        out[name] = tuple(value) if isinstance(value, list) else value
    return out
