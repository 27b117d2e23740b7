"""A request parameter's type and range, checked: each maker returns a check that gives the value to
use or raises a 400 naming the parameter. One place for the tables of openai.py, structured.py,
responses.py and ollama.py."""

from __future__ import annotations

from typing import Any, Callable

from .errors import bad_param


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def number(param: str, lo: float, hi: float) -> Callable[[Any], float]:
    def check(v):
        if not (is_int(v) or isinstance(v, float)) or not lo <= v <= hi:
            raise bad_param(param, f"'{param}' must be a number from {lo:g} to {hi:g}")
        return float(v)
    return check


def integer(param: str, lo: int, hi: int) -> Callable[[Any], int]:
    def check(v):
        if not is_int(v) or not lo <= v <= hi:
            raise bad_param(param, f"'{param}' must be an integer from {lo} to {hi}")
        return v
    return check


def text(param: str) -> Callable[[Any], str]:
    def check(v):
        if not isinstance(v, str):
            raise bad_param(param, f"'{param}' must be a string")
        return v
    return check


def boolean(param: str) -> Callable[[Any], bool]:
    def check(v):
        if not isinstance(v, bool):
            raise bad_param(param, f"'{param}' must be true or false")
        return v
    return check
