"""The latency runtimes, one file each, registered by name in :data:`~cheapconv.extensions.RUNTIMES`
(``RUNTIMES.names()`` lists them without importing any): each file registers a
:class:`~cheapconv.measure.runtimes.Runtime` that says what it needs and makes a model runnable there. Adding a
runtime is adding a file here; what several share lives in ``_``-prefixed modules."""

from __future__ import annotations

__all__: list[str] = []
