"""Errors that the CLI turns into one line and exit code 2.

Anything else that escapes is a bug and keeps its traceback, so the two kinds of
failure never look alike to a user.
"""


class KmnistError(Exception):
    """Bad input or state a user can fix; its message is shown as-is."""


class DataError(KmnistError):
    """A data file or folder is missing, corrupt or inconsistent."""


class RunError(KmnistError):
    """A saved run (models/<name>/) is missing, corrupt or incompatible."""


class OptionError(KmnistError):
    """An option value is out of range or contradicts another option."""


class OutputError(KmnistError):
    """An output file cannot be written (read-only place, a folder in the way, a full disk)."""
