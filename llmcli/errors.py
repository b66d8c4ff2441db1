"""One exception hierarchy for every expected failure.

The CLI turns any `LlmcliError` into one red line and exit code 1; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations


class LlmcliError(Exception):
    """An expected failure the user can act on. The message names the file and what is wrong."""


class FormatError(LlmcliError):
    """A file is not what it claims to be: bad magic, truncated, inconsistent offsets..."""


class UnsupportedError(LlmcliError):
    """Well-formed input that asks for something we do not handle (an architecture, a type)."""


class BadInputError(LlmcliError):
    """The user's arguments or input files do not fit together."""


class OutputExistsError(LlmcliError):
    """Refusing to overwrite an existing output without --force."""


class OutputWriteError(LlmcliError):
    """The output could not be written (the disk is full, a quota or file-size limit reached)."""
