"""Security and robustness of the command line and of file writes (issue 8): outputs that would destroy inputs,
full disks, leftovers of killed writes, clear messages instead of "looks like a bug", no tracebacks, and file
contents printed literally."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from torch import fx, nn

import cheapconv
from cheapconv.errors import FileFormatError, UsageError
from cheapconv.store.files import DiskFullError, atomic_save, atomic_write
from cheapconv.store.modelfile import read_recipe
from cheapconv_cli.main import main


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


class TwoConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return self.conv2(self.conv1(x)).mean((2, 3))


class Reshaping(nn.Module):
    """Fails inside fx-generated code (the reshape) on any input but 3×4×4."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        h = self.conv(x)
        return h.reshape(h.shape[0], 8, 16).mean(-1)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------ 1. an output that is an input is refused

@pytest.mark.parametrize("argv,fragment", [
    (["distill", "-t", "{t}", "-s", "{s}", "--data", "synthetic", "-o", "{tmp}/out.pt", "--checkpoint", "{t}"],
     "--checkpoint"),
    (["distill", "-t", "{t}", "-s", "{s}", "--data", "synthetic", "-o", "{t}"], "--teacher"),
    (["distill", "-t", "{t}", "-s", "{s}", "--data", "synthetic", "-o", "{s}"], "--student"),
    (["export", "{s}", "--format", "torchscript", "-o", "{s}"], "FILE"),
    (["export", "{tmp}/link.pt", "--format", "pt2", "-o", "{s}"], "FILE"),          # through a symlink
    (["export", "{tmp}/hard.pt", "--format", "onnx", "-o", "{s}"], "FILE"),         # a hard link
    (["train", "wrn_10_1", "--data", "synthetic", "-o", "{tmp}/m.ckpt"], "same file"),  # its own checkpoint
    (["cheapen", "{s}", "--block", "G(2)", "-o", "{s}"], "MODEL"),
    (["cheapen", "wrn_10_1", "--policy-file", "{tmp}/p.txt", "-o", "{tmp}/p.txt"], "--policy-file"),
    (["profile", "{s}", "--json", "{s}"], "--json"),
    (["compare", "{s}", "{t}", "--json", "{t}"], "--json"),
    (["search", "{s}", "--budget", "50%", "-o", "{s}"], "MODEL"),
])
def test_an_output_that_is_an_input_is_refused_before_any_work(tmp_path, capsys, argv, fragment):
    t, s = tmp_path / "t.pt", tmp_path / "s.pt"
    t.write_bytes(b"teacher bytes")
    s.write_bytes(b"student bytes")
    (tmp_path / "p.txt").write_text("G(2)\n")
    (tmp_path / "link.pt").symlink_to(s)
    os.link(s, tmp_path / "hard.pt")
    before = _leftovers(tmp_path)
    argv = [a.replace("{t}", str(t)).replace("{s}", str(s)).replace("{tmp}", str(tmp_path)) for a in argv]
    code, out, err = run(capsys, *argv)
    assert code == 2, err
    assert "same file" in err and fragment in err, err
    assert "Traceback" not in err + out and "looks like a bug" not in err
    assert t.read_bytes() == b"teacher bytes" and s.read_bytes() == b"student bytes"
    assert _leftovers(tmp_path) == before


def test_sweep_refuses_an_input_it_would_overwrite(tmp_path, capsys):
    from cheapconv.sweeper import point_slug

    (tmp_path / "sw" / "points").mkdir(parents=True)
    model = tmp_path / "sw" / "points" / f"{point_slug('G(2)')}.pt"
    model.write_bytes(b"a distilled student")
    code, _, err = run(capsys, "sweep", model, "--blocks", "G(2)", "-o", tmp_path / "sw")
    assert code == 2 and "the sweep writes" in err
    assert model.read_bytes() == b"a distilled student"


def test_check_outputs_rejects_two_outputs_that_are_one_file(tmp_path):
    from cheapconv_cli.app import check_outputs

    with pytest.raises(UsageError, match="same file"):
        check_outputs(inputs={}, outputs={"-o": tmp_path / "a.pt", "--json": tmp_path / "." / "a.pt"})
    check_outputs(inputs={"MODEL": "wrn_10_1"}, outputs={"-o": tmp_path / "a.pt", "--json": None})


# ------------------------------------------------------------------ 2. a full disk: a clear message, nothing left

def test_atomic_write_reports_enospc_and_leaves_nothing(tmp_path):
    def full(tmp):
        Path(tmp).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError, match="No space left on") as info:
        atomic_write(tmp_path / "out.pt", full)
    assert str(tmp_path) in str(info.value) and info.value.exit_code == 2
    assert _leftovers(tmp_path) == []


def test_a_torch_write_failure_on_a_full_disk_is_a_full_disk(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 0))

    def torch_like(tmp):
        Path(tmp).write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4416 vs 4304")

    with pytest.raises(DiskFullError, match="No space left on"):
        atomic_write(tmp_path / "out.pt", torch_like)
    assert _leftovers(tmp_path) == []
    with pytest.raises(DiskFullError):  # atomic_save refuses before writing when the tensors cannot fit
        atomic_save({"w": torch.zeros(1000)}, tmp_path / "state.pt")
    assert _leftovers(tmp_path) == []


def test_cheapen_on_a_full_disk_says_so(tmp_path, capsys, monkeypatch):
    def full(obj, f, *a, **k):
        Path(f).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    code, out, err = run(capsys, "cheapen", "wrn_10_1", "--block", "G(2)", "-o", tmp_path / "s.pt")
    assert code == 2, err   # the user's to fix, like a usage error
    assert "No space left on" in err and "looks like a bug" not in err and "Traceback" not in err
    assert _leftovers(tmp_path) == []


def test_export_checks_free_space_before_a_writer_that_would_abort(tmp_path, monkeypatch):
    import importlib
    import shutil

    export_module = importlib.import_module("cheapconv.exporter")

    called = []
    monkeypatch.setitem(export_module._WRITERS, "pt2", lambda *a: called.append(a))
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 1000))
    with pytest.raises(DiskFullError, match="No space left on"):
        cheapconv.export(TwoConv(), tmp_path / "m.pt2", "pt2", input_shape=(3, 8, 8))
    assert called == [] and _leftovers(tmp_path) == []


def test_search_policies_are_written_atomically_and_removed_on_failure(tmp_path, monkeypatch):
    from cheapconv_cli.search import _write_policies

    class Result:
        results = [1, 2, 3]

        def policy_text(self, rank):
            return f"rank {rank}\n"

    real = Path.write_text
    calls = []

    def write_text(self, text, *a, **k):
        calls.append(self)
        if len(calls) == 2:
            real(self, "partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, text, *a, **k)

    monkeypatch.setattr(Path, "write_text", write_text)
    with pytest.raises(DiskFullError):
        _write_policies(Result(), tmp_path / "policy.txt", top=3)
    assert _leftovers(tmp_path) == []
    monkeypatch.setattr(Path, "write_text", real)
    written = _write_policies(Result(), tmp_path / "policy.txt", top=2)
    assert [p.name for p in written] == ["policy.txt", "policy.2.txt"]
    assert (tmp_path / "policy.2.txt").read_text() == "rank 2\n"


# ------------------------------------------------------------------ 3. temporaries of killed writes are cleaned

def test_stale_temporaries_of_the_same_target_are_removed(tmp_path):
    dead, alive = _dead_pid(), os.getpid()
    old = time.time() - 7200
    stale = tmp_path / f".out.pt.{dead}.0123abcd.tmp"
    stale_suffix = tmp_path / f".out.pt.{dead}.89abcdef.tmp.onnx"
    legacy = tmp_path / ".out.pt.k2j4_x9q.tmp"
    live = tmp_path / f".out.pt.{alive}.deadbeef.tmp"          # a concurrent writer: never removed
    fresh = tmp_path / f".out.pt.{dead}.feedf00d.tmp"          # touched just now: kept for a minute
    other = tmp_path / f".other.pt.{dead}.0123abcd.tmp"        # another target
    lookalike = tmp_path / f".out.pt.{dead}.0123abcd.tmp.keep.me"
    for p in (stale, stale_suffix, legacy, live, fresh, other, lookalike):
        p.write_bytes(b"x")
    for p in (stale, stale_suffix, legacy, live, other, lookalike):
        os.utime(p, (old, old))
    atomic_write(tmp_path / "out.pt", lambda tmp: Path(tmp).write_text("done"))
    assert (tmp_path / "out.pt").read_text() == "done"
    assert not stale.exists() and not stale_suffix.exists() and not legacy.exists()
    assert live.exists() and fresh.exists() and other.exists() and lookalike.exists()


def test_the_temporary_name_carries_the_pid(tmp_path):
    seen = []
    atomic_write(tmp_path / "a.json", lambda tmp: (seen.append(Path(tmp).name), Path(tmp).write_text("{}")))
    assert seen[0].startswith(f".a.json.{os.getpid()}.") and seen[0].endswith(".tmp")


# ------------------------------------------------------------------ 4. clear messages and exit 2

def test_input_size_that_does_not_fit_the_model(tmp_path, capsys):
    code, out, err = run(capsys, "cheapen", "wrn_10_1", "--block", "G(2)", "--input-size", "1,32,32",
                         "-o", tmp_path / "s.pt")
    assert code == 2, err
    assert "--input-size 1,32,32" in err and "3,32,32" in err and "looks like a bug" not in err
    with pytest.raises(UsageError, match="cannot run on a 1×8×8 input"):
        cheapconv.export(TwoConv(), tmp_path / "m.pt", "torchscript", input_shape=(1, 8, 8))
    assert _leftovers(tmp_path) == []


def test_pretrained_offline_says_use_weights(tmp_path, capsys, monkeypatch):
    import urllib.error

    def offline(*a, **k):
        raise urllib.error.URLError(OSError(-2, "Name or service not known"))

    monkeypatch.setattr(cheapconv, "create_model", offline)
    code, _, err = run(capsys, "cheapen", "resnet18", "--pretrained", "--block", "G(2)", "--dry-run")
    assert code == 2, err
    assert "could not be downloaded" in err and "--weights PATH" in err and "looks like a bug" not in err


@pytest.mark.parametrize("device,fragment", [("foo", "Unknown device"), ("cuda:99", "cuda"),
                                             ("meta", "cpu or cuda")])
def test_profile_bad_or_absent_device(tmp_path, capsys, device, fragment):
    code, _, err = run(capsys, "profile", "wrn_10_1", "--device", device, "--repeats", "1", "--no-layers")
    assert code == 2, err
    assert fragment in err and "looks like a bug" not in err


def test_sweep_into_a_read_only_folder(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if Path(p) == folder and mode & os.W_OK
                        else real(p, mode))
    code, _, err = run(capsys, "sweep", "wrn_10_1", "--blocks", "G(2)", "-o", folder, "--repeats", "1")
    assert code == 2 and "not writable" in err
    assert list(folder.iterdir()) == []


def test_sweep_api_cannot_create_its_folder(tmp_path, monkeypatch):
    from cheapconv.sweeper import sweep

    def refuse(self, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(UsageError, match="Cannot create the sweep folder"):
        sweep(TwoConv(), ["G(2)"], tmp_path / "sw", input_size=(3, 8, 8), repeats=1)


def test_train_with_a_missing_checkpoint_folder(tmp_path, capsys):
    code, _, err = run(capsys, "train", "wrn_10_1", "--data", "synthetic", "-o", tmp_path / "m.pt",
                       "--checkpoint", tmp_path / "missing" / "m.ckpt")
    assert code == 2 and "does not exist" in err


def _cheapconv_file(path: Path, **changes) -> Path:
    recipe = {"source": "wrn_10_1", "model": "wrn_10_1", "storage": "graph", "input_size": [3, 32, 32]}
    payload = {"format": "cheapconv", "format_version": 1, "recipe_json": json.dumps(recipe),
               "architecture": "{}", "state_dict": {"w": torch.zeros(2)}}
    for key, value in changes.items():
        if value is KeyError:
            payload.pop(key)
        else:
            payload[key] = value
    torch.save(payload, path)
    return path


@pytest.mark.parametrize("changes,fragment", [
    ({"recipe_json": KeyError}, "recipe is missing"),
    ({"recipe_json": 42}, "not JSON text"),
    ({"recipe_json": "{not json"}, "not valid JSON"),
    ({"recipe_json": "[1, 2]"}, "not an object"),
    ({"recipe_json": json.dumps({"storage": "recipe", "policy": "G(2)", "source": "wrn_10_1",
                                 "input_size": [3, "x", 32]})}, "input_size"),
    ({"recipe_json": json.dumps({"storage": 7})}, "'storage'"),
    ({"recipe_json": json.dumps({"storage": "graph", "plan": {"stages": [1]}})}, "stages"),
    ({"state_dict": KeyError}, "state_dict"),
    ({"state_dict": {"w": [1, 2]}}, "not a named tensor"),
    ({"architecture": 5}, "architecture"),
    ({"format_version": "1"}, "format_version"),
])
def test_malformed_cheapconv_files_are_file_format_errors(tmp_path, capsys, changes, fragment):
    path = _cheapconv_file(tmp_path / "bad.pt", **changes)
    with pytest.raises(FileFormatError, match=fragment):
        cheapconv.load(path)
    with pytest.raises(FileFormatError):
        read_recipe(path)
    code, out, err = run(capsys, "inspect", path)
    assert code == 2 and "malformed" in err and "looks like a bug" not in err


def test_a_zip_that_torch_rejects(tmp_path, capsys):
    path = tmp_path / "archive.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "not a torch file")
    with pytest.raises(FileFormatError):
        cheapconv.load(path)
    code, _, err = run(capsys, "inspect", path)
    assert code == 2 and "looks like a bug" not in err


def test_inspect_with_a_malformed_plan(tmp_path, capsys):
    recipe = {"storage": "graph", "plan": {"entries": [{"layer": 1}], "stages": []}}
    path = _cheapconv_file(tmp_path / "plan.pt", recipe_json=json.dumps(recipe))
    code, _, err = run(capsys, "inspect", path)
    assert code == 2 and "malformed plan" in err


# ------------------------------------------------------------------ 5. no tracebacks without --debug

def test_ctrl_c_while_the_command_line_starts(tmp_path):
    script = (
        "import builtins, sys\n"
        "real = builtins.__import__\n"
        "def imp(name, *a, **k):\n"
        "    if name == 'typer' or name.startswith('typer.'):\n"
        "        raise KeyboardInterrupt\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = imp\n"
        "sys.argv = ['cheapconv', 'blocks']\n"
        "from cheapconv_cli.main import run\n"
        "run()\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 130, result.stderr
    assert "Interrupted." in result.stderr and "Traceback" not in result.stderr


def test_errors_in_fx_generated_code_print_no_traceback(tmp_path, capsys):
    gm = fx.symbolic_trace(Reshaping())
    path = tmp_path / "gm.pt"
    torch.save(gm, path)
    code, out, err = run(capsys, "cheapen", path, "--trust", "--block", "G(2)", "--input-size", "3,5,5",
                         "--dry-run")
    assert code == 2, err
    assert "cannot run on --input-size 3,5,5" in err
    assert "Traceback" not in err + out and "FX-traced" not in err + out and "HERE" not in err + out
    # the fx wrapper is restored afterwards
    from torch.fx.graph_module import _WrappedCall

    assert not getattr(_WrappedCall.__call__, "_cheapconv_quiet", False)


# ------------------------------------------------------------------ 6. and 7. inspect prints the file literally

def test_inspect_prints_file_strings_literally(tmp_path, capsys):
    evil = "[bold red]PASSED[/bold red] \x1b[2J\x1b]0;title\x07 \u202eevil\x9b"
    recipe = {"storage": "graph", "source": evil, "policy": evil, "notes": [evil], "comment": evil,
              "plan": {"model": evil, "policy": evil, "mode": "graph", "input_shape": [3, 8, 8], "stages": [evil],
                       "entries": []}}
    path = _cheapconv_file(tmp_path / "evil.pt", recipe_json=json.dumps(recipe))
    code, out, err = run(capsys, "inspect", path)
    if code != 0:  # a Plan that needs more fields is a clean error, never a spoofed output
        assert code == 2 and "\x1b" not in err
        recipe.pop("plan")
        path = _cheapconv_file(tmp_path / "evil.pt", recipe_json=json.dumps(recipe))
        code, out, err = run(capsys, "inspect", path)
    assert code == 0, err
    assert "[bold red]PASSED[/bold red]" in out
    assert "\x1b" not in out + err and "\x07" not in out and "\u202e" not in out and "\x9b" not in out
    assert "\\x1b" in out


def test_literal_escapes_markup_and_controls():
    from rich.console import Console

    from cheapconv_cli.app import literal

    console = Console(width=200, force_terminal=False, record=True)
    console.print(literal("[red]x[/red] a\x1b[31mb\tc\nd\x7f"))
    text = console.export_text()
    assert "[red]x[/red]" in text and "\\x1b[31m" in text and "\\x09" in text and "\\x7f" in text
    assert "\nd" in text


def test_inspect_a_directory_says_it_is_a_directory(tmp_path, capsys):
    code, _, err = run(capsys, "inspect", tmp_path)
    assert code == 2 and "is a directory" in err and "does not exist" not in err
