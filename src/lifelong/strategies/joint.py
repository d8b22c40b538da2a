"""Joint training: the upper bound.

At experience i, trains on the union of the training data of experiences 0..i (cumulative
joint training), so its last row of the accuracy matrix is a model trained on all data at
once, with the same number of iterations per experience as every other method. Not a
continual method: it needs all past data.
"""
import torch

from ..streams import Split
from .base import Strategy


class Joint(Strategy):
    name = "joint"
    epochs_from_stream = False  # every experience so far
    paper = "upper bound (all data so far)"

    def __init__(self):
        super().__init__()
        self.seen_ = []

    def train_data(self, exp):
        if not any(e.index == exp.index for e in self.seen_):
            self.seen_.append(exp)
        return Split.cat([e.train for e in self.seen_], [e.task_id for e in self.seen_])

    def stream_rows(self, exp, data):  # the current experience's rows, in the order train_data joined them
        start = 0
        for e in self.seen_:
            if e.index == exp.index:
                break
            start += len(e.train)
        i = torch.arange(len(data), device=data.y.device)
        return (i >= start) & (i < start + len(exp.train))

    def extra_state(self):
        """Which experiences were seen (a resumed run takes their data from the stream again)."""
        return {"seen": [e.index for e in self.seen_]}

    def load_extra_state(self, state):
        stream = self.context.stream
        self.seen_ = [stream[i] for i in state.get("seen", [])] if stream is not None else []
