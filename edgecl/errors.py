"""The one exception type a user sees: the CLI prints its message on one line and exits 1."""


class EdgeclError(Exception):
    """A problem with the user's input (a file, a folder, a flag), not a bug in edgecl."""


class DamagedFile(EdgeclError):
    """A bundle file is missing or does not match its checksum."""
