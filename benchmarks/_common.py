"""Shared by the benchmark scripts: the device and the size defaults for it."""

from __future__ import annotations

import argparse

import torch


def device_and_defaults(args: argparse.Namespace, gpu_defaults: dict,
                        cpu_defaults: dict) -> tuple[torch.device, list[str]]:
    """The requested device (``auto``: CUDA if available), with every size the user left unset
    filled from the GPU or CPU defaults; returns the device and the names shrunk for the CPU."""
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    defaults = gpu_defaults if device.type == "cuda" else cpu_defaults
    shrunk = [k for k in defaults if getattr(args, k) is None and device.type != "cuda"]
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return device, shrunk
