"""Kernel Evolve: GPU kernels written and tuned by closed-loop search."""

__version__ = "0.1.0"
