"""Shared fixtures: one tiny synthetic cohort (real template, 4 mm voxels) for the whole session."""

from __future__ import annotations

from pathlib import Path

import pytest

from monai_ms.bundle import demo_manifest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_manifest(tmp_path_factory) -> Path:
    """Manifest of a tiny cohort: 14 patients (some with two sessions), split 70/15/15 by patient."""
    return Path(demo_manifest(tmp_path_factory.mktemp("tiny_cohort"), subjects=14, spacing=None, seed=1, tiny=True))
