"""The `edgecl` command line: commands thin over the library's public functions."""

from edgecl.cli.app import app, main

__all__ = ["app", "main"]
