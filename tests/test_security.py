"""Crafted files: every known technique is refused at load, and fuzzed descriptions never run code.

A cheapconv file is "safe to load": no code from the file runs, it cannot change the loading process's
global state, and it cannot make us allocate much more than it brings. Each technique below was used by a
red-team against wave 1; each must fail with FileFormatError (exit 2 on the command line), leave no trace
(the marker file the payload would create), and be refused before any forward runs.
"""

from __future__ import annotations

import copy
import json
import random
import time

import pytest
import torch
from torch import nn

import cheapconv
from cheapconv.errors import FileFormatError
from cheapconv.store import graph_codec


class TinyNet(nn.Module):
    """Every node kind a real student has: get_attr, call_method, getattr, getitem, functions, modules."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.scale = nn.Parameter(torch.ones(1, 8, 1, 1))
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv1(x)))
        y = self.conv2(y) * self.scale + y
        n = y.shape[0]
        y = nn.functional.adaptive_avg_pool2d(y, 1).view(n, -1)
        return self.fc(y)


@pytest.fixture(scope="module")
def good_file(tmp_path_factory):
    torch.manual_seed(0)
    student = cheapconv.cheapen(TinyNet().eval(), "G(2)", input_size=(3, 16, 16)).eval()
    path = tmp_path_factory.mktemp("good") / "s.pt"
    assert cheapconv.save(student, path) == "graph"
    return path


def _payload(path):
    return torch.load(path, weights_only=True)


def _write(payload, path, arch=None, recipe=None):
    payload = dict(payload)
    if arch is not None:
        payload["architecture"] = json.dumps(arch)
    if recipe is not None:
        payload["recipe_json"] = json.dumps(recipe)
    torch.save(payload, path)
    return path


def _global_state():
    return (torch.get_default_dtype(), torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())


MARKER = "/tmp/cheapconv-pwned-marker"
EVIL = f"__import__('os').system('touch {MARKER}')"


def _first(arch, op):
    return next(n for n in arch["nodes"] if n["op"] == op)


def _add_node(arch, node, before_output=True):
    at = len(arch["nodes"]) - 1 if before_output else len(arch["nodes"])
    arch["nodes"].insert(at, node)


def _input_name(arch):
    return _first(arch, "placeholder")["name"]


# --- one case per technique: (id, function mutating (arch, recipe)) ---------------------------------------------
def _placeholder_target(arch, recipe):
    _first(arch, "placeholder")["target"] = f"x={EVIL}"


def _node_name(arch, recipe):
    _first(arch, "call_module")["name"] = f"y; {EVIL}"


def _kwargs_key(arch, recipe):
    node = _first(arch, "call_function")
    node["kwargs"] = {"dict": [[f"inplace={EVIL} or False", False]]}


def _args_dict_key(arch, recipe):
    node = _first(arch, "call_function")
    node["args"] = {"tuple": [{"node": _input_name(arch)}, {"dict": [[EVIL, 1]]}]}


def _getattr_dunder(arch, recipe):
    x = _input_name(arch)
    for i, attr in enumerate(("__class__", "__reduce_ex__", "__globals__")):
        _add_node(arch, {"name": f"g{i}", "op": "call_function", "target": "builtins.getattr",
                         "args": {"tuple": [{"node": x}, attr]}, "kwargs": {"dict": []}})


def _getattr_default(arch, recipe):
    _add_node(arch, {"name": "g", "op": "call_function", "target": "builtins.getattr",
                     "args": {"tuple": [{"node": _input_name(arch)}, "shape", None]}, "kwargs": {"dict": []}})


def _getitem_builtins(arch, recipe):
    _add_node(arch, {"name": "g", "op": "call_function", "target": "operator.getitem",
                     "args": {"tuple": ["__builtins__", "eval"]}, "kwargs": {"dict": []}})


def _operator_call(arch, recipe):
    _add_node(arch, {"name": "g", "op": "call_function", "target": "operator.call",
                     "args": {"tuple": [{"node": _input_name(arch)}]}, "kwargs": {"dict": []}})


def _fork(arch, recipe):
    _first(arch, "call_function")["target"] = "torch.fork"


def _from_file(arch, recipe):
    _add_node(arch, {"name": "g", "op": "call_function", "target": "torch.from_file",
                     "args": {"tuple": [MARKER, True, {"node": _input_name(arch)}]}, "kwargs": {"dict": []}})


def _set_default_dtype(arch, recipe):
    _add_node(arch, {"name": "g", "op": "call_function", "target": "torch.set_default_dtype",
                     "args": {"tuple": [{"dtype": "float64"}]}, "kwargs": {"dict": []}})


def _set_num_threads(arch, recipe):
    _first(arch, "call_function")["target"] = "torch.set_num_threads"


@pytest.mark.parametrize("target", ["os.system", "builtins.eval", "builtins.exec", "torch.load", "torch.hub.load",
                                    "subprocess.Popen", "importlib.import_module", "torch._C._set_grad_enabled",
                                    "torch.ops.aten.add", "torch.save", "torch.manual_seed", "torch.compile",
                                    "torch.vmap", "torch.jit.script", "operator.methodcaller", "operator.attrgetter",
                                    "torch.zeros", "torch.empty", "torch.use_deterministic_algorithms",
                                    "math.__loader__", "torch.__builtins__", "operator.setitem", "operator.delitem"])
def test_forbidden_function_targets(good_file, tmp_path, target):
    payload = _payload(good_file)
    arch = json.loads(payload["architecture"])
    _first(arch, "call_function")["target"] = target
    with pytest.raises(FileFormatError, match="refuses to build"):
        cheapconv.load(_write(payload, tmp_path / "evil.pt", arch))


def _method_apply(arch, recipe):
    node = _first(arch, "call_method") if any(n["op"] == "call_method" for n in arch["nodes"]) else None
    _add_node(arch, {"name": "g", "op": "call_method", "target": "apply_",
                     "args": {"tuple": [{"node": _input_name(arch)}, "print"]}, "kwargs": {"dict": []}})
    if node:
        node["target"] = "register_hook"


def _method_dunder(arch, recipe):
    _add_node(arch, {"name": "g", "op": "call_method", "target": "__reduce_ex__",
                     "args": {"tuple": [{"node": _input_name(arch)}, 2]}, "kwargs": {"dict": []}})


def _get_attr_outside(arch, recipe):
    _add_node(arch, {"name": "g", "op": "get_attr", "target": "_modules", "args": {"tuple": []},
                     "kwargs": {"dict": []}})


def _call_module_outside(arch, recipe):
    _first(arch, "call_module")["target"] = "__class__"


def _module_type(arch, recipe):
    name = next(iter(arch["modules"]))
    arch["modules"][name] = {"type": "os.system", "args": {}}


def _module_arg_key(arch, recipe):
    name = next(iter(arch["modules"]))
    arch["modules"][name]["args"][f"x={EVIL}"] = 1


def _huge_conv(arch, recipe):
    name = next(n for n, s in arch["modules"].items() if s["type"] == "torch.nn.Conv2d")
    arch["modules"][name]["args"].update(in_channels=100_000, out_channels=100_000)


def _acdc_factor_loop(arch, recipe):
    arch["modules"]["spin"] = {"type": "cheapconv.ACDCPointwise",
                               "args": {"in_channels": 3, "out_channels": 3, "factors": 10**7}}
    _add_node(arch, {"name": "spin", "op": "call_module", "target": "spin",
                     "args": {"tuple": [{"node": _input_name(arch)}]}, "kwargs": {"dict": []}})


def _acdc_wide(arch, recipe):
    arch["modules"]["wide"] = {"type": "cheapconv.ACDCPointwise",
                               "args": {"in_channels": 10**9, "out_channels": 3, "factors": 1}}


def _tensor_train_rank_bomb(arch, recipe):
    # ranks that would allocate 2**36 core values for a 3-channel layer: refused by the allocation budget
    arch["modules"]["tt"] = {"type": "cheapconv.TensorTrainPointwise",
                             "args": {"in_channels": 3, "out_channels": 3, "shape": [1, 3, 3], "ranks": [2**18, 2**18]}}
    _add_node(arch, {"name": "tt", "op": "call_module", "target": "tt",
                     "args": {"tuple": [{"node": _input_name(arch)}]}, "kwargs": {"dict": []}})


def _tucker_shape_mismatch(arch, recipe):
    arch["modules"]["tk"] = {"type": "cheapconv.TuckerPointwise",
                             "args": {"in_channels": 3, "out_channels": 3, "shape": [2**13, 2**13, 2**13],
                                      "ranks": [1, 1, 1]}}


def _huge_attr(arch, recipe):
    name = next(iter(arch["attrs"]))
    arch["attrs"][name]["shape"] = [2**30, 2**30]


def _upsample_bomb(arch, recipe):
    arch["modules"]["bomb"] = {"type": "torch.nn.Upsample", "args": {"scale_factor": 100_000.0}}
    _add_node(arch, {"name": "bomb", "op": "call_module", "target": "bomb",
                     "args": {"tuple": [{"node": _input_name(arch)}]}, "kwargs": {"dict": []}})


def _interpolate_bomb(arch, recipe):
    _add_node(arch, {"name": "bomb", "op": "call_function", "target": "torch.nn.functional.interpolate",
                     "args": {"tuple": [{"node": _input_name(arch)}]},
                     "kwargs": {"dict": [["scale_factor", 50_000.0]]}})


def _string_multiplication(arch, recipe):
    x = _input_name(arch)
    _add_node(arch, {"name": "s0", "op": "call_function", "target": "builtins.getattr",
                     "args": {"tuple": [{"node": x}, "ndim"]}, "kwargs": {"dict": []}})
    _add_node(arch, {"name": "s1", "op": "call_function", "target": "operator.mul",
                     "args": {"tuple": [{"node": "s0"}, "a" * 999]}, "kwargs": {"dict": []}})


def _integer_squaring(arch, recipe):
    x = _input_name(arch)
    _add_node(arch, {"name": "q0", "op": "call_function", "target": "builtins.getattr",
                     "args": {"tuple": [{"node": x}, "ndim"]}, "kwargs": {"dict": []}})
    for i in range(1, 40):
        _add_node(arch, {"name": f"q{i}", "op": "call_function", "target": "operator.mul",
                         "args": {"tuple": [{"node": f"q{i - 1}"}, {"node": f"q{i - 1}"}]}, "kwargs": {"dict": []}})


def _integer_power(arch, recipe):
    _add_node(arch, {"name": "p0", "op": "call_function", "target": "builtins.getattr",
                     "args": {"tuple": [{"node": _input_name(arch)}, "ndim"]}, "kwargs": {"dict": []}})
    _add_node(arch, {"name": "p1", "op": "call_function", "target": "operator.pow",
                     "args": {"tuple": [{"node": "p0"}, 10**9]}, "kwargs": {"dict": []}})


def _constant_only_call(arch, recipe):
    _add_node(arch, {"name": "c", "op": "call_function", "target": "operator.mul",
                     "args": {"tuple": ["a", 10**12]}, "kwargs": {"dict": []}})


def _forward_reference(arch, recipe):
    _first(arch, "call_module")["args"] = {"tuple": [{"node": "not_yet_defined"}]}


def _deep_nesting(arch, recipe):
    deep: object = 1
    for _ in range(200):  # json.loads copes; the codec's depth limit refuses it
        deep = [deep]
    _first(arch, "call_function")["kwargs"] = {"dict": [["k", deep]]}


def test_json_too_deep_to_parse(good_file, tmp_path):
    payload = _payload(good_file)
    payload["architecture"] = "[" * 100_000 + "]" * 100_000
    torch.save(payload, tmp_path / "deep.pt")
    with pytest.raises(FileFormatError):
        cheapconv.load(tmp_path / "deep.pt")


def _format_version(arch, recipe):
    arch["format"] = 99


def _no_input_size(arch, recipe):
    arch.pop("input_size")
    recipe.pop("input_size", None)


CASES = [_placeholder_target, _node_name, _kwargs_key, _args_dict_key, _getattr_dunder, _getattr_default,
         _getitem_builtins, _operator_call, _fork, _from_file, _set_default_dtype, _set_num_threads, _method_apply,
         _method_dunder, _get_attr_outside, _call_module_outside, _module_type, _module_arg_key, _huge_conv,
         _huge_attr, _acdc_factor_loop, _acdc_wide, _tensor_train_rank_bomb, _tucker_shape_mismatch,
         _upsample_bomb, _interpolate_bomb, _string_multiplication, _integer_squaring, _integer_power,
         _constant_only_call, _forward_reference, _deep_nesting, _format_version, _no_input_size]


@pytest.mark.parametrize("technique", CASES, ids=[c.__name__.strip("_") for c in CASES])
def test_each_technique_is_refused_at_load(good_file, tmp_path, technique):
    payload = _payload(good_file)
    arch, recipe = json.loads(payload["architecture"]), json.loads(payload["recipe_json"])
    technique(arch, recipe)
    path = _write(payload, tmp_path / "evil.pt", arch, recipe)
    before = _global_state()
    start = time.perf_counter()
    with pytest.raises(FileFormatError):
        model = cheapconv.load(path)
        model(torch.randn(1, 3, 16, 16))  # never reached: a forward would run the payload
    assert time.perf_counter() - start < 20
    assert _global_state() == before
    assert not _marker_exists()


def _marker_exists():
    import os

    return os.path.exists(MARKER)


# --- recipe-kind files: the source and its arguments -----------------------------------------------------------
@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory):
    student = cheapconv.cheapen(cheapconv.create_model("wrn_10_1"), "G(2)")
    path = tmp_path_factory.mktemp("recipe") / "r.pt"
    payload = {"format": "cheapconv", "format_version": 1, "architecture": None,
               "state_dict": {k: v.detach() for k, v in student.state_dict().items()},
               "recipe_json": json.dumps({**student.cheapconv_recipe, "storage": "recipe"})}
    torch.save(payload, path)
    assert cheapconv.load(path) is not None  # the honest recipe loads
    return path


@pytest.mark.parametrize("change", [
    {"source": "wrn_16_1000"},                                # 170 billion parameters
    {"source": "wrn_16_1000", "policy": None},
    {"source": "/etc/passwd"},
    {"source": "../../evil.pt"},
    {"source_kwargs": {"pretrained": True}},                  # network, other files
    {"source_kwargs": {"pretrained": "/etc/passwd"}},
    {"source_kwargs": {"checkpoint_path": "/tmp/x.pth"}},
    {"source_kwargs": {"num_classes": 10**9}},
    {"input_size": [3, 100_000, 100_000]},
    {"policy": "LR(1000000)"},
    {"leaf_modules": [EVIL]},
])
def test_crafted_recipes_are_refused_quickly(recipe_file, tmp_path, change):
    payload = _payload(recipe_file)
    recipe = {**json.loads(payload["recipe_json"]), **change}
    path = _write(payload, tmp_path / "evil.pt", recipe=recipe)
    start = time.perf_counter()
    with pytest.raises(cheapconv.UsageError):
        cheapconv.load(path)
    assert time.perf_counter() - start < 20


def test_profile_does_not_build_a_crafted_teacher(good_file, tmp_path):
    from cheapconv.store.rebuild import teacher_from_recipe

    with pytest.raises(FileFormatError):
        teacher_from_recipe({"source": "wrn_16_1000"})
    with pytest.raises(FileFormatError):
        teacher_from_recipe({"source": str(good_file)})


# --- fuzzing: mutate every string, number and structure of a good description -----------------------------------
_EVIL_VALUES = [EVIL, "os.system", "__class__", "x.__globals__", "", "a" * 5000, 10**12, -1, 2**62, 1e308,
                None, True, [], {}, {"node": "nope"}, {"dict": [[EVIL, 1]]}, {"tuple": [EVIL]}, [[[[[1]]]]]]


def _leaves(obj, path=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _leaves(v, (*path, i))
    if path:
        yield path


def _set(obj, path, value):
    for p in path[:-1]:
        obj = obj[p]
    obj[path[-1]] = value


def _try_build(desc, x):
    """Build and run a (mutated) description: either refused, or a model that runs like any other."""
    try:
        model = graph_codec.build_graph_module(desc, max_bytes=2**24)
    except graph_codec.NotDescribable:
        return "refused"
    try:
        model(x)
    except Exception:  # noqa: BLE001 - a wrong but harmless graph may fail like any wrong model
        return "fails"
    return "runs"


def test_fuzzed_descriptions_never_run_code_or_change_state(good_file):
    arch = json.loads(_payload(good_file)["architecture"])
    x = torch.randn(1, 3, 16, 16)
    assert _try_build(arch, x) == "runs"
    rng = random.Random(0)
    paths = list(_leaves(arch))
    before = _global_state()
    outcomes = {"refused": 0, "fails": 0, "runs": 0}
    start = time.perf_counter()
    cases = [(p, v) for p in paths for v in _EVIL_VALUES]
    rng.shuffle(cases)
    for path, value in cases[:1500]:
        mutated = copy.deepcopy(arch)
        _set(mutated, path, value)
        outcomes[_try_build(mutated, x)] += 1
    # structural mutations: drop, duplicate and reorder nodes; drop keys
    for _ in range(200):
        mutated = copy.deepcopy(arch)
        nodes = mutated["nodes"]
        i, j = rng.randrange(len(nodes)), rng.randrange(len(nodes))
        choice = rng.randrange(4)
        if choice == 0:
            del nodes[i]
        elif choice == 1:
            nodes.insert(j, copy.deepcopy(nodes[i]))
        elif choice == 2:
            nodes[i], nodes[j] = nodes[j], nodes[i]
        else:
            key = rng.choice(["name", "op", "target", "args", "kwargs"])
            nodes[i].pop(key)
        outcomes[_try_build(mutated, x)] += 1
    assert _global_state() == before
    assert not _marker_exists()
    assert outcomes["refused"] > 1000, outcomes  # most mutations break the vocabulary and are refused
    assert time.perf_counter() - start < 45


def test_fuzzed_files_fail_cleanly(good_file, tmp_path):
    """Whole-file mutations go through cheapconv.load: a FileFormatError (or a model), never another error."""
    payload = _payload(good_file)
    recipe = json.loads(payload["recipe_json"])
    rng = random.Random(1)
    paths = list(_leaves(recipe))
    for path in rng.sample(paths, min(40, len(paths))):
        mutated = copy.deepcopy(recipe)
        _set(mutated, path, rng.choice(_EVIL_VALUES))
        target = _write(payload, tmp_path / "m.pt", recipe=mutated)
        try:
            cheapconv.load(target)
        except cheapconv.UsageError:
            pass
    assert not _marker_exists()


def test_saved_graphs_record_their_input_size_and_still_load(good_file):
    arch = json.loads(_payload(good_file)["architecture"])
    assert arch["format"] == graph_codec.FORMAT and arch["input_size"] == [3, 16, 16]
    model = cheapconv.load(good_file)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 4)


def test_wave_one_descriptions_still_load_with_the_recipes_input_size(good_file, tmp_path):
    payload = _payload(good_file)
    arch = json.loads(payload["architecture"])
    arch["format"] = 1
    arch.pop("input_size")
    path = _write(payload, tmp_path / "old.pt", arch)
    a, b = cheapconv.load(path), cheapconv.load(good_file)
    x = torch.randn(1, 3, 16, 16)
    assert torch.equal(a(x), b(x))
