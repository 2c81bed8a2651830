"""Argument types and the bank loader shared by the outcome bank's bench scripts
(``bank_findings``, ``bank_figures``, ``bank_feedback``), so that a bad value or a folder that
is not a bank stops the script with argparse's usage line, a message naming the option, and
exit status 2, instead of a traceback or a run on nonsense (a budget of -4 tokens cut every
recorded sample at its fourth piece from the end)."""

from __future__ import annotations

import argparse
from pathlib import Path

from router_models.bank import Bank, BankError


def _integer(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"an integer expected, not {text!r}") from None
    if value < low:
        kind = "a positive integer" if low == 1 else f"an integer of at least {low}"
        raise argparse.ArgumentTypeError(f"{kind} expected, not {value}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1. Raises ``argparse.ArgumentTypeError`` (argparse names the option)."""
    return _integer(text, 1)


def non_negative_int(text: str) -> int:
    """An integer >= 0. Raises ``argparse.ArgumentTypeError``."""
    return _integer(text, 0)


def at_least_two(text: str) -> int:
    """An integer >= 2 (folds). Raises ``argparse.ArgumentTypeError``."""
    return _integer(text, 2)


def share(text: str) -> float:
    """A number in [0, 1). Raises ``argparse.ArgumentTypeError``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number expected, not {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"a share from 0 to below 1 expected, not {value}")
    return value


def token_list(text: str) -> list[int]:
    """Comma-separated token counts, each >= 1; an empty text is an empty list. Raises
    ``argparse.ArgumentTypeError``."""
    return [positive_int(part) for part in text.split(",") if part.strip()]


def token_budgets(text: str) -> list[int]:
    """Comma-separated token budgets: at least one, each >= 1. Raises
    ``argparse.ArgumentTypeError``."""
    values = token_list(text)
    if not values:
        raise argparse.ArgumentTypeError("at least one budget expected")
    return values


def load_bank(parser: argparse.ArgumentParser, path: Path | None) -> Bank:
    """``Bank.load(path)`` (None: the shipped bank); a folder that is not a bank ends the
    script through ``parser.error`` (exit status 2, the reason on stderr)."""
    try:
        return Bank.load(path)
    except BankError as exc:
        parser.error(str(exc))
