"""FeTrIL: feature translation for exemplar-free class-incremental learning.

Petit, Popescu, Schindler, Picard & Delezoide (2023), "FeTrIL: Feature Translation for
Exemplar-Free Class-Incremental Learning" (WACV 2023, arXiv:2211.13131). Official code:
github.com/GregoirePetit/FeTrIL (``codes/compute_distances.py``, ``codes/train_classifiers.py``).

- Feature extractor: trained on the first experience only, then frozen. With
  ``fetril_base_training=True`` (default) the loop trains the whole model by gradient on the
  first experience when its backbone has trainable parameters; with a pretrained, parameter-free
  backbone (frozen features) the extractor is frozen from the start.
- Class centroids: the mean frozen feature of every class, kept from the experience(s) that had
  its data (running sums: a class that comes back gets the mean over all its data).
- Pseudo-features (FeTrIL^1, the paper's main variant): for each past class c absent from the
  current experience, the features of the current class n whose centroid is nearest to c's
  (Euclidean, as the official ``compute_distances.py``) are translated,
  f_c = f_n - mu_n + mu_c, so they have c's centroid and n's spread. mu_n is the mean of n's
  features in the current experience. Current classes keep their real features.
- Classifier, retrained each experience on real + pseudo features of all classes seen:
  * ``fetril_classifier="svm"`` (default, the paper's): scikit-learn ``LinearSVC`` (one-vs-rest,
    squared hinge, L2 penalty, ``C=fetril_svm_c=1.0`` and tol 1e-4 as the official config,
    primal solver, intercept) on L2-normalised features; test features are L2-normalised too.
    No gradient training after the base phase (``train_data`` returns None): deterministic,
    nothing to tune but C.
  * ``fetril_classifier="linear"``: the model's own head, trained by the loop with its
    optimizer and the cross-entropy on a dataset of (unnormalised) real + pseudo features that
    ``train_data`` returns, only the head's parameters in the optimizer (``forward`` feeds the
    stored features to the head). Uses the configured iterations/epochs, runs on the GPU and
    keeps the head trained in the base phase; it is what several re-implementations (e.g.
    PyCIL) do.
  The SVM is the default because it is the paper's classifier; the linear head is offered for
  large feature sets, where one LinearSVC fit per experience on the CPU becomes slow.
- Prediction: the classifier's scores over the label space, ``-inf`` for classes not seen; with
  task ids only the task's labels compete (task-IL).

Scenarios: class- and task-IL (the paper's class-IL; in task-IL the same classifier is
restricted to the task's labels). Domain-IL is not supported: every label is current in every
experience, so nothing would be translated and the classifier would only see the last domain.
"""
from __future__ import annotations

import math
from typing import Annotated, Literal

import numpy as np
from pydantic import Field
import torch
import torch.nn.functional as F

from ..streams import Split
from ._frozen import FrozenFeatureStrategy, check, check_choice

SVM_TOL = 1e-4  # official configs/cifar100_b50_t10.cf: toler = 0.0001


class FeTrIL(FrozenFeatureStrategy):
    name = "fetril"
    paper = "Petit et al. 2023 (WACV), FeTrIL: Feature Translation for Exemplar-Free Class-Incremental Learning"
    scenarios = ("class", "task")
    task_disjoint_classes = True  # a class's pseudo-features carry that class's one task (task-IL)
    epochs_from_stream = False  # after the first experience its head trains on stored features
    prefix = "fetril"
    feeds_inputs = False  # its head trains on stored (and translated) features

    @property
    def gradient_free(self) -> bool:
        return self.fetril_classifier == "svm"

    def __init__(self, fetril_classifier: Literal["svm", "linear"] = "svm",
                 fetril_svm_c: Annotated[float, Field(gt=0)] = 1.0, fetril_base_training: bool = True):
        super().__init__()
        self.fetril_classifier = fetril_classifier
        self.fetril_svm_c = fetril_svm_c
        self.fetril_base_training = fetril_base_training

    def validate(self):
        super().validate()
        check_choice("fetril_classifier", self.fetril_classifier, ("svm", "linear"))
        c = self.fetril_svm_c
        check(isinstance(c, (int, float)) and math.isfinite(c) and c > 0, f"'fetril_svm_c' must be > 0, got {c!r}")

    def setup(self, model, device="cpu", seed=0):
        super().setup(model, device, seed)
        self.sums_ = None         # (n_out, d) float64: sum of the frozen features of each class
        self.counts_ = None       # (n_out,) float64
        self.class_task_ = None   # (n_out,) long: task id of each class (for multi-head models)
        self.coef_ = None         # (n_out, d) float64: SVM weights (svm classifier)
        self.intercept_ = None    # (n_out,) float64
        self._feature_batches = False
        return self

    # -- the training set: real features of current classes + translated ones of past classes --
    def training_set(self, exp) -> Split:
        """Features (float32), labels and task ids of FeTrIL's training set for ``exp``."""
        f = self.train_features(exp)
        y = exp.train.y.to(f.device)
        current = torch.unique(y)
        cur_means = torch.stack([f[y == c].double().mean(0) for c in current.tolist()])
        xs, ys = [f], [y]
        if self.counts_ is not None:
            past = torch.nonzero(self.counts_ > 0).flatten()
            past = past[~torch.isin(past, current)]
            if len(past):
                past_means = self.sums_[past] / self.counts_[past].unsqueeze(1)
                nearest = torch.cdist(past_means, cur_means).argmin(1)  # FeTrIL^1: nearest new centroid
                for c, j in zip(past.tolist(), nearest.tolist()):
                    src = f[y == current[j]].double()
                    xs.append((src - cur_means[j] + self.sums_[c] / self.counts_[c]).to(f.dtype))
                    ys.append(torch.full((len(src),), c, dtype=y.dtype, device=y.device))
        x, y = torch.cat(xs), torch.cat(ys)
        task = self._class_tasks(exp)
        return Split(x, y, task[y].to(y.device))

    def _class_tasks(self, exp) -> torch.Tensor:
        task = self.class_task_.clone() if self.class_task_ is not None else \
            torch.zeros(self.n_outputs(exp.train.x), dtype=torch.long, device=self.device)
        task[torch.as_tensor(exp.classes, dtype=torch.long, device=task.device)] = exp.task_id
        return task

    # -- hooks ---------------------------------------------------------------------------------
    def param_groups(self):
        if self.fetril_classifier == "linear" and not self.trains_backbone_now():
            return [{"params": list(self.model.head.parameters())}]
        return super().param_groups()

    def train_data(self, exp):
        self._feature_batches = False
        if self.trains_backbone_now():
            return exp.train
        if self.fetril_classifier == "svm":
            return None
        self._feature_batches = True
        return self.training_set(exp)

    def forward(self, batch):
        if self._feature_batches:  # stored features: the head only
            return self.model.head(batch.x, batch.t)
        return super().forward(batch)

    @torch.no_grad()
    def after_experience(self, exp):
        super().after_experience(exp)
        self._feature_batches = False
        if self.fetril_classifier == "svm":
            data = self.training_set(exp)
            self._fit_svm(data.x, data.y)
        f = self.train_features(exp).double()
        y = exp.train.y.to(f.device)
        if self.sums_ is None:
            self.sums_ = f.new_zeros(len(self.seen_), f.shape[1])
            self.counts_ = f.new_zeros(len(self.seen_))
        self.sums_.index_add_(0, y, f)
        self.counts_.index_add_(0, y, torch.ones_like(y, dtype=f.dtype))
        self.class_task_ = self._class_tasks(exp)
        self._feature_cache = None

    def _fit_svm(self, x: torch.Tensor, y: torch.Tensor) -> None:
        from sklearn.svm import LinearSVC

        X = F.normalize(x.double(), dim=1).cpu().numpy()
        labels = y.cpu().numpy()
        classes = np.unique(labels)
        n_out, d = len(self.seen_), X.shape[1]
        coef, intercept = np.zeros((n_out, d)), np.zeros(n_out)
        if len(classes) == 1:  # one class so far: it wins every prediction
            intercept[classes[0]] = 1.0
        else:
            svm = LinearSVC(C=float(self.fetril_svm_c), loss="squared_hinge", penalty="l2", dual=False,
                            tol=SVM_TOL, multi_class="ovr", fit_intercept=True)
            svm.fit(X, labels)
            if len(classes) == 2:  # sklearn keeps one hyperplane for two classes: +w for classes[1]
                coef[classes[1]], intercept[classes[1]] = svm.coef_[0], svm.intercept_[0]
                coef[classes[0]], intercept[classes[0]] = -svm.coef_[0], -svm.intercept_[0]
            else:
                coef[svm.classes_], intercept[svm.classes_] = svm.coef_, svm.intercept_
        self.coef_ = torch.from_numpy(coef).to(self.device)
        self.intercept_ = torch.from_numpy(intercept).to(self.device)

    @torch.no_grad()
    def predict(self, x, task=None):
        if self.coef_ is None:  # linear head, or nothing fitted yet
            return self.model(x, task)
        f = F.normalize(self.features(x).double(), dim=1)
        return self.mask(f @ self.coef_.T + self.intercept_, task).float()

    def extra_state(self):
        return super().extra_state() | {"sums": self.sums_, "counts": self.counts_, "class_task": self.class_task_,
                                        "coef": self.coef_, "intercept": self.intercept_}

    def load_extra_state(self, state):
        super().load_extra_state(state)
        for key in ("sums", "counts", "class_task", "coef", "intercept"):
            value = state[key]
            setattr(self, f"{key}_", None if value is None else value.to(self.device))
