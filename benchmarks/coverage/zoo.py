"""Model coverage of ``cheapen``: every torchvision classification model and a broad sample of timm CNNs.

For each model (random initialisation, no downloads) and each policy this measures what the requirement
names: ``cheapen`` succeeds, the student's output shape equals the teacher's, forward and backward run in
train mode, the trainable parameter count drops, the input model is unchanged, the stage taps are found,
and a save + load round trip gives the same eval-mode outputs. Results go to stdout as a Markdown table
plus a summary; progress goes to stderr.

Every model runs in its own subprocess (a crash or a timeout in one model cannot stop the sweep)::

    python -m benchmarks.coverage                      # everything (tens of minutes on 2 CPU cores)
    python -m benchmarks.coverage --only resnet18 timm:dla34 -j 2
    python -m benchmarks.coverage --json out.json > table.md
    python -m benchmarks.coverage --timm-families --policies 'G(4)'   # one model per timm family
    python -m benchmarks.coverage --render a.json b.json              # tables from saved results
    CHEAPCONV_ZOO_RESULTS=zoo.jsonl make test-all && python -m benchmarks.coverage --render zoo.jsonl
                                                                      # docs/coverage.md from the slow tests

Policies: ``G(4)`` (the conv-level default), ``B(2)`` where the model has residual-branch conv pairs,
``G(N)``, and, for models where ``G(4)`` removes no parameter (depthwise-only nets, vision transformers),
``*=G(N)``, a rule with a selector, which also reaches the stem.

**The contract** (one definition: :func:`contract_failures`; ``tests/test_zoo.py`` asserts it for every model
of :func:`all_models`, and the headline of ``docs/coverage.md`` and the README counts it): with its random
initialisation the input model is left unchanged; every policy tried either builds a student or refuses
with a clear :class:`~cheapconv.errors.PolicyMatchError`; and the *contract student* (``G(4)``, or
``*=G(N)`` where ``G(4)`` removes nothing) has strictly fewer parameters than the teacher, the same output
shape, runs forward and backward in train mode, has the parameters its plan predicted, and reloads from its
file with equal outputs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
import traceback
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..common.records import latest_by, read_records
from ..common.runs import eval_mode
from ..common.workers import first_line, run_worker

#: the module that runs one model (``--worker``)
WORKER = "benchmarks.coverage"

#: timm models in the sweep: at least one per CNN family, the small member of each.
TIMM_MODELS = [
    # ResNet family and its variants
    "resnet10t", "resnet18", "resnet26d", "resnet50", "resnet50d", "resnetrs50", "resnetv2_50",
    "resnext50_32x4d", "seresnet50", "legacy_seresnet18", "seresnext26d_32x4d", "ecaresnet26t", "skresnet18",
    "gcresnet33ts", "res2net50_14w_8s", "resnest14d", "wide_resnet50_2", "tresnet_m",
    # attention / hybrid ResNets from byobnet / byoanet
    "botnet26t_256", "halonet26t", "lambda_resnet26t", "bat_resnext26ts", "gernet_s", "repvgg_a0",
    "mobileone_s0", "regnetz_b16",
    # RegNet
    "regnetx_002", "regnety_004",
    # EfficientNet / MobileNet / NAS families (depthwise)
    "efficientnet_b0", "tf_efficientnet_lite0", "efficientnetv2_rw_t", "tf_efficientnetv2_b0", "mixnet_s",
    "mobilenetv2_100", "mobilenetv3_small_100", "mobilenetv4_conv_small", "mnasnet_100", "fbnetv3_b",
    "lcnet_050", "tinynet_a", "hardcorenas_a", "rexnet_100", "ghostnet_100", "ghostnetv2_100",
    "repghostnet_050", "repvit_m0_9", "efficientvit_b0", "fastvit_t8",
    # ConvNeXt and other modern conv nets
    "convnext_atto", "convnextv2_atto", "inception_next_atto", "rdnet_tiny", "starnet_s1", "mambaout_femto",
    "poolformer_s12", "edgenext_xx_small",
    # DenseNet, VGG, DLA, DPN, HRNet, CSP, Darknet, VoVNet, HGNet, NFNet, Xception, Inception, SelecSLS
    "densenet121", "densenetblur121d", "vgg11", "vgg11_bn", "dla34", "dpn68", "hrnet_w18_small",
    "cspresnet50", "cspdarknet53", "darknet53", "cs3darknet_s", "vovnet39a", "ese_vovnet19b_dw",
    "hgnet_tiny", "hgnetv2_b0", "nf_resnet26", "nfnet_l0", "eca_nfnet_l0", "dm_nfnet_f0", "xception41",
    "inception_v3", "inception_v4", "inception_resnet_v2", "selecsls42b",
    # hybrids with a conv stem or conv stages
    "coatnet_0_rw_224", "levit_128",
]

#: tried in this order until the model runs; the model's native size is the last resort
SIZES = (64, 96, 128, 160, 224, 256)
#: policies measured for every model
POLICIES = ("G(4)", "B(2)", "G(N)")
#: the fallback for models where none of POLICIES removes a parameter
STEM_POLICY = "*=G(N)"


#: timm families left out of the one-per-family sweep: no member small enough for a CPU sweep
HUGE_FAMILIES = {"deepseek_vit", "gemma4_vit", "qwen3_vit", "naflexvit", "vision_transformer_sam", "mobilenetv5",
                 "nasnet", "pnasnet", "senet"}
_SMALL = ("atto", "femto", "pico", "nano", "tiny", "small", "xxs", "xs", "_s", "18", "b0", "_050", "_075", "_100",
          "mini", "lite0", "_t")


def timm_family_models() -> list[str]:
    """One model per timm family (``timm.list_modules()``): the curated one where the list has one, else the
    smallest-sounding name."""
    import timm

    def size_rank(name):
        return next((i for i, tag in enumerate(_SMALL) if tag in name), len(_SMALL)), len(name)

    out = []
    for family in timm.list_modules():
        names = timm.list_models(module=family)
        if not names or family in HUGE_FAMILIES:
            continue
        curated = [n for n in TIMM_MODELS if n in names]
        out.append(f"timm:{curated[0] if curated else min(names, key=size_rank)}")
    return out


def torchvision_models() -> list[str]:
    import torchvision

    return [f"torchvision:{n}" for n in sorted(torchvision.models.list_models(module=torchvision.models))]


def all_models() -> list[str]:
    return torchvision_models() + [f"timm:{n}" for n in TIMM_MODELS]


# --- measuring one model ----------------------------------------------------------------------------------
def _first_tensor(out):
    import torch

    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return _first_tensor(out[0])
    if isinstance(out, dict):
        return _first_tensor(next(iter(out.values())))
    raise TypeError(f"model output of type {type(out).__name__}")


def _shape_of(out):
    import torch

    if isinstance(out, torch.Tensor):
        return tuple(out.shape)
    if isinstance(out, (tuple, list)):
        return tuple(_shape_of(o) for o in out)
    return type(out).__name__


def pick_input_size(model, sizes=SIZES) -> tuple[int, int, int]:
    """The smallest square input from ``sizes`` (then the native size) at which ``model`` runs."""
    import torch

    from cheapconv.models import default_input_size

    native = default_input_size(model)
    candidates = [(native[0], s, s) for s in sizes if s <= max(native[1:])] + [tuple(native)]
    last = None
    for size in candidates:
        try:
            with eval_mode(model), torch.no_grad():
                model(torch.zeros(1, *size))
            return size
        except Exception as e:  # noqa: BLE001 - any failure means: try a larger input
            last = e
    raise RuntimeError(f"the model runs at none of {candidates}: {last}")


def _state_snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_state(model, snapshot) -> bool:
    import torch

    state = model.state_dict()
    if state.keys() != snapshot.keys() or any(state[k].is_meta for k in state):  # meta: left behind by a pass
        return False
    return all(torch.equal(state[k], snapshot[k]) for k in snapshot)


def check_student(teacher, student, x, workdir: str | None = None) -> dict:
    """The contract checks on one student. ``x`` is a batch of at least 2 (train-mode norms need it)."""
    import torch

    import cheapconv

    r: dict = {}
    plan = student.cheapconv_plan
    r["mode"] = plan.mode
    r["replaced"] = len(plan.replaced)
    r["cannot"] = len(plan.impossible)
    r["cannot_reasons"] = sorted({_generic(e.reason) for e in plan.impossible})[:6]
    r["params_before"] = cheapconv.count_params(teacher)
    r["params_after"] = cheapconv.count_params(student)
    r["plan_agrees"] = plan.totals["params_after"] == r["params_after"]
    # MACs per image at the sweep's input, every operator counted (FlopCounterMode), on throw-away copies
    r["macs_before"] = cheapconv.count_macs(teacher, (1, *x.shape[1:]))
    r["macs_after"] = cheapconv.count_macs(student, (1, *x.shape[1:]))
    with eval_mode(teacher), eval_mode(student), torch.no_grad():
        t_out, s_out = teacher(x), student(x)
    r["shape_ok"] = _shape_of(t_out) == _shape_of(s_out)
    # forward + backward in train mode, as distillation runs it
    flags = [(m, m.training) for m in student.modules()]
    student.train()
    try:
        with cheapconv.record(student) as acts:
            out = _first_tensor(student(x))
            n_acts = len(acts)
        out.float().square().mean().backward()
        grads = [p.grad for p in student.parameters() if p.requires_grad]
        r["backward_ok"] = bool(grads) and all(g is not None and torch.isfinite(g).all() for g in grads)
    finally:
        for m, flag in flags:
            m.training = flag
        student.zero_grad(set_to_none=True)
    r["stages"] = len(plan.stages)
    r["stage_names"] = list(plan.stages)
    r["taps_ok"] = n_acts == len(plan.stages) and n_acts >= 2
    if workdir is not None:
        path = os.path.join(workdir, "student.pt")
        r["storage"] = cheapconv.save(student, path)
        if r["storage"] != "graph" and isinstance(student, torch.fx.GraphModule):
            # why its graph is not stored as data: the note save() writes into the file's recipe
            notes = cheapconv.read_recipe(path).get("notes", [])
            why = next((n.removeprefix(GRAPH_NOTE) for n in notes if n.startswith(GRAPH_NOTE)), None)
            if why is not None:
                r["storage_note"] = first_line(why)
        loaded = cheapconv.load(path, trust=r["storage"] == "pickle")
        with eval_mode(student), torch.no_grad():
            want = _first_tensor(student(x))
            got = _first_tensor(loaded(x))
        r["load_ok"] = want.shape == got.shape and torch.allclose(want, got, rtol=1e-4, atol=1e-5)
        os.remove(path)
    return r


#: how cheapconv.save's recipe notes a graph that it could not store as data
GRAPH_NOTE = "graph not stored as data: "


def _generic(reason: str) -> str:
    """A plan reason without its layer's numbers, so equal reasons across layers collapse to one."""
    reason = re.sub(r"\d+×\d+×\d+", "C×H×W", reason)
    return re.sub(r"(groups|C_in|C_out|M)=\d+", r"\1=n", reason)


def measure(name: str, policies=POLICIES, size: int | None = None, save: bool = True) -> dict:
    """Build ``name`` (``torchvision:x`` / ``timm:x``) with random weights and check every policy."""
    import torch

    import cheapconv
    from cheapconv import PolicyMatchError

    torch.manual_seed(0)
    t0 = time.perf_counter()
    res: dict = {"model": name, "policies": {}, "primary": policies[0]}
    try:
        teacher = cheapconv.create_model(name)
        input_size = (3, size, size) if size else pick_input_size(teacher)
    except Exception as e:  # noqa: BLE001
        res["error"] = f"build: {type(e).__name__}: {first_line(e)}"
        res["time"] = time.perf_counter() - t0
        return res
    res["input"] = input_size[1]
    x = torch.randn(2, *input_size)
    snapshot = _state_snapshot(teacher)

    def run(policy: str) -> dict:
        t = time.perf_counter()
        r: dict = {}
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                student = cheapconv.cheapen(teacher, policy, input_size=input_size)
            r["warnings"] = sorted({first_line(w.message) for w in caught})[:3]
        except PolicyMatchError as e:
            r.update(ok=True, replaced=0, note=first_line(e))
            return r
        except Exception as e:  # noqa: BLE001
            r.update(ok=False, error=f"cheapen: {type(e).__name__}: {first_line(e)}",
                     trace=traceback.format_exc(limit=-4))
            return r
        try:
            with tempfile.TemporaryDirectory() as tmp:
                r.update(check_student(teacher, student, x, tmp if save else None))
            r["ok"] = True
        except Exception as e:  # noqa: BLE001
            r.update(ok=False, error=f"check: {type(e).__name__}: {first_line(e)}",
                     trace=traceback.format_exc(limit=-4))
        r["time"] = round(time.perf_counter() - t, 2)
        return r

    for policy in policies:
        res["policies"][policy] = run(policy)
    if STEM_POLICY not in res["policies"] and not _reduces(res["policies"][policies[0]]):
        res["policies"][STEM_POLICY] = run(STEM_POLICY)
    res["unchanged"] = _same_state(teacher, snapshot)
    res["time"] = round(time.perf_counter() - t0, 2)
    return res


# --- the sweep --------------------------------------------------------------------------------------------
def run_isolated(name: str, timeout: float, save: bool, policies=POLICIES) -> dict:
    """:func:`measure` of one model in a fresh process (:func:`benchmarks.common.workers.run_worker`)."""
    args = ["--worker", name, "--policies", *policies] + ([] if save else ["--no-save"])
    t0 = time.perf_counter()
    result, error = run_worker(WORKER, args, timeout)
    if result is None:
        spent = timeout if error.startswith("timeout") else round(time.perf_counter() - t0, 2)
        return {"model": name, "error": error, "policies": {}, "time": spent}
    return result


def _mark(value) -> str:
    return "✓" if value is True else ("✗" if value is False else "–")


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def _policy_cell(p: dict | None) -> str:
    if p is None:
        return "–"
    if not p.get("ok"):
        return "FAIL"
    if not p.get("replaced"):
        return "0"
    change = 100 * (p["params_after"] / p["params_before"] - 1)
    sign = "−" if change < 0 else "+"
    return f"{p['replaced']} ({sign}{abs(change):.0f}%)" if abs(change) >= 1 else \
        f"{p['replaced']} ({sign}{abs(change):.2f}%)"


def _reduces(p: dict) -> bool:
    return bool(p.get("ok") and p.get("replaced") and p["params_after"] < p["params_before"])


def best_policy(res: dict) -> tuple[str, dict] | None:
    """The policy with the most parameters removed (None when nothing was removed)."""
    best = None
    for policy, p in res["policies"].items():
        if _reduces(p):
            if best is None or p["params_after"] < best[1]["params_after"]:
                best = (policy, p)
    return best


def passes(res: dict) -> dict[str, bool]:
    """The requirement's criteria for one model, checked on every student built (also where a policy
    replaced nothing: the student must still work)."""
    done = [p for p in res["policies"].values() if p.get("ok") and "shape_ok" in p]
    ran = list(res["policies"].values())
    return {
        "cheapen": bool(ran) and "error" not in res and all(p.get("ok") for p in ran),
        "shape": bool(done) and all(p["shape_ok"] for p in done),
        "backward": bool(done) and all(p["backward_ok"] for p in done),
        "fewer": best_policy(res) is not None,
        "fewer_G4": _reduces(res["policies"].get("G(4)", {})),
        "unchanged": res.get("unchanged") is True,
        "taps": bool(done) and all(p["taps_ok"] for p in done),
        "load": bool(done) and all(p.get("load_ok", True) for p in done),
        "graph": bool(done) and all(p["mode"] == "graph" for p in done),
        "fewer_macs": _fewer_macs(res),
    }


def _fewer_macs(res: dict) -> bool:
    """The contract student needs fewer MACs per image than its teacher (every operator counted)."""
    policy = contract_policy(res)
    p = res["policies"].get(policy, {}) if policy else {}
    return "macs_after" in p and p["macs_after"] < p["macs_before"]


def contract_policy(res: dict) -> str | None:
    """The policy whose student the contract checks: the first one measured if it removes parameters,
    else ``*=G(N)``; None when neither does."""
    primary = res.get("primary", POLICIES[0])
    if _reduces(res["policies"].get(primary, {})):
        return primary
    return STEM_POLICY if _reduces(res["policies"].get(STEM_POLICY, {})) else None


def contract_failures(res: dict) -> list[str]:
    """What one model's result (:func:`measure`) breaks of the contract (module docstring); [] = it passes."""
    if "error" in res:
        return [res["error"]]
    fails = [] if res.get("unchanged") is True else ["the input model changed"]
    fails += [f"{pol}: {p.get('error')}" for pol, p in res["policies"].items() if not p.get("ok")]
    policy = contract_policy(res)
    if policy is None:
        primary = res.get("primary", POLICIES[0])
        why = sorted({w for p in res["policies"].values() for w in p.get("cannot_reasons", [])}) or \
            [p["note"] for p in res["policies"].values() if p.get("note")]
        return fails + [f"no student with fewer parameters under {primary} or {STEM_POLICY}"
                        + (f" ({'; '.join(why[:3])})" if why else "")]
    p = res["policies"][policy]
    for key, what in (("shape_ok", "output shape differs"), ("backward_ok", "forward+backward failed"),
                      ("plan_agrees", "parameters differ from the plan's"),
                      ("load_ok", "save/load round trip differs")):
        if p.get(key) is False:
            fails.append(f"{policy}: {what}")
    return fails


def smaller_cell(p: dict | None) -> str:
    """"params / MACs" marks of one student against its teacher: ✓ smaller, = equal, ✗ bigger, – not measured."""
    if not p or "params_after" not in p:
        return "–"

    def mark(before, after):
        if before is None or after is None:
            return "–"
        return "✓" if after < before else ("=" if after == before else "✗")

    return f"{mark(p['params_before'], p['params_after'])} / {mark(p.get('macs_before'), p.get('macs_after'))}"


def render(results: list[dict]) -> str:
    head = ("| model | input | mode | params | G(4) | B(2) | G(N) | *=G(N) | smaller (params / MACs) | shape "
            "| fwd+bwd | taps | storage | load = | unchanged | s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['model']} | | | | **{r['error']}** | | | | | | | | | | | {r.get('time', 0):.0f} |")
            continue
        ok = passes(r)
        built = [p for p in r["policies"].values() if p.get("ok") and "shape_ok" in p]
        first = next((p for p in built if p.get("replaced")), built[0] if built else {})
        storages = sorted({p["storage"] for p in built if "storage" in p})
        cells = [r["model"], str(r["input"]), first.get("mode", "–"),
                 _millions(first["params_before"]) if "params_before" in first else "–",
                 *(_policy_cell(r["policies"].get(pol)) for pol in (*POLICIES, STEM_POLICY)),
                 smaller_cell(r["policies"].get(contract_policy(r) or r.get("primary", POLICIES[0]))),
                 _mark(ok["shape"]), _mark(ok["backward"]),
                 str(first.get("stages", "–")) + ("" if ok["taps"] else " ✗"),
                 "/".join(storages) or "–", _mark(ok["load"]), _mark(ok["unchanged"]), f"{r['time']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(results: list[dict]) -> str:
    out = []
    groups = {}
    for r in results:
        groups.setdefault(r["model"].split(":")[0], []).append(r)
    for label, group in groups.items():
        broken = [(r["model"], contract_failures(r)) for r in group]
        broken = [(m, f) for m, f in broken if f]
        out.append(f"**The contract, {label}**: {len(group) - len(broken)}/{len(group)} models."
                   + ("".join(f"\n- {m}: {'; '.join(f)}" for m, f in broken) if broken else "") + "\n")
    for label, group in groups.items():
        crit = [passes(r) for r in group]
        n = len(group)
        count = {k: sum(c[k] for c in crit) for k in crit[0]}
        out.append(f"**{label}** ({n} models): cheapen succeeds under every policy {count['cheapen']}/{n}; "
                   f"same output shape {count['shape']}/{n}; forward+backward {count['backward']}/{n}; "
                   f"fewer parameters under some built-in block {count['fewer']}/{n} "
                   f"(under G(4) alone {count['fewer_G4']}/{n}); the contract student needs fewer MACs "
                   f"{count['fewer_macs']}/{n}; input model unchanged {count['unchanged']}/{n}; "
                   f"stage taps (≥ 2, recorded) {count['taps']}/{n}; save/load round trip equal "
                   f"{count['load']}/{n}; traced as a graph {count['graph']}/{n}.\n")
    failures = []
    for r in results:
        if "error" in r:
            failures.append(f"- {r['model']}: {r['error']}")
            continue
        for policy, p in r["policies"].items():
            if not p.get("ok"):
                failures.append(f"- {r['model']} {policy}: {p.get('error')}")
        ok = passes(r)
        bad = [k for k in ("shape", "backward", "taps", "load", "unchanged", "graph") if not ok[k]]
        if bad:
            stages = next((p.get("stage_names") for p in r["policies"].values() if "stage_names" in p), None)
            extra = f" (stages found: {stages})" if "taps" in bad else ""
            failures.append(f"- {r['model']}: {', '.join(bad)}{extra}")
    out.append("**Other checks not met** (outside the contract)\n\n" + ("\n".join(failures) if failures else "none"))
    none = [r for r in results if "error" not in r and best_policy(r) is None]
    lines = []
    for r in none:
        reasons = r["policies"].get(STEM_POLICY, {}).get("cannot_reasons") or \
            sorted({why for p in r["policies"].values() for why in p.get("cannot_reasons", [])})
        lines.append(f"- {r['model']} (under {STEM_POLICY}): " + ("; ".join(reasons) or "no eligible conv"))
    out.append("\n**No parameter reduction under any policy**\n\n" + ("\n".join(lines) if lines else "none"))
    storage, notes = {}, {}
    for r in results:
        for p in r["policies"].values():
            if "storage" in p:
                storage[p["storage"]] = storage.get(p["storage"], 0) + 1
            if "storage_note" in p:
                notes.setdefault(p["storage_note"], set()).add(r["model"])
    out.append("\n**Storage kinds** (students saved): " + ", ".join(f"{k} {v}" for k, v in sorted(storage.items())))
    if notes:
        out.append("\nWhy a student is not stored as a data-only graph:\n\n" + "\n".join(
            f"- {why}: {', '.join(sorted(models))}" for why, models in sorted(notes.items())))
    warned = sorted({(r["model"], w) for r in results for p in r["policies"].values() for w in p.get("warnings", [])
                     if "Falling back" not in w})
    if warned:
        out.append("\n**Warnings raised by cheapen**\n\n" + "\n".join(f"- {m}: {w}" for m, w in warned))
    return "\n".join(out)


def _read_results(path: Path) -> list[dict]:
    """Results saved by ``--json`` (a JSON list) or by the slow zoo tests (JSON lines, the last of each model)."""
    if path.read_text().lstrip().startswith("["):
        return json.loads(path.read_text())
    return list(latest_by(read_records(path), "model").values())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.coverage", description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="model names (torchvision:x, timm:x, or bare torchvision names)")
    ap.add_argument("--torchvision-only", action="store_true")
    ap.add_argument("--timm-only", action="store_true")
    ap.add_argument("--timm-families", action="store_true",
                    help="one model from every timm family instead of the curated list")
    ap.add_argument("--policies", nargs="+", default=list(POLICIES), help="policies measured for every model")
    ap.add_argument("-j", "--jobs", type=int, default=1, help="models measured in parallel (subprocesses)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per model")
    ap.add_argument("--no-save", action="store_true", help="skip the save/load round trip")
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--render", nargs="+", metavar="JSON",
                    help="print the table and summary of saved --json results instead of measuring")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.render:
        saved = [r for path in args.render for r in _read_results(Path(path))]
        order = {n: i for i, n in enumerate(all_models())}
        saved.sort(key=lambda r: order.get(r["model"], len(order)))
        print(render(saved))
        print()
        print(summary(saved))
        return 0
    if args.worker:
        torch_threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
        import torch

        torch.set_num_threads(torch_threads)
        print(json.dumps(measure(args.worker, policies=tuple(args.policies), save=not args.no_save)))
        return 0
    if args.only:
        names = [n if ":" in n else f"torchvision:{n}" for n in args.only]
    elif args.torchvision_only:
        names = torchvision_models()
    elif args.timm_families:
        names = timm_family_models()
    elif args.timm_only:
        names = [f"timm:{n}" for n in TIMM_MODELS]
    else:
        names = all_models()
    results: dict[str, dict] = {}

    def one(name):
        r = run_isolated(name, args.timeout, not args.no_save, args.policies)
        flag = "ok" if not contract_failures(r) else "FAIL " + "; ".join(contract_failures(r))[:200]
        print(f"[{len(results) + 1}/{len(names)}] {name}: {flag} ({r.get('time', 0):.0f} s) "
              f"{r.get('error', '')}", file=sys.stderr, flush=True)
        results[name] = r
        if args.json:
            Path(args.json).write_text(json.dumps([results[n] for n in names if n in results], indent=1))
        return r

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        list(pool.map(one, names))
    ordered = [results[n] for n in names]
    print(render(ordered))
    print()
    print(summary(ordered))
    return 0


if __name__ == "__main__":
    sys.exit(main())
