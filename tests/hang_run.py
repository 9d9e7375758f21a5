"""Run train.py or probe.py with test hooks that stop it at a chosen moment, so that a test can
kill it there without sleeping for fixed times::

    IGSM_TEST_HANG=save:4 IGSM_TEST_HANG_MARKER=/tmp/m python tests/hang_run.py train.py ARGS...

``IGSM_TEST_HANG="<where>:<n>,..."`` names the moments: after micro-batch ``n`` (``batch:n``), while
the checkpoint of step ``n`` is being written (``save:n``: written and flushed, not yet fsynced and
renamed), in the evaluation at step ``n`` (``eval:n``). There the run appends ``<where>:<n>`` to the
file named by ``IGSM_TEST_HANG_MARKER`` and waits: a ``batch`` wait ends when a stop signal arrives,
the others last until the process is killed. The hooks are monkeypatches of igsm.faults and
igsm.trainer, installed in every process of the run (DDP ranks start this script again).
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from pathlib import Path

HANG_ENV, HANG_MARKER_ENV = "IGSM_TEST_HANG", "IGSM_TEST_HANG_MARKER"
HERE = Path(__file__).resolve().parent


def hang(where: str, n: int, stop=None) -> None:
    """Return at once unless IGSM_TEST_HANG names this moment; else mark it and wait (a ``batch``
    wait ends when ``stop``, the run's GracefulStop, has received a signal)."""
    spec = os.environ.get(HANG_ENV)
    if not spec or f"{where}:{n}" not in spec.split(","):
        return
    marker = os.environ.get(HANG_MARKER_ENV)
    if marker:
        with open(marker, "a") as f:
            f.write(f"{where}:{n}\n")
    while not (where == "batch" and stop is not None and stop.signum is not None):
        time.sleep(0.01)


def install() -> None:
    """Patch the moments of the module docstring into GracefulStop and AtomicCheckpointIO."""
    from igsm import faults, trainer

    stop_class, io_class = faults.GracefulStop, trainer.AtomicCheckpointIO
    on_train_batch_end, save_checkpoint = stop_class.on_train_batch_end, io_class.save_checkpoint

    def hooked_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        hang("batch", trainer.fit_loop.total_batch_idx + 1, self)
        return on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx)

    def hooked_validation_batch_end(self, trainer, *args, **kwargs):
        if trainer.state.fn == "fit":
            hang("eval", trainer.global_step)

    def hooked_save(self, checkpoint, path, storage_options=None):
        fsync = os.fsync

        def hang_then_fsync(fd):  # atomic_write fsyncs after writing and flushing the temp file
            hang("save", checkpoint.get("global_step", -1))
            fsync(fd)

        os.fsync = hang_then_fsync
        try:
            save_checkpoint(self, checkpoint, path, storage_options)
        finally:
            os.fsync = fsync

    stop_class.on_train_batch_end = hooked_batch_end
    stop_class.on_validation_batch_end = hooked_validation_batch_end
    io_class.save_checkpoint = hooked_save


def main() -> None:
    sys.path.insert(0, str(HERE.parent))
    entry_point = importlib.import_module(Path(sys.argv[1]).stem)  # train.py or probe.py: its top level first
    install()
    sys.exit(entry_point.main(sys.argv[2:]))


if __name__ == "__main__":
    main()
