"""Saving and loading: self-describing files, no code execution on load, atomic writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from torch import nn

import cheapconv
from cheapconv.errors import FileFormatError, UntrustedFileError, UsageError


def test_round_trip_graph_kind(tmp_path, wrn16):
    student = cheapconv.cheapen(wrn16, "block3.*=BG(2,M/4); G(4)").eval()
    path = tmp_path / "s.pt"
    assert cheapconv.save(student, path) == "graph"
    loaded = cheapconv.load(path)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), student(x))
    assert loaded.cheapconv_stages == ["block1", "block2", "block3"]
    recipe = cheapconv.read_recipe(path)
    assert recipe["policy"] == "block3.*=BG(2,M/4); G(4)" and recipe["storage"] == "graph"
    assert recipe["versions"]["torch"] == torch.__version__
    assert recipe["plan"]["totals"]["paper_after"] == cheapconv.count_params(student, "paper")
    # the file is plain data: readable with weights_only=True
    torch.load(path, weights_only=True)


def test_loaded_student_can_be_cheapened_again(tmp_path, wrn16):
    path = tmp_path / "t.pt"
    cheapconv.save(cheapconv.cheapen(wrn16, "S"), path)
    again = cheapconv.cheapen(cheapconv.load(path), "G(4)")
    assert cheapconv.count_params(again, "paper") < cheapconv.count_params(wrn16, "paper")


MODEL_SOURCE = textwrap.dedent("""
    import torch
    from torch import nn

    class PrivateNet(nn.Module):  # a user's own CNN, importable only from its own folder
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
            self.block = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16),
                                       nn.ReLU(), nn.Conv2d(16, 16, 3, stride=2, padding=1, bias=False))
            self.fc = nn.Linear(16, 5)

        def forward(self, x):
            x = torch.relu(self.conv1(x))
            x = self.block(x) + x[:, :, ::2, ::2]
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))
""")


def _run(code: str, cwd, env_path: str | None = None) -> str:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if env_path:
        env["PYTHONPATH"] = env_path
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_round_trip_in_a_fresh_process_without_the_teachers_class(tmp_path):
    src = tmp_path / "usercode"
    src.mkdir()
    (src / "private_net.py").write_text(MODEL_SOURCE)
    work = tmp_path / "work"
    work.mkdir()
    _run(textwrap.dedent("""
        import torch, cheapconv
        from private_net import PrivateNet
        torch.manual_seed(0)
        student = cheapconv.cheapen(PrivateNet(), "G(4)", input_size=(3, 16, 16)).eval()
        x = torch.randn(2, 3, 16, 16)
        torch.save({"x": x, "y": student(x)}, "expected.pt")
        print(cheapconv.save(student, "student.pt"))
    """), cwd=work, env_path=str(src))
    out = _run(textwrap.dedent("""
        import importlib.util, torch, cheapconv
        assert importlib.util.find_spec("private_net") is None
        student = cheapconv.load("student.pt")
        expected = torch.load("expected.pt", weights_only=True)
        assert torch.equal(student(expected["x"]), expected["y"])
        print("ok", type(student).__name__)
    """), cwd=work)
    assert out.startswith("ok")


class Custom(nn.Module):
    """A leaf with no data-only description forces the pickle kind."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.gate = Gate()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)

    def forward(self, x):
        return self.conv2(self.gate(self.conv(x)))


class Gate(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


def test_untrusted_pickle_kind_is_refused(tmp_path):
    student = cheapconv.cheapen(Custom(), "conv2=G(2)", leaf_modules=[Gate], input_size=(3, 8, 8)).eval()
    path = tmp_path / "s.pt"
    with pytest.warns(UserWarning, match="saved as a pickle.*cannot be stored as data"):   # never silently
        assert cheapconv.save(student, path) == "pickle"
    with pytest.raises(UntrustedFileError, match="trust=True"):
        cheapconv.load(path)
    loaded = cheapconv.load(path, trust=True)
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(loaded(x), student(x))


def test_plain_pickled_model_is_refused_unless_trusted(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(nn.Sequential(nn.Conv2d(3, 4, 3)), path)
    with pytest.raises(UntrustedFileError, match="would run code from the file"):
        cheapconv.load(path)
    assert isinstance(cheapconv.load(path, trust=True), nn.Sequential)


def test_foreign_and_broken_files(tmp_path):
    state = tmp_path / "state.pt"
    torch.save(nn.Conv2d(3, 4, 3).state_dict(), state)
    with pytest.raises(FileFormatError, match="not a cheapconv model file"):
        cheapconv.load(state)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"definitely not a model")
    with pytest.raises(FileFormatError, match="Cannot read"):
        cheapconv.load(junk)
    with pytest.raises(UsageError, match="does not exist"):
        cheapconv.load(tmp_path / "missing.pt")


def test_crafted_graph_cannot_name_dangerous_functions(tmp_path, wrn16):
    path = tmp_path / "s.pt"
    cheapconv.save(cheapconv.cheapen(wrn16, "G(4)"), path)
    payload = torch.load(path, weights_only=True)
    arch = json.loads(payload["architecture"])
    node = next(n for n in arch["nodes"] if n["op"] == "call_function")
    for evil in ("os.system", "torch.load", "torch.hub.load", "builtins.eval", "subprocess.run"):
        node["target"] = evil
        payload["architecture"] = json.dumps(arch)
        torch.save(payload, path)
        with pytest.raises(FileFormatError, match="refuses to build"):
            cheapconv.load(path)


def test_failed_save_leaves_nothing_behind(tmp_path, wrn16, monkeypatch):
    path = tmp_path / "s.pt"

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        cheapconv.save(cheapconv.cheapen(wrn16, "G(4)"), path)
    assert list(tmp_path.iterdir()) == []


def test_save_into_a_missing_folder_fails_before_work(tmp_path, wrn16):
    with pytest.raises(UsageError, match="does not exist"):
        cheapconv.save(wrn16, tmp_path / "nope" / "s.pt")


def test_recipe_kind_rebuilds_zoo_models(tmp_path):
    pytest.importorskip("timm")
    from cheapconv.store.rebuild import rebuild_from_recipe

    teacher = cheapconv.create_model("timm:resnet18", num_classes=7)
    student = cheapconv.cheapen(teacher, "G(4)", input_size=(3, 64, 64))
    rebuilt = rebuild_from_recipe(student.cheapconv_recipe, expected=student.state_dict())
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
        {k: v.shape for k, v in student.state_dict().items()}


def test_a_loaded_student_can_be_cheapened_again_and_keeps_its_stages(tmp_path, wrn16):
    path = tmp_path / "s.pt"
    cheapconv.save(cheapconv.cheapen(wrn16, "G(4)"), path)
    again = cheapconv.cheapen(cheapconv.load(path), "block3.*=B(2)")
    assert again.cheapconv_plan.stages == ["block1", "block2", "block3"]
    with cheapconv.record(again) as acts:
        out = again(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and len(acts) == 3


def test_grayscale_wrn_cheapens_at_its_own_input_size():
    student = cheapconv.cheapen(cheapconv.create_model("wrn_16_2", in_chans=1), "G(4)")
    assert student(torch.randn(1, 1, 32, 32)).shape == (1, 10)


def test_a_loaded_graph_keeps_its_module_paths_so_named_stages_are_found(tmp_path):
    """A graph-format file records each node's module path: a loaded ERFNet (a hollow module tree, no Taps) and
    its loaded G(N) student are tapped at the paper's layers by name, with the same outputs as before saving."""
    from cheapconv.fx import module_path_of

    teacher = cheapconv.create_model("erfnet", num_classes=5, in_chans=1).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        student = cheapconv.cheapen(teacher, "G(N)").eval()
    x = torch.randn(1, 1, 32, 32)
    stages = ["layers.7", "layers.12", "layers.22"]
    for i, model in enumerate((teacher, student)):
        path = tmp_path / f"{i}.pt"
        assert cheapconv.save(model, path) == "graph"
        loaded = cheapconv.load(path).eval()
        if isinstance(model, torch.fx.GraphModule):
            assert [module_path_of(n) for n in loaded.graph.nodes] == [module_path_of(n) for n in model.graph.nodes]
        with torch.no_grad(), cheapconv.record(model, stages) as want, cheapconv.record(loaded, stages) as got:
            model(x)
            loaded(x)
        assert len(got) == len(want) == 3
        assert all(torch.allclose(g, w, atol=1e-5) for g, w in zip(got, want, strict=True))


@pytest.mark.parametrize("bad", [["layers.__class__"], "layers.7", [["layers"]], ["a"] * 65, ["os.system("]])
def test_a_crafted_module_path_is_refused(tmp_path, bad):
    path = tmp_path / "s.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cheapconv.save(cheapconv.cheapen(cheapconv.create_model("erfnet", num_classes=5, in_chans=1), "G(N)"), path)
    payload = torch.load(path, weights_only=True)
    arch = json.loads(payload["architecture"])
    next(n for n in arch["nodes"] if "path" in n)["path"] = bad
    payload["architecture"] = json.dumps(arch)
    torch.save(payload, path)
    with pytest.raises(FileFormatError):
        cheapconv.load(path)
