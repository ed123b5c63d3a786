"""Hub downloads that fail: a clear usage error instead of a network stack trace."""

from __future__ import annotations

import socket
import urllib.error

from ..errors import UsageError

__all__ = ["download_error", "is_network_error"]


_NETWORK_MODULES = ("urllib3", "requests", "huggingface_hub", "httpx", "http.client", "socket", "ssl")


def is_network_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) is a failed download: no network, DNS, refused, timeout."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen and len(seen) < 32:
        seen.add(id(e))
        if isinstance(e, (urllib.error.URLError, ConnectionError, socket.gaierror, socket.timeout, TimeoutError)):
            return True
        module = type(e).__module__ or ""
        if any(module == m or module.startswith(m + ".") for m in _NETWORK_MODULES):
            return True
        e = e.__cause__ or e.__context__
    return False


def download_error(model: str, exc: BaseException):
    """The usage error for a ``--pretrained`` download that failed (no network, hub down)."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return UsageError(f"The pretrained weights of {model!r} could not be downloaded ({type(exc).__name__}: "
                      f"{first}). Without network access, download the weights file on another machine and pass "
                      "it with --weights PATH, or leave out --pretrained.")
