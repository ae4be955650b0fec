"""Generalisation suite: each bundle on cohorts from another scanner (issue 20), against its baselines.

For every shift in :data:`monai_ms.data.synthetic_settings.SHIFTS` (``contrast``, ``bias``, ``noise``,
``resolution``, ``pose``, ``all``) a cohort is generated with ``generate_cohort(...,
settings=SynthSettings().shifted(shift))``: the same seed, so the same people, brains and lesions as the
reference cohort (shift ``none``: the demo settings), only the acquisition differs. Each cohort gets a
manifest with the subject-level 70/15/15 split of :func:`monai_ms.bundle.cohort.demo_manifest` (the same
subjects land in the same splits in every cohort: checked). Cohorts are cached under
``benchmarks/results/cache/generalisation/<shift>/<n.._..mm_seed..>/``.

Two cases per bundle (edss, lesion_seg, brain_age, sex) and shift:

- ``a`` (own cohort): the bundle's usage line, ``python -m monai.bundle run training --config_file
  bundles/<b>/configs/train.json`` with its defaults, on the shifted cohort's training split, then ``run
  evaluating`` (``evaluate.json`` layered) on its test split;
- ``b`` (shared bundle): the model trained on the reference cohort (case ``a`` of shift ``none``) evaluated on
  the shifted cohort's test split, as a collaborator would run a bundle they were sent. The baselines of
  ``eval/metrics.json`` are still fitted on the shifted cohort's own training split (that is what
  ``run evaluating`` does); the brain-age bias correction is refitted on its validation split and written
  into the run's own folder, never into the reference model's.

- ``c`` (own cohort, cross-validated; ``--cases c``): ``monai-ms cv`` of the defaults on the shifted cohort's
  training + validation pool (``--folds`` subject-grouped folds, each fold's epoch chosen on an inner fifth of
  its training subjects), the model and every baseline pooled over all held-out folds. The test split is not
  read. The row then holds about 50 subjects of a 60-subject cohort instead of the test split's 9, which is
  what it takes to tell a model from its baseline; it costs ``--folds`` trainings.

``--cohort NAME=MANIFEST`` (repeatable) adds a cohort that is not generated here: a manifest of your own scans, or
of another generator's (the held-out test of issue 20). It gets cases ``a``, ``b`` and ``c`` as a shift does, under
the name given; its split is the manifest's own. Its people are not the reference cohort's, so the check that case
``b`` scores unseen subjects is by subject id only and a shared id is reported, not refused.

The reference row (shift ``none``, case ``a``) is always reported: it is the in-distribution figure a shift
is compared with. EDSS case ``a`` starts its lesion pathway from the lesion_seg case-``a`` model of the same
cohort when that run is finished (what ``lesion_init: auto`` would train itself: the lesion_seg defaults on
this manifest's training split), else it uses ``auto``.

Runs are resumable: each run folder holds ``run.json`` with a digest of the cohort settings, the manifest,
the bundle's config files, the overrides and the monai_ms version (other code changes are not seen: delete
``benchmarks/results/generalisation/`` to redo everything); a run whose digest matches and whose ``eval/metrics.json``
exists is not redone (a finished training whose evaluation failed is only re-evaluated).

Writes ``benchmarks/results/generalisation.json`` (a row per bundle, shift and case: model metric with its
95% subject-bootstrap interval, trivial and imaging-feature baselines, ``beats_baselines``, n, issue-20
target met) and a markdown table, printed and written into ``docs/generalisation.md`` between the markers
``<!-- generalisation:table -->`` and ``<!-- /generalisation:table -->`` with the command and the machine.

    python benchmarks/generalisation.py                       # full: 60 subjects at 2 mm, every shift (hours)
    python benchmarks/generalisation.py --quick               # 30 subjects, contrast and all, trainings capped
    python benchmarks/generalisation.py --bundles brain_age --shifts noise --cases a,b
    python benchmarks/generalisation.py --tiny                # seconds per run: 4 mm, 1 epoch (checks the script)
    python benchmarks/generalisation.py --bundles sex --cases c --folds 5   # cross-validated rows, every shift
    python benchmarks/generalisation.py --shifts none --cohort site2=site2/manifest.json   # your own cohort, cases a and b
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _shared import CACHE, REPO, RESULTS, bundle_command, command_line, fill_markers, machine_info, run_capped  # noqa: E402

BUNDLES = ("lesion_seg", "edss", "brain_age", "sex")  # lesion_seg first: EDSS case a starts from its model
REFERENCE = "none"  # the demo (default) settings: where the shared bundle is trained
CASES = {"a": "own cohort", "b": "shared bundle", "c": "own cohort, cross-validated"}
INNER_VALIDATION = 0.2  # case c: each fold's epoch is chosen on this share of its training subjects

DOCS = REPO / "docs" / "generalisation.md"

# bundle -> (metric deciding beats_baselines, lower is better, key of the model's metrics in metrics.json)
METRICS = {
    "edss": ("mae", True, "model"),
    "lesion_seg": ("mean_dice", False, "summary"),
    "brain_age": ("mae", True, "model"),
    "sex": ("auc", False, "model"),
}

# --tiny: the 4 mm test cohorts and 1 epoch (the tests' tiny overrides: tests/bundle_runner.py TINY_OVERRIDES,
# tests/bundle/test_bundle_lesion_seg.py LESION_TINY; EDSS trains its lesion stage with the latter when it needs one),
# without the N4 fits (bias_correction false): the tiny mode checks the script, not the models
TINY = {"spacing": [4.0, 4.0, 4.0], "roi_size": [32, 40, 32], "epochs": 1, "batch_size": 2, "num_workers": 0, "bias_correction": False}
TINY_LESION = {"spacing": [4.0, 4.0, 4.0], "patch_size": [32, 32, 32], "patches_per_volume": 2, "epochs": 1, "batch_size": 2, "num_workers": 0}
TINY_BY_BUNDLE = {"lesion_seg": {**TINY_LESION, "bias_correction": False}, "edss": {**TINY, "lesion_stage": TINY_LESION}}
TINY_SUBJECTS = 10  # test split round(0.15 x 10) = 2 subjects, so the intervals are not a single point
QUICK = {"subjects": 30, "shifts": "contrast,all", "max_minutes": 3.0}


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------------------------- cohorts


def cohort_tag(subjects: int, spacing: float | None, seed: int, tiny: bool) -> str:
    return f"n{subjects}_{4.0 if spacing is None and tiny else (spacing or 2.0):g}mm_seed{seed}{'_tiny' if tiny else ''}"


def shifted_cohort(shift: str, subjects: int, spacing: float | None, seed: int, tiny: bool, root: Path, workers: int | None) -> dict[str, Any]:
    """The cached cohort of ``shift`` (``none``: the demo settings): generated on first use, with its manifest.

    The manifest is made as :func:`monai_ms.bundle.cohort.demo_manifest` makes the demo one (which takes no
    settings): ``build_from_csv`` of the seed layout's ``metadata.csv`` and ``split_entries(seed=seed)``.

    Returns:
        ``{"shift", "manifest", "digest", "settings_changes", "generation_s", "reused"}``.
    """
    from monai_ms.data.manifest import build_from_csv, write_manifest
    from monai_ms.data.split import split_entries
    from monai_ms.data.synthetic import GENERATOR_VERSION, SynthSettings, generate_cohort

    settings = SynthSettings() if shift == REFERENCE else SynthSettings().shifted(shift)
    key = {"settings": settings.to_dict(), "subjects": subjects, "spacing": spacing, "seed": seed, "tiny": tiny, "generator_version": GENERATOR_VERSION}
    digest = _digest(key)
    folder = Path(root) / shift / cohort_tag(subjects, spacing, seed, tiny)
    manifest, record_path = folder / "manifest.json", folder / "generalisation_cohort.json"
    record = _read_json(record_path)
    info = {"shift": shift, "manifest": str(manifest), "digest": digest, "settings_changes": settings.changes()}
    if record and record.get("digest") == digest and manifest.is_file():
        return {**info, "generation_s": record.get("generation_s"), "reused": True}
    folder.mkdir(parents=True, exist_ok=True)
    manifest.unlink(missing_ok=True)
    start = time.time()
    generate_cohort(folder / "cohort", subjects=subjects, seed=seed, spacing=spacing, tiny=tiny, overwrite=True, settings=settings, workers=workers)
    entries = build_from_csv(folder / "cohort" / "metadata.csv", relative_to=folder)
    split = split_entries(entries, seed=seed)
    description = f"synthetic, {subjects} patients, {spacing} mm, seed {seed}, settings {settings.name or 'default'}"
    write_manifest({"name": f"monai_ms generalisation cohort ({shift})", "description": description, **split}, manifest)
    settings.to_json(folder / "settings.json")
    seconds = round(time.time() - start, 1)
    record_path.write_text(json.dumps({**key, "digest": digest, "shift": shift, "generation_s": seconds}, indent=1))
    return {**info, "generation_s": seconds, "reused": False}


def external_cohort(name: str, manifest: str) -> dict[str, Any]:
    """A cohort given as ``--cohort NAME=MANIFEST``: used as it is (its split, its files), never generated.

    Its digest is the manifest file's, so editing the manifest redoes its runs.

    Returns:
        ``{"shift", "manifest", "digest", "settings_changes": None, "external": True, "generation_s": None, "reused": True}``.
    """
    path = Path(manifest).expanduser().resolve()
    if not path.is_file():
        raise SystemExit(f"--cohort {name}: manifest {path} does not exist")
    return {"shift": name, "manifest": str(path), "digest": _file_sha(path), "settings_changes": None, "external": True,
            "generation_s": None, "reused": True}


def _external(values: list[str], taken: list[str]) -> dict[str, str]:
    """``NAME=MANIFEST`` arguments -> ``{name: manifest}``; a malformed value or a name already used is refused in one line."""
    cohorts: dict[str, str] = {}
    for value in values:
        name, sep, manifest = value.partition("=")
        name = name.strip()
        if not sep or not name or not manifest.strip() or "/" in name:
            raise SystemExit(f"--cohort {value!r}: expected NAME=MANIFEST (a name without '/', then the manifest path)")
        if name in taken or name in cohorts:
            raise SystemExit(f"--cohort {value!r}: the name {name!r} is already a cohort of this run; choose another")
        cohorts[name] = manifest.strip()
    return cohorts


def _split_subjects(manifest: str) -> dict[str, list[str]]:
    from monai_ms.data.manifest import read_manifest

    data = read_manifest(manifest)
    return {split: sorted({str(e["subject"]) for e in data[split]}) for split in ("training", "validation", "testing")}


# ----------------------------------------------------------------------------------------------- runs




def _configs(bundle: str) -> Path:
    return REPO / "bundles" / bundle / "configs"


def _config_digest(bundle: str) -> str:
    return _digest({name: _file_sha(_configs(bundle) / name) for name in ("train.json", "evaluate.json", "metadata.json")})


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Suite:
    """Runs (or reuses) the trainings and evaluations of one invocation."""

    def __init__(self, runs_dir: Path, tag: str, tiny: bool, cap_s: float | None) -> None:
        self.runs_dir, self.tag, self.tiny, self.cap_s = Path(runs_dir), tag, tiny, cap_s
        self.done: dict[tuple[str, str, str], dict[str, Any]] = {}  # (bundle, shift, case) -> run record

    def run_dir(self, bundle: str, shift: str, case: str) -> Path:
        return self.runs_dir / self.tag / shift / bundle / case

    def overrides(self, bundle: str) -> dict[str, Any]:
        return dict(TINY_BY_BUNDLE.get(bundle, TINY)) if self.tiny else {}

    def expected_digest(self, bundle: str, shift: str, case: str, cohort: dict[str, Any], extra: dict[str, Any]) -> str:
        from monai_ms import __version__

        return _digest(
            {
                "monai_ms": __version__,
                "bundle": bundle,
                "case": case,
                "cohort": cohort["digest"],
                "manifest_sha": _file_sha(Path(cohort["manifest"])),
                "configs": _config_digest(bundle),
                "overrides": self.overrides(bundle),
                "cap_s": self.cap_s if case == "a" else None,
                **extra,
            }
        )

    def _lesion_init(self, shift: str, cohort: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """EDSS case a: the lesion_seg case-a model of this cohort when finished, else ``auto``."""
        lesion = self.run_dir("lesion_seg", shift, "a")
        record = _read_json(lesion / "run.json")
        expected = self.expected_digest("lesion_seg", shift, "a", cohort, {})
        if record and record.get("digest") == expected and record.get("trained") and (lesion / "models" / "model.pt").is_file():
            return str(lesion / "models" / "model.pt"), {"lesion_init": f"lesion_seg case a {expected}"}
        return "auto", {"lesion_init": "auto"}

    def own_cohort(self, bundle: str, shift: str, cohort: dict[str, Any]) -> dict[str, Any]:
        """Case a: train with the defaults on the cohort's training split, evaluate on its test split."""
        run_dir = self.run_dir(bundle, shift, "a")
        overrides, extra = self.overrides(bundle), {}
        if bundle == "edss":
            lesion_init, extra = self._lesion_init(shift, cohort)
            overrides["lesion_init"] = lesion_init
        digest = self.expected_digest(bundle, shift, "a", cohort, extra)
        record = _read_json(run_dir / "run.json") or {}
        metrics = run_dir / "eval" / "metrics.json"
        if record.get("digest") == digest and record.get("evaluated") and metrics.is_file():
            return {**record, "reused": True}
        settings = {**overrides, "data_manifest": cohort["manifest"], "ckpt_dir": str(run_dir / "models"), "output_dir": str(run_dir / "eval")}
        if not (record.get("digest") == digest and record.get("trained") and (run_dir / "models" / "model.pt").is_file()):
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir.mkdir(parents=True)
            (run_dir / "overrides.json").write_text(json.dumps(settings, indent=1))
            files = [str(_configs(bundle) / "train.json"), str(run_dir / "overrides.json")]
            start = time.time()
            status, capped = run_capped(bundle_command("training", files), run_dir / "training.log", self.cap_s)
            trained = (status == 0 or capped) and (run_dir / "models" / "model.pt").is_file()
            record = {"bundle": bundle, "shift": shift, "case": "a", "digest": digest, "manifest": cohort["manifest"], "overrides": overrides,
                      "trained": trained, "training_exit_status": status, "stopped_at_cap": capped, "training_wall_s": round(time.time() - start, 1),
                      "evaluated": False}
            (run_dir / "run.json").write_text(json.dumps(record, indent=1))
            if not trained:
                why = "stopped at the cap before a checkpoint was saved" if capped else f"training failed (exit {status})"
                return {**record, "reused": False, "error": f"{why}; see {run_dir / 'training.log'}\n{_log_tail(run_dir / 'training.log')}"}
        return self._evaluate(run_dir, bundle, settings, record)

    def own_cohort_cv(self, bundle: str, shift: str, cohort: dict[str, Any], folds: int) -> dict[str, Any]:
        """Case c: ``monai-ms cv`` of the defaults on the cohort's training + validation pool (its test split unread)."""
        from monai_ms.bundle.cross_validation import CrossValidationError, run_cross_validation
        from monai_ms.data.manifest import ManifestError

        run_dir = self.run_dir(bundle, shift, "c")
        digest = self.expected_digest(bundle, shift, "c", cohort, {"folds": folds, "inner_validation": INNER_VALIDATION})
        previous = _read_json(run_dir / "run.json") or {}
        if previous.get("digest") != digest:  # other settings: run_cross_validation would refuse the old folds
            shutil.rmtree(run_dir, ignore_errors=True)
        record = {"bundle": bundle, "shift": shift, "case": "c", "digest": digest, "manifest": cohort["manifest"], "folds": folds,
                  "inner_validation": INNER_VALIDATION, "trained": False, "evaluated": False}
        start = time.time()
        try:
            summary = run_cross_validation(REPO / "bundles" / bundle, cohort["manifest"], folds, run_dir, overrides=self.overrides(bundle),
                                           inner_validation=INNER_VALIDATION)
        except (CrossValidationError, ManifestError) as error:
            return {**record, "reused": False, "error": f"cross-validation failed: {error}"}
        record.update(trained=True, evaluated=True, training_wall_s=round(time.time() - start, 1))
        (run_dir / "run.json").write_text(json.dumps(record, indent=1))
        return {**record, "reused": all(fold["skipped"] for fold in summary["folds"])}

    def shared_bundle(self, bundle: str, shift: str, cohort: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
        """Case b: the reference cohort's case-a model evaluated on this cohort's test split."""
        run_dir = self.run_dir(bundle, shift, "b")
        source = self.done.get((bundle, REFERENCE, "a"))
        if not source or not source.get("trained"):
            return {"bundle": bundle, "shift": shift, "case": "b", "reused": False, "error": f"no reference model: {bundle} case a on shift {REFERENCE} did not train"}
        digest = self.expected_digest(bundle, shift, "b", cohort, {"model": source["digest"]})
        record = _read_json(run_dir / "run.json") or {}
        if record.get("digest") == digest and record.get("evaluated") and (run_dir / "eval" / "metrics.json").is_file():
            return {**record, "reused": True}
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        models = self.run_dir(bundle, REFERENCE, "a") / "models"
        settings = {**self.overrides(bundle), "data_manifest": cohort["manifest"], "ckpt_dir": str(models), "output_dir": str(run_dir / "eval")}
        if bundle == "brain_age":  # the refitted bias correction goes here, not into the reference model's folder
            settings["age_bias_file"] = str(run_dir / "age_bias.json")
        record = {"bundle": bundle, "shift": shift, "case": "b", "digest": digest, "manifest": cohort["manifest"], "model_dir": str(models),
                  "reference_manifest": reference["manifest"], "trained": False, "evaluated": False}
        return self._evaluate(run_dir, bundle, settings, record)

    def _evaluate(self, run_dir: Path, bundle: str, settings: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
        (run_dir / "evaluate_overrides.json").write_text(json.dumps(settings, indent=1))
        files = [str(_configs(bundle) / "train.json"), str(_configs(bundle) / "evaluate.json"), str(run_dir / "evaluate_overrides.json")]
        (run_dir / "eval" / "metrics.json").unlink(missing_ok=True)
        start = time.time()
        status, _ = run_capped(bundle_command("evaluating", files), run_dir / "evaluate.log", None)
        ok = status == 0 and (run_dir / "eval" / "metrics.json").is_file()
        record = {**record, "evaluated": ok, "evaluate_exit_status": status, "evaluate_wall_s": round(time.time() - start, 1)}
        (run_dir / "run.json").write_text(json.dumps(record, indent=1))
        if not ok:
            return {**record, "reused": False, "error": f"evaluation failed (exit {status}); see {run_dir / 'evaluate.log'}\n{_log_tail(run_dir / 'evaluate.log')}"}
        return {**record, "reused": False}


# ----------------------------------------------------------------------------------------------- results


def _value(block: dict[str, Any] | None, metric: str) -> dict[str, Any] | None:
    if not block or block.get(metric) is None:
        return None
    return {"value": block[metric], "ci95": (block.get("ci95") or {}).get(metric)}


def issue_target(bundle: str, report: dict[str, Any]) -> dict[str, Any]:
    """What issue 20 asks of the bundle on this test split, and whether the model meets it."""
    metric, _, key = METRICS[bundle]
    model, baselines = report.get(key, {}), report.get("baselines", {})
    value = model.get(metric)
    if value is None:
        return {"rule": "metric undefined", "met": None}
    if bundle == "edss":
        better = min(baselines[name]["mae"] for name in ("training_median", "linear_age_sex") if name in baselines)
        return {"rule": f"MAE <= 0.8 x better of median, age+sex = {0.8 * better:.3f}", "met": value <= 0.8 * better}
    if bundle == "brain_age":
        limit, r = 0.8 * baselines["training_median"]["mae"], model.get("pearson_r")
        return {"rule": f"MAE <= 0.8 x median = {limit:.2f} and r >= 0.5", "met": value <= limit and r is not None and r >= 0.5}
    if bundle == "sex":
        volume = (baselines.get("logistic_brain_volume") or {}).get("auc")
        return {"rule": f"AUC >= brain volume alone = {volume:.3f}" if volume is not None else "brain-volume AUC undefined",
                "met": None if volume is None else value >= volume}
    return {"rule": "mean Dice >= 0.65", "met": value >= 0.65}


def validation_curve(run_dir: Path, metric: str, lower: bool) -> dict[str, Any] | None:
    """The training's validation curve from ``eval/training_log.csv`` (case a): first, best and last epoch.

    ``diverged`` is True when the last epoch is worse than the first (the model got worse as it trained);
    the evaluated checkpoint is the best epoch either way.
    """
    import pandas as pd

    log = run_dir / "eval" / "training_log.csv"
    column = f"val_{metric}"
    if not log.is_file():
        return None
    frame = pd.read_csv(log)
    if column not in frame.columns or frame[column].isna().all():
        return None
    values = frame[["epoch", column]].dropna()
    best = values.loc[values[column].idxmin() if lower else values[column].idxmax()]
    first, last = float(values[column].iloc[0]), float(values[column].iloc[-1])
    return {
        "epochs": int(values["epoch"].iloc[-1]),
        "best_epoch": int(best["epoch"]),
        "first": first,
        "best": float(best[column]),
        "last": last,
        "diverged": bool(last > first if lower else last < first),
    }


def cv_report(bundle: str, summary: dict[str, Any]) -> dict[str, Any]:
    """A ``cv.json`` summary in the shape of an evaluation's ``metrics.json``: the pooled model under the bundle's
    key with its interval, the pooled baselines, the comparison and the number of subjects (what
    :func:`summarise` and :func:`issue_target` read)."""
    intervals = (summary.get("pooled_ci95") or {}).get("intervals", {})
    return {
        METRICS[bundle][2]: {**summary["pooled"], "ci95": intervals.get("pooled", {})},
        "baselines": summary.get("pooled_baselines") or {},
        "beats_baselines": summary.get("beats_baselines"),
        "beats_imaging_features": summary.get("beats_imaging_features"),
        "baseline_comparison": summary.get("baseline_comparison") or {},
        "uncertainty": {"n_subjects": (summary.get("pooled_ci95") or {}).get("n_subjects")},
        "split": f"cross-validation: {summary['k']} folds of the training + validation pool, pooled",
    }


def summarise(run: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """One result row from a run record and its ``eval/metrics.json`` (case c: its ``cv.json``)."""
    bundle = run["bundle"]
    metric, lower, key = METRICS[bundle]
    row = {"bundle": bundle, "shift": run["shift"], "case": run["case"], "case_name": CASES[run["case"]], "metric": metric, "lower_is_better": lower,
           "reused": run.get("reused", False), "run_dir": str(run_dir), "digest": run.get("digest"),
           "training_wall_s": run.get("training_wall_s"), "stopped_at_cap": run.get("stopped_at_cap"), "evaluate_wall_s": run.get("evaluate_wall_s")}
    if run.get("error"):
        return {**row, "error": run["error"]}
    if run["case"] == "c":
        report = cv_report(bundle, json.loads((run_dir / "cv.json").read_text()))
    else:
        report = json.loads((run_dir / "eval" / "metrics.json").read_text())
    model = report.get(key, {})
    baselines = report.get("baselines", {})
    comparison = report.get("baseline_comparison", {})
    best = comparison.get("baseline")
    row.update(
        model=_value(model, metric),
        model_extra={k: model[k] for k in ("pearson_r", "rmse", "lesion_f1", "accuracy") if model.get(k) is not None},
        trivial={"name": best, **(_value(baselines.get(best), metric) or {})} if best else None,
        baselines={name: _value(block, metric) for name, block in baselines.items()},
        imaging_features=_value(baselines.get("imaging_features"), metric),
        beats_baselines=report.get("beats_baselines"),
        beats_imaging_features=report.get("beats_imaging_features"),
        n_sessions=model.get("n", model.get("n_scans")),
        n_subjects=(report.get("uncertainty") or {}).get("n_subjects"),
        target=issue_target(bundle, report),
        split=report.get("split"),
        validation_curve=validation_curve(run_dir, metric, lower) if run["case"] == "a" else None,
    )
    return row


def _cell(entry: dict[str, Any] | None, digits: int) -> str:
    if not entry or entry.get("value") is None:
        return "-"
    text = f"{entry['value']:.{digits}f}"
    ci = entry.get("ci95")
    return text + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci and None not in ci else "")


def _curve(curve: dict[str, Any] | None, digits: int) -> str:
    if not curve:
        return "-"
    text = f"{curve['first']:.{digits}f} -> {curve['best']:.{digits}f} ({curve['best_epoch']}/{curve['epochs']}) -> {curve['last']:.{digits}f}"
    return text + (" **got worse**" if curve["diverged"] else "")


def _yes(value: Any) -> str:
    return "-" if value is None else ("yes" if value else "no")


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| bundle | shift | case | model [95% CI] | trivial baseline | imaging-feature baseline | beats trivial / imaging | issue-20 target "
        "| n sessions / subjects | validation: first -> best (epoch) -> last |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        case = f"{r['case']}: {r['case_name']}" + (" (capped)" if r.get("stopped_at_cap") else "")
        if r.get("error"):
            lines.append(f"| {r['bundle']} | {r['shift']} | {case} | failed: {r['error'].splitlines()[0]} | | | | | | |")
            continue
        digits = 2 if r["metric"] == "mae" else 3
        model = f"{r['metric']} {_cell(r['model'], digits)}"
        if "pearson_r" in r["model_extra"] and r["bundle"] == "brain_age":
            model += f", r {r['model_extra']['pearson_r']:.2f}"
        trivial = f"{r['trivial']['name']} {_cell(r['trivial'], digits)}" if r.get("trivial") else "-"
        target = f"{_yes(r['target']['met'])} ({r['target']['rule']})"
        lines.append(
            f"| {r['bundle']} | {r['shift']} | {case} | {model} | {trivial} | {_cell(r['imaging_features'], digits)} "
            f"| {_yes(r['beats_baselines'])} / {_yes(r['beats_imaging_features'])} | {target} | {r['n_sessions']} / {r['n_subjects']} "
            f"| {_curve(r.get('validation_curve'), digits)} |"
        )
    return "\n".join(lines)


def write_docs(path: Path, table: str, report: dict[str, Any], name: str = "generalisation") -> None:
    """Put the table, the command and the machine between the markers of ``path`` (created if missing)."""
    m = report["machine"]
    cohort = report["cohort"]
    cap = "no training cap" if report["max_minutes"] is None else f"trainings capped at {report['max_minutes']:g} min"
    body = "\n".join(
        [
            f"Command: `{report['command']}` ({cohort['subjects']} subjects per cohort, {cohort['tag']}; {cap}; "
            f"{report['wall_s'] / 60:.1f} min of wall time, {report['reused_runs']} of {len(report['rows'])} rows reused from earlier runs).",
            "",
            f"Machine: {m['device_name']}, {m['cpu_count']} cores, torch {m['torch']}, MONAI {m['monai']}, Python {m['python']}; "
            f"load average at the end {m['load_average_1_5_15']}.",
            "",
            table,
        ]
    )
    fill_markers(path, name, body)


# ----------------------------------------------------------------------------------------------- main


def _names(text: str, known: Any, what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)}; known: {', '.join(known)}")
    return names


def main(argv: list[str] | None = None) -> int:
    from monai_ms.data.synthetic_settings import SHIFTS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundles", default=",".join(BUNDLES))
    parser.add_argument("--shifts", default=None, help=f"comma-separated from {', '.join(SHIFTS)} (default: all of them)")
    parser.add_argument("--cases", default="a,b", help="a: trained on the shifted cohort; b: the reference-trained model on it; "
                        "c: cross-validated on the shifted cohort's training + validation pool")
    parser.add_argument("--folds", type=int, default=5, help="case c: subject-grouped folds (default 5)")
    parser.add_argument("--subjects", type=int, default=None, help="subjects per cohort (default 60; --quick 30; --tiny 10)")
    parser.add_argument("--spacing", type=float, default=2.0, help="T1 voxel size of the cohorts, mm (--tiny: 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_minutes", type=float, default=None, help="stop a training after this long and evaluate its best checkpoint")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK['subjects']} subjects, shifts {QUICK['shifts']}, trainings capped at {QUICK['max_minutes']:g} min")
    parser.add_argument("--tiny", action="store_true", help=f"{TINY_SUBJECTS}-subject 4 mm cohorts, 1 epoch (checks the script)")
    parser.add_argument("--workers", type=int, default=None, help="cohort generation processes (default 2; --tiny 1)")
    parser.add_argument("--cache-dir", default=str(CACHE / "generalisation"), help="cohort cache")
    parser.add_argument("--runs-dir", default=str(RESULTS / "generalisation"), help="trainings and evaluations")
    parser.add_argument("--out", default=None, help="result JSON (default benchmarks/results/generalisation[_tiny].json)")
    parser.add_argument("--docs", default=None, help="markdown file whose table markers are filled (default docs/generalisation.md; --tiny: none)")
    parser.add_argument("--cohort", action="append", default=[], metavar="NAME=MANIFEST",
                        help="a cohort of your own (or another generator's) manifest, scored like a shift under NAME; repeatable")
    parser.add_argument("--table", default="generalisation", help="name of the table markers: <!-- NAME:table --> ... <!-- /NAME:table -->")
    args = parser.parse_args(argv)

    bundles = _names(args.bundles, BUNDLES, "bundles")
    bundles = [b for b in BUNDLES if b in bundles]  # lesion_seg before edss
    shifts = _names(args.shifts or (QUICK["shifts"] if args.quick else ",".join(SHIFTS)), [REFERENCE, *SHIFTS], "shifts")
    shifts = [s for s in shifts if s != REFERENCE]
    # the given manifests are checked before any cohort is generated (minutes), not after
    external = {name: external_cohort(name, manifest) for name, manifest in _external(args.cohort, [REFERENCE, *SHIFTS]).items()}
    cases = _names(args.cases, CASES, "cases")
    subjects = args.subjects or (TINY_SUBJECTS if args.tiny else QUICK["subjects"] if args.quick else 60)
    spacing = None if args.tiny else args.spacing
    max_minutes = args.max_minutes if args.max_minutes is not None else (QUICK["max_minutes"] if args.quick else None)
    workers = args.workers or (1 if args.tiny else None)
    out = Path(args.out or RESULTS / f"generalisation{'_tiny' if args.tiny else ''}.json")
    docs = Path(args.docs) if args.docs else (None if args.tiny else DOCS)
    tag = cohort_tag(subjects, spacing, args.seed, args.tiny)

    start = time.time()
    cohorts: dict[str, dict[str, Any]] = {}
    for shift in [REFERENCE, *shifts]:
        print(f"cohort {shift}: ", end="", flush=True)
        cohorts[shift] = shifted_cohort(shift, subjects, spacing, args.seed, args.tiny, Path(args.cache_dir), workers)
        print(("cached " if cohorts[shift]["reused"] else f"generated in {cohorts[shift]['generation_s']} s ") + cohorts[shift]["manifest"], flush=True)
    for name, given in external.items():
        cohorts[name] = given
        print(f"cohort {name}: given {given['manifest']}", flush=True)
    reference_split = _split_subjects(cohorts[REFERENCE]["manifest"])
    for shift in [*shifts, *external]:  # case b scores the reference model on subjects it was neither trained nor selected on
        split = _split_subjects(cohorts[shift]["manifest"])
        cohorts[shift]["same_split_as_reference"] = split == reference_split
        seen = set(split["testing"]) & set(reference_split["training"] + reference_split["validation"])
        if "b" in cases and seen and shift in external:  # other people: a shared id is a naming coincidence, said not refused
            print(f"cohort {shift}: test subject ids {sorted(seen)[:5]} also name reference training/validation subjects "
                  "(another cohort's people: check this is a coincidence of naming)", flush=True)
        elif "b" in cases and seen:
            raise SystemExit(f"cohort {shift}: test subjects {sorted(seen)} are in the reference model's training or validation split")

    suite = Suite(Path(args.runs_dir), tag, args.tiny, None if max_minutes is None else max_minutes * 60)
    rows: list[dict[str, Any]] = []
    for bundle in bundles:
        for shift in [REFERENCE, *shifts, *external]:
            for case in ("a", "b", "c"):
                needed = case in cases or (shift == REFERENCE and case == "a")  # the reference model: row and case b's source
                if not needed or (shift == REFERENCE and case == "b"):
                    continue
                label = f"{bundle} / {shift} / {case} ({CASES[case]})"
                print(f"{label}: ...", flush=True)
                if case == "a":
                    run = suite.own_cohort(bundle, shift, cohorts[shift])
                elif case == "c":
                    run = suite.own_cohort_cv(bundle, shift, cohorts[shift], args.folds)
                else:
                    run = suite.shared_bundle(bundle, shift, cohorts[shift], cohorts[REFERENCE])
                suite.done[(bundle, shift, case)] = run
                row = summarise(run, suite.run_dir(bundle, shift, case))
                rows.append(row)
                if row.get("error"):
                    print(f"  FAILED: {row['error']}", flush=True)
                else:
                    state = "reused" if row["reused"] else f"train {row['training_wall_s'] or '-'} s, evaluate {row['evaluate_wall_s'] or '-'} s"
                    print(f"  {row['metric']} {_cell(row['model'], 3)}; beats trivial {_yes(row['beats_baselines'])}, "
                          f"imaging {_yes(row['beats_imaging_features'])}; target {_yes(row['target']['met'])} ({state})", flush=True)

    report = {
        "machine": machine_info(),
        "command": command_line(__file__, argv),
        "cohort": {"subjects": subjects, "spacing": spacing if spacing is not None else 4.0, "seed": args.seed, "tiny": args.tiny, "tag": tag},
        "cohorts": cohorts,
        "bundles": bundles,
        "shifts": shifts,
        "external_cohorts": list(external),
        "cases": cases,
        "max_minutes": max_minutes,
        "wall_s": round(time.time() - start, 1),
        "reused_runs": sum(bool(r.get("reused")) for r in rows),
        "rows": rows,
    }
    from monai_ms.io import write_json

    write_json(report, out)
    table = markdown(rows)
    print(table)
    if docs is not None:
        write_docs(docs, table, report, args.table)
        print(f"wrote {out} and the table in {docs}")
    else:
        print(f"wrote {out}")
    return 0 if not any(r.get("error") for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
