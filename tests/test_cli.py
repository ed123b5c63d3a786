"""The command line: results on stdout, diagnostics on stderr, exit codes 0/1/2, no tracebacks, no
half-written outputs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import cheapconv
from cheapconv_cli.main import main


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cheapen_writes_a_student_and_prints_plan_and_summary(tmp_path, capsys):
    out_file = tmp_path / "student.pt"
    code, out, err = run(capsys, "cheapen", "wrn_16_2", "--block", "G(4)", "-o", str(out_file))
    assert code == 0, err
    assert "block1.0.conv1" in out and "replace" in out
    assert "params (paper)" in out and "693,498" in out and "MACs" in out
    assert "Attention-transfer taps: block1, block2, block3" in out
    assert f"Wrote {out_file}" in err
    student = cheapconv.load(out_file)
    assert cheapconv.count_params(student, "paper") < 693_498


def test_dry_run_writes_nothing(tmp_path, capsys):
    code, out, err = run(capsys, "cheapen", "wrn_16_2", "--policy", "conv1=keep; block3.*=BG(2,4); G(4)",
                         "--dry-run", "--changes-only")
    assert code == 0
    assert "block3.0.conv1+conv2" in out and "BG(2,4)" in out
    assert "Dry run" in err
    assert list(tmp_path.iterdir()) == []


def test_policy_file(tmp_path, capsys):
    policy = tmp_path / "p.txt"
    policy.write_text("block1.*=G(2)\nB(2)\n")
    code, out, _ = run(capsys, "cheapen", "wrn_16_2", "--policy-file", str(policy), "--dry-run")
    assert code == 0 and "G(2)" in out and "B(2)" in out


@pytest.mark.parametrize("spec,fragment", [
    ("G(0)", "at least 1"), ("G(4", "missing ')'"), ("Q(2)", "unknown block 'Q'"), ("BG(2)", "BG takes 2 arguments"),
])
def test_malformed_policies_exit_2(tmp_path, capsys, spec, fragment):
    out_file = tmp_path / "s.pt"
    code, out, err = run(capsys, "cheapen", "wrn_16_2", "--block", spec, "-o", str(out_file))
    assert code == 2
    assert fragment in err and "Valid blocks" in err
    assert "Traceback" not in err + out
    assert not out_file.exists()


@pytest.mark.parametrize("argv,code,fragment", [
    (["cheapen", "resnet343", "--block", "G(4)", "-o", "{tmp}/s.pt"], 2, "Did you mean 'resnet34'"),
    (["cheapen", "wrn_16_2", "--policy", "layer9.*=G(4)", "-o", "{tmp}/s.pt"], 2, "selects nothing"),
    (["cheapen", "wrn_16_2", "--block", "G(4)", "-o", "{tmp}/missing/s.pt"], 2, "does not exist"),
    (["cheapen", "wrn_16_2", "--block", "G(4)", "--policy", "G(2)", "-o", "{tmp}/s.pt"], 2, "exactly one of"),
    (["cheapen", "wrn_16_2", "--block", "G(3)", "--strict", "-o", "{tmp}/s.pt"], 2, "Under --strict"),
    (["cheapen", "wrn_16_2", "--block", "G(4)", "--input-size", "3,32", "-o", "{tmp}/s.pt"], 2, "C,H,W"),
    (["cheapen", "{tmp}/junk.pt", "--block", "G(4)", "-o", "{tmp}/s.pt"], 2, "not a torch or cheapconv file"),
    (["cheapen", "wrn_16_2", "--policy-file", "{tmp}/nope.txt", "-o", "{tmp}/s.pt"], 2, "Cannot read the policy"),
    (["inspect", "{tmp}/junk.pt"], 2, "not a torch or cheapconv file"),
    (["cheapen", "wrn_16_2", "--block", "G(4)"], 2, "output file is required"),
])
def test_bad_input_exit_codes(tmp_path, capsys, argv, code, fragment):
    (tmp_path / "junk.pt").write_bytes(b"junk")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    got, out, err = run(capsys, *argv)
    assert got == code, err
    assert fragment in err
    assert "Traceback" not in err + out
    assert not (tmp_path / "s.pt").exists()


def test_untrusted_model_file_needs_trust(tmp_path, capsys):
    import torch
    from torch import nn

    path = tmp_path / "pickled.pt"
    torch.save(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)), path)
    code, _, err = run(capsys, "cheapen", str(path), "--block", "G(4)", "--input-size", "3,16,16", "--dry-run")
    assert code == 2 and "--trust" in err
    code, out, _ = run(capsys, "cheapen", str(path), "--block", "G(4)", "--input-size", "3,16,16", "--dry-run",
                       "--trust")
    assert code == 0 and "replace" in out


def test_inspect_prints_recipe_plan_and_totals(tmp_path, capsys):
    out_file = tmp_path / "s.pt"
    assert run(capsys, "cheapen", "wrn_16_2", "--block", "B(2)", "-o", str(out_file))[0] == 0
    code, out, _ = run(capsys, "inspect", str(out_file))
    assert code == 0
    for fragment in ("wrn_16_2", "B(2)", "graph", "version torch", "block1.0.conv1+conv2", "params (paper)"):
        assert fragment in out


def test_blocks_lists_every_family(capsys):
    code, out, _ = run(capsys, "blocks")
    assert code == 0
    for family in ("S-2x2", "G(g)", "B(b)", "BG(b,g)", "DW", "keep"):
        assert family in out


def test_debug_shows_the_traceback(capsys):
    with pytest.raises(cheapconv.UsageError):
        main(["--debug", "cheapen", "nonexistent_model", "--block", "G(4)", "--dry-run"])


def test_console_script_exit_code_in_a_real_process(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "cheapconv")
    result = subprocess.run([exe, "cheapen", "wrn_16_2", "--block", "G(0)", "-o", str(tmp_path / "s.pt")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "at least 1" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""
