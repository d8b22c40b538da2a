"""Feature cache: the time to extract pretrained features against the time to load them back.

For each dataset, features of both splits (train + test) under a frozen extractor:
EfficientNet-Lite0 at ``--image-size`` (default 32) for MNIST, Fashion-MNIST and Animal-MNIST,
MiniLM for the tweets. Measured in one process, one torch thread:

- ``model load``: building the extractor and reading its weights (``ensure_loaded``);
- ``cold``: ``featurize`` with no cache file: dataset fingerprint, extraction, writing the file
  (temporary name, fsync, rename);
- ``warm``: ``featurize`` again with a fresh :class:`FeatureCache` object on the same folder
  (median of ``--repeats``): dataset fingerprint, weights hash (the in-process memo is cleared
  first, as in a new process), reading the file and checking its sha256. The model is never
  loaded on a hit. The file is read from the OS page cache (just written), as in repeated runs.

The speed-up is (model load + cold) / warm. The warm features are checked to be bit-identical
to the cold ones. Both the raw dataset loading (same for runs with and without features) and
Python's import of the packages are outside the timed regions.

The real caches are built in ``--cache-dir`` (default: ``$LIFELONG_CACHE_DIR`` or
``~/.cache/lifelong/features``). When the files there already exist (a second run of this
script), the cold measurement runs in a temporary folder instead (removed afterwards) and the
warm one reads the existing files; nothing in the cache folder is ever deleted.

    PYTHONPATH=src python benchmarks/feature_cache.py --md benchmarks/results/feature_cache.md \\
        --out benchmarks/results/feature_cache.json
"""
from __future__ import annotations

import argparse
import datetime
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402  (sets the import path for lifelong)

import torch  # noqa: E402

from lifelong.data import animal_mnist, fashion_mnist, mnist  # noqa: E402
from lifelong.data.base import DatasetSplits  # noqa: E402
from lifelong.data.text import TextSplits, tweets  # noqa: E402
from lifelong.pretrained import FeatureCache, build_extractor, default_cache_dir, feature_key, featurize  # noqa: E402
from lifelong.pretrained import extractors as _ex  # noqa: E402

LOADERS = {"mnist": mnist, "fashion_mnist": fashion_mnist, "animal_mnist": animal_mnist, "tweets": tweets}
BACKBONE = {"mnist": "efficientnet_lite0", "fashion_mnist": "efficientnet_lite0", "animal_mnist": "efficientnet_lite0",
            "tweets": "minilm"}


def _subset(data, n: int | None):
    if not n:
        return data
    if isinstance(data, TextSplits):
        return TextSplits(data.train.subset(torch.arange(min(n, len(data.train)))),
                          data.test.subset(torch.arange(min(n, len(data.test)))))
    return DatasetSplits(data.train.subset(torch.arange(min(n, len(data.train)))),
                         data.test.subset(torch.arange(min(n, len(data.test)))))


def measure(name: str, a, device, log) -> dict:
    loader = LOADERS[name]
    with C.Timer(device) as t_raw:
        data = _subset(loader.__wrapped__(), a.subset)  # uncached: what a new process pays
    opts = {"image_size": a.image_size} if BACKBONE[name] == "efficientnet_lite0" else {}
    extractor = build_extractor(BACKBONE[name], **opts)
    store = FeatureCache(a.cache_dir)
    paths = [store.path_for(feature_key(getattr(data, s), s, extractor)) for s in ("train", "test")]
    existed = all(p.is_file() for p in paths)
    cold_dir = Path(tempfile.mkdtemp(prefix="lifelong-feature-bench-")) if existed else store.dir
    try:
        with C.Timer(device) as t_model:
            extractor.ensure_loaded()
        cold_store = FeatureCache(cold_dir)
        with C.Timer(device) as t_cold:
            cold = featurize(data, extractor, cold_store, batch_size=a.batch_size, log=log)
        assert cold_store.misses + cold_store.rebuilt == 2, "the cold run found cache files"
    finally:
        if existed:
            shutil.rmtree(cold_dir)
    warm_s, warm_cpu = [], []
    for _ in range(a.repeats):
        _ex._SHA_MEMO.clear()
        fresh = build_extractor(BACKBONE[name], **opts)  # unloaded, as in a new run
        warm_store = FeatureCache(store.dir)
        with C.Timer(device) as t_warm:
            warm = featurize(data, fresh, warm_store, batch_size=a.batch_size, log=None)
        assert warm_store.hits == 2 and not fresh._net_loaded
        warm_s.append(t_warm.s)
        warm_cpu.append(t_warm.cpu_s)
    identical = all(torch.equal(getattr(cold, s).x, getattr(warm, s).x) for s in ("train", "test"))
    n = len(data.train) + len(data.test)
    warm_med = statistics.median(warm_s)
    r = {"dataset": name, "backbone": BACKBONE[name], "image_size": opts.get("image_size"), "n": n,
         "dim": cold.train.x.shape[1], "raw_load_s": t_raw.s, "model_load_s": t_model.s, "cold_s": t_cold.s,
         "cold_cpu_s": t_cold.cpu_s, "inputs_per_s": n / t_cold.s, "warm_s": warm_med, "warm_cpu_s": statistics.median(warm_cpu),
         "warm_runs_s": warm_s, "speedup": (t_model.s + t_cold.s) / warm_med, "identical": identical,
         "file_bytes": sum(p.stat().st_size for p in paths), "files": [str(p) for p in paths],
         "cold_in_temp_dir": existed}
    log(f"  {name}: model {r['model_load_s']:.1f} s + cold {r['cold_s']:.1f} s, warm {warm_med:.2f} s "
        f"-> x{r['speedup']:.0f}, identical {identical}")
    return r


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", default=",".join(LOADERS))
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=None, help="default: the extractor's (128 images, 32 texts)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cache-dir", default=None, help="default: $LIFELONG_CACHE_DIR or ~/.cache/lifelong/features")
    ap.add_argument("--subset", type=int, default=None, help="only the first N samples of each split (smoke tests)")
    ap.add_argument("--md", help="write the Markdown table (with the command line) to this file")
    a, log, device = C.parse_common(ap, argv)
    a.cache_dir = a.cache_dir or str(default_cache_dir())
    runs = [measure(name, a, device, log) for name in a.datasets.split(",")]
    rows = [[r["dataset"], r["backbone"] + (f" {r['image_size']} px" if r["image_size"] else ""), r["n"], r["dim"],
             f"{r['file_bytes'] / 2**20:.0f}", f"{r['model_load_s']:.2f}", f"{r['cold_s']:.1f}",
             f"{r['inputs_per_s']:.0f}", f"{r['warm_s']:.2f}", f"{r['speedup']:.0f}x", "yes" if r["identical"] else "NO"]
            for r in runs]
    table = C.markdown_table(["dataset", "extractor", "inputs (train+test)", "dim", "cache MiB", "model load s",
                              "extract + store s", "inputs/s", "load from cache s", "speed-up", "identical"], rows)
    out = {"benchmark": "feature_cache", "settings": {k: getattr(a, k) for k in ("datasets", "image_size", "batch_size",
                                                                               "repeats", "cache_dir", "subset")},
           "environment": C.environment(device), "runs": runs, "table": table}
    print(table)
    C.write_json(a.out, out)
    if a.md:
        cmd = "PYTHONPATH=src python benchmarks/feature_cache.py " + " ".join(argv if argv is not None else sys.argv[1:])
        env = out["environment"]
        Path(a.md).parent.mkdir(parents=True, exist_ok=True)
        Path(a.md).write_text(
            "# Feature cache: extract once, load afterwards\n\n"
            f"Written by `{cmd.strip()}` on {datetime.datetime.now():%Y-%m-%d %H:%M}: torch {env['torch']}, "
            f"{env['device']}, {env['threads']} torch thread(s), {env['cpu_count']} cores (shared with other "
            "work, so single times vary by several percent). See the docstring of `benchmarks/feature_cache.py` for "
            "what each column measures.\n\n"
            + table + "\n\n"
            "- *model load*: building the extractor and reading its weights; a cache hit never does it.\n"
            "- *extract + store*: dataset fingerprint (sha256 of the raw tensors or texts), extraction of both splits, "
            "writing the cache files (float32, sha256 of the payload, temporary name + rename).\n"
            "- *load from cache*: median of "
            f"{a.repeats} runs of the same call on a hit: fingerprint, weights-file hash, reading both files, checking "
            "their checksums (files in the OS page cache).\n"
            "- *speed-up*: (model load + extract + store) / load from cache; *identical*: the loaded features are "
            "bit-identical to the extracted ones.\n")
    return out


if __name__ == "__main__":
    main()
