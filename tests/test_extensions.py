"""Adding a dataset, a training objective or a latency runtime is one file: each toy below is one file (written
to a temporary package and imported, as a plug-in would be), and the command line lists it in its help and runs
it end to end. The options of the training settings come from the config's fields."""

from __future__ import annotations

import dataclasses
import importlib
import re
import textwrap

import pytest
from helpers import package_from_folder

from cheapconv.extensions import DATASETS, LOSSES, RUNTIMES
from cheapconv.train.config import DistillConfig
from cheapconv_cli import train as train_cli
from cheapconv_cli.main import main

TOY_DATASET = '''
"""``toy-squares``: a bright square whose corner is the class, on noise (10 classes, 3×32×32)."""
import torch

from cheapconv.data import DATASETS, DatasetInfo, InMemorySource


class ToySquares(InMemorySource):
    def info(self, arg):
        return DatasetInfo("toy-squares", 10, 3, 32, (0.5,) * 3, (0.25,) * 3)

    def read(self, arg, request):
        g = torch.Generator().manual_seed(request.seed + (request.split == "train"))
        labels = torch.arange(64) % 10
        images = torch.randint(0, 64, (64, 3, 32, 32), generator=g, dtype=torch.uint8)
        for i, k in enumerate(labels.tolist()):
            images[i, :, 3 * k:3 * k + 6, 3 * k:3 * k + 6] = 255
        return images, labels, None


DATASETS.add("toy-squares", ToySquares(), help="a toy")
'''

TOY_LOSS = '''
"""``toy-l2``: cross-entropy plus the mean squared distance to the teacher's logits."""
from dataclasses import dataclass, field

from cheapconv.train.objectives import Objective


@dataclass(frozen=True)
class LogitMatching(Objective, name="toy-l2", help="CE + weight × squared logit distance"):
    weight: float = field(default=0.5, metadata={"help": "Weight of the squared logit distance."})

    def __call__(self, x):
        ce = x.ce()
        gap = (x.student_logits.float() - x.teacher_logits.float()).pow(2).mean()
        return ce + self.weight * gap, {"ce": ce, "l2": gap}
'''

TOY_RUNTIME = '''
"""``toy-eager``: eager torch under another name (a runtime's file: what it needs, how it runs a model)."""
from cheapconv.extensions import RUNTIMES
from cheapconv.measure.latency import EagerRunner
from cheapconv.measure.runtimes import Runtime


class ToyEager(Runtime):
    name, what, title = "toy-eager", "eager torch, renamed", "toy eager"

    def runner(self, model, input_shape, request):
        return EagerRunner(model, request.device, request.dtype, request.channels_last, label=request.label)


RUNTIMES.add("toy-eager", ToyEager(), help=ToyEager.what)
'''


@pytest.fixture
def toys(tmp_path, monkeypatch):
    """The three toy files, imported (registering their entries); the entries are removed afterwards."""
    pkg = tmp_path / "toyplugins"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name, text in (("squares", TOY_DATASET), ("l2", TOY_LOSS), ("eager", TOY_RUNTIME)):
        (pkg / f"{name}.py").write_text(textwrap.dedent(text))
    package_from_folder("toyplugins", pkg, monkeypatch)     # importable by name: no sys.path edit
    for name in ("squares", "l2", "eager"):
        importlib.import_module(f"toyplugins.{name}")
    yield
    DATASETS.remove("toy-squares")
    LOSSES.remove("toy-l2")
    RUNTIMES.remove("toy-eager")


def run(capsys, *argv):
    """Exit code, stdout and stderr, each with its lines joined (help texts wrap, also after a hyphen)."""
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, *(" ".join(re.sub(r"-\n\s*", "-", text).split()) for text in (captured.out, captured.err))


def test_each_toy_is_listed_in_the_help(toys, capsys):
    for command, name in (("evaluate", "toy-squares"), ("train", "toy-squares"), ("distill", "toy-l2"),
                          ("profile", "toy-eager"), ("compare", "toy-eager"), ("search", "toy-eager")):
        code, out, _ = run(capsys, command, "--help")
        assert code == 0 and name in out, (command, name)
    # the options of the objectives' settings are made from their fields: the toy's is among them
    assert "weight" in {d.name for d in train_cli._objective_options()}


def test_each_toy_runs_end_to_end(toys, tmp_path, capsys):
    teacher, student = tmp_path / "t.pt", tmp_path / "s.pt"
    fast = ["--max-steps", "1", "--batch-size", "16", "--no-progress"]
    code, _, err = run(capsys, "train", "wrn_10_1", "--data", "toy-squares", "-o", str(teacher), *fast)
    assert code == 0, err
    code, out, err = run(capsys, "evaluate", str(teacher), "--data", "toy-squares")
    assert code == 0 and "toy-squares (test, 64 images)" in out, err
    assert run(capsys, "cheapen", str(teacher), "--block", "G(4)", "-o", str(student))[0] == 0
    code, out, err = run(capsys, "distill", "--teacher", str(teacher), "--student", str(student), "--data",
                         "toy-squares", "--loss", "toy-l2", "-o", str(tmp_path / "d.pt"), *fast)
    assert code == 0 and "toy-l2" in out, err
    code, out, err = run(capsys, "profile", str(student), "--runtime", "toy-eager", "--repeats", "1", "--warmup",
                         "0", "--batch", "1", "--threads", "1", "--no-layers")
    assert code == 0 and "toy eager" in out, err


def test_every_training_setting_is_an_option():
    """A DistillConfig field with a help is an option of train and distill, named after it, with no second edit
    (the objective's settings come from the objectives)."""
    names = {p.name for p in train_cli.RunOptions.__dataclass_fields__.values()}
    options = {d.name for d in train_cli.CONFIG_OPTIONS}
    described = {f.name for f in dataclasses.fields(DistillConfig) if "help" in f.metadata}
    assert options == described - {"loss"} and not options & names
