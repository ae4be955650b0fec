"""Shared fixtures: one tiny synthetic cohort (real template, 4 mm voxels) for the whole session."""

from __future__ import annotations

import os
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):
    # README's test command runs two pytest-xdist workers: one thread each (and in the bundle runs and DDP
    # ranks they start, which inherit it), not two workers of two threads fighting over two cores
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from monai_ms.bundle import demo_manifest  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # in case torch was imported before this file

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    """Files with ``slow`` tests first, each group in collection order.

    README's ``-n 2 --dist loadfile --no-loadscope-reorder`` makes pytest-xdist hand out whole files in this
    order: the end-to-end files (tens of seconds to two minutes each) start first and the many fast files fill
    the end, so the two workers finish close together. xdist's own reorder, by number of tests per file, put
    the heaviest files (few tests each) last, and one worker ran alone for minutes.
    """
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)  # stable: each group keeps its order


@pytest.fixture(autouse=True)
def _seed_every_test():
    """Each test starts from the same global random state, whatever ran before it in its xdist worker.

    The stop-31 CI failure was a test whose network took its initial weights from the global torch RNG: its
    outcome depended on the tests run earlier in the same worker.
    """
    import random

    import numpy as np

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session", autouse=True)
def feature_cache(tmp_path_factory) -> Path:
    """The imaging-feature cache (``monai_ms.engines.metrics.imaging_features``) of this test session: a temporary
    folder, shared by the bundle runs the tests start (they inherit the variable), never the user's ``~/.cache``."""
    folder = tmp_path_factory.mktemp("monai_ms_cache")
    os.environ["MONAI_MS_CACHE_DIR"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_manifest(tmp_path_factory) -> Path:
    """Manifest of a tiny cohort: 14 patients (some with two sessions), split 70/15/15 by patient."""
    return Path(demo_manifest(tmp_path_factory.mktemp("tiny_cohort"), subjects=14, spacing=None, seed=1, tiny=True))
