"""``cheapen`` across model zoos: every torchvision classification CNN and a broad sample of timm families.

Each model is built with random weights (no downloads) and cheapened at a small input. The contract, for
every model: the student's output shape is the teacher's, forward and backward run in train mode, the
student has strictly fewer trainable parameters, the teacher is left bit-for-bit unchanged, and a
save/load round trip gives the same eval-mode outputs.

The default run covers a handful of models (< 1 minute); ``-m slow`` runs the whole list of
``benchmarks/coverage.py``, whose table is ``docs/coverage.md``.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import pytest
import torch

import cheapconv
from cheapconv.counting import eval_mode

pytest.importorskip("torchvision")
pytest.importorskip("timm")

_spec = importlib.util.spec_from_file_location("coverage_bench",
                                               Path(__file__).parents[1] / "benchmarks" / "coverage.py")
coverage = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(coverage)

#: the fast subset, (model, policy, storage kind): plain and deep-stem ResNets (conv- and block-level), a
#: depthwise net whose only dense conv is the stem, a fire-module net, and timm's own layers
#: (BatchNormAct2d, LayerNorm2d) saved as data
FAST = [("torchvision:resnet18", "G(4)", "graph"), ("torchvision:mobilenet_v3_small", "*=G(N)", "graph"),
        ("torchvision:squeezenet1_1", "G(4)", "graph"), ("timm:resnet10t", "B(2)", "graph"),
        ("timm:efficientnet_b0", "*=G(N)", "graph"), ("timm:convnext_atto", "G(4)", "graph")]


def _policy_for(plan_g4) -> str:
    """G(4), or, where it replaces nothing (depthwise nets), G(N) with a selector, which reaches the stem."""
    return "G(4)" if plan_g4.replaced else coverage.STEM_POLICY


def _out(y):
    return y if isinstance(y, torch.Tensor) else coverage._first_tensor(y)


def check_model(name: str, tmp_path: Path, policy: str | None = None, storage: str | None = None) -> None:
    teacher = cheapconv.create_model(name)
    size = coverage.pick_input_size(teacher)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    if policy is None:
        policy = _policy_for(cheapconv.plan(teacher, "G(4)", input_size=size))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        student = cheapconv.cheapen(teacher, policy, input_size=size)
    assert student.cheapconv_plan.replaced, f"{name}: {policy} replaced nothing"
    x = torch.randn(2, *size)

    with eval_mode(teacher), eval_mode(student), torch.no_grad():
        assert coverage._shape_of(student(x)) == coverage._shape_of(teacher(x))

    student.train()
    _out(student(x)).square().mean().backward()
    grads = [p.grad for p in student.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    student.zero_grad(set_to_none=True)

    assert cheapconv.count_params(student) < cheapconv.count_params(teacher)

    after = teacher.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)

    path = tmp_path / "student.pt"
    kind = cheapconv.save(student, path)
    if storage is not None:
        assert kind == storage
    loaded = cheapconv.load(path, trust=kind == "pickle")
    with eval_mode(student), torch.no_grad():
        torch.testing.assert_close(_out(loaded(x)), _out(student(x)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,policy,storage", FAST)
def test_zoo_fast(name, policy, storage, tmp_path):
    check_model(name, tmp_path, policy, storage)


def _zoo():
    try:
        return coverage.all_models()
    except ImportError:
        return []


@pytest.mark.slow
@pytest.mark.parametrize("name", _zoo())
def test_zoo_full(name, tmp_path):
    check_model(name, tmp_path)
