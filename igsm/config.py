"""Every config dataclass under one import: the one place where every default lives.

Three modules, each readable on its own, handed on here by name:

* :mod:`igsm.generator_config`: the generator's knobs (``GeneratorConfig``), its presets and
  ``ConfigError``; torch-free, in the core layer, since the generator reads it;
* :mod:`igsm.train_config`: what ``python train.py`` reads (``TrainConfig`` and its groups);
* :mod:`igsm.probe_config`: what ``python probe.py`` reads (``ProbeConfig`` and its groups).

Plain dataclasses: no torch, no omegaconf, no generator at import. YAML files in ``configs/`` and
command-line dotlists only override these fields; :func:`igsm.cli_config.load_config` merges them
strictly (unknown keys and bad values fail) and then runs the checks that generate problems
(:mod:`igsm.data_setup`).
"""

from __future__ import annotations

from .generator_config import (
    GENERATOR_PRESETS,
    MAX_OP,
    OP_SAMPLING,
    ConfigError,
    GeneratorConfig,
    generator_preset,
    validate_generator,
)
from .probe_config import (
    PROBE_CONTROLS,
    PROBE_LAYERS,
    PROBE_TEST_SPLITS,
    AnalysisConfig,
    ProbeConfig,
    ProbeOptions,
    validate_probe,
)
from .train_config import (
    CANON_POSITIONS,
    EVAL_BUCKETS,
    OPTIMIZERS,
    BucketSpec,
    DataConfig,
    EvalConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    TrainerConfig,
    accumulation,
    bucket_generator_config,
    generator_config,
    parse_bucket,
    validate_data,
    validate_eval,
    validate_model,
    validate_optim,
    validate_train,
    validate_trainer,
)

__all__ = [
    # the generator (igsm.generator_config)
    "MAX_OP", "OP_SAMPLING", "ConfigError", "GeneratorConfig", "GENERATOR_PRESETS", "generator_preset",
    "validate_generator",
    # training (igsm.train_config)
    "ModelConfig", "CANON_POSITIONS", "validate_model", "EVAL_BUCKETS", "DataConfig", "OptimConfig", "OPTIMIZERS",
    "TrainerConfig", "EvalConfig", "TrainConfig", "BucketSpec", "parse_bucket", "accumulation", "validate_train",
    "validate_data", "validate_optim", "validate_trainer", "validate_eval", "generator_config",
    "bucket_generator_config",
    # probing (igsm.probe_config)
    "PROBE_LAYERS", "PROBE_CONTROLS", "PROBE_TEST_SPLITS", "ProbeOptions", "AnalysisConfig", "ProbeConfig",
    "validate_probe",
]
