"""cheapconv: make trained convolutional networks cheap without redesigning them.

>>> import cheapconv
>>> teacher = cheapconv.create_model("wrn_40_2")
>>> student = cheapconv.cheapen(teacher, "G(4)")
>>> cheapconv.count_params(student, "paper")
825210

``import cheapconv`` imports nothing: each name below is imported from its module when first used (PEP 562), so
``import cheapconv.errors`` or ``cheapconv.registry`` stays cheap (the command line's ``--help`` never loads
torch). The names come from the modules in :data:`_EXPORTS`; torchvision and timm are imported when a model
name needs them.
"""

from __future__ import annotations

import importlib
from pathlib import Path

#: public name -> the module that defines it (a name is imported from there when first used)
_EXPORTS = {
    "BLOCK_REGISTRY": "blocks", "BlockSpec": "blocks", "parse_block": "blocks",
    "SearchResult": "blockswap", "search": "blockswap", "fisher_potential": "blockswap.fisher",
    "CompressResult": "compression", "build_library": "compression", "compress": "compression",
    "count_macs": "counting", "count_params": "counting",
    "get_dataset": "data",
    "CheapconvError": "errors", "PolicyMatchError": "errors", "PolicySyntaxError": "errors", "TraceError": "errors",
    "UsageError": "errors",
    "ExportCheckError": "exporter", "export": "exporter",
    "Tap": "fx.tap",
    "measure_side_by_side": "measure.latency",
    "Profile": "measure.profiler", "block_timings": "measure.profiler", "profile": "measure.profiler",
    "WideResNet": "models",
    "pareto_plot": "plots",
    "ReconstructionReport": "reconstruction", "reconstruct": "reconstruction",
    "load": "store.modelfile", "read_recipe": "store.modelfile", "save": "store.modelfile",
    "create_model": "store.resolve", "load_deployed": "store.deployed",
    "Plan": "surgery.plans", "PlanEntry": "surgery.plans", "plan": "surgery.planner",
    "Policy": "surgery.policy", "Rule": "surgery.policy", "Selector": "surgery.policy",
    "parse_policy": "surgery.policy",
    "cheapen": "surgery.rewrite",
    "find_stages": "surgery.taps", "record": "surgery.taps",
    "InitRecord": "surgery.teacher_init", "Site": "surgery.teacher_init", "init_from_teacher": "surgery.teacher_init",
    "replaced_sites": "surgery.teacher_init",
    "sweep": "sweeper",
    "Callback": "train.callbacks",
    "DistillConfig": "train.config",
    "DistillResult": "train.loop", "NonFiniteLossError": "train.loop", "distill": "train.loop",
    "evaluate": "train.metrics",
    "__version__": "version",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Import a public name from its module on first use (and keep it here); a submodule on first access."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    elif not name.startswith("_") and _is_submodule(name):  # `cheapconv.measure` after a bare `import cheapconv`
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


def _is_submodule(name: str) -> bool:
    here = Path(__file__).parent
    return (here / name / "__init__.py").is_file() or (here / f"{name}.py").is_file()
