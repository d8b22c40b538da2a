"""Replay memories: fixed-size, preallocated tensors plus an insertion policy.

Both buffers store samples in preallocated tensors ``x``, ``y``, ``t`` (and optional extra
per-sample tensors, e.g. ``logits`` for dark experience replay). The tensors are created on
the first insertion with that batch's shapes, dtypes and device, and are only written in
place afterwards, so the memory never grows with the stream and nothing is concatenated per
step. Occupied slots are always ``[0, len(buffer))``.

- :class:`ReservoirBuffer` (``"reservoir"``): reservoir sampling (Vitter 1985, algorithm R)
  over every sample ever inserted: after ``n`` insertions each of them is in the buffer with
  probability ``capacity / n``. A whole batch is inserted with a few tensor operations.
- :class:`ClassBalancedBuffer` (``"class_balanced"``): the same number of slots for every
  class seen so far (``capacity // n_classes``); when new classes arrive every old class drops
  random samples down to the new quota. Within a class the samples kept are a uniform random
  subset of those seen (reservoir within the class). With ``per_class`` set the quota is
  fixed instead and the capacity grows with the classes (van de Ven et al. 2022 store 100
  samples per class); storage then grows only when a class arrives, never per insertion.

A "class" is the pair (task id, label), so that in domain-incremental streams, where every
context reuses the labels 0..k-1, each context keeps its own samples, as in van de Ven et al.
"""
from __future__ import annotations

import math

import torch

_KEY = 1 << 32  # class key = task * _KEY + label
_SMALL = 64  # reservoir_slots: batches up to this size are placed in Python


def reservoir_slots(n_seen: int, n: int, capacity: int, generator: torch.Generator):
    """Algorithm R for ``n`` samples arriving after ``n_seen``: sample ``i`` (stream position)
    takes slot ``i`` while ``i < capacity``, else slot ``r ~ U{0..i}`` if ``r < capacity``.
    Returns ``(slots, rows)``: distinct slots and, for each, the batch row that ends up there
    (when several rows pick one slot the latest wins, as if inserted one by one). O(n log n).

    A small batch (an online minibatch) takes the same draws and the same arithmetic in plain
    Python on the host (the results are identical; a dozen small tensor operations cost about
    six times as much, a tenth of an ER step at batch 10 on CPU)."""
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    if n <= _SMALL:
        last = {}
        for k, uk in enumerate(u.tolist()):  # a CPU tensor: no device synchronisation
            i = n_seen + k
            s = i if i < capacity else math.floor(uk * float(i + 1))  # float64, as the tensor path
            if s < capacity:
                last[s] = k  # the later row wins
        slots = sorted(last)
        return (torch.tensor(slots, dtype=torch.long),
                torch.tensor([last[s] for s in slots], dtype=torch.long))
    i = n_seen + torch.arange(n, dtype=torch.float64)
    r = torch.floor(u * (i + 1)).long()
    slot = torch.where(i < capacity, i.long(), r)
    rows = torch.nonzero(slot < capacity).flatten()
    slots, inv = torch.unique(slot[rows], return_inverse=True)
    last = torch.full((len(slots),), -1, dtype=torch.long).scatter_reduce(0, inv, rows, "amax")
    return slots, last


class Buffer:
    """Storage shared by the policies: preallocated tensors, uniform sampling, state."""

    name = "buffer"

    def __init__(self, capacity: int, seed: int = 0):
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = int(capacity)
        self.generator = torch.Generator().manual_seed(seed)
        self.x = self.y = self.t = None
        self.extras: dict[str, torch.Tensor] = {}
        self.size = 0      # occupied slots: [0, size)
        self.n_seen = 0    # samples ever offered to add()

    def __len__(self) -> int:
        return self.size

    # -- storage ----------------------------------------------------------------------
    def _allocate(self, n: int, x, y, t, extras: dict) -> None:
        """Create (or grow, keeping the stored samples) the tensors to ``n`` slots."""
        def make(like, old):
            new = like.new_empty((n, *like.shape[1:]))
            if old is not None:
                new[:self.size] = old[:self.size]
            return new
        self.x, self.y, self.t = make(x, self.x), make(y, self.y), make(t, self.t)
        self.extras = {k: make(v, self.extras.get(k)) for k, v in extras.items()}

    def _prepare(self, x, y, t, extras) -> tuple:
        if t is None:
            t = torch.zeros(len(y), dtype=torch.long, device=y.device)
        elif t.ndim == 0:
            t = t.expand(len(y))
        if self.x is None and self.capacity > 0:
            self._allocate(self.capacity, x, y, t, extras)
        elif self.x is not None and set(extras) != set(self.extras):
            raise ValueError(f"buffer stores extras {sorted(self.extras)}, got {sorted(extras)}")
        return x, y, t

    def _write(self, slots: torch.Tensor, src: torch.Tensor, x, y, t, extras) -> None:
        """Store batch rows ``src`` into buffer ``slots`` (slots must be distinct)."""
        if len(slots) == 0:
            return
        slots = slots.to(self.y.device)
        src = src.to(y.device)
        self.x[slots] = x[src].to(self.x)
        self.y[slots] = y[src].to(self.y)
        self.t[slots] = t[src].to(self.t)
        for k, v in extras.items():
            self.extras[k][slots] = v[src].to(self.extras[k])

    def _keep(self, keep: torch.Tensor) -> None:
        """Compact in place to the slots ``keep`` (sorted indices of occupied slots)."""
        k = len(keep)
        for buf in (self.x, self.y, self.t, *self.extras.values()):
            buf[:k] = buf[keep]
        self.size = k

    # -- reading ----------------------------------------------------------------------
    def sample_indices(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``min(n, len)`` distinct stored slots, uniformly at random."""
        g = generator if generator is not None else self.generator
        n = min(int(n), self.size)
        idx = torch.randperm(self.size, generator=g)[:n]
        return idx.to(self.y.device) if self.y is not None else idx

    def sample(self, n: int, generator: torch.Generator | None = None):
        """``(x, y, t)`` of ``min(n, len)`` distinct stored samples, uniformly at random."""
        idx = self.sample_indices(n, generator)
        return self.x[idx], self.y[idx], self.t[idx]

    def get(self, idx: torch.Tensor | slice | None = None) -> dict[str, torch.Tensor]:
        """Stored tensors (``x``, ``y``, ``t`` and extras) at ``idx`` (default: all stored)."""
        idx = slice(0, self.size) if idx is None else idx
        if self.x is None:
            return {}
        out = {"x": self.x[idx], "y": self.y[idx], "t": self.t[idx]}
        out.update({k: v[idx] for k, v in self.extras.items()})
        return out

    # -- state --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        stored = {k: v.clone() for k, v in self.get().items()}
        return {"capacity": self.capacity, "size": self.size, "n_seen": self.n_seen,
                "generator": self.generator.get_state(), "stored": stored}

    def load_state_dict(self, state: dict) -> None:
        self.capacity, self.size, self.n_seen = int(state["capacity"]), 0, int(state["n_seen"])
        self.generator.set_state(state["generator"])
        self.x = self.y = self.t = None
        self.extras = {}
        s = state["stored"]
        if s:
            extras = {k: v for k, v in s.items() if k not in ("x", "y", "t")}
            self._allocate(max(self.capacity, len(s["y"])), s["x"], s["y"], s["t"], extras)
            n = int(state["size"])
            self._write(torch.arange(n), torch.arange(n), s["x"], s["y"], s["t"], extras)
            self.size = n

    def to(self, device) -> "Buffer":
        """Move the storage (e.g. after loading a state saved from another device)."""
        if self.x is not None:
            self.x, self.y, self.t = self.x.to(device), self.y.to(device), self.t.to(device)
            self.extras = {k: v.to(device) for k, v in self.extras.items()}
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}(capacity={self.capacity}, stored={self.size}, seen={self.n_seen})"


class ReservoirBuffer(Buffer):
    """Reservoir sampling over every inserted sample (algorithm R), a batch at a time."""

    name = "reservoir"

    @torch.no_grad()
    def add(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None = None, **extras) -> None:
        """Offer a batch. Sample ``i`` of the stream (0-based) fills slot ``i`` while the buffer
        is not full, else replaces a uniform slot with probability ``capacity / (i + 1)``; when
        two samples of a batch pick the same slot the later one wins, as in sequential order."""
        n = len(y)
        if n == 0:
            return
        if self.capacity == 0:
            self.n_seen += n
            return
        x, y, t = self._prepare(x, y, t, extras)
        slots, rows = reservoir_slots(self.n_seen, n, self.capacity, self.generator)
        self._write(slots, rows, x, y, t, extras)
        self.n_seen += n
        self.size = min(self.capacity, self.n_seen)


class ClassBalancedBuffer(Buffer):
    """Equal slots per seen class (``capacity // n_classes``), or a fixed ``per_class`` quota."""

    name = "class_balanced"

    def __init__(self, capacity: int = 0, per_class: int | None = None, seed: int = 0):
        if per_class is None and capacity <= 0:
            raise ValueError("give a capacity > 0 or per_class")
        super().__init__(0 if per_class is not None else capacity, seed)
        self.per_class = per_class
        self.class_keys: list[int] = []    # class keys in order of arrival
        self.class_seen: dict[int, int] = {}

    @property
    def quota(self) -> int:
        if self.per_class is not None:
            return int(self.per_class)
        return self.capacity // max(len(self.class_keys), 1)

    def counts(self) -> dict[tuple[int, int], int]:
        """(task, label) -> number of stored samples."""
        if self.size == 0:
            return {}
        keys = self._keys(self.y[:self.size], self.t[:self.size]).cpu()
        uniq, cnt = torch.unique(keys, return_counts=True)
        return {(int(k) // _KEY, int(k) % _KEY): int(c) for k, c in zip(uniq.tolist(), cnt.tolist())}

    def _keys(self, y, t) -> torch.Tensor:
        return t.long() * _KEY + y.long()

    def _new_classes(self, keys: list[int], x, y, t, extras) -> None:
        """Register arriving classes: shrink the quota (dropping random excess samples of
        old classes) or, with a per-class quota, grow the storage."""
        self.class_keys += keys
        for k in keys:
            self.class_seen[k] = 0
        if self.per_class is not None:
            need = self.per_class * len(self.class_keys)
            if need > self.capacity:
                cap = max(need, 2 * self.capacity)
                self._allocate(cap, x, y, t, extras)
                self.capacity = cap
            return
        q = self.quota
        if self.size == 0:
            return
        # Random rank of every stored sample within its class; keep ranks < quota.
        stored = self._keys(self.y[:self.size], self.t[:self.size]).cpu()
        order = torch.randperm(self.size, generator=self.generator)
        order = order[torch.sort(stored[order], stable=True).indices]   # grouped by class, random inside
        sk = stored[order]
        start = torch.ones(self.size, dtype=torch.bool)
        start[1:] = sk[1:] != sk[:-1]
        first = torch.cummax(torch.where(start, torch.arange(self.size), 0), 0).values
        rank = torch.arange(self.size) - first
        keep = torch.sort(order[rank < q]).values
        if len(keep) < self.size:
            self._keep(keep.to(self.y.device))

    @torch.no_grad()
    def add(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None = None, **extras) -> None:
        """Offer a batch (any size: a minibatch online, or a whole experience at its end).
        Each class keeps a uniform random subset of its samples, at most ``quota`` of them."""
        n = len(y)
        if n == 0:
            return
        x, y, t = self._prepare(x, y, t, extras)
        keys = self._keys(y, t).cpu()
        uniq = torch.unique(keys).tolist()                   # classes in this batch (few)
        new = [k for k in uniq if k not in self.class_seen]
        if new:
            self._new_classes(new, x, y, t, extras)
        q = self.quota
        stored = self._keys(self.y[:self.size], self.t[:self.size]).cpu() if self.size else keys[:0]
        for k in uniq:                                       # a loop over classes, not samples
            src = torch.nonzero(keys == k).flatten()
            seen = self.class_seen[k]
            self.class_seen[k] = seen + len(src)
            pos = torch.nonzero(stored == k).flatten()       # this class's slots, in stable order
            have = len(pos)                                  # == min(seen, q)
            # Reservoir within the class: its slot j is pos[j] if j < have, else appended (the
            # class's new slots are have, have + 1, ...: the first samples to fill them).
            j, rows = reservoir_slots(seen, len(src), q, self.generator)
            fresh = j >= have
            slots = self.size + j - have
            slots[~fresh] = pos[j[~fresh]]
            self._write(slots, src[rows], x, y, t, extras)
            self.size += int(fresh.sum())
        self.n_seen += n

    def state_dict(self) -> dict:
        out = super().state_dict()
        out.update(per_class=self.per_class, class_keys=torch.tensor(self.class_keys, dtype=torch.long),
                   class_seen=torch.tensor([self.class_seen[k] for k in self.class_keys], dtype=torch.long))
        return out

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.per_class = state["per_class"]
        self.class_keys = [int(k) for k in state["class_keys"].tolist()]
        self.class_seen = dict(zip(self.class_keys, (int(c) for c in state["class_seen"].tolist())))


BUFFERS = {"reservoir": ReservoirBuffer, "class_balanced": ClassBalancedBuffer}


def make_buffer(policy: str, mem_size: int, mem_per_class: int | None = None, seed: int = 0) -> Buffer:
    """Buffer for the replay strategies' ``mem_*`` parameters: ``mem_per_class`` (if set) means
    class-balanced with that fixed quota, whatever ``policy`` says."""
    if mem_per_class is not None:
        return ClassBalancedBuffer(per_class=mem_per_class, seed=seed)
    if policy not in BUFFERS:
        raise ValueError(f"unknown memory policy '{policy}'; allowed: {', '.join(BUFFERS)}")
    return BUFFERS[policy](mem_size, seed=seed)
