"""Error types raised for bad user input (files, configs, run directories)."""

from __future__ import annotations

from pathlib import Path


class LiverscopeError(ValueError):
    """Bad input that the user can fix: the message names the file and what to do.

    The command line exits with code 1 for these (a failure while running) and 2 for a
    :class:`UsageError`."""


class UsageError(LiverscopeError):
    """A command or setting used wrongly (an unknown setting, a value outside its choices, a recipe
    that does not exist), found before any work starts; the command line exits with code 2."""


class ImageReadError(LiverscopeError):
    """An image or DICOM file that cannot be decoded.

    Args:
        path: the offending file.
        reason: what is wrong with it.
        fix: what the user can do about it.
    """

    def __init__(self, path: str | Path, reason: str, fix: str = "check the file or remove it from the data"):
        self.path = str(path)
        self.reason = reason
        self.fix = fix
        super().__init__(f"{self.path}: {reason} ({fix})")

    def __reduce__(self):
        # rebuilt from its three fields, so the error crosses a process pool (ValueError pickles its message only)
        return (type(self), (self.path, self.reason, self.fix))
