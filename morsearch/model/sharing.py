"""Parameter-sharing strategies: which unique layer runs at each unrolled position.

A strategy turns a ``ModelConfig`` into a ``LayerSchedule``:

    middle_cycle, L=8, Nr=3 (B=2 shared layers, 4 unique):

        pre_block   block x 3 steps             post_block
        (0, 0)      step 0: 1 2  step 1: 1 2  step 2: 1 2      (3, 0)

    sequence, L=6, Nr=3 (no whole-block step, everything runs in order):

        pre_block: (0,0) (0,1) (0,2) (1,0) (1,1) (1,2)

Each run of a layer is an *application* ``(layer, step)``; KV caches are kept per
application, and recursive KV sharing lets application ``(layer, r > 0)`` read the
K/V of ``(layer, 0)``. Only cycle types have a block that a router can route
through, which is why ``ModelConfig`` refuses routing with the sequence types.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from morsearch.config import ModelConfig

Application = tuple[int, int]  # (unique layer index, recursion step / repetition)


@dataclass(frozen=True)
class LayerSchedule:
    pre_block: tuple[Application, ...]
    block: tuple[int, ...]  # shared layers of one recursion step, run num_block_steps times
    num_block_steps: int
    post_block: tuple[Application, ...]

    def applications(self) -> list[Application]:
        """Every layer application in execution order (the unrolled model)."""
        steps = [(layer, step) for step in range(self.num_block_steps) for layer in self.block]
        return [*self.pre_block, *steps, *self.post_block]


def _none(cfg: ModelConfig) -> LayerSchedule:
    return LayerSchedule(tuple((i, 0) for i in range(cfg.num_layers)), (), 0, ())


def _cycle(cfg: ModelConfig) -> LayerSchedule:
    return LayerSchedule((), tuple(range(cfg.num_shared_layers)), cfg.num_recursions, ())


def _middle_cycle(cfg: ModelConfig) -> LayerSchedule:
    last = cfg.num_unique_layers - 1
    return LayerSchedule(((0, 0),), tuple(range(1, last)), cfg.num_recursions, ((last, 0),))


def _sequence(cfg: ModelConfig) -> LayerSchedule:
    runs = tuple((i, r) for i in range(cfg.num_shared_layers) for r in range(cfg.num_recursions))
    return LayerSchedule(runs, (), 0, ())


def _middle_sequence(cfg: ModelConfig) -> LayerSchedule:
    last = cfg.num_unique_layers - 1
    runs = tuple((i, r) for i in range(1, last) for r in range(cfg.num_recursions))
    return LayerSchedule(((0, 0), *runs, (last, 0)), (), 0, ())


SHARING_STRATEGIES: dict[str, Callable[[ModelConfig], LayerSchedule]] = {
    "none": _none,
    "cycle": _cycle,
    "sequence": _sequence,
    "middle_cycle": _middle_cycle,
    "middle_sequence": _middle_sequence,
}


def layer_schedule(cfg: ModelConfig) -> LayerSchedule:
    return SHARING_STRATEGIES[cfg.sharing](cfg)
