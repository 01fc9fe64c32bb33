"""Measured inference memory and throughput of a model on a deployment target."""

from morsearch.measure.harness import measure
from morsearch.measure.results import Measurement

__all__ = ["Measurement", "measure"]
