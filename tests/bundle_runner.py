"""Run bundle configs the way users do: ``python -m monai.bundle run ...`` in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from monai_ms.bundle.config import override_args

REPO = Path(__file__).resolve().parents[1]

# The N4 fit of every image (the brain_age and lesion_seg default) costs about 0.25 s per tiny image, half the
# time of a small lesion_seg test. Tests of something else turn it off; the tests of the default keep it on: the
# trained run of tests/bundle/test_bundle_lesion_seg.py (training, evaluation, inference), tests/engines/
# test_determinism.py (brain_age, bit-identical runs) and tests/data/test_bias_correction.py.
NO_N4 = {"bias_correction": False}

# tiny settings for the 4 mm test cohort: a few seconds per epoch on 2 cores
TINY_OVERRIDES = {
    "spacing": [4.0, 4.0, 4.0],
    "roi_size": [32, 40, 32],
    "epochs": 2,
    "batch_size": 2,
    "num_workers": 0,
    **NO_N4,
}


def config_arg(bundle: str, *names: str) -> str:
    files = [str(REPO / "bundles" / bundle / "configs" / f"{name}.json") for name in names]
    return files[0] if len(files) == 1 else "[" + ",".join(f"'{f}'" for f in files) + "]"




def run_bundle(
    bundle: str,
    run_id: str,
    configs: Sequence[str],
    overrides: dict,
    launcher: Sequence[str] = (sys.executable, "-m", "monai.bundle"),
    timeout: int = 600,
) -> subprocess.CompletedProcess:
    """Run ``monai.bundle run RUN_ID --config_file ...`` from the repository root, as documented."""
    command = [*launcher, "run", run_id, "--config_file", config_arg(bundle, *configs), *override_args(overrides)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


def check(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """Fail with the tail of the run's output when it did not exit 0."""
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
    return result
