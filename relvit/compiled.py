"""Functions with an optional torch.compile-d twin (run-config key `compile`)."""

from __future__ import annotations

import functools
from typing import Callable

import torch


def compiled_variant(fn: Callable) -> Callable[[bool], Callable]:
    """A chooser: `choose(False)` is `fn`, `choose(True)` its torch.compile-d version (static
    shapes), compiled on first use and kept."""

    @functools.cache
    def compiled() -> Callable:
        return torch.compile(fn, dynamic=False)

    def choose(use_compiled: bool) -> Callable:
        return compiled() if use_compiled else fn

    return choose
