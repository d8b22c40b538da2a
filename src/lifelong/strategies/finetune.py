"""Fine-tuning (naive sequential training): the lower bound.

Trains on each experience in turn with plain cross-entropy and nothing against forgetting.
"""
from .base import Strategy


class FineTune(Strategy):
    name = "finetune"
    paper = "lower bound (no method)"
