"""Profiles: exact params/MACs against the spec's fixtures, sane measured latency and memory, per-block
timing of students against the layers they replaced, and the profile/compare commands."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cheapconv
from cheapconv.formatting import render_plain
from cheapconv.measure import (
    BlockTiming,
    Latency,
    block_timings,
    blocks_table,
    evaluate_accuracy,
    measure_side_by_side,
    peak_memory,
    profile_many,
)
from cheapconv.measure.chain import Chain, node_steps
from cheapconv.models import WideResNet
from cheapconv.models.inputs import input_shape_of, resolve_input_size
from cheapconv.threads import limited_threads
from cheapconv_cli.main import main

FAST = dict(warmup=0, repeats=1, batch=1, memory=False)


@pytest.fixture(scope="module")
def wrn40():
    return WideResNet(40, 2)


def test_profile_fields_reproduce_the_spec_fixtures(wrn40):
    student = cheapconv.cheapen(wrn40, "G(4)")
    t, s = profile_many([wrn40, student], (3, 32, 32), names=["wrn_40_2", "G(4)"], **FAST)
    assert (t.params_paper, t.params_trainable) == (2_248_954, 2_243_546)
    assert round(t.macs / 1e6, 1) == 327.6
    assert t.macs == cheapconv.count_macs(wrn40, (1, 3, 32, 32))
    assert s.params_paper == 825_210
    assert s.macs == cheapconv.count_macs(student, (1, 3, 32, 32)) < t.macs
    # per-layer costs add up to the model's MACs, and cover every conv and the classifier
    assert sum(layer.macs for layer in t.layers) == t.macs
    assert {layer.name for layer in t.layers} >= {"conv1", "block1.0.conv1", "fc"}
    assert sum(layer.params for layer in t.layers) < t.params_trainable  # BN parameters are not conv/linear


@pytest.mark.parametrize("spec,params", [("B(2)", 437_242), ("BG(2,M)", 152_986)])
def test_profile_fields_of_block_level_students(wrn40, spec, params):
    student = cheapconv.cheapen(wrn40, spec)
    (p,) = profile_many([student], **FAST)
    assert p.params_paper == params and p.macs == cheapconv.count_macs(student, (1, 3, 32, 32))


def test_profile_measures_sane_latency_and_memory():
    model = WideResNet(10, 1)
    p = cheapconv.profile(model, (3, 32, 32), batch=4, warmup=1, repeats=3, per_layer=False)
    assert p.batches == [1, 4]
    for b, lat in p.latency.items():
        assert isinstance(lat, Latency) and lat.batch == b and lat.repeats == 3
        assert 0 < lat.min_ms <= lat.median_ms and lat.q1_ms <= lat.median_ms <= lat.q3_ms
        assert lat.threads == 1 and lat.dtype == "float32" and lat.device == "cpu"
    # the first conv's output alone (16×32×32 floats per image) is live at some point of the forward
    assert p.peak_memory[1] >= 16 * 32 * 32 * 4
    assert p.peak_memory[4] > p.peak_memory[1]
    assert p.weight_bytes == 4 * p.params_paper + 8 * 7  # fp32 tensors + 7 BNs' int64 batch counters
    text = render_plain(p.table())
    assert "params (paper)" in text and "latency, batch 4" in text and "threads" in text


def test_peak_memory_counts_a_single_convs_output():
    conv = nn.Conv2d(3, 16, 3, padding=1, bias=False)
    assert peak_memory(conv, (1, 3, 32, 32)) >= 16 * 32 * 32 * 4


def test_measuring_never_moves_or_modifies_the_model():
    model = WideResNet(10, 1).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    (lat,) = measure_side_by_side([model], (2, 3, 32, 32), dtype="bf16", channels_last=True, warmup=1,
                                  repeats=2)
    assert lat.dtype == "bfloat16" and lat.channels_last and lat.median_ms > 0
    assert model.training and all(m.training for m in model.modules())
    assert model.conv1.weight.is_contiguous()  # not converted to channels_last in place
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_model_that_cannot_take_the_input_is_a_usage_error():
    with pytest.raises(cheapconv.UsageError, match="Model 2 .*cannot run on an input of shape"):
        measure_side_by_side([WideResNet(10, 1), WideResNet(10, 1, in_chans=1)], (1, 3, 32, 32), repeats=1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_profile_on_cuda_uses_the_gpu():
    p = cheapconv.profile(WideResNet(10, 1), (3, 32, 32), device="cuda", batch=4, warmup=1, repeats=3)
    assert all(lat.device.startswith("cuda") and lat.median_ms > 0 for lat in p.latency.values())
    assert p.peak_memory[4] > 0
    assert next(WideResNet(10, 1).parameters()).device.type == "cpu"


def test_side_by_side_returns_one_latency_per_model_in_order():
    small, big = WideResNet(10, 1), WideResNet(10, 4)
    lat = measure_side_by_side([small, big], (8, 3, 32, 32), warmup=1, repeats=5)
    assert [x.batch for x in lat] == [8, 8]
    assert lat[0].median_ms < lat[1].median_ms  # 16× the MACs: order must not be mixed up


@pytest.mark.parametrize("spec", ["G(2)", "B(2)"])
def test_block_timings_compare_each_replaced_layer_with_the_original(spec):
    teacher = cheapconv.create_model("wrn_10_1")
    student = cheapconv.cheapen(teacher, spec)
    notes: list[str] = []
    timings = block_timings(student, teacher, batches=(1, 2), warmup=0, repeats=2, notes=notes)
    assert notes == []
    assert [t.layer for t in timings] == [e.layer for e in student.cheapconv_plan.replaced]
    for t in timings:
        assert set(t.before) == set(t.after) == {1, 2}
        assert t.speedup(1) > 0 and t.macs_after < t.macs_before
        assert t.slower() == any(t.verdict(b) == "slower" for b in (1, 2))
    # the first replaced layer of WRN-10-1 reads the stem's 16×32×32 output
    assert timings[0].input_shape == (16, 32, 32)


def test_block_timings_rebuild_the_teacher_from_the_recipe_and_skip_non_students():
    student = cheapconv.cheapen(cheapconv.create_model("wrn_10_1"), "G(2)")
    assert len(block_timings(student, warmup=0, repeats=1)) == len(student.cheapconv_plan.replaced)
    notes: list[str] = []
    assert block_timings(WideResNet(10, 1), notes=notes) == [] and "not a student" in notes[0]


def _lat(ms: float) -> Latency:
    return Latency(ms, ms, ms, ms, 1, 1, "cpu", "float32", False, 1)


def test_slower_blocks_are_flagged():
    slow = BlockTiming("a", "G(4)", (16, 8, 8), 10, 5, 100, 50, {1: _lat(1.0)}, {1: _lat(2.0)})
    same = BlockTiming("b", "G(4)", (16, 8, 8), 10, 5, 100, 50, {1: _lat(1.0)}, {1: _lat(1.02)})
    fast = BlockTiming("c", "G(4)", (16, 8, 8), 10, 5, 100, 50, {1: _lat(2.0)}, {1: _lat(1.0)})
    assert [b.verdict(1) for b in (slow, same, fast)] == ["slower", "same", "faster"]
    assert [b.slower() for b in (slow, same, fast)] == [True, False, False]
    rows = render_plain(blocks_table([slow, same, fast])).splitlines()
    assert [("SLOWER" in r) for r in rows if r.startswith("│ ")] == [True, False, False]


class _ConvActConv(nn.Module):
    """conv -> leaky ReLU (slope 0.5) -> clamp(max=0.25) -> conv: the ops between take arguments of their own."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.b(torch.nn.functional.leaky_relu(self.a(x), 0.5).clamp(max=0.25))


def test_a_chain_of_graph_nodes_keeps_each_nodes_arguments():
    gm = torch.fx.symbolic_trace(_ConvActConv())
    between = [n for n in gm.graph.nodes if n.op in ("call_function", "call_method")]
    chain = Chain([gm.a, *node_steps(gm, between), gm.b])
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(chain(x), gm(x))
        # the profiler's former copy called each node on the tensor alone: leaky_relu at its default slope,
        # and clamp() with no bound at all, which torch refuses
        y = torch.nn.functional.leaky_relu(gm.a(x))
        assert not torch.equal(y, torch.nn.functional.leaky_relu(gm.a(x), 0.5))
        with pytest.raises(RuntimeError):
            y.clamp()


def test_input_shape_precedence_explicit_then_recipe_then_native():
    plain = WideResNet(10, 1)
    student = WideResNet(10, 1)
    student.cheapconv_recipe = {"input_size": [3, 40, 40]}
    assert input_shape_of(plain) == (3, 32, 32)
    assert input_shape_of(student) == (3, 40, 40)
    assert input_shape_of(student, (8, 3, 24, 24)) == (3, 24, 24)  # a leading batch dimension is dropped
    assert resolve_input_size(student) == (3, 32, 32)  # the recipe step only where asked for
    assert resolve_input_size(student, recipe=True) == (3, 40, 40)
    with pytest.raises(cheapconv.UsageError, match="C, H, W"):
        input_shape_of(plain, (3, 32))


def test_limited_threads_restores_the_count_also_on_errors():
    before = torch.get_num_threads()
    with pytest.raises(ValueError), limited_threads(2):
        assert torch.get_num_threads() == 2
        raise ValueError
    assert torch.get_num_threads() == before
    with limited_threads(None):
        assert torch.get_num_threads() == before


def test_evaluate_accuracy_on_synthetic_data():
    acc = evaluate_accuracy(WideResNet(10, 1), "synthetic", limit=32)
    assert 0.0 <= acc <= 1.0


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_compare_command_prints_ratios_against_the_first(capsys):
    code, out, err = run(capsys, "compare", "wrn_10_1", "wrn_10_2", "--batch", "2", "--repeats", "1",
                         "--warmup", "0", "--data", "synthetic", "--limit", "16")
    assert code == 0, err
    assert "rel." in out and "wrn_10_1" in out and "wrn_10_2" in out and "top-1" in out
    row = next(line for line in out.splitlines() if "│ wrn_10_1 " in line)
    assert row.count("1.00") >= 2  # the first model's own ratios


def test_profile_command_with_per_block_table(tmp_path, capsys):
    student = tmp_path / "s.pt"
    cheapconv.save(cheapconv.cheapen(cheapconv.create_model("wrn_10_1"), "G(2)"), student)
    code, out, err = run(capsys, "profile", str(student), "--batch", "2", "--repeats", "1", "--warmup", "0",
                         "--json", str(tmp_path / "p.json"))
    assert code == 0, err
    assert "MACs per image" in out and "speed-up b2" in out and "block1.0.conv1" in out
    assert (tmp_path / "p.json").exists()


@pytest.mark.parametrize("argv,fragment", [
    (["compare", "wrn_10_1"], "at least two"),
    (["profile", "wrn_10_1", "--dtype", "int3"], "Unknown dtype"),
    (["profile", "wrn_10_1", "--input-size", "3,32"], "C,H,W"),
    (["compare", "wrn_10_1", "wrn_10_2", "--json", "/nonexistent/p.json"], "does not exist"),
])
def test_usage_errors_exit_2(capsys, argv, fragment):
    code, out, err = run(capsys, *argv)
    assert code == 2 and fragment in err and "Traceback" not in err
