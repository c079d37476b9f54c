"""Layer 5, the front ends: the `sharingmemory` command, its subcommands and the Tk window.

`main` is the console script's entry point (`sharingmemory.cli:main`).
"""

from .main import main

__all__ = ["main"]
