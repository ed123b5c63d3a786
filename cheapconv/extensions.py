"""The extension points whose entries are files: :data:`DATASETS`, :data:`LOSSES`, :data:`RUNTIMES` and
:data:`FAMILIES`.

Each is a :class:`~cheapconv.registry.Registry` over one package, one module per entry; adding a dataset, a
training objective or a latency runtime is adding a file there (or defining one at run time, :meth:`Registry.add`).
The registries are defined here, on the ground floor, rather than in their packages, so that the command line
lists the names (its help texts, its errors) without importing those packages, which load torch; an entry's
file imports this module to register itself.
"""

from __future__ import annotations

from typing import Any

from .registry import Registry

__all__ = ["DATASETS", "FAMILIES", "LOSSES", "RUNTIMES"]

#: datasets by name (``fashion_mnist.py`` is ``fashion-mnist``): :mod:`cheapconv.data.sets`
DATASETS: Registry[Any] = Registry("dataset", package="cheapconv.data.sets", hyphens=True)
#: training objectives by name (``at_kd.py`` is ``at+kd``, a name no file name can hold):
#: :mod:`cheapconv.train.objectives`
LOSSES: Registry[Any] = Registry("loss kind", package="cheapconv.train.objectives", spellings={"at_kd": "at+kd"})
#: where latency is measured (``onnxruntime_int8.py`` is ``onnxruntime-int8``): :mod:`cheapconv.measure.backends`
RUNTIMES: Registry[Any] = Registry("runtime", package="cheapconv.measure.backends", hyphens=True)
#: the candidate families of ``compress``'s library: :mod:`cheapconv.compression.families`
FAMILIES: Registry[Any] = Registry("candidate family", package="cheapconv.compression.families")
