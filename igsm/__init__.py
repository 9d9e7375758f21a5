"""igsm: the iGSM problem class of "Physics of Language Models: Part 2.1", and tools around it."""

from .config import GENERATOR_PRESETS, ConfigError, GeneratorConfig, generator_preset
from .generator import GenerationError, generate, generate_problem, problem_rng
from .problem import ABS, INST, MOD, Equation, Param, Problem
from .world import World, WorldError, load_world

__all__ = [
    "GENERATOR_PRESETS", "ConfigError", "GeneratorConfig", "generator_preset",
    "GenerationError", "generate", "generate_problem", "problem_rng",
    "ABS", "INST", "MOD", "Equation", "Param", "Problem", "World", "WorldError", "load_world",
]
