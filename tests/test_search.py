"""BlockSwap search: budgets, exact cost tables, policies that cheapen applies exactly, seeds, the CLI."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

import cheapconv
from cheapconv.blockswap import (
    DEFAULT_CANDIDATES,
    Budget,
    Scorer,
    SearchSpace,
    fixed_minibatch,
    parse_budget,
    sample_configurations,
    search,
)
from cheapconv.blockswap.space import split_specs
from cheapconv.errors import UsageError
from cheapconv.surgery.policy import Policy

FEW = "S, G(2), G(N/4), B(2), BG(2,M/2)"


@pytest.fixture(scope="module")
def wrn16():
    return cheapconv.create_model("wrn_16_1")


@pytest.fixture(scope="module")
def space16(wrn16):
    return SearchSpace.of(wrn16)


@pytest.fixture(scope="module")
def result16(wrn16):
    return search(wrn16, "40%", samples=4, batch_size=8, spread_runs=2, top=2, seed=3)


# --- budgets ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,metric,expected", [
    ("300k", None, Budget(300_000, "params", False, "300k")),
    ("1.2M", None, Budget(1_200_000, "params", False, "1.2M")),
    ("40M", "macs", Budget(40_000_000, "macs", False, "40M")),
    ("5ms", None, Budget(5.0, "latency", False, "5ms")),
    ("500us", "latency", Budget(0.5, "latency", False, "500us")),
    ("25%", None, Budget(0.25, "params", True, "25%")),
    ("25%", "latency", Budget(0.25, "latency", True, "25%")),
    (12345, None, Budget(12345, "params", False, "12345")),
])
def test_budgets_parse(text, metric, expected):
    got = parse_budget(text, metric)
    assert got == expected
    assert got.target(1000.0) == (expected.value * 1000 if expected.relative else expected.value)


@pytest.mark.parametrize("text,metric,fragment", [
    ("5m", None, "M is million"), ("5ms", "params", "is a time"), ("300k", "latency", "time unit"),
    ("-3k", None, "Cannot read"), ("0", None, "positive"), ("lots", None, "Cannot read"),
    ("3k", "flops", "Unknown metric"),
])
def test_bad_budgets_are_usage_errors(text, metric, fragment):
    with pytest.raises(UsageError, match=fragment):
        parse_budget(text, metric)


def test_candidate_lists_split_at_top_level_commas():
    assert split_specs("S, G(4); BG(2,M/4) ,B(2)") == ["S", "G(4)", "BG(2,M/4)", "B(2)"]
    assert len(DEFAULT_CANDIDATES) == 23


# --- the space and its cost tables ------------------------------------------------------------------------
def test_space_finds_every_residual_block_and_excludes_what_cannot_fit(space16):
    assert [b.label for b in space16.blocks] == ["block1.0.conv1+conv2", "block1.1.conv1+conv2",
                                                 "block2.0.conv1+conv2", "block2.1.conv1+conv2",
                                                 "block3.0.conv1+conv2", "block3.1.conv1+conv2"]
    first = space16.blocks[0]       # 16 channels: M = 8 after B(2), so BG(2,16) cannot divide it
    assert "BG(2,16)" in first.excluded and "do not divide" in first.excluded["BG(2,16)"]
    assert len(first.candidates) == 22
    assert all(b.site(b.candidates[0]) == b.conv_b for b in space16.blocks)  # pre-activation: conv2's output
    bottleneck = next(c for c in first.candidates if c.text == "B(2)")
    assert first.site(bottleneck) == first.conv_a                                # the bottleneck's output
    # G(N/16) and G(N/8)... resolve per block: equal structures share a key
    third = space16.blocks[3]       # 32 channels: G(N/16) == G(2)
    keys = {c.text: c.key for c in third.candidates}
    assert keys["G(N/16)"] == keys["G(2)"] and keys["G(4)"] != keys["G(2)"]


def _random_configs(space, n, seed=0):
    rng = random.Random(seed)
    return [tuple(rng.randrange(len(b.candidates)) for b in space.blocks) for _ in range(n)]


def test_cost_tables_equal_the_counted_cheapened_model(wrn16, space16):
    configs = _random_configs(space16, 4) + [tuple(0 for _ in space16.blocks)]
    for config in configs:
        student = cheapconv.cheapen(wrn16, space16.policy(config))
        space16.check_plan(config, student.cheapconv_plan)   # every block took exactly its type
        assert cheapconv.count_params(student, "paper") == space16.cost(config, "paper")
        assert cheapconv.count_params(student, "trainable") == space16.cost(config, "params")
        assert cheapconv.count_macs(student, (1, 3, 32, 32)) == space16.cost(config, "macs")
    lo, hi = space16.cost_range("paper")
    cheapest = tuple(min(range(len(b.candidates)), key=lambda i, b=b: b.candidates[i].paper)
                     for b in space16.blocks)
    assert space16.cost(cheapest, "paper") == lo < space16.base["paper"] <= hi


@pytest.mark.parametrize("name,pairs,last,kxk,singles", [
    ("resnet18", 8, "bn2", ("conv1", "conv2"), []),  # basic blocks: both 3×3 convs
    # bottlenecks: the pair is conv2 (3×3) -> conv3 (1×1); the deep stem's 3×3 convs after the first are sites too
    ("timm:resnet26d", 8, "bn3", ("conv2",), ["conv1.3", "conv1.6"]),
])
def test_post_activation_resnets_are_priced_exactly_and_scored_at_the_last_norm(name, pairs, last, kxk, singles):
    pytest.importorskip("torchvision")
    if name.startswith("timm:"):
        pytest.importorskip("timm")
    teacher = cheapconv.create_model(name, num_classes=10)
    space = SearchSpace.of(teacher, FEW, input_size=(3, 64, 64))
    paired = [b for b in space.blocks if b.kind == "pair"]
    assert len(paired) == pairs and [b.label for b in space.blocks if b.kind == "conv"] == singles
    assert all(b.branch_module == f"{b.path}.{last}" for b in paired)
    assert all(b.kxk == tuple(f"{b.path}.{k}" for k in kxk) for b in paired)
    config = _random_configs(space, 1, seed=5)[0]
    student = cheapconv.cheapen(teacher, space.policy(config), input_size=(3, 64, 64))
    space.check_plan(config, student.cheapconv_plan)
    assert cheapconv.count_params(student, "paper") == space.cost(config, "paper")
    assert cheapconv.count_macs(student, (1, 3, 64, 64)) == space.cost(config, "macs")
    batch = fixed_minibatch(None, batch_size=4, seed=0, input_shape=space.input_shape, teacher=teacher)
    scores = Scorer(teacher, space, batch, input_size=(3, 64, 64)).score(config)
    sites = [b.site(b.candidates[i]) for b, i in zip(space.blocks, config, strict=True)]
    assert list(scores.per_site) == sites and scores.total > 0
    assert sites[len(singles):] == [b.branch_module for b in paired]


class TinyMobile(nn.Module):
    """A MobileNetV2 in miniature: stem, an inverted residual without a skip, one with a skip, a 1×1 head."""

    def __init__(self):
        super().__init__()
        act = nn.ReLU

        def inverted(cin, mid, cout, stride):
            return nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), act(),
                                 nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid),
                                 act(), nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))

        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), act())
        self.down = inverted(16, 32, 24, 2)
        self.same = inverted(24, 48, 24, 1)
        self.head = nn.Conv2d(24, 64, 1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.down(self.stem(x))
        x = x + self.same(x)
        return self.fc(self.head(x).mean((2, 3)))


def test_a_depthwise_network_is_searched_at_every_conv_a_candidate_can_replace():
    """No residual conv pair of 3×3 convs: the 1×1 convs are the sites (the pair after the depthwise conv
    offers its 1×1), and costs stay exact."""
    teacher = TinyMobile()
    space = SearchSpace.of(teacher, "S, LRp(0.5), ACDC(2), G(4), B(2)", input_size=(3, 32, 32))
    assert [(b.label, b.kind) for b in space.blocks] == [
        ("down.0", "conv"), ("down.6", "conv"), ("same.0", "conv"), ("same.3+6", "pair"), ("head", "conv")]
    pair = space.blocks[3]
    lrp = next(c for c in pair.candidates if c.text == "LRp(0.5)")
    assert pair.targets(lrp) == ("same.6",)                            # the pair's 1×1 conv, not its depthwise
    assert "G(4)" in pair.excluded and "B(2)" in pair.excluded and "already grouped" in pair.excluded["G(4)"]
    assert all(c.text in ("S", "LRp(0.5)", "ACDC(2)") for b in space.blocks for c in b.candidates)
    assert "stem.0" not in {b.label for b in space.blocks}           # the stem is left alone
    lo, hi = space.cost_range("paper")
    assert lo < hi == space.base["paper"]
    for config in _random_configs(space, 3, seed=1) + [tuple(0 for _ in space.blocks)]:
        student = cheapconv.cheapen(teacher, space.policy(config), input_size=(3, 32, 32), strict=True)
        space.check_plan(config, student.cheapconv_plan)
        assert cheapconv.count_params(student, "paper") == space.cost(config, "paper")
        assert cheapconv.count_macs(student, (1, 3, 32, 32)) == space.cost(config, "macs")
    r = search(teacher, "60%", samples=2, batch_size=4, spread_runs=1, input_size=(3, 32, 32),
               candidates="S, LRp(0.5), LRp(0.25), ACDC(2)", tolerance=0.1)
    assert r.window[0] <= r.winner.cost <= r.window[1] and r.measured["paper"] == r.winner.paper
    assert r.blocks == [b.label for b in space.blocks]
    r = search(teacher, "90%", metric="latency", samples=2, batch_size=4, spread_runs=1, input_size=(3, 32, 32),
               candidates="S, LRp(0.25)", tolerance=0.9)    # single convs are timed on their own too
    assert r.measured["latency"] > 0 and r.winner.latency_ms is not None


def test_a_network_that_leaves_no_choice_says_why_and_what_to_use():
    with pytest.raises(UsageError) as info:
        SearchSpace.of(TinyMobile(), input_size=(3, 32, 32))
    text = str(info.value)
    assert "no choice" in text and "default candidates" in text and "depthwise" in text
    assert "--candidates 'S, LRp(0.5), LRp(0.25), ACDC(2)'" in text and "cheapconv cheapen" in text


@pytest.mark.slow
@pytest.mark.parametrize("name", ["timm:tf_efficientnet_lite0", "timm:mobilenetv3_small_100"])
def test_timm_depthwise_networks_are_searched_with_pointwise_candidates(name):
    pytest.importorskip("timm")
    teacher = cheapconv.create_model(name, num_classes=10)
    with pytest.raises(UsageError, match="no choice"):
        search(teacher, "50%", samples=2, batch_size=4, input_size=(3, 64, 64))
    r = search(teacher, "60%", samples=2, batch_size=4, spread_runs=1, input_size=(3, 64, 64),
               candidates="S, LRp(0.5), LRp(0.25), ACDC(2)")
    lo, hi = r.reachable
    assert lo < 0.6 * r.teacher_cost < hi
    assert r.window[0] <= r.winner.cost <= r.window[1] and r.measured["paper"] == r.winner.paper
    assert len(r.blocks) > 20


def test_fisher_is_scored_in_bf16_by_default_and_stays_close_to_fp32(wrn16, space16):
    batch = fixed_minibatch(None, batch_size=16, seed=0, input_shape=space16.input_shape, teacher=wrn16)
    scorer = Scorer(wrn16, space16, batch)
    assert scorer.precision == "bf16"
    configs = _random_configs(space16, 3, seed=2)
    for config in configs:
        bf16 = scorer.score(config).total
        fp32 = scorer.score(config, precision="fp32").total
        assert bf16 != fp32                       # the autocast really ran
        assert bf16 == pytest.approx(fp32, rel=0.1)
    assert Scorer(wrn16, space16, batch, precision="fp32").score(configs[0]).total == \
        pytest.approx(scorer.score(configs[0], precision="fp32").total, rel=1e-9)
    with pytest.raises(UsageError, match="precision"):
        Scorer(wrn16, space16, batch, precision="fp16")


def test_search_records_its_fisher_precision(result16):
    assert result16.precision == "bf16" and "Fisher in bf16" in result16.policy_text()


def test_policy_text_round_trips_through_a_file(tmp_path, space16):
    config = _random_configs(space16, 1, seed=9)[0]
    path = tmp_path / "p.txt"
    path.write_text("# header\n" + "\n".join(space16.rules(config)) + "\n")
    assert Policy.from_file(path) == space16.policy(config)


def test_sampling_is_seeded_within_the_window_and_distinct(space16):
    base, _ = space16.table("paper")
    window = (0.4 * base * 0.975, 0.4 * base * 1.025)
    a = sample_configurations(space16, "paper", window, 20, seed=1)
    b = sample_configurations(space16, "paper", window, 20, seed=1)
    assert a == b and len(a[0]) == 20
    assert all(window[0] <= space16.cost(c, "paper") <= window[1] for c in a[0])
    assert len({space16.key(c) for c in a[0]}) == 20
    assert sample_configurations(space16, "paper", window, 20, seed=2)[0] != a[0]


# --- the search ------------------------------------------------------------------------------------------
def test_every_returned_configuration_is_within_the_tolerance(result16, space16):
    lo, hi = result16.window
    assert result16.target == pytest.approx(0.4 * space16.base["paper"])
    assert len(result16.results) == 4
    for r in result16.results:
        assert lo <= r.cost <= hi and r.cost == r.paper
        assert r.cost == space16.cost(space16.index_of(r.choice), "paper")
    scores = [r.score for r in result16.results]
    assert scores == sorted(scores, reverse=True) and [r.rank for r in result16.results] == [1, 2, 3, 4]
    assert len(result16.winner.spread_scores) == 2 and result16.winner.spread is not None
    assert result16.results[2].spread is None


def test_the_winning_policy_builds_exactly_the_searched_student(result16, wrn16, tmp_path):
    written = result16.write_policies(tmp_path / "policy.txt", top=2)
    assert [p.name for p in written] == ["policy.txt", "policy.2.txt"]
    for path, r in zip(written, result16.results, strict=False):
        student = cheapconv.cheapen(wrn16, Policy.from_file(path))
        assert cheapconv.count_params(student, "paper") == r.paper == r.cost
        assert cheapconv.count_params(student, "trainable") == r.params
        assert cheapconv.count_macs(student, (1, 3, 32, 32)) == r.macs
        blocks = {e.layer: e.block for e in student.cheapconv_plan.entries}
        for label, spec in zip(result16.blocks, r.choice, strict=True):
            a, _, b = label.partition("+")
            got = blocks.get(label) or blocks.get(a)  # block-level: the pair's row; conv-level: the convs'
            assert (got or "S") == spec, label
            if spec != "S" and label not in blocks:
                assert blocks[f"{a.rpartition('.')[0]}.{b}"] == spec
    assert result16.measured["paper"] == result16.winner.paper


def test_the_same_seed_gives_the_same_winner(result16, wrn16):
    again = search(wrn16, "40%", samples=4, batch_size=8, spread_runs=1, top=1, seed=3)
    assert [r.choice for r in again.results] == [r.choice for r in result16.results]
    assert [r.score for r in again.results] == [r.score for r in result16.results]


def test_scores_use_the_given_data_and_the_seed(wrn16):
    x, y = torch.randn(10, 3, 32, 32), torch.randint(0, 10, (10,))
    r = search(wrn16, "40%", samples=2, batch_size=8, data=(x, y), spread_runs=1, candidates=FEW)
    assert "given tensors" in r.minibatch and not any("no data given" in n for n in r.notes)
    synthetic = search(wrn16, "40%", samples=2, batch_size=8, spread_runs=1, candidates=FEW)
    assert any("no data given" in n for n in synthetic.notes)
    batch = fixed_minibatch("synthetic:3x32x32:10:64", batch_size=8, seed=0, input_shape=(3, 32, 32),
                            teacher=wrn16)
    assert batch.inputs.shape == (8, 3, 32, 32) and not batch.synthetic


@pytest.mark.parametrize("budget,fragment", [("1k", "out of reach"), ("150%", "out of reach")])
def test_unreachable_budgets_fail_clearly(wrn16, space16, budget, fragment):
    lo, hi = space16.cost_range("paper")
    with pytest.raises(UsageError, match=fragment) as info:
        search(wrn16, budget, samples=2, batch_size=4)
    assert f"{round(lo):,}" in str(info.value) and f"{round(hi):,}" in str(info.value)


def test_macs_budget(wrn16):
    r = search(wrn16, "50%", metric="macs", samples=2, batch_size=4, spread_runs=1, candidates=FEW)
    lo, hi = r.window
    assert r.metric == "macs" and all(lo <= c.macs <= hi and c.cost == c.macs for c in r.results)


def test_latency_budget_is_an_additive_estimate_reported_with_the_measured_winner():
    teacher = cheapconv.create_model("wrn_10_1")
    r = search(teacher, "70%", samples=2, batch_size=4, spread_runs=1, candidates="S, G(4), B(2)",
               tolerance=0.2)
    assert r.metric == "params"
    r = search(teacher, "70%", metric="latency", samples=2, batch_size=4, spread_runs=1,
               candidates="S, G(4), B(2)", tolerance=0.5)
    lo, hi = r.window
    assert all(lo <= c.latency_ms <= hi for c in r.results)
    assert r.measured["latency"] > 0 and r.latency_conditions["batch"] == 1
    assert "latency" in r.policy_text()


def test_a_latency_budget_is_priced_and_verified_in_the_chosen_runtime():
    teacher = cheapconv.create_model("wrn_10_1")
    r = search(teacher, "70%", metric="latency", samples=2, batch_size=4, spread_runs=1,
               candidates="S, G(4), B(2)", tolerance=0.5, runtime="pt2")
    cond = r.latency_conditions
    assert cond["runtime"] == "pt2" and "torch.export" in cond["runtime_info"] and cond["teacher_ms"] > 0
    assert r.measured["latency"] > 0 and r.winner.latency_ms is not None
    assert "latency in pt2" in r.describe_budget() and "(additive estimate, pt2)" in r.policy_text()
    with pytest.raises(UsageError, match="Unknown runtime"):
        search(teacher, "70%", metric="latency", samples=2, runtime="tflite")


# --- the command line ------------------------------------------------------------------------------------
def test_cli_writes_policies_that_cheapen_consumes(tmp_path, capsys):
    from cheapconv_cli.main import main

    out_file = tmp_path / "policy.txt"
    code = main(["search", "wrn_10_1", "--budget", "50%", "--samples", "3", "--batch-size", "4",
                 "--spread-runs", "2", "--candidates", FEW, "--top", "2", "-o", str(out_file)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Block search: wrn_10_1" in captured.out and "spread" in captured.out
    assert out_file.exists() and (tmp_path / "policy.2.txt").exists()
    student_file = tmp_path / "s.pt"
    code = main(["cheapen", "wrn_10_1", "--policy-file", str(out_file), "-o", str(student_file)])
    assert code == 0, capsys.readouterr().err
    winner_cost = int(next(line for line in out_file.read_text().splitlines() if line.startswith("# cost"))
                      .split()[2].replace(",", ""))
    assert cheapconv.count_params(cheapconv.load(student_file), "paper") == winner_cost


def test_cli_unreachable_budget_exits_2_with_the_range(capsys):
    from cheapconv_cli.main import main

    code = main(["search", "wrn_10_1", "--budget", "1k", "--samples", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "out of reach" in err and "between" in err and "Traceback" not in err
    assert main(["search", "wrn_10_1", "--budget", "5ms", "--metric", "params"]) == 2
    assert main(["search", "wrn_10_1", "--budget", "10k", "--metric", "flops"]) == 2
