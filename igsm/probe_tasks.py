"""The names of the V-probing tasks, in one place: the probe config offers them, the labels compute them.

A torch-free leaf of the core layer (docs/architecture.md), so that ``igsm.probe_config`` and
``probing.labels`` read one list without the igsm package importing probing. What each task
means: docs/spec.md, section 13.
"""

TASKS = ("nece", "dep", "known", "value", "can_next", "nece_next")  # the paper's six: probe.tasks' default
EXTRA_TASKS = ("regret",)  # Part 2.2's regret probe: on request only
ALL_TASKS = TASKS + EXTRA_TASKS  # what probe.tasks accepts

__all__ = ["TASKS", "EXTRA_TASKS", "ALL_TASKS"]
