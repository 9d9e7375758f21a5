"""igsm: the iGSM problem class of "Physics of Language Models: Part 2.1", and tools around it."""

from .generator import GenerationError, generate, generate_problem, problem_rng
from .generator_config import GENERATOR_PRESETS, ConfigError, GeneratorConfig, generator_preset
from .problem import ABS, INST, MOD, Equation, Param, Problem
from .world import World, WorldError, load_world


def __getattr__(name):  # verify / parse on first use: `import igsm` stays light
    if name in ("verify_solution", "Report", "ERROR_KINDS"):
        from . import verify

        return getattr(verify, name)
    if name in ("parse_problem", "verify_text", "ParseError"):
        from . import parse

        return getattr(parse, name)
    raise AttributeError(f"module 'igsm' has no attribute {name!r}")

__all__ = [
    "GENERATOR_PRESETS", "ConfigError", "GeneratorConfig", "generator_preset",
    "GenerationError", "generate", "generate_problem", "problem_rng",
    "ABS", "INST", "MOD", "Equation", "Param", "Problem", "World", "WorldError", "load_world",
    "verify_solution", "Report", "ERROR_KINDS", "parse_problem", "verify_text", "ParseError",
]
