"""The golden proxy curve: a fixed tiny run on CPU must keep giving the committed numbers.

A change to the model, the loss, the optimiser, the schedule, the data or the split
shows up here. If the change is intended, regenerate the file:

    MORSEARCH_UPDATE_GOLDEN=1 pytest tests/train_tests/test_golden.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from morsearch.config import DataConfig, ModelConfig, TrainBudget
from morsearch.train import run_proxy

GOLDEN = Path(__file__).parents[1] / "assets" / "golden_proxy_curve.json"
# a quickstart-sized trial (search_spaces/quickstart.yaml: byte tokens, builtin corpus, FLOPs budget)
MODEL = ModelConfig(
    vocab_size=256,
    d_model=48,
    num_heads=3,
    num_kv_heads=3,
    ffn_dim=128,
    num_layers=5,
    max_seq_len=64,
    num_recursions=3,
    sharing="middle_cycle",
    router="expert_choice",
)
BUDGET = TrainBudget(kind="flops", value=1.5e10, batch_size=8, seq_len=64, eval_every=10, val_batches=2)
DATA = DataConfig(builtin_tokens=100_000)
TOLERANCE = 1e-3  # nats: room for other CPUs' kernels; a real change moves the curve far more


def test_golden_curve() -> None:
    result = run_proxy(MODEL, BUDGET, DATA, device="cpu")
    record = {
        "model": MODEL.model_dump(mode="json"),
        "budget": BUDGET.model_dump(mode="json"),
        "data": DATA.model_dump(mode="json"),
        "curve": [[tokens, nll] for tokens, nll in result.curve],
        "routing": result.routing,
    }
    if os.environ.get("MORSEARCH_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps(record, indent=2) + "\n")
    golden = json.loads(GOLDEN.read_text())
    assert [tokens for tokens, _ in result.curve] == [tokens for tokens, _ in golden["curve"]]
    for (tokens, nll), (_, expected) in zip(result.curve, golden["curve"], strict=True):
        assert nll == pytest.approx(expected, abs=TOLERANCE), f"val NLL at {tokens} tokens"
    assert result.routing == pytest.approx(golden["routing"], abs=1e-3)
