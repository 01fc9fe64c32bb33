"""The decode benchmark's summary: ratios against its part's vanilla and the two targets."""

from benchmarks.decode_throughput import summarise


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
