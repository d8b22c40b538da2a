"""Streams (scenarios): experiences of aligned train/valid/test tensors."""
from .base import SCENARIOS, Experience, Split, Stream, carve_validation
from .builders import permuted_stream, rotate, rotated_stream, sequence_stream, split_stream

__all__ = ["SCENARIOS", "Experience", "Split", "Stream", "carve_validation", "permuted_stream", "rotate",
           "rotated_stream", "sequence_stream", "split_stream"]
