"""The replay memory shared by ER and A-GEM: created at set-up, filled online (reservoir) or at
the end of each experience (class-balanced, per-class quota), saved with the strategy.

Subclasses store ``mem_size``, ``mem_policy`` and ``mem_per_class`` in their constructor and
use ``self.buffer_``.
"""
import torch

from ..buffers import make_buffer
from .base import Strategy


class MemoryStrategy(Strategy):
    @property
    def online(self) -> bool:
        return self.mem_per_class is None and self.mem_policy == "reservoir"

    @property
    def supports_task_free(self) -> bool:
        """Reservoir sampling needs no boundary; class-balanced selection happens at boundaries."""
        return self.online and type(self).before_experience is Strategy.before_experience

    def setup(self, model, device="cpu", seed=0):
        super().setup(model, device, seed)
        self.buffer_ = make_buffer(self.mem_policy, self.mem_size, self.mem_per_class, seed=seed + 2)
        return self

    def after_step(self, batch, logits):
        if self.online:  # only the stream's samples, not the replayed ones
            n = batch.n_new
            self.buffer_.add(batch.x[:n], batch.y[:n], batch.t[:n])

    def after_experience(self, exp):
        if not self.online:
            d = exp.train
            self.buffer_.add(d.x, d.y, d.t if d.t is not None else torch.full_like(d.y, exp.task_id))

    def extra_state(self):
        return {"buffer": self.buffer_.state_dict()}

    def load_extra_state(self, state):
        self.buffer_ = make_buffer(self.mem_policy, self.mem_size, self.mem_per_class)
        self.buffer_.load_state_dict(state["buffer"])
        self.buffer_.to(self.device)
