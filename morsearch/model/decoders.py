"""Every decoder by name: what ``measure(decoder=...)`` and the benchmarks choose from."""

from __future__ import annotations

from collections.abc import Callable

from morsearch.model.decoding import (
    DeferredDepthwiseDecoder,
    DepthwiseDecoder,
    LockstepDecoder,
    ReferenceDecoder,
    RowDecoder,
)
from morsearch.model.graphed import GraphedDecoder
from morsearch.model.graphed_depthwise import GraphedDepthwiseDecoder
from morsearch.model.mor import MoRModel

DECODERS: dict[str, Callable[[MoRModel], ReferenceDecoder | RowDecoder | GraphedDecoder | GraphedDepthwiseDecoder]] = {
    "reference": ReferenceDecoder,
    "lockstep": LockstepDecoder,
    "depthwise": DepthwiseDecoder,
    "depthwise_deferred": DeferredDepthwiseDecoder,
    "graphed": GraphedDecoder,
    "graphed_compiled": lambda model: GraphedDecoder(model, compile=True),
    "graphed_depthwise": GraphedDepthwiseDecoder,
    "graphed_depthwise_compiled": lambda model: GraphedDepthwiseDecoder(model, compile=True),
}
