"""The report's figures in TensorBoard, and each run's config as TensorBoard hparams.

- :class:`ReportFigures` (a Lightning callback, added by train.py): at the start of training, the
  resolved config as hparams (HPARAMS tab: filter and compare runs by any key, against the final
  ``eval/<bucket>/accuracy``); after every evaluation, the accuracy-against-op figure as the image
  ``figures/accuracy_vs_op`` at that step.
- :func:`log_probe_figures` (called by probe.py after probing): the probe bars beside the
  controls (``figures/probe_accuracy``), the nece-by-distance heatmap (``figures/nece_by_distance``)
  and the probe run's config as hparams against ``probe/<task>/acc``.

The figures are the ones ``python -m igsm report`` draws (:mod:`igsm.report`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Optional

from lightning.pytorch.callbacks import Callback

from igsm.report import accuracy_vs_op_figure, flatten, nece_by_distance_figure, probe_bars_figure


def hparam_values(config: dict) -> dict[str, Any]:
    """The config flattened to ``group.key`` with values TensorBoard accepts (lists and None as text)."""
    return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in flatten(config).items()}


def log_hparams(writer, config: dict, metric_tags: Iterable[str]) -> None:
    """Write the hparams summary (config + the scalar tags to show beside it) into the run's events.

    The metric values are read by TensorBoard from those scalar tags, so nothing is logged at a
    made-up step here (Lightning's ``log_hyperparams`` would log a placeholder value)."""
    from torch.utils.tensorboard.summary import hparams

    exp, ssi, sei = hparams(hparam_values(config), {tag: 0.0 for tag in metric_tags})
    file_writer = writer._get_file_writer()
    for summary in (exp, ssi, sei):
        file_writer.add_summary(summary)
    writer.flush()


def _writer(trainer) -> Optional[Any]:
    writer = getattr(trainer.logger, "experiment", None) if trainer.logger is not None else None
    return writer if hasattr(writer, "add_figure") else None


class ReportFigures(Callback):
    """Config as hparams at fit start; the accuracy-against-op figure after each evaluation (rank 0)."""

    def __init__(self, config: dict) -> None:
        self.config = config

    def on_fit_start(self, trainer, pl_module) -> None:
        writer = _writer(trainer)
        if writer is None or not trainer.is_global_zero:
            return
        tags = [f"eval/{spec.label}/accuracy" for spec in getattr(pl_module, "buckets", [])]
        log_hparams(writer, self.config, tags)

    def on_validation_end(self, trainer, pl_module) -> None:
        writer = _writer(trainer)
        entries = getattr(pl_module, "last_eval", None)
        if writer is None or not entries or trainer.sanity_checking or not trainer.is_global_zero:
            return
        run = self.config.get("name", "run")
        fig = accuracy_vs_op_figure([(run, entries, self.config.get("data", {}).get("max_op"))],
                                    title=f"{run}: accuracy against op at step {trainer.global_step}")
        if fig is not None:
            writer.add_figure("figures/accuracy_vs_op", fig, global_step=trainer.global_step, close=True)
            writer.flush()


def log_probe_figures(writer, results: dict, step: int, config: Optional[dict] = None) -> None:
    """After probing: probe bars, the nece-by-distance heatmap and (with ``config``) the hparams."""
    if writer is None or not hasattr(writer, "add_figure"):
        return
    fig = probe_bars_figure(results)
    if fig is not None:
        writer.add_figure("figures/probe_accuracy", fig, global_step=step, close=True)
    if results.get("nece_by_distance"):
        fig = nece_by_distance_figure(results["nece_by_distance"])
        if fig is not None:
            writer.add_figure("figures/nece_by_distance", fig, global_step=step, close=True)
    if config is not None:
        tasks = results.get("tasks", {})
        log_hparams(writer, config, [f"probe/{task}/acc" for task in tasks]
                    + [f"probe/{task}/balanced_acc" for task, e in tasks.items() if e.get("balanced_acc") is not None])
    writer.flush()


__all__ = ["ReportFigures", "log_probe_figures", "log_hparams", "hparam_values"]
