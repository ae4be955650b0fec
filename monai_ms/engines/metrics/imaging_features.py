"""Imaging-feature baselines: what a clinical researcher measures first, and a linear model on it.

Tier 2 of the three tiers every evaluation reports (trivial baselines, imaging-feature baselines, the
network; see DESIGN.md): per session the brain volume, the CSF / grey / white matter fractions of the
brain from a label-free tissue model, and the lesion volume and count from the lesion mask; then a
linear model on them (with age and sex where the task allows), fitted on the training split only. A
network that does not beat this has learnt nothing a volumetry script would not give.

The tissue model is a three-class Gaussian mixture of the log intensities inside the brain (the
non-zero voxels of a skull-stripped image), the classic contrast-adaptive segmentation (as in SPM's and
FSL FAST's intensity models, without their spatial priors): it needs no labels and no template, and the
classes are named by the modality's contrast order (T1: CSF < GM < WM; T2, FLAIR-free T2-like
contrasts: WM < GM < CSF). Scanner scaling is a shift of the log intensities, which a mixture fitted per
scan absorbs; a smooth bias field moves class boundaries a little (see the tests for the tolerance).

Limits, measured on the demo cohort's 2 mm T1 against the generator's tissue maps (6 training sessions):
the CSF fraction is recovered to 0.013-0.02 (mean absolute error), the split between grey and white
matter is not (0.19-0.26): at 2 mm most cortical voxels mix grey matter with CSF or white matter, and
deep grey matter is nearly as bright as white matter on T1. The baselines use all three fractions; read
the grey/white ones as intensity classes, not as volumetry.

Every evaluation measures its training split again, and each fold of a cross-validation the same sessions, so
the features of each session are cached on disk (:func:`feature_cache_dir`), keyed by the SHA-256 of the image
and mask files, the settings and this code: a changed file or a changed measurement is measured afresh.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

__all__ = [
    "TISSUE_ORDER",
    "TASK_FEATURES",
    "feature_cache_dir",
    "tissue_fractions",
    "session_features",
    "feature_table",
    "fit_feature_model",
    "IMAGING_BASELINE",
    "imaging_baseline",
]

logger = logging.getLogger(__name__)

# tissue names from the darkest to the brightest class, per modality
TISSUE_ORDER: dict[str, tuple[str, str, str]] = {
    "t1": ("csf", "gm", "wm"),
    "t2": ("wm", "gm", "csf"),
    "pd": ("wm", "gm", "csf"),
}

# the features each task's baseline uses (lesion features only when every session has a mask)
TASK_FEATURES: dict[str, tuple[str, ...]] = {
    "edss": ("age", "sex", "brain_volume_ml", "csf_fraction", "gm_fraction", "wm_fraction", "log_lesion_volume_ml", "log_lesion_count"),
    "brain_age": ("sex", "brain_volume_ml", "csf_fraction", "gm_fraction", "wm_fraction", "log_lesion_volume_ml"),
    "sex": ("brain_volume_ml", "csf_fraction", "gm_fraction", "wm_fraction"),
}
LESION_FEATURES = ("log_lesion_volume_ml", "log_lesion_count")
IMAGING_BASELINE = "imaging_features"  # its name among an evaluation's baselines (tier 2)
CACHE_ENV = "MONAI_MS_CACHE_DIR"
# what session_features measures (besides session and subject): the cached row's keys
FEATURE_KEYS = (
    "brain_volume_ml", "csf_fraction", "gm_fraction", "wm_fraction",
    "lesion_volume_ml", "lesion_count", "log_lesion_volume_ml", "log_lesion_count",
)


def feature_cache_dir() -> Path | None:
    """Where :func:`session_features` caches its rows: ``$MONAI_MS_CACHE_DIR/imaging_features``, by default
    ``$XDG_CACHE_HOME/monai_ms/imaging_features`` (``~/.cache/...``); None (no cache) when the variable is set empty.
    """
    value = os.environ.get(CACHE_ENV)
    if value is not None and not value.strip():
        return None
    root = Path(value) if value else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "monai_ms"
    return root / "imaging_features"


@functools.lru_cache(maxsize=1)
def _code_digest() -> str:
    # what measures: this module (tissue model), N4, lesion labelling (segmentation.py: minimum size, connectivity)
    # and the libraries under them. A change to any of them must not read rows measured before it.
    import scipy
    import SimpleITK
    import sklearn

    from monai_ms.data import bias_correction
    from monai_ms.engines.metrics import segmentation

    digest = hashlib.sha256()
    for module_file in (__file__, bias_correction.__file__, segmentation.__file__):
        digest.update(Path(module_file).read_bytes())
    versions = (np.__version__, scipy.__version__, sklearn.__version__, SimpleITK.Version_VersionString(), nib.__version__)
    digest.update(json.dumps(versions).encode())
    return digest.hexdigest()


def tissue_fractions(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    modality: str = "t1",
    max_voxels: int = 20_000,
    seed: int = 0,
) -> dict[str, float]:
    """CSF, grey- and white-matter fractions of the brain from a 3-class Gaussian mixture.

    Args:
        image: intensities, shape ``(D, H, W)``, skull-stripped (zero outside the brain).
        mask: brain mask of the same shape; default the image's positive voxels.
        modality: ``"t1"``, ``"t2"`` or ``"pd"``: names the classes by their contrast order.
        max_voxels: fit the mixture on at most this many brain voxels (a seeded random subset), then
            assign every brain voxel.
        seed: seed of the subset and of the mixture's initialisation.

    Returns:
        ``{"csf_fraction", "gm_fraction", "wm_fraction"}``, summing to 1.

    Raises:
        ValueError: an unknown modality, or fewer than 100 brain voxels.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> image = np.concatenate([rng.normal(m, 0.05 * m, 3000) for m in (30, 70, 100)]).reshape(30, 30, 10)
        >>> round(tissue_fractions(image)["csf_fraction"], 2)
        0.33
    """
    from sklearn.mixture import GaussianMixture

    if modality not in TISSUE_ORDER:
        raise ValueError(f"modality must be one of {', '.join(TISSUE_ORDER)}, got {modality!r}")
    image = np.asarray(image, dtype=np.float64)
    mask = image > 0 if mask is None else np.asarray(mask, dtype=bool) & (image > 0)
    values = np.log(image[mask])
    if values.size < 100:
        raise ValueError(f"tissue_fractions: need at least 100 brain voxels, got {values.size}")
    rng = np.random.default_rng(seed)
    sample = values if values.size <= max_voxels else rng.choice(values, max_voxels, replace=False)
    # start at the 1/6, 1/2 and 5/6 quantiles: stable, and no random restarts needed
    start = np.quantile(sample, [1 / 6, 1 / 2, 5 / 6])[:, None]
    mixture = GaussianMixture(3, means_init=start, random_state=seed).fit(sample[:, None])
    order = np.argsort(mixture.means_[:, 0])
    counts = np.bincount(mixture.predict(values[:, None]), minlength=3)[order]
    shares = counts / counts.sum()
    return {f"{name}_fraction": float(share) for name, share in zip(TISSUE_ORDER[modality], shares, strict=True)}


def _lesion_volume_and_count(path: str) -> tuple[float, int]:
    from monai_ms.engines.metrics.segmentation import label_lesions

    image = nib.load(path)
    spacing = np.abs(image.header.get_zooms()[:3])
    labels, count = label_lesions(np.asanyarray(image.dataobj) > 0.5, spacing)
    return float(np.count_nonzero(labels) * np.prod(spacing) / 1000.0), int(count)


def session_features(
    entry: Mapping[str, Any], image_key: str = "t1", lesion_key: str | None = "lesion", bias_correction: bool = False
) -> dict[str, Any]:
    """Imaging features of one session, measured on its images in their own space.

    Args:
        entry: a manifest entry with absolute paths (as ``load_datalist`` returns it).
        image_key: the skull-stripped image whose non-zero voxels are the brain and whose contrast the
            tissue model reads (its key names the modality).
        lesion_key: the lesion-mask key, or None; a session without a mask gets NaN lesion features.
        bias_correction: divide the image by its N4 bias field first
            (:func:`monai_ms.data.bias_correction.n4_log_bias_field`), as the bundle's chain does when its
            ``bias_correction`` is on: a researcher runs N4 before a tissue model, so the baseline gets it too.

    Returns:
        ``session``, ``subject``, ``brain_volume_ml``, the three tissue fractions, ``lesion_volume_ml``,
        ``lesion_count`` and their ``log1p`` versions (``log_lesion_volume_ml``, ``log_lesion_count``).
        Read from the cache (:func:`feature_cache_dir`) when the same files were measured the same way before.
    """
    from monai_ms.io import sha256_file, write_json

    lesion_path = str(entry[lesion_key]) if lesion_key and entry.get(lesion_key) else None
    identity = {"session": entry.get("session"), "subject": entry.get("subject")}
    cache, cached = feature_cache_dir(), None
    if cache is not None:
        key = {
            "code": _code_digest(),
            "image": sha256_file(entry[image_key]),
            "image_key": image_key,
            "lesion": sha256_file(lesion_path) if lesion_path else None,
            "bias_correction": bool(bias_correction),
        }
        cached = cache / f"{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()}.json"
        try:
            values = json.loads(cached.read_text())
        except (OSError, ValueError):
            values = None
        if isinstance(values, dict) and set(values) == set(FEATURE_KEYS):  # anything else is measured afresh
            return {**identity, **{k: math.nan if v is None else v for k, v in values.items()}}  # JSON has no NaN
    row = {**identity, **_measure(entry, image_key, lesion_path, bias_correction)}
    if cached is not None:
        try:
            write_json({k: v for k, v in row.items() if k not in identity}, cached)
        except OSError as error:  # a read-only or full cache costs time, never the result
            logger.debug(f"imaging features not cached ({cached}): {error}")
    return row


def _measure(entry: Mapping[str, Any], image_key: str, lesion_path: str | None, bias_correction: bool) -> dict[str, Any]:
    image = nib.load(str(entry[image_key]))
    data = np.asanyarray(image.dataobj).astype(np.float32)
    if bias_correction:
        from monai_ms.data.bias_correction import n4_log_bias_field

        data = data * np.exp(-n4_log_bias_field(data, image.header.get_zooms()[:3]))  # background stays 0
    voxel_ml = abs(float(np.linalg.det(image.affine[:3, :3]))) / 1000.0
    brain = data > 0
    row: dict[str, Any] = {"brain_volume_ml": float(brain.sum()) * voxel_ml}
    row.update(tissue_fractions(data, brain, modality=image_key if image_key in TISSUE_ORDER else "t1"))
    volume, count = (math.nan, math.nan)
    if lesion_path:
        volume, count = _lesion_volume_and_count(lesion_path)
    row.update(lesion_volume_ml=volume, lesion_count=count, log_lesion_volume_ml=math.log1p(volume), log_lesion_count=math.log1p(count))
    return row


def feature_table(
    entries: Sequence[Mapping[str, Any]],
    image_key: str = "t1",
    lesion_key: str | None = "lesion",
    workers: int | None = None,
    bias_correction: bool = False,
) -> list[dict[str, Any]]:
    """:func:`session_features` of every entry, in entry order (threads; nibabel and sklearn release the GIL).

    Args:
        entries: manifest entries with absolute paths.
        image_key, lesion_key, bias_correction: see :func:`session_features`.
        workers: threads (default: the CPU count, at most 4).
    """
    workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda entry: session_features(entry, image_key, lesion_key, bias_correction), entries))


def _number(value: Any, key: str, entry: Mapping[str, Any]) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"session {entry.get('session')}: {key} must be a number, got {value!r}") from None


def _design(rows: Sequence[Mapping[str, Any]], entries: Sequence[Mapping[str, Any]], features: Sequence[str]) -> np.ndarray:
    from monai_ms.data.fields import parse_sex

    columns = []
    for name in features:
        if name == "age":
            columns.append([_number(e.get("age"), "age", e) for e in entries])
        elif name == "sex":
            columns.append([parse_sex(e.get("sex")) for e in entries])
        else:
            columns.append([float(r[name]) for r in rows])
    return np.array(columns, dtype=np.float64).T


def fit_feature_model(
    train_entries: Sequence[Mapping[str, Any]],
    eval_entries: Sequence[Mapping[str, Any]],
    target_key: str,
    task: str,
    train_rows: Sequence[Mapping[str, Any]] | None = None,
    eval_rows: Sequence[Mapping[str, Any]] | None = None,
    image_key: str = "t1",
    lesion_key: str | None = "lesion",
    bias_correction: bool = False,
) -> dict[str, Any]:
    """Fit the imaging-feature baseline on the training split and predict the evaluated split.

    Regression targets (EDSS, age) get a ridge regression, classification (sex) a class-balanced
    logistic regression, both on standardised features; the penalty is chosen by subject-grouped
    cross-validation inside the training split (:func:`monai_ms.data.split.subject_folds`: one
    patient's sessions are never on both sides of a fold; stratified by class for sex). Lesion
    features are used only when every session of both splits has a lesion mask.

    Args:
        train_entries: training entries (absolute paths, ``subject``, the target).
        eval_entries: entries of the evaluated split.
        target_key: ``"edss"``, ``"age"`` or ``"sex"``.
        task: a key of :data:`TASK_FEATURES`.
        train_rows, eval_rows: precomputed :func:`feature_table` rows (measured when None).
        image_key, lesion_key, bias_correction: see :func:`session_features`.

    Returns:
        ``{"features": [...], "predictions": [...]}`` for regression, ``{"features", "probabilities"}``
        for classification, in ``eval_entries`` order.

    Raises:
        ValueError: an unknown task, or fewer than 2 training subjects.
    """
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from monai_ms.data.split import subject_folds

    if task not in TASK_FEATURES:
        raise ValueError(f"task must be one of {', '.join(TASK_FEATURES)}, got {task!r}")
    measure = dict(image_key=image_key, lesion_key=lesion_key, bias_correction=bias_correction)
    train_rows = feature_table(train_entries, **measure) if train_rows is None else train_rows
    eval_rows = feature_table(eval_entries, **measure) if eval_rows is None else eval_rows
    with_lesions = all(np.isfinite(r["lesion_volume_ml"]) for r in [*train_rows, *eval_rows])
    features = [f for f in TASK_FEATURES[task] if with_lesions or f not in LESION_FEATURES]
    if len({str(e.get("subject") or e.get("session")) for e in train_entries}) < 2:
        raise ValueError("the imaging-feature baseline needs at least 2 training subjects")
    x_train, x_eval = _design(train_rows, train_entries, features), _design(eval_rows, eval_entries, features)
    if task == "sex":
        from monai_ms.engines.metrics.classification import binary_labels

        y = binary_labels(train_entries, target_key)
        folds, _ = subject_folds(train_entries, labels=y.astype(int).tolist())
        pipeline = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=5000))
        model = GridSearchCV(pipeline, {"logisticregression__C": np.logspace(-3, 3, 13)}, cv=folds, scoring="neg_log_loss")
        return {"features": features, "probabilities": model.fit(x_train, y).predict_proba(x_eval)[:, 1].tolist()}
    y = np.array([_number(e.get(target_key), target_key, e) for e in train_entries])
    folds, _ = subject_folds(train_entries)
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13), cv=folds))
    return {"features": features, "predictions": model.fit(x_train, y).predict(x_eval).tolist()}


def imaging_baseline(
    train_entries: Sequence[Mapping[str, Any]],
    eval_entries: Sequence[Mapping[str, Any]],
    target_key: str,
    task: str,
    bias_correction: bool = False,
) -> dict[str, Any] | None:
    """:func:`fit_feature_model`, or None with one WARNING line when the features cannot be measured.

    The baselines of an evaluation call this after the model has been run on every session: an image the
    tissue model cannot read must not cost the whole evaluation, so the failure is logged, naming the cause,
    and the report simply has no imaging-feature baseline.
    """
    try:
        return fit_feature_model(train_entries, eval_entries, target_key, task, bias_correction=bias_correction)
    except (ValueError, OSError, RuntimeError) as error:  # RuntimeError: SimpleITK's N4
        logger.warning(f"no imaging-feature baseline for {task}: {error}")
        return None
