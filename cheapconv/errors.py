"""Exceptions with messages written for the person at the keyboard.

Every error cheapconv raises on purpose derives from :class:`CheapconvError`. The command line prints
the message as one paragraph (no traceback unless ``--debug``) and exits with :attr:`exit_code`:
2 for usage errors (bad names, bad policies, bad paths), 1 for failures at run time.
"""

from __future__ import annotations


class CheapconvError(Exception):
    """Base class: a problem the user can fix, described in one paragraph (what, why, how to fix)."""

    exit_code: int = 1


class UsageError(CheapconvError, ValueError):
    """The request itself is malformed or names something that does not exist."""

    exit_code = 2


class PolicySyntaxError(UsageError):
    """A policy or block spec string does not parse; the message points at the column."""


class PolicyMatchError(UsageError):
    """A policy is well formed but selects nothing in the model (or, under ``strict``, something it cannot do)."""


class UnknownModelError(UsageError):
    """A model name that no zoo (built-in, torchvision, timm) knows, and that is no readable file."""


class UntrustedFileError(UsageError):
    """A file that can only be loaded by unpickling arbitrary code, and the caller did not say it is trusted."""


class FileFormatError(UsageError):
    """A file that is not a cheapconv file, is truncated, or is of an unsupported version."""


class DatasetNotFoundError(UsageError):
    """A dataset that is not on disk where we looked and cannot be downloaded."""


class TraceError(CheapconvError):
    """torch.fx could not trace a model, so a graph-level operation is impossible."""
