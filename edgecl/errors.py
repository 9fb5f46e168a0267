"""The exceptions a user sees, and how their messages name the parameter at fault.

The library is called from Python and from the command line, so a message does not spell a flag:
it marks the parameter with `param("weights")`, which reads `weights` in Python and `--weights` on
the command line (edgecl/cli/messages.py holds the one table from parameters to flags)."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence

_MARK = "\x1f"  # a control character no file name or class name in a message is expected to hold
_MARKED = re.compile(f"{_MARK}([a-z_]+){_MARK}([^{_MARK}]*){_MARK}")


def param(name: str, python: str | None = None) -> str:
    """A parameter in a message: `python` (default: its name) in Python, its flag on the command line."""
    return f"{_MARK}{name}{_MARK}{python or name}{_MARK}"


def render(text: str, spell: Callable[[str, str], str]) -> str:
    """`text` with each marked parameter spelt by `spell(name, python_spelling)`."""
    return _MARKED.sub(lambda m: spell(m.group(1), m.group(2)), text)


def python_text(text: str) -> str:
    return render(text, lambda name, python: python)


def name_list(names: Sequence[str], shown: int = 8) -> str:
    """`a, b, c, and 5 more`: a list in a one-line message."""
    more = f", and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def unknown_name(name: str, names: Sequence[str], shown: int = 8) -> str:
    """What a message says of a name not among `names`: the likely typos first, then the list."""
    close = difflib.get_close_matches(name, list(names), n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    return f"{hint}({len(names)}: {name_list(names, shown)})"


class EdgeclError(Exception):
    """A problem with the user's input (a file, a folder, a parameter), not a bug in edgecl.

    str() spells its parameters as Python names; an f-string keeps them marked, so a message built
    on another error's is spelt right wherever it ends up (edgecl/cli/messages.py)."""

    @property
    def marked(self) -> str:
        return str(self.args[0]) if self.args else ""

    def render(self, spell: Callable[[str, str], str]) -> str:
        return render(self.marked, spell)

    def __str__(self) -> str:
        return python_text(self.marked)

    def __format__(self, spec: str) -> str:
        return format(self.marked, spec)


class DamagedFile(EdgeclError):
    """A bundle file is missing or does not match its checksum."""
