"""What ``torch.compile`` needs where it runs, checked before a run starts.

Inductor (torch.compile's default backend) builds C++ (CPU) or Triton (CUDA) kernels at run time:
it needs a C compiler and the Python headers on every machine that trains, and Triton on GPUs.
Without them a run fails minutes in, deep in a traceback; :func:`compile_problems` names what is
missing instead, so ``train.py`` (``model.compile=true``) and the GPU check can say it in one line.
"""

from __future__ import annotations

import os
import shutil
import sysconfig
from pathlib import Path
from typing import Optional


def c_compiler() -> Optional[str]:
    """Path of the C compiler inductor would use ($CXX/$CC, then c++, g++, clang++, cc, gcc, clang)."""
    candidates = [os.environ.get("CXX"), os.environ.get("CC"), "c++", "g++", "clang++", "cc", "gcc", "clang"]
    return next((path for name in candidates if name and (path := shutil.which(name))), None)


def python_headers() -> Optional[str]:
    """Path of Python.h for this interpreter, or None."""
    header = Path(sysconfig.get_paths()["include"]) / "Python.h"
    return str(header) if header.is_file() else None


def compile_problems(cuda: Optional[bool] = None) -> list[str]:
    """What is missing for torch.compile here: an empty list when nothing is.

    ``cuda``: also check Triton (None = when a CUDA device is visible)."""
    problems = []
    if c_compiler() is None:
        problems.append("no C compiler (install gcc or clang, or set CC/CXX)")
    if python_headers() is None:
        problems.append(f"no Python headers (Python.h under {sysconfig.get_paths()['include']}; "
                        "install python3-dev or the matching python*-devel package)")
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if cuda:
        try:
            import triton  # noqa: F401
        except ImportError:
            problems.append("no triton (pip install triton, matching the installed torch)")
    return problems


def compile_error(key: str = "model.compile") -> Optional[str]:
    """A one-line error naming the key when torch.compile cannot work here, else None."""
    problems = compile_problems()
    if not problems:
        return None
    return f"{key}=true is not allowed here: torch.compile needs " + "; ".join(problems) + f" (or set {key}=false)"


__all__ = ["c_compiler", "python_headers", "compile_problems", "compile_error"]
