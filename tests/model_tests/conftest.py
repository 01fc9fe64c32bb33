"""Fixtures of the model tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    """One intra-op thread: the tiny tensors here gain nothing from more, and on a shared
    2-core machine extra threads contend with other work (test_kv_cache.py took 61 s with
    2 threads under load and 6 s with 1)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
