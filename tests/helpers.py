"""Test helpers shared across the suite."""

from __future__ import annotations

import torch


def assert_close(actual, expected, *, atol=None, rtol=None, msg=""):
    """``torch.testing.assert_close`` with dtype-aware defaults and device-agnostic compare.

    ``expected`` is moved to ``actual``'s device and dtype first, so tests can write
    expectations as Python lists or CPU tensors.
    """
    actual = torch.as_tensor(actual)
    expected = torch.as_tensor(expected).to(device=actual.device, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, msg=msg or None)


def load_script(relative: str):
    """A script of the repository that is not a package module (``benchmarks/*.py``,
    ``demos/*.py``), imported as a module by its path from the repository root."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module
