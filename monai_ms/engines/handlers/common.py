"""Ignite handlers of the monai_ms bundles: learning curves, evaluation reports, prediction tables.

Each handler has ``attach(engine)`` so a bundle config lists it under ``train#handlers`` or
``validate#handlers`` like MONAI's own handlers. Files are written atomically (``monai_ms.io``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from ignite.engine import Engine, Events

from monai_ms.engines.handlers.report import ReportHandler, ReportParts, subjects_of, write_sidecar
from monai_ms.engines.metrics.bootstrap import DEFAULT_RESAMPLES
from monai_ms.engines.metrics.scores import clip_to_range, regression_baselines, regression_metrics, round_to_step
from monai_ms.io import save_figure, write_csv

__all__ = [
    "to_numpy",
    "decollated_items",
    "source_file",
    "lower_is_better",
    "negated_key_metric",
    "PredictionCollector",
    "ProgressBarHandler",
    "loss_from_output",
    "LearningCurveHandler",
    "RegressionReportHandler",
    "PredictionTableHandler",
    "BroadcastBuffersHandler",
    "SettleCacheHandler",
]

logger = logging.getLogger(__name__)


def lower_is_better(current: float, best: float) -> bool:
    """``metric_cmp_fn`` for evaluators whose key metric is an error (MAE): smaller is better."""
    return current < best


def negated_key_metric(engine: Engine) -> float:
    """``score_function`` for ``EarlyStopHandler`` when the key metric is an error (higher score = better)."""
    return -float(engine.state.metrics[engine.state.key_metric_name])


def to_numpy(value: Any) -> np.ndarray:
    """A tensor, a list of tensors (stacked) or anything array-like as a float numpy array (tensors detached, on the CPU)."""
    if isinstance(value, torch.Tensor):
        return value.detach().float().cpu().numpy()
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
        return torch.stack([v.detach().float().cpu() for v in value]).numpy()
    return np.asarray(value)


def decollated_items(engine: Engine) -> list[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """``(item, output)`` pairs of a decollated evaluator's last iteration, one per scan."""
    batch, output = engine.state.batch, engine.state.output
    if not isinstance(batch, list) or not isinstance(output, list):
        raise TypeError("this handler needs a decollated evaluator (decollate=True) with per-scan post-processing")
    return list(zip(batch, output))


def source_file(value: Any, key: str, session: str) -> str:
    """The file a loaded image came from (its ``filename_or_obj`` metadata); ValueError naming the session if unknown."""
    meta = getattr(value, "meta", None)
    name = meta.get("filename_or_obj") if isinstance(meta, Mapping) else None
    if not name:
        raise ValueError(f"session {session}: cannot tell which file {key!r} was read from (no filename in its metadata)")
    return str(name)


class PredictionCollector:
    """Collect per-sample predictions, labels and ids over one engine run.

    Works with batched outputs (``decollate=False``) and decollated lists alike.

    Args:
        id_key: batch key identifying a sample (the manifest's ``session``).
        pred_key: output key of the prediction, shape ``(B, 1)`` or ``(B,)``.
        label_key: output key of the label, or ``None``.
        pred_transform: applied to the prediction array before storing (e.g. a sigmoid).
    """

    def __init__(
        self,
        id_key: str = "session",
        pred_key: str = "pred",
        label_key: str | None = "label",
        pred_transform: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.id_key, self.pred_key, self.label_key = id_key, pred_key, label_key
        self.pred_transform = pred_transform
        self.reset()

    def reset(self, engine: Engine | None = None) -> None:
        self.ids: list[str] = []
        self.preds: list[float] = []
        self.labels: list[float] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)

    def _get(self, output: Any, key: str) -> np.ndarray:
        if isinstance(output, Mapping):
            return to_numpy(output[key])
        return to_numpy([item[key] for item in output])

    def collect(self, engine: Engine) -> None:
        ids = engine.state.batch[self.id_key]
        preds = self._get(engine.state.output, self.pred_key).reshape(len(ids), -1)[:, 0]
        if self.pred_transform is not None:
            preds = self.pred_transform(preds)
        self.ids += [str(i) for i in ids]
        self.preds += preds.tolist()
        if self.label_key is not None:
            self.labels += self._get(engine.state.output, self.label_key).reshape(len(ids), -1)[:, 0].tolist()


class LearningCurveHandler:
    """Record the mean training loss per epoch and the validation metrics; plot them as a PNG.

    Attach to the trainer; pass the evaluator to record its metrics at each validation. After each
    epoch ``output_dir/learning_curve.png`` and ``output_dir/training_log.csv`` are rewritten.

    Args:
        output_dir: folder of the PNG and CSV.
        evaluator: the validation engine, or ``None``.
        loss_transform: maps ``engine.state.output`` to the scalar loss.
        save: write the files (``False`` on DDP ranks other than 0, which still record the curve so
            every rank's training state is the same).
    """

    def __init__(
        self,
        output_dir: str | Path,
        evaluator: Engine | None = None,
        loss_transform: Callable[[Any], Any] | None = None,
        save: bool = True,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.save = save
        self.evaluator = evaluator
        self.loss_transform = loss_transform or loss_from_output
        self.rows: list[dict[str, float]] = []
        self._losses: list[float] = []
        self._trainer: Engine | None = None

    def attach(self, engine: Engine) -> None:
        self._trainer = engine
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self._losses.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._record_loss)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        if self.evaluator is not None:
            self.evaluator.add_event_handler(Events.EPOCH_COMPLETED, self._validation_completed)

    def state_dict(self) -> dict[str, Any]:
        """The recorded rows (saved with the training state, so a resumed run keeps the whole curve)."""
        return {"rows": [dict(row) for row in self.rows]}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.rows = [dict(row) for row in state_dict["rows"]]

    def _record_loss(self, engine: Engine) -> None:
        self._losses.append(float(self.loss_transform(engine.state.output)))

    def _row(self, epoch: int) -> dict[str, float]:
        if not self.rows or self.rows[-1]["epoch"] != epoch:
            self.rows.append({"epoch": epoch})
        return self.rows[-1]

    def _validation_completed(self, evaluator: Engine) -> None:
        epoch = self._trainer.state.epoch if self._trainer is not None else evaluator.state.epoch
        row = self._row(epoch)
        row["wall_clock"] = time.time()  # unix time at the end of validation: benchmarks/time_to_accuracy.py reads it
        for name, value in evaluator.state.metrics.items():
            if np.isscalar(value):
                row[f"val_{name}" if not name.startswith("val") else name] = float(value)

    def _epoch_completed(self, engine: Engine) -> None:
        row = self._row(engine.state.epoch)
        row["train_loss"] = float(np.mean(self._losses)) if self._losses else math.nan
        row["lr"] = float(engine.optimizer.param_groups[0]["lr"]) if hasattr(engine, "optimizer") else math.nan
        if self.save:
            self.write()

    def write(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        frame = pd.DataFrame(self.rows)
        write_csv(frame, self.output_dir / "training_log.csv")
        val_columns = [c for c in frame.columns if c.startswith("val")]
        fig, axes = plt.subplots(1, 1 + bool(val_columns), figsize=(5 + 5 * bool(val_columns), 3.5), squeeze=False)
        axes[0, 0].plot(frame["epoch"], frame.get("train_loss"), marker="o", label="training loss")
        axes[0, 0].set(xlabel="epoch", ylabel="loss", title="training loss")
        if val_columns:
            for column in val_columns:
                valid = frame[["epoch", column]].dropna()
                axes[0, 1].plot(valid["epoch"], valid[column], marker="o", label=column)
            axes[0, 1].set(xlabel="epoch", title="validation")
            axes[0, 1].legend()
        fig.tight_layout()
        save_figure(fig, self.output_dir / "learning_curve.png")
        plt.close(fig)


def loss_from_output(output: Any) -> float:
    """The scalar loss of a ``SupervisedTrainer`` iteration output (batched or decollated).

    Use as ``output_transform`` of ``StatsHandler`` / ``TensorBoardStatsHandler`` on the trainer.
    """
    # SupervisedTrainer output: a dict with "loss", or (decollated) a list of dicts sharing it
    item = output[0] if isinstance(output, (list, tuple)) else output
    loss = item["loss"] if isinstance(item, Mapping) else item
    return float(loss.item() if isinstance(loss, torch.Tensor) else loss)


class ProgressBarHandler:
    """A tqdm progress bar over each epoch's iterations showing the running loss (ignite ``ProgressBar``).

    MONAI attaches handlers with ``attach(engine)`` only; this passes the loss transform that the
    ignite bar needs to show the loss.

    Args:
        persist: keep each epoch's finished bar on screen.
    """

    def __init__(self, persist: bool = False) -> None:
        from ignite.handlers import ProgressBar

        self.bar = ProgressBar(persist=persist)

    def attach(self, engine: Engine) -> None:
        self.bar.attach(engine, output_transform=lambda output: {"loss": loss_from_output(output)})


class RegressionReportHandler(ReportHandler, PredictionCollector):
    """At the end of an evaluation run, write ``metrics.json``, ``predictions.csv`` (+ sidecar) and a scatter PNG.

    ``metrics.json`` holds the model's dataset-level metrics and the same metrics for the trivial
    baselines fitted on the training split (see :func:`regression_baselines`) on the same samples, each
    with a 95% subject-bootstrap interval (``ci95``), ``n`` and the ``uncertainty`` block, whether the model
    beats the best baseline's MAE (``beats_baselines``, ``baseline_comparison``), and the run's
    ``provenance`` (see :func:`monai_ms.engines.handlers.report.finish_report`).
    ``predictions.provenance.json`` records the same provenance beside the table.

    With ``value_range`` the predictions are clipped to the target's range (EDSS: [0, 10]) before any
    metric: ``prediction`` is the clipped value, ``prediction_raw`` the network's output, and with
    ``round_to`` ``prediction_rounded`` the clipped value rounded to that step (EDSS: 0.5).

    Args:
        output_dir: folder of the files.
        entries: manifest entries of the evaluated split (to look up ``session``, ``subject`` and demographics).
        train_entries: manifest entries of the training split (for the baselines).
        target_key: regression target key, e.g. ``"edss"``.
        target_name: axis label of the plot.
        within: also report the share of errors within this distance (EDSS: 1.0).
        linear_on_demographics: include the linear age + sex baseline.
        extra_columns: manifest keys copied to ``predictions.csv``.
        value_range: ``[low, high]`` the predictions are clipped to, or ``None``.
        round_to: step of the ``prediction_rounded`` column, or ``None``.
        provenance: the run's provenance (``monai_ms.bundle.evaluation_provenance``), or ``None``.
        n_resamples: bootstrap resamples of the intervals (0: none).
        seed: bootstrap seed.
        imaging_task: add the imaging-feature baseline of this task (``"edss"``; see
            :func:`regression_baselines`), or None.
        bias_correction: measure its features on N4-corrected images (the bundle's ``bias_correction``).
    """

    def __init__(
        self,
        output_dir: str | Path,
        entries: Sequence[Mapping[str, Any]],
        train_entries: Sequence[Mapping[str, Any]],
        target_key: str,
        target_name: str | None = None,
        within: float | None = None,
        linear_on_demographics: bool = True,
        extra_columns: Sequence[str] = ("subject", "age", "sex"),
        value_range: Sequence[float] | None = None,
        round_to: float | None = None,
        provenance: Mapping[str, Any] | None = None,
        n_resamples: int = DEFAULT_RESAMPLES,
        seed: int = 0,
        imaging_task: str | None = None,
        bias_correction: bool = False,
    ) -> None:
        super().__init__(id_key="session", pred_key="pred", label_key="label")
        self.imaging_task, self.bias_correction = imaging_task, bool(bias_correction)
        self.output_dir = Path(output_dir)
        self.entries = {str(e["session"]): e for e in entries}
        self.train_entries = list(train_entries)
        self.target_key = target_key
        self.target_name = target_name or target_key
        self.within = within
        self.linear_on_demographics = linear_on_demographics
        self.extra_columns = list(extra_columns)
        if value_range is not None and len(value_range) != 2:
            raise ValueError(f"value_range must be [low, high], got {value_range!r}")
        self.value_range = None if value_range is None else (float(value_range[0]), float(value_range[1]))
        self.round_to = round_to
        self.provenance = provenance
        self.n_resamples, self.seed = int(n_resamples), int(seed)

    def build(self) -> ReportParts:
        entries = [self.entries[i] for i in self.ids]
        raw = np.asarray(self.preds, dtype=np.float64)
        pred = raw if self.value_range is None else clip_to_range(raw, *self.value_range)
        true = np.asarray(self.labels, dtype=np.float64)
        model = regression_metrics(pred, true, self.within)
        baselines = regression_baselines(
            self.train_entries, entries, self.target_key, self.within, self.linear_on_demographics, self.imaging_task,
            self.bias_correction,
        )
        frame = pd.DataFrame({"session": self.ids})
        for column in self.extra_columns:
            frame[column] = [e.get(column) for e in entries]
        frame[self.target_key] = true
        frame["prediction"] = pred
        if self.value_range is not None:
            frame["prediction_raw"] = raw
        if self.round_to is not None:
            frame["prediction_rounded"] = round_to_step(pred, self.round_to)
        frame["error"] = frame["prediction"] - frame[self.target_key]
        predictions = {name: np.asarray(result.pop("predictions")) for name, result in baselines.items()}
        for name, values in predictions.items():
            frame[f"baseline_{name}"] = values

        def compute(index: np.ndarray) -> dict[str, dict[str, Any]]:
            out = {"model": regression_metrics(pred[index], true[index], self.within)}
            out.update({name: regression_metrics(values[index], true[index], self.within) for name, values in predictions.items()})
            return out

        report: dict[str, Any] = {"target": self.target_key, "model": model, "baselines": baselines}
        if self.value_range is not None:
            report["prediction_range"] = {
                "clipped_to": list(self.value_range),
                "n_clipped": int(np.sum(pred != raw)),
                "note": "metrics use the clipped predictions; predictions.csv keeps the raw ones (prediction_raw)",
            }
        return ReportParts(report, frame, compute, subjects_of(entries))

    def after_write(self, parts: ReportParts) -> None:
        self._plot(parts.table, parts.report["model"])

    def summary(self, parts: ReportParts) -> str:
        model = parts.report["model"]
        values = ", ".join(f"{k}={v:.3f}" for k, v in model.items() if isinstance(v, float))
        interval = model.get("ci95", {}).get("mae")
        ci = f" (95% CI {interval[0]:.3f}-{interval[1]:.3f})" if interval else ""
        return (
            f"evaluated {model['n']} sessions: {values}; MAE{ci}; beats baselines: {parts.report['beats_baselines']}; "
            f"written to {self.output_dir}"
        )

    def _plot(self, frame: pd.DataFrame, model: Mapping[str, float]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        true, pred = frame[self.target_key], frame["prediction"]
        low, high = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
        ax.plot([low, high], [low, high], color="grey", linestyle="--", linewidth=1, label="identity")
        ax.scatter(true, pred, s=18, alpha=0.8, label="sessions")
        ax.set(
            xlabel=f"true {self.target_name}",
            ylabel=f"predicted {self.target_name}",
            title=f"MAE {model['mae']:.2f}, r {model['pearson_r']:.2f}, n {model['n']}",
        )
        ax.legend(loc="upper left")
        save_figure(fig, self.output_dir / "scatter.png")
        plt.close(fig)


class PredictionTableHandler(PredictionCollector):
    """Write one row per session (``session``, the prediction, the model version) after a run.

    Args:
        output_file: the CSV to write (atomically, once the whole run has completed).
        value_name: column name of the prediction, e.g. ``"edss_pred"``.
        model_version: recorded in every row (the bundle's ``metadata.json`` version).
        pred_transform: applied to the raw network output (e.g. a sigmoid for a logit).
        extra: other columns computed from the prediction array, name -> function.
        value_range: ``[low, high]``: the ``value_name`` column is clipped to it (EDSS: [0, 10]) and the
            unclipped value is kept in ``<value_name>_raw``; ``extra`` functions get the clipped values.
        round_to: also ``<value_name>_rounded``, the (clipped) value rounded to this step (EDSS: 0.5).
        provenance: the run's provenance (``monai_ms.bundle.evaluation_provenance`` of the inferred split, the
            manifest and the checkpoint), written beside the table as ``<table>.provenance.json`` (see
            :func:`monai_ms.engines.handlers.report.write_sidecar`); ``None`` writes no sidecar.

    Bound to a :class:`monai_ms.engines.BatchInference` (its ``writers``), each prediction is recorded per
    session as it is made and the table is written by ``batch.finish()`` (see :meth:`bind`).
    """

    def __init__(
        self,
        output_file: str | Path,
        value_name: str = "prediction",
        model_version: str = "",
        pred_transform: Callable[[np.ndarray], np.ndarray] | None = None,
        extra: Mapping[str, Callable[[np.ndarray], np.ndarray]] | None = None,
        value_range: Sequence[float] | None = None,
        round_to: float | None = None,
        provenance: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(id_key="session", pred_key="pred", label_key=None, pred_transform=pred_transform)
        self.output_file = Path(output_file)
        self.provenance = provenance
        self.value_name = value_name
        self.model_version = model_version
        self.extra = dict(extra or {})
        if value_range is not None and len(value_range) != 2:
            raise ValueError(f"value_range must be [low, high], got {value_range!r}")
        self.value_range = None if value_range is None else (float(value_range[0]), float(value_range[1]))
        self.round_to = round_to
        self.batch: Any = None

    def bind(self, batch: Any) -> None:
        """Record each session's prediction through a ``monai_ms.engines.BatchInference`` as it is made; the
        table is then written by ``batch.finish()`` from the records of every session of the split (a rerun
        that skips completed sessions still lists them), with an ``error`` row for each failed session."""
        self.batch = batch
        batch.register_table_writer(self.write_tables)

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        if self.batch is None:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def collect(self, engine: Engine) -> None:
        if engine.state.batch is None:  # every scan of this iteration failed before the network
            return
        start = len(self.ids)
        super().collect(engine)
        if self.batch is not None:
            for session, value in zip(self.ids[start:], self.preds[start:]):
                self.batch.complete(session, {"pred": float(value)})

    def write_tables(self) -> Path:
        """Bound to a ``BatchInference``: write the table of every recorded session (``write`` of this class
        or a subclass), then add the failed sessions' rows; returns the table's path."""
        done = [r for r in self.batch.records() if r.get("status") == "ok"]
        self.ids = [str(r["session"]) for r in done]
        self.preds = [float(r["row"]["pred"]) for r in done]
        frame = self.write()
        with_errors = self.batch.add_error_rows(frame)
        if len(with_errors) != len(frame):
            write_csv(with_errors, self.output_file)
            self.write_provenance(with_errors)
        return self.output_file

    def write_provenance(self, frame: pd.DataFrame) -> Path | None:
        """Write ``<table>.provenance.json`` (the run's provenance, the table's columns and rows) when the
        handler was given a provenance; returns its path, or None."""
        if self.provenance is None:
            return None
        return write_sidecar(self.output_file, self.provenance, frame.columns, len(frame))

    def write(self, engine: Engine | None = None) -> pd.DataFrame:
        raw = np.asarray(self.preds, dtype=np.float64)
        values = raw if self.value_range is None else clip_to_range(raw, *self.value_range)
        frame = pd.DataFrame({"session": self.ids, self.value_name: values})
        if self.round_to is not None:
            frame[f"{self.value_name}_rounded"] = round_to_step(values, self.round_to)
        if self.value_range is not None:
            frame[f"{self.value_name}_raw"] = raw
        for name, function in self.extra.items():
            frame[name] = function(values)
        frame["model_version"] = self.model_version
        write_csv(frame, self.output_file)
        self.write_provenance(frame)
        logger.info(f"wrote {len(frame)} predictions to {self.output_file}")
        return frame


class BroadcastBuffersHandler:
    """Copy rank 0's buffers (e.g. batch-norm running statistics) to every rank when an engine starts.

    Under ``DistributedDataParallel`` each rank's last training step updates its own running
    statistics; DDP re-broadcasts them only at its next forward. An evaluator that runs the unwrapped
    network would otherwise score each rank's shard with different statistics than the checkpoint
    saved by rank 0. A no-op outside ``torch.distributed``.

    Args:
        network: the (unwrapped) network the evaluator runs.
        src: rank whose buffers are copied.
    """

    def __init__(self, network: torch.nn.Module, src: int = 0) -> None:
        self.network = network
        self.src = src

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        for buffer in self.network.buffers():
            torch.distributed.broadcast(buffer.data, src=self.src)


class SettleCacheHandler:
    """Move cache entries the DataLoader workers computed into the training process, at each epoch start.

    For :class:`monai_ms.data.WorkerFilledCacheDataset` (``cohort_dataset(cache="memory", fill="workers")``):
    the workers of the first epoch fill its cache; this handler, at the next ``EPOCH_STARTED`` (before that
    epoch's workers start), makes those entries plain memory the new workers share. Other datasets are
    skipped, so a config may list its datasets whatever their cache.

    Args:
        datasets: a dataset or a list of them (e.g. the training and the validation dataset).
    """

    def __init__(self, datasets: Any) -> None:
        self.datasets = list(datasets) if isinstance(datasets, (list, tuple)) else [datasets]

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        for dataset in self.datasets:
            if callable(getattr(dataset, "settle", None)):
                dataset.settle()
