"""Stream builders: class/task-incremental splits, permuted and rotated domains, dataset sequences.

Scenarios (van de Ven, Tuytelaars & Tolias, 2022):
- ``class``: one growing label space; the model must tell all classes seen so far apart.
- ``task``: the task id is given at train and test time (multi-head models use it).
- ``domain``: the label space is fixed and shared; the input distribution changes.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..data.base import DatasetSplits
from ..errors import ConfigError
from .base import SCENARIOS, Experience, Split, Stream, carve_validation


def _check_scenario(scenario: str) -> None:
    if scenario not in SCENARIOS:
        raise ConfigError(f"unknown scenario '{scenario}'; allowed: {', '.join(SCENARIOS)}")


def _class_groups(n_classes: int, n_experiences: int | None, classes_per_experience: int | None,
                  first_experience_classes: int | None, class_order: list[int] | None,
                  generator: torch.Generator) -> list[list[int]]:
    if class_order is None:
        order = list(range(n_classes))
    elif isinstance(class_order, str):
        if class_order != "random":
            raise ConfigError(f"class_order must be 'random' or a list of class ids, got {class_order!r}")
        order = torch.randperm(n_classes, generator=generator).tolist()
    else:
        order = [int(c) for c in class_order]
        if sorted(order) != list(range(n_classes)):
            raise ConfigError(f"class_order must be a permutation of 0..{n_classes - 1}, got {order}")
    first = first_experience_classes
    if first is not None and not 0 < first < n_classes:
        raise ConfigError(f"first_experience_classes must be in 1..{n_classes - 1}, got {first}")
    rest = n_classes - (first or 0)
    if classes_per_experience is None:
        if n_experiences is None:
            raise ConfigError("give n_experiences or classes_per_experience")
        k = n_experiences - (1 if first else 0)
        if k <= 0 or rest % k:
            raise ConfigError(f"cannot split {rest} classes evenly into {k} experiences; "
                              "set classes_per_experience or first_experience_classes")
        classes_per_experience = rest // k
    if classes_per_experience <= 0 or rest % classes_per_experience:
        raise ConfigError(f"classes_per_experience={classes_per_experience} does not divide the {rest} classes")
    groups = [order[:first]] if first else []
    groups += [order[i:i + classes_per_experience] for i in range((first or 0), n_classes, classes_per_experience)]
    if n_experiences is not None and len(groups) != n_experiences:
        raise ConfigError(f"n_experiences={n_experiences} does not match the split ({len(groups)} experiences)")
    return groups


def split_stream(data: DatasetSplits, scenario: str = "class", n_experiences: int | None = 5,
                 classes_per_experience: int | None = None, first_experience_classes: int | None = None,
                 class_order: list[int] | str | None = None, val_fraction: float = 0.0, seed: int = 0,
                 name: str | None = None) -> Stream:
    """Split a dataset's classes into experiences (Split MNIST and friends).

    In the ``domain`` scenario labels become the position of the class inside its experience
    (Split MNIST domain-IL: digit parity-like "first or second class"), so every experience
    needs the same number of classes.
    """
    _check_scenario(scenario)
    g = torch.Generator().manual_seed(seed)
    groups = _class_groups(data.n_classes, n_experiences, classes_per_experience, first_experience_classes,
                           class_order, g)
    if scenario == "domain" and len({len(c) for c in groups}) != 1:
        raise ConfigError("domain-incremental splits need the same number of classes in every experience")
    xtr, xte = data.train.to_float(), data.test.to_float()
    ytr, yte = data.train.y, data.test.y
    exps = []
    for i, classes in enumerate(groups):
        cls = torch.tensor(classes)
        mtr, mte = torch.isin(ytr, cls), torch.isin(yte, cls)
        tr, te = Split(xtr[mtr], ytr[mtr]), Split(xte[mte], yte[mte])
        labels = classes
        if scenario == "domain":
            remap = torch.full((data.n_classes,), -1, dtype=torch.long)
            remap[cls] = torch.arange(len(classes))
            tr, te = Split(tr.x, remap[tr.y]), Split(te.x, remap[te.y])
            labels = list(range(len(classes)))
        tr, va = carve_validation(tr, val_fraction, g)
        exps.append(Experience(i, i, sorted(labels), tr, va, te, name=f"classes {classes}"))
    n_out = len(groups[0]) if scenario == "domain" else data.n_classes
    return Stream(name or f"split-{data.name}", scenario, exps, n_out, tuple(data.train.input_shape),
                  info={"class_groups": groups})


def _domain_stream(data: DatasetSplits, transforms: list, names: list[str], scenario: str, val_fraction: float,
                   seed: int, name: str, input_shape: tuple[int, ...] | None = None) -> Stream:
    _check_scenario(scenario)
    g = torch.Generator().manual_seed(seed)
    xtr, xte = data.train.to_float(), data.test.to_float()
    C = data.n_classes
    exps = []
    for i, (fn, nm) in enumerate(zip(transforms, names)):
        off = i * C if scenario == "class" else 0
        tr = Split(fn(xtr), data.train.y + off)
        te = Split(fn(xte), data.test.y + off)
        tr, va = carve_validation(tr, val_fraction, g)
        exps.append(Experience(i, i, list(range(off, off + C)), tr, va, te, name=nm))
    n_out = C * len(transforms) if scenario == "class" else C
    return Stream(name, scenario, exps, n_out, tuple(input_shape or data.train.input_shape))


def permuted_stream(data: DatasetSplits, n_experiences: int = 10, scenario: str = "domain",
                    permute_first: bool = False, val_fraction: float = 0.0, seed: int = 0, pad: int = 0) -> Stream:
    """Permuted MNIST: each experience applies its own fixed pixel permutation.

    The first experience keeps the original images unless ``permute_first`` (as in van de
    Ven's reference code). Permutations are drawn from ``seed``. ``pad``: zero pixels added on
    each side of every image *before* permuting (van de Ven's reference pads MNIST by 2 to
    32x32, so its permutations move 1024 pixels, 240 of them always zero).
    """
    if not isinstance(pad, int) or isinstance(pad, bool) or pad < 0:
        raise ConfigError(f"pad must be an integer >= 0 (zero pixels on each side), got {pad!r}")
    shape = tuple(data.train.input_shape)
    if pad:
        c, h, w = shape
        shape = (c, h + 2 * pad, w + 2 * pad)
    g = torch.Generator().manual_seed(seed + 7919)
    D = math.prod(shape)
    perms = [None if (i == 0 and not permute_first) else torch.randperm(D, generator=g) for i in range(n_experiences)]

    def make(p):
        def fn(x):
            x = F.pad(x, (pad, pad, pad, pad)) if pad else x
            return x if p is None else x.flatten(1)[:, p].reshape(x.shape)
        return fn

    return _domain_stream(data, [make(p) for p in perms], [f"permutation {i}" for i in range(n_experiences)],
                          scenario, val_fraction, seed, f"permuted-{data.name}", shape)


def rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate a batch of images (N, C, H, W) by ``degrees`` (bilinear, zero padding)."""
    if degrees % 360 == 0:
        return x
    a = math.radians(degrees)
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]], dtype=x.dtype,
                         device=x.device)
    grid = F.affine_grid(theta.expand(len(x), 2, 3), list(x.shape), align_corners=False)
    out = torch.empty_like(x)
    for s in range(0, len(x), 8192):  # bounded memory for the sampling grid
        out[s:s + 8192] = F.grid_sample(x[s:s + 8192], grid[s:s + 8192], align_corners=False)
    return out


def rotated_stream(data: DatasetSplits, n_experiences: int = 10, scenario: str = "domain",
                   angles: list[float] | None = None, max_angle: float = 180.0, val_fraction: float = 0.0,
                   seed: int = 0) -> Stream:
    """Rotated MNIST: experience i rotates every image by ``angles[i]`` degrees.

    By default the angles are evenly spaced in [0, max_angle).
    """
    if angles is None:
        angles = [max_angle * i / n_experiences for i in range(n_experiences)]
    elif len(angles) != n_experiences:
        raise ConfigError(f"angles has {len(angles)} values but n_experiences={n_experiences}")
    return _domain_stream(data, [lambda x, a=a: rotate(x, a) for a in angles],
                          [f"rotation {a:g} deg" for a in angles], scenario, val_fraction, seed,
                          f"rotated-{data.name}")


def sequence_stream(datasets: list[DatasetSplits], scenario: str = "domain", val_fraction: float = 0.0,
                    seed: int = 0) -> Stream:
    """One experience per dataset (e.g. MNIST -> Fashion-MNIST -> Animal-MNIST).

    ``domain``: the datasets share the same output units (label k of every dataset is unit k);
    ``class`` and ``task``: dataset i's labels are offset by i * n_classes (30 classes for three
    10-class datasets).
    """
    _check_scenario(scenario)
    shapes = {tuple(d.train.input_shape) for d in datasets}
    if len(shapes) != 1:
        raise ConfigError(f"datasets in a sequence need one input shape, got {sorted(shapes)}")
    g = torch.Generator().manual_seed(seed)
    C = max(d.n_classes for d in datasets)
    exps = []
    for i, d in enumerate(datasets):
        off = 0 if scenario == "domain" else i * C
        tr = Split(d.train.to_float(), d.train.y + off)
        te = Split(d.test.to_float(), d.test.y + off)
        tr, va = carve_validation(tr, val_fraction, g)
        exps.append(Experience(i, i, sorted(set((d.train.y + off).tolist())), tr, va, te, name=d.name))
    n_out = C if scenario == "domain" else C * len(datasets)
    return Stream("+".join(d.name for d in datasets), scenario, exps, n_out, shapes.pop())


def data_incremental_stream(data: DatasetSplits, n_experiences: int = 5, scenario: str = "domain",
                            val_fraction: float = 0.0, seed: int = 0, name: str | None = None) -> Stream:
    """Data-incremental: the same classes in every experience, new data arriving in chunks.

    Each class's training samples, and separately its test samples, are shuffled (seed ``seed``)
    and cut into ``n_experiences`` near-equal chunks; experience i holds chunk i of every class
    (stratified chunks, so every experience has every class in the dataset's proportions).
    Labels are the dataset's own and the head is shared: the ``domain`` scenario (the input
    distribution may shift, the label space does not). ``class`` is accepted too and gives the
    same experiences (the class-IL head activates every class in the first experience); ``task``
    is refused, as every experience would be the same task.

    Each experience's test set is its own chunk of the test set, so the final average accuracy
    equals (up to chunk-size rounding) the accuracy on the whole test set, and the matrix stays
    cheap to compute.
    """
    _check_scenario(scenario)
    if scenario == "task":
        raise ConfigError("a data-incremental stream has the same classes in every experience; use scenario "
                          "'domain' (shared head) or 'class', not 'task'")
    if n_experiences < 1:
        raise ConfigError(f"n_experiences must be >= 1, got {n_experiences}")
    g = torch.Generator().manual_seed(seed)
    classes = sorted(set(data.train.y.tolist()))

    def chunks(y: torch.Tensor, what: str) -> list[torch.Tensor]:
        parts: list[list[torch.Tensor]] = [[] for _ in range(n_experiences)]
        for c in classes:
            idx = torch.nonzero(y == c).flatten()
            if len(idx) < n_experiences:
                raise ConfigError(f"class {c} has {len(idx)} {what} samples, fewer than n_experiences="
                                  f"{n_experiences}: it cannot appear in every experience")
            idx = idx[torch.randperm(len(idx), generator=g)]
            for i, part in enumerate(torch.tensor_split(idx, n_experiences)):
                parts[i].append(part)
        return [torch.cat(p).sort().values for p in parts]

    xtr, xte = data.train.to_float(), data.test.to_float()
    ytr, yte = data.train.y, data.test.y
    tr_parts, te_parts = chunks(ytr, "training"), chunks(yte, "test")
    exps = []
    for i, (a, b) in enumerate(zip(tr_parts, te_parts)):
        tr, va = carve_validation(Split(xtr[a], ytr[a]), val_fraction, g)
        exps.append(Experience(i, i, list(classes), tr, va, Split(xte[b], yte[b]),
                               name=f"chunk {i + 1}/{n_experiences}"))
    return Stream(name or f"data-incremental-{data.name}", scenario, exps, data.n_classes,
                  tuple(data.train.input_shape),
                  info={"chunks": n_experiences, "train_sizes": [len(a) for a in tr_parts],
                        "test_sizes": [len(b) for b in te_parts]})


def blurry_stream(data: DatasetSplits, n_experiences: int | None = 5, blurry: float = 0.1,
                  blurry_disjoint: float = 0.0, classes_per_experience: int | None = None,
                  first_experience_classes: int | None = None, class_order: list[int] | str | None = None,
                  val_fraction: float = 0.0, seed: int = 0, name: str | None = None) -> Stream:
    """Generalized class-incremental stream (GCIL, blurry task boundaries), as G-ACIL/GACL
    (Zhuang et al., 2024) evaluate it with the Si-Blurry setting (Moon et al., ICCV 2023).

    1. Classes are grouped into experiences exactly as :func:`split_stream` does (``n_experiences``,
       ``classes_per_experience``, ``first_experience_classes``, ``class_order``): a class's group
       is its *home* experience, and the home classes are the experience's major classes.
    2. In every group the first ``round(blurry_disjoint * len(group))`` classes (in class order)
       are *disjoint*: all their training samples stay home. The others are *blurry* (Si-Blurry's
       disjoint class ratio N = ``blurry_disjoint``).
    3. For each blurry class c with n_c training samples, ``k_c = round(blurry * n_c)`` of them,
       drawn at random (seed), leave the home experience and are dealt to the other T-1
       experiences in near-equal shares (each gets floor or ceil of k_c / (T-1); which ones get
       the extra sample rotates at random). So exactly ``k_c`` samples of class c, a fraction
       ``blurry`` up to rounding, appear in experiences other than its home, and every training
       sample appears in exactly one experience.
    4. An experience's ``classes`` are every label of its training data (home and blurred-in),
       so the class-IL head activates a class the first time any of its samples arrives, and
       classes reappear across experiences. Its test set is the test samples of its *home*
       classes (every test sample in exactly one experience).

    Difference to Si-Blurry's code: there the blurred samples (M % of the blurry classes) are
    pooled and dealt over *all* T tasks, so about 1/T of them return home; its M corresponds to
    ``blurry = M * (T - 1) / T`` here (G-ACIL's CIFAR-100 setting, T = 5, N = 50 %, M = 10 %:
    ``blurry: 0.08, blurry_disjoint: 0.5``). Si-Blurry's option of random class counts per task
    (``rnd_NM``) is not implemented: the class groups are those of the split.

    Only the ``class`` scenario: classes shared between experiences have no meaning for task-IL
    heads or domain-IL label remapping.
    """
    if not 0.0 < blurry < 1.0:
        raise ConfigError(f"blurry must be in (0, 1), got {blurry}")
    if not 0.0 <= blurry_disjoint <= 1.0:
        raise ConfigError(f"blurry_disjoint must be in [0, 1], got {blurry_disjoint}")
    g = torch.Generator().manual_seed(seed)
    groups = _class_groups(data.n_classes, n_experiences, classes_per_experience, first_experience_classes,
                           class_order, g)
    T = len(groups)
    if T < 2:
        raise ConfigError("a blurry stream needs at least 2 experiences")
    home = {c: i for i, grp in enumerate(groups) for c in grp}
    disjoint = sorted(c for grp in groups for c in grp[:int(round(blurry_disjoint * len(grp)))])
    ytr, yte = data.train.y, data.test.y
    parts: list[list[torch.Tensor]] = [[] for _ in range(T)]
    blurred: dict[int, int] = {}
    for c in range(data.n_classes):
        idx = torch.nonzero(ytr == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        if c not in home:
            continue
        h = home[c]
        k = 0 if c in disjoint else int(round(blurry * len(idx)))
        blurred[c] = k
        parts[h].append(idx[k:])
        others = [j for j in range(T) if j != h]
        shift = int(torch.randint(len(others), (1,), generator=g))
        for m, j in enumerate(others):
            parts[j].append(idx[:k][(m - shift) % len(others)::len(others)])
    xtr, xte = data.train.to_float(), data.test.to_float()
    exps = []
    for i, grp in enumerate(groups):
        a = torch.cat(parts[i]).sort().values
        tr = Split(xtr[a], ytr[a])
        mte = torch.isin(yte, torch.tensor(grp))
        te = Split(xte[mte], yte[mte])
        labels = sorted(set(tr.y.tolist()) | set(grp))
        tr, va = carve_validation(tr, val_fraction, g)
        minor = [c for c in labels if c not in grp]
        exps.append(Experience(i, i, labels, tr, va, te, name=f"classes {grp} + blurred {minor}"))
    return Stream(name or f"blurry-{data.name}", "class", exps, data.n_classes, tuple(data.train.input_shape),
                  info={"class_groups": groups, "blurry": blurry, "blurry_disjoint": blurry_disjoint,
                        "disjoint_classes": disjoint, "home": home, "blurred": blurred})
