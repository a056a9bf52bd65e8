"""Estimators behind one interface, looked up by name in ``llc.registry``."""

from __future__ import annotations

import importlib
from typing import Callable

from llc import registry


def get_runner(name: str) -> Callable:
    return importlib.import_module(registry.sampler(name).module).run
