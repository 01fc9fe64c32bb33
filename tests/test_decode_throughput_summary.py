"""The decode benchmark's summary: ratios against its part's vanilla and the two targets."""

from types import SimpleNamespace

from benchmarks.decode_throughput import equal_memory_run, summarise


def run(part: int, tokens_per_s: float, kv_bytes: int, anchor: bool = False) -> dict:
    record = {"decode_tokens_per_s": tokens_per_s, "kv_cache_bytes": kv_bytes}
    return {"part": part, "anchor": anchor, "by_batch": {"32": record}}


def test_kv_target_pairs_each_share_run_with_its_cache_twin_of_the_same_decoder():
    raw = {
        "runs": {
            "vanilla@compiled": run(1, 100.0, 1000, anchor=True),
            "mor3-ec-cache@depthwise_compiled": run(1, 110.0, 600),
            "mor3-ec-share@depthwise_compiled": run(1, 120.0, 300),
            "mor3-ec-share@graphed_depthwise": run(1, 90.0, 900),  # its twin was not timed: no pair
        }
    }
    targets = {t["name"]: t for t in summarise(raw, [32])}
    assert raw["decode_speedup_vs_vanilla"]["32"]["mor3-ec-share@depthwise_compiled"] == 1.2
    kv = targets["KV bytes, recursive sharing / recursion-wise (worst)"]
    assert kv["value"] == 0.5 and kv["met"]
    assert targets["mor3-ec-cache decode speedup vs vanilla (fastest decoders), batch 32"]["value"] == 1.1
    assert targets["fastest MoR-3 (any router and KV strategy) decode speedup vs vanilla, batch 32"]["value"] == 1.2


class LinearMemory:
    """A decoder whose peak memory is weights + batch x per-row bytes: what equal_memory_run searches."""

    def __init__(self, weights: int, per_row: int) -> None:
        self.weights, self.per_row = weights, per_row
        self.measured: list[int] = []

    def __call__(self, batch: int) -> SimpleNamespace:
        self.measured.append(batch)
        peak = self.weights + batch * self.per_row
        record = {"peak_memory_bytes": peak, "decode_tokens_per_s": 10.0 * batch, "param_bytes": self.weights}
        return SimpleNamespace(**record, to_dict=lambda: record)


def test_equal_memory_finds_the_largest_batch_within_vanillas_peak():
    memory = LinearMemory(weights=1000, per_row=10)
    at_32 = memory(32).to_dict()
    found = equal_memory_run(memory, budget_bytes=1655, batch=32, record=at_32)
    assert found["batch"] == 65  # 1000 + 65 x 10 = 1650 <= 1655 < 1660
    assert found["peak_vs_budget"] == 1650 / 1655
    assert found["decode_tokens_per_s"] == 650.0
    assert memory.measured == [32, 65]  # the line through the weights and B=32 lands on it at once


def test_equal_memory_corrects_a_first_guess_that_falls_short():
    # memory beside the weights that does not grow with the batch: the first line (from the weights alone)
    # is too steep and falls short, the line through two measurements lands
    memory = LinearMemory(weights=1300, per_row=10)
    at_32 = memory(32).to_dict() | {"param_bytes": 1000}
    found = equal_memory_run(memory, budget_bytes=1655, batch=32, record=at_32)
    assert found["batch"] == 35 and found["peak_memory_bytes"] <= 1655
    assert [t["batch"] for t in found["tries"]] == [33, 35]


def test_equal_memory_stops_at_out_of_memory_and_keeps_what_fit():
    at_32 = LinearMemory(weights=1000, per_row=10)(32).to_dict()
    found = equal_memory_run(lambda batch: None, budget_bytes=1655, batch=32, record=at_32)
    assert found["batch"] == 32 and found["tries"] == [{"batch": 65, "error": "oom"}]


def test_equal_memory_ratios_are_against_vanilla_at_vanillas_batch():
    raw = {
        "runs": {
            "vanilla@compiled": run(1, 100.0, 1000, anchor=True),
            "mor3-ec-share@depthwise_compiled": run(1, 120.0, 300)
            | {"equal_memory": {"32": {"batch": 64, "decode_tokens_per_s": 175.0}}},
        }
    }
    summarise(raw, [32])
    assert raw["equal_memory_speedup_vs_vanilla"] == {"32": {"mor3-ec-share@depthwise_compiled": 1.75}}
    assert raw["decode_speedup_vs_vanilla"]["32"]["mor3-ec-share@depthwise_compiled"] == 1.2
