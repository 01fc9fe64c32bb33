"""Shared fixtures: the one tiny model config, seeded and float32 by default."""

from __future__ import annotations

import random

import pytest

from morsearch.config import ModelConfig


@pytest.fixture(autouse=True)
def _seed_and_dtype():
    torch = pytest.importorskip("torch")
    random.seed(0)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture
def tiny_model_config() -> ModelConfig:
    """2 shared layers run twice, d=32, vocab 64, T 16: the config every test starts from."""
    return ModelConfig(
        vocab_size=64,
        d_model=32,
        num_heads=4,
        num_kv_heads=2,
        ffn_dim=64,
        num_layers=4,
        max_seq_len=16,
        num_recursions=2,
        sharing="cycle",
    )


@pytest.fixture(autouse=True, scope="session")
def _private_device_locks(tmp_path_factory):
    """The workers of this test run coordinate through their own lock folder, not the machine's."""
    import os

    from morsearch.search.device_locks import LOCK_DIR_ENV

    previous = os.environ.get(LOCK_DIR_ENV)
    os.environ[LOCK_DIR_ENV] = str(tmp_path_factory.mktemp("device-locks"))
    yield
    if previous is None:
        del os.environ[LOCK_DIR_ENV]
    else:
        os.environ[LOCK_DIR_ENV] = previous
