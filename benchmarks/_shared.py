"""Helpers shared by the benchmark scripts: machine record, cached synthetic cohorts, bundle configs, memory.

Not a library module: the scripts in ``benchmarks/`` import it from their own folder.

Synthetic cohort (:func:`synthetic_cohort`): ``monai_ms.data.synthetic.generate_cohort`` at the asked voxel
size with enough subjects for the asked number of sessions (about 30% of subjects have two sessions; at
1 mm it takes about 6 s per subject on 2 cores). If the generated cohort has fewer sessions than asked, the
shortfall is derived from the generated sessions without new simulation: intensities scaled per modality
(another scanner gain), the whole head moved by a small rigid world transform (same for T1, T2 and mask, so
they stay aligned) and, for every other derived session, the T1 stored left-right flipped (LAS), so the
reorientation step does real work. The cohort and its ``manifest.json`` (absolute paths, ``training``
split = all sessions) are cached under ``benchmarks/results/cache/`` (git-ignored) and reused by reruns.
"""

from __future__ import annotations

import math
import os
import platform
import shlex
import sys
import threading
import time
from pathlib import Path
from typing import Any

__all__ = [
    "REPO",
    "RESULTS",
    "CACHE",
    "TINY_SESSIONS",
    "machine_info",
    "command_line",
    "synthetic_cohort",
    "bundle_parser",
    "bundle_command",
    "fill_markers",
    "TreeMemorySampler",
    "ru_maxrss_mb",
]

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
CACHE = RESULTS / "cache"
TINY_SESSIONS = 4  # the one tiny (4 mm) test cohort every script's --tiny mode shares


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """The machine and library versions a result was measured with."""
    import monai
    import nibabel
    import numpy
    import torch

    cuda = torch.cuda.is_available()
    return {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": threads if threads is not None else torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "numpy": numpy.__version__,
        "nibabel": nibabel.__version__,
        "cuda": cuda,
        "device_name": torch.cuda.get_device_name(0) if cuda else f"CPU ({_cpu_model()})",
        # > cpu_count means other jobs shared the cores: absolute times are inflated, ratios noisier
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
    }


def command_line(script: str, argv: list[str] | None) -> str:
    """The command that produced a result, as typed from the repository root.

    Args:
        script: the script's ``__file__``.
        argv: the arguments ``main`` was given (``None``: this process's command line).
    """
    path = Path(script).resolve()
    try:
        script_text = str(path.relative_to(REPO))
    except ValueError:
        script_text = str(path)
    return shlex.join(["python", script_text, *(sys.argv[1:] if argv is None else argv)])


def _derive_session(source: dict, index: int, folder: Path) -> dict:
    """A new session from ``source``: scaled intensities, rigidly moved head, T1 stored flipped on odd ``index``."""
    import nibabel as nib
    import numpy as np

    from monai_ms.io import save_nifti

    rng = np.random.default_rng(1000 + index)
    angle = np.deg2rad(rng.uniform(-3.0, 3.0))
    world = np.eye(4)
    world[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    world[:3, 3] = rng.uniform(-4.0, 4.0, size=3)
    session = f"der-{index:02d}"
    entry = {**source, "subject": f"D{index:02d}", "session": session}
    entry.pop("tissue", None)
    for key, gain in (("t1", rng.uniform(0.8, 1.25)), ("t2", rng.uniform(0.8, 1.25)), ("lesion", None)):
        image = nib.load(source[key])
        data = np.asanyarray(image.dataobj)
        affine = world @ image.affine
        if key != "t2" and index % 2:  # store T1 (and its mask) left-right flipped: LAS instead of RAS
            data = data[::-1]
            flip = np.eye(4)
            flip[0, 0], flip[0, 3] = -1.0, data.shape[0] - 1
            affine = affine @ flip
        data = data if gain is None else (data.astype(np.float32) * np.float32(gain))
        out = nib.Nifti1Image(np.ascontiguousarray(data), affine)
        out.set_data_dtype(image.get_data_dtype())
        path = folder / key.upper() / f"{session}_{key}.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_nifti(out, path)
        entry[key] = str(path)
    return entry


def synthetic_cohort(sessions: int, spacing: float = 1.0, seed: int = 7, tiny: bool = False, root: Path = CACHE) -> Path:
    """A cached synthetic cohort of exactly ``sessions`` sessions (module docstring); returns its manifest path.

    Args:
        sessions: number of scan sessions in the ``training`` split.
        spacing: T1 voxel size in mm.
        seed: cohort seed.
        tiny: ``generate_cohort(tiny=True)`` (fast test cohorts).
        root: cache folder.

    Returns:
        path of ``manifest.json`` (absolute image paths).
    """
    from monai_ms.data.manifest import build_from_csv
    from monai_ms.data.synthetic import generate_cohort
    from monai_ms.io import write_json

    folder = Path(root) / f"cohort_{spacing:g}mm_seed{seed}_n{sessions}{'_tiny' if tiny else ''}"
    manifest = folder / "manifest.json"
    if manifest.exists():
        return manifest
    generated = folder / "generated"
    if not (generated / "metadata.csv").exists():
        subjects = max(1, math.ceil(sessions / 1.3))
        generate_cohort(generated, subjects=subjects, seed=seed, spacing=spacing, tiny=tiny, overwrite=True)
    entries = build_from_csv(generated / "metadata.csv", relative_to=generated)
    for entry in entries:
        for key in ("t1", "t2", "lesion", "tissue"):
            if entry.get(key):
                entry[key] = str(generated / entry[key])
    base = entries[:sessions]
    derived = [_derive_session(base[i % len(base)], i, folder / "derived") for i in range(sessions - len(base))]
    write_json(
        {
            "name": folder.name,
            "description": f"benchmark cohort: {len(base)} generated + {len(derived)} derived sessions at {spacing:g} mm",
            "training": base + derived,
            "validation": [],
            "testing": [],
        },
        manifest,
    )
    return manifest


def bundle_command(run_id: str, config_files: list[Any], overrides: dict[str, Any] | None = None) -> list[str]:
    """``python -m monai.bundle run <run_id>`` on ``config_files`` (layered in order), with ``--key value`` overrides.

    Overrides that are not strings are passed as JSON (lists, numbers, booleans), as the bundle CLI parses them.

    Examples:
        >>> bundle_command("training", ["a/train.json"], {"epochs": 2})[3:]
        ['run', 'training', '--config_file', "['a/train.json']", '--epochs', '2']
    """
    from monai_ms.bundle.config import override_args

    command = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", "[" + ",".join(f"'{f}'" for f in config_files) + "]"]
    return command + override_args(overrides or {})


def fill_markers(path: Path, name: str, body: str) -> None:
    """Put ``body`` between ``<!-- name:table -->`` and ``<!-- /name:table -->`` in ``path`` (appended with
    the markers when they are missing; the file is created if needed)."""
    start_marker, end_marker = f"<!-- {name}:table -->", f"<!-- /{name}:table -->"
    block = f"{start_marker}\n{body.rstrip()}\n{end_marker}"
    text = path.read_text() if path.is_file() else ""
    start, end = text.find(start_marker), text.find(end_marker)
    if start >= 0 and end > start:
        text = text[:start] + block + text[end + len(end_marker) :]
    else:
        text = text + ("\n" if text and not text.endswith("\n") else "") + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def bundle_parser(bundle: str, extra_configs: tuple[str, ...] = ()) -> Any:
    """A ``ConfigParser`` of ``bundles/<bundle>/configs/train.json`` (plus ``extra_configs``), rooted in the repo."""
    from monai.bundle import ConfigParser

    configs = REPO / "bundles" / bundle / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "train.json"), *(str(configs / name) for name in extra_configs)])
    parser.read_meta(str(configs / "metadata.json"))
    parser["bundle_root"] = str(REPO / "bundles" / bundle)
    return parser


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                found += [int(p) for p in handle.read().split()]
    except OSError:
        pass
    return found


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_pss_mb(pid: int | None = None) -> float:
    """Proportional set size (shared pages split between sharers) of a process and all its descendants, MB."""
    todo, total = [pid or os.getpid()], 0
    while todo:
        current = todo.pop()
        total += _pss_kb(current)
        todo += _children(current)
    return total / 1024.0


class TreeMemorySampler:
    """Sample the PSS of this process and its children (DataLoader workers) in a thread; keep the peak.

    Examples:
        >>> with TreeMemorySampler() as memory:  # doctest: +SKIP
        ...     run()
        >>> memory.peak_mb  # doctest: +SKIP
    """

    def __init__(self, interval_s: float = 0.1) -> None:
        self.interval_s, self.peak_mb, self._stop = interval_s, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, tree_pss_mb())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> TreeMemorySampler:
        self.peak_mb = tree_pss_mb()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, tree_pss_mb())


def ru_maxrss_mb() -> dict[str, float]:
    """Peak resident set size of this process and of its largest finished child (``getrusage``), MB."""
    import resource

    return {
        "self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0,
    }


def timer() -> float:
    return time.perf_counter()


def run_capped(command: list[str], log: Path, cap_s: float | None) -> tuple[int, bool]:
    """Run ``command`` from the repository root (output to ``log``) for at most ``cap_s`` seconds (``None``: no cap).

    Returns:
        (exit status, whether it was stopped at the cap); a stopped run gets SIGTERM, then SIGKILL after 30 s,
        its whole process group (the bundle's DataLoader workers too).
    """
    import signal
    import subprocess

    with open(log, "w") as stream:
        process = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
        try:
            return process.wait(timeout=cap_s), False
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            return -signal.SIGTERM, True
