"""Silence known-harmless third-party noise at start-up, so the first lines of a run are ours.

Only exact, known messages are dropped; every other warning and log line still shows. Each entry
says why it is harmless. ``train.py`` and ``probe.py`` call :func:`silence_harmless_noise` before
they build a Trainer. No torch or Lightning import here: filters work on message text.
"""

from __future__ import annotations

import logging
import warnings

# Regular expressions matched against the start of a warning's message (warnings.filterwarnings).
HARMLESS_WARNINGS: dict[str, str] = {
    # Lightning's model summary cannot size bf16-mixed weights in MB; the parameter counts are right.
    r"Precision .* is not supported by the model summary": "model-summary precision note",
    # torch 2.13 deprecates pytree's LeafSpec, which Lightning 2.6 still uses internally.
    r"`isinstance\(treespec, LeafSpec\)` is deprecated": "pytree deprecation inside Lightning",
}

# Log lines dropped when they start with one of these: Lightning's advertisements for its cloud
# products ("💡 Tip: For seamless cloud logging ... try installing litlogger").
HARMLESS_LOG_PREFIXES: tuple[str, ...] = ("💡 Tip:",)

# The loggers Lightning's rank_zero_info writes through (both package layouts).
LIGHTNING_RANK_ZERO_LOGGERS: tuple[str, ...] = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "pytorch_lightning.utilities.rank_zero",
    "lightning_fabric.utilities.rank_zero",
)


class _DropHarmlessLogLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(HARMLESS_LOG_PREFIXES)


def silence_harmless_noise() -> None:
    """Install the filters above (idempotent): harmless warnings and Lightning's tips are dropped."""
    for pattern in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in LIGHTNING_RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropHarmlessLogLines) for f in logger.filters):
            logger.addFilter(_DropHarmlessLogLines())


__all__ = ["silence_harmless_noise", "HARMLESS_WARNINGS", "HARMLESS_LOG_PREFIXES", "LIGHTNING_RANK_ZERO_LOGGERS"]
