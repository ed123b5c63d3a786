"""Small crafted files for the bounded-work tests (issue 25, items 1-6), each written into a folder given.

Every maker takes the folder and returns the path of one file of a few kilobytes that, before the caps counted
real bytes and real work, made cheapconv allocate gigabytes or compute for minutes. ``good_file`` is the honest
graph file they are all made from (a tiny cheapened conv net checked at 3×16×16).
"""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

import cheapconv


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv1(x)))
        y = self.conv2(y) + y
        return self.fc(nn.functional.adaptive_avg_pool2d(y, 1).flatten(1))


def good_file(folder: Path) -> Path:
    torch.manual_seed(0)
    student = cheapconv.cheapen(TinyNet().eval(), "G(2)", input_size=(3, 16, 16)).eval()
    path = Path(folder) / "good.pt"
    assert cheapconv.save(student, path) == "graph"
    return path


def payload(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def write(folder: Path, name: str, data: dict, *, arch: dict | None = None, recipe: dict | None = None) -> Path:
    data = dict(data)
    if arch is not None:
        data["architecture"] = json.dumps(arch)
    if recipe is not None:
        data["recipe_json"] = json.dumps(recipe)
    path = Path(folder) / name
    torch.save(data, path)
    return path


def _parts(good: Path) -> tuple[dict, dict, dict]:
    data = payload(good)
    return data, json.loads(data["architecture"]), json.loads(data["recipe_json"])


def _input(arch: dict) -> str:
    return next(n["name"] for n in arch["nodes"] if n["op"] == "placeholder")


def _node(name: str, op: str, target: str, args: list, kwargs: list | None = None) -> dict:
    return {"name": name, "op": op, "target": target, "args": {"tuple": args}, "kwargs": {"dict": kwargs or []}}


def _before_output(arch: dict, *nodes: dict) -> None:
    for node in nodes:
        arch["nodes"].insert(len(arch["nodes"]) - 1, node)


# --- 1. tensors whose declared size is not in the file --------------------------------------------------------
def _with_tensor(folder: Path, good: Path, name: str, tensor: torch.Tensor) -> Path:
    data, _, _ = _parts(good)
    state = dict(data["state_dict"])
    state["fc.weight"] = tensor
    return write(folder, name, {**data, "state_dict": state})


def layout_files(folder: Path, good: Path) -> dict[str, Path]:
    """One file per layout a state dict must never hold, each in place of ``fc.weight``."""
    base = torch.arange(32, dtype=torch.float32)
    idx = torch.zeros(2, 1, dtype=torch.long)
    with warnings.catch_warnings():   # torch warns that these layouts are beta or deprecated: that is the point
        warnings.simplefilter("ignore")
        return _layout_files(folder, good, base, idx)


def _layout_files(folder: Path, good: Path, base: torch.Tensor, idx: torch.Tensor) -> dict[str, Path]:
    tensors = {
        "sparse": torch.sparse_coo_tensor(idx, torch.ones(1), (2**31, 2**31)),
        "sparse_csr": torch.eye(4).to_sparse_csr(),
        "meta": torch.empty(2**20, 2**20, device="meta"),
        "quantised": torch.quantize_per_tensor(torch.ones(4, 8), 0.1, 0, torch.qint8),
        "nested": torch.nested.nested_tensor([torch.ones(2), torch.ones(3)]),
        "stride0": torch.ones(1).expand(2**20, 2**20),
        "gaps": base[::2].reshape(4, 4),
    }
    return {k: _with_tensor(folder, good, f"layout_{k}.pt", t) for k, t in tensors.items()}


def overlapping_views(folder: Path, good: Path) -> Path:
    """Two different views of one storage that share bytes."""
    data, _, _ = _parts(good)
    base = torch.randn(40)
    state = dict(data["state_dict"])
    state["fc.weight"] = base[:32].view(4, 8)
    state["fc.bias"] = base[30:34]
    return write(folder, "overlap.pt", {**data, "state_dict": state})


def aliasing_views_and_unused_linear(folder: Path, good: Path, views: int = 2000) -> Path:
    """Thousands of names for one small tensor (declared: 64 MiB; real: 256 bytes) and a described 32768×32768
    Linear that no node calls."""
    data, arch, _ = _parts(good)
    state = dict(data["state_dict"])
    shared = torch.randn(64, 128)
    for i in range(views):
        state[f"pad{i}"] = shared
    arch["modules"]["unused"] = {"type": "torch.nn.Linear",
                                 "args": {"in_features": 32768, "out_features": 32768, "bias": False}}
    return write(folder, "aliasing.pt", {**data, "state_dict": state}, arch=arch)


def used_huge_linear_over_aliases(folder: Path, good: Path, views: int = 4000) -> Path:
    """A 128 MiB Linear that a node does call, its cap raised by aliasing views (declared 4 GiB, real 1 MiB)."""
    data, arch, _ = _parts(good)
    state = dict(data["state_dict"])
    shared = torch.randn(512, 512)
    for i in range(views):
        state[f"pad{i}"] = shared
    arch["modules"]["huge"] = {"type": "torch.nn.Linear",
                               "args": {"in_features": 16, "out_features": 2**21, "bias": False}}
    _before_output(arch, _node("huge", "call_module", "huge", [{"node": _input(arch)}]))
    return write(folder, "huge_linear.pt", {**data, "state_dict": state}, arch=arch)


# --- 2. zip structure -----------------------------------------------------------------------------------------
def rezipped(folder: Path, good: Path, name: str, *, deflate: str | None = None) -> Path:
    """``good`` with its records copied into a new archive; those whose name ends in ``deflate`` deflated."""
    out = Path(folder) / name
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            method = zipfile.ZIP_DEFLATED if deflate is not None and info.filename.endswith(deflate) \
                else zipfile.ZIP_STORED
            dst.writestr(info.filename, src.read(info.filename), compress_type=method)
    return out


def zip_bomb(folder: Path, good: Path, megabytes: int = 64) -> Path:
    """A deflated storage record that inflates to ``megabytes`` MiB (the issue's case used 3 GiB)."""
    data, _, _ = _parts(good)
    state = dict(data["state_dict"])
    state["bomb"] = torch.zeros(megabytes * 2**18)
    buf = io.BytesIO()
    torch.save({**data, "state_dict": state}, buf)
    plain = Path(folder) / "bomb_plain.pt"
    plain.write_bytes(buf.getvalue())
    out = Path(folder) / "bomb.pt"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename),
                         compress_type=zipfile.ZIP_DEFLATED if "/data/" in info.filename else zipfile.ZIP_STORED)
    plain.unlink()
    return out


def legacy_format(folder: Path, good: Path) -> Path:
    path = Path(folder) / "legacy.pt"
    torch.save(payload(good), path, _use_new_zipfile_serialization=False)
    return path


# --- 3. recipes -------------------------------------------------------------------------------------------------
def recipe_file(folder: Path, source: str, **kwargs) -> Path:
    """A recipe-kind file naming ``source`` with ``kwargs`` and the weights of a tiny conv net."""
    state = {k: v.detach() for k, v in TinyNet().state_dict().items()}
    recipe = {"source": source, "source_kwargs": kwargs, "storage": "recipe", "model": "X"}
    data = {"format": "cheapconv", "format_version": 1, "architecture": None, "state_dict": state,
            "recipe_json": json.dumps(recipe)}
    name = source.replace(":", "_") + "".join(f"_{k}{v}" for k, v in kwargs.items()) + ".pt"
    return write(folder, name, data)


def graph_with_source(folder: Path, good: Path, source: str, **kwargs) -> Path:
    """The good graph file whose recipe was edited to name a huge teacher (``profile`` rebuilds it)."""
    data, _, recipe = _parts(good)
    recipe.update(source=source, source_kwargs=kwargs)
    return write(folder, "edited_source.pt", data, recipe=recipe)


# --- 4-6. forward work ------------------------------------------------------------------------------------------
def interpolate_bomb(folder: Path, good: Path) -> Path:
    """interpolate to 13000×13000, .to(float64), mul: 8 GiB per value at batch 2."""
    data, arch, _ = _parts(good)
    x = _input(arch)
    _before_output(
        arch,
        _node("up", "call_function", "torch.nn.functional.interpolate", [{"node": x}],
              [["size", {"tuple": [13000, 13000]}]]),
        _node("up64", "call_method", "to", [{"node": "up"}, {"dtype": "float64"}]),
        _node("sq", "call_function", "operator.mul", [{"node": "up64"}, {"node": "up64"}]))
    return write(folder, "interpolate.pt", data, arch=arch)


def lrn_bomb(folder: Path, good: Path) -> Path:
    """LocalResponseNorm(size=2**21): its output has its input's shape, but it pads by ``size`` inside."""
    data, arch, _ = _parts(good)
    arch["modules"]["lrn"] = {"type": "torch.nn.LocalResponseNorm", "args": {"size": 2**21}}
    _before_output(arch, _node("lrn", "call_module", "lrn", [{"node": _input(arch)}]))
    return write(folder, "lrn.pt", data, arch=arch)


def matmul_chain(folder: Path, good: Path, n: int = 40, side: int = 4096) -> Path:
    """One element expanded to side×side (a stride-0 view: no memory), then ``n`` matrix products."""
    data, arch, _ = _parts(good)
    x = _input(arch)
    nodes = [_node("one", "call_method", "reshape", [{"node": x}, -1]),
             _node("e0", "call_function", "operator.getitem",
                   [{"node": "one"}, {"slice": [0, 1, None]}]),
             _node("m0", "call_method", "expand", [{"node": "e0"}, side, side])]
    for i in range(1, n + 1):
        nodes.append(_node(f"m{i}", "call_function", "torch.matmul", [{"node": f"m{i - 1}"}, {"node": "m0"}]))
    _before_output(arch, *nodes)
    return write(folder, "matmul.pt", data, arch=arch)
