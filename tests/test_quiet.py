"""Known-harmless third-party noise is silenced at start-up; real warnings and log lines still show."""

import logging
import warnings

from igsm.quiet import LIGHTNING_RANK_ZERO_LOGGERS, silence_harmless_noise


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_harmless_warnings_are_dropped_and_real_ones_still_show():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # what an unsilenced run would show
        silence_harmless_noise()
        warnings.warn("Precision bf16-mixed is not supported by the model summary.  Estimated model size "
                      "in MB will not be accurate. Using 32 bits instead.", UserWarning, stacklevel=1)
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec) "
                      "and treespec.is_leaf()` instead.", FutureWarning, stacklevel=1)
        try:  # the real source where torch still has it
            from torch.utils._pytree import LeafSpec

            LeafSpec()
        except ImportError:
            pass
        warnings.warn("Precision is not the issue here: a real warning", UserWarning, stacklevel=1)
        warnings.warn("some real deprecation", DeprecationWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["Precision is not the issue here: a real warning",
                                                "some real deprecation"]


def test_lightning_tips_are_dropped_and_other_info_still_shows():
    from lightning.pytorch.utilities.rank_zero import rank_zero_info

    logger = logging.getLogger(LIGHTNING_RANK_ZERO_LOGGERS[0])
    collect = Collect()
    logger.addHandler(collect)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        silence_harmless_noise()
        silence_harmless_noise()  # idempotent: one filter
        rank_zero_info("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]")
        rank_zero_info("GPU available: False, used: False")
    finally:
        logger.removeHandler(collect)
        logger.setLevel(old_level)
    assert collect.messages == ["GPU available: False, used: False"]
    assert len(logger.filters) == 1
