"""``cheapen`` across model zoos: every torchvision classification model and a broad sample of timm families.

Each model is built with random weights (no downloads) and cheapened at a small input, and must meet *the
contract* of ``benchmarks/coverage/zoo.py`` (:func:`contract_failures`: one definition, also the one the
headline of ``docs/coverage.md`` and the README counts): the input model is unchanged, every policy tried
builds a student or refuses clearly, and the contract student (``G(4)``, or ``*=G(N)`` where ``G(4)``
removes nothing) is smaller, keeps the output shape, trains, matches its plan and reloads equal.

The default run covers a handful of models (< 1 minute); ``-m slow`` runs the whole list of
``benchmarks/coverage/zoo.py``.
"""

from __future__ import annotations

import json
import os

import pytest

from benchmarks.coverage import dense as coverage_dense
from benchmarks.coverage import zoo as coverage

pytest.importorskip("torchvision")
pytest.importorskip("timm")

#: the fast subset, (model, policy, storage kind): plain and deep-stem ResNets (conv- and block-level), a
#: depthwise net whose only dense conv is the stem, a fire-module net, and timm's own layers
#: (BatchNormAct2d, LayerNorm2d) saved as data
FAST = [("torchvision:resnet18", "G(4)", "graph"), ("torchvision:mobilenet_v3_small", "*=G(N)", "graph"),
        ("torchvision:squeezenet1_1", "G(4)", "graph"), ("timm:resnet10t", "B(2)", "graph"),
        ("timm:efficientnet_b0", "*=G(N)", "graph"), ("timm:convnext_atto", "G(4)", "graph")]


def _assert_contract(res: dict, storage: str | None = None) -> None:
    failures = coverage.contract_failures(res)
    assert not failures, f"{res['model']}: " + "; ".join(failures)
    if storage is not None:
        assert res["policies"][coverage.contract_policy(res)]["storage"] == storage


@pytest.mark.parametrize("name,policy,storage", FAST)
def test_zoo_fast(name, policy, storage):
    _assert_contract(coverage.measure(name, policies=(policy,)), storage)


def _zoo():
    """Every model of the coverage list; ``CHEAPCONV_ZOO_SAMPLE=N`` keeps every N-th (CI's representative
    part: the full list takes ~35 minutes on 2 cores, a third of it fits CI's budget with room to spare)."""
    try:
        names = coverage.all_models()
    except ImportError:
        return []
    every = int(os.environ.get("CHEAPCONV_ZOO_SAMPLE", "1") or 1)
    return names[::every]


@pytest.mark.slow
@pytest.mark.parametrize("name", _zoo())
def test_zoo_full(name):
    # each model in its own process, as the coverage sweep runs it: memory is returned after every model
    # (the largest, such as regnet_y_128gf, need several GB) and a hang cannot stop the suite
    res = coverage.run_isolated(name, timeout=900, save=True, policies=(coverage.POLICIES[0],))
    if os.environ.get("CHEAPCONV_ZOO_RESULTS"):  # docs/coverage.md is rendered from these very results
        with open(os.environ["CHEAPCONV_ZOO_RESULTS"], "a") as f:
            f.write(json.dumps(res) + "\n")
    _assert_contract(res)


def test_the_contract_catches_what_it_promises():
    """The definition fails a model for each broken promise (so a green zoo run means something)."""
    good = {"model": "m", "primary": "G(4)", "unchanged": True, "policies": {"G(4)": {
        "ok": True, "replaced": 3, "params_before": 10, "params_after": 5, "shape_ok": True, "backward_ok": True,
        "plan_agrees": True, "load_ok": True}}}
    assert coverage.contract_failures(good) == []
    for key, value in (("shape_ok", False), ("backward_ok", False), ("load_ok", False), ("plan_agrees", False),
                       ("params_after", 11), ("ok", False)):
        bad = {**good, "policies": {"G(4)": {**good["policies"]["G(4)"], key: value}}}
        assert coverage.contract_failures(bad), key
    assert coverage.contract_failures({**good, "unchanged": False})
    assert coverage.contract_failures({"model": "m", "error": "build: boom", "policies": {}})


# --- dense prediction: torchvision's segmentation and detection families ----------------------------------
def test_dense_fast():
    res = coverage_dense.measure_dense("lraspp_mobilenet_v3_large")
    assert not coverage_dense.dense_failures(res), res
    assert res["task"] == "segmentation" and res["storage"] == "graph" and res["macs_counted"] == "whole model"


def _dense():
    every = int(os.environ.get("CHEAPCONV_ZOO_SAMPLE", "1") or 1)
    return [name for _, name in coverage_dense.dense_models()][::every]


@pytest.mark.slow
@pytest.mark.parametrize("name", _dense())
def test_dense_full(name):
    res = coverage_dense.run_isolated(name, timeout=900)
    if os.environ.get("CHEAPCONV_DENSE_RESULTS"):  # docs/coverage.md's dense table is rendered from these
        with open(os.environ["CHEAPCONV_DENSE_RESULTS"], "a") as f:
            f.write(json.dumps(res) + "\n")
    failures = coverage_dense.dense_failures(res)
    assert not failures, f"{name}: " + "; ".join(failures)


def test_the_dense_contract_catches_what_it_promises():
    good = {"model": "m", "task": "segmentation", "unchanged": True, "params_before": 10, "params_after": 5,
            "macs_before": 10, "macs_after": 5, "structure_ok": True, "train_ok": True, "load_ok": True}
    assert coverage_dense.dense_failures(good) == []
    for key, value in (("params_after", 10), ("macs_after", 11), ("structure_ok", False), ("train_ok", False),
                       ("load_ok", False), ("unchanged", False)):
        assert coverage_dense.dense_failures({**good, key: value}), key
    assert coverage_dense.dense_failures({**good, "error": "boom"})
    assert coverage.smaller_cell({"params_before": 10, "params_after": 5, "macs_before": 4, "macs_after": 6}) \
        == "✓ / ✗"
    assert coverage.smaller_cell({"params_before": 10, "params_after": 5}) == "✓ / –"
