"""Streams (scenarios): experiences of aligned train/valid/test tensors."""
from .base import SCENARIOS, Experience, Split, Stream, carve_validation
from .builders import (blurry_stream, data_incremental_stream, permuted_stream, rotate, rotated_stream,
                       sequence_stream, split_stream)

__all__ = ["SCENARIOS", "Experience", "Split", "Stream", "blurry_stream", "carve_validation", "data_incremental_stream",
           "permuted_stream", "rotate",
           "rotated_stream", "sequence_stream", "split_stream"]
