"""Output meant for programs is plain text on stdout: never wrapped, marked up or coloured (issue 16).

Run as a user's script would: a subprocess with stdout piped, a narrow ``COLUMNS`` and a long model path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import cheapconv


def _run(args, tmp_path, columns="40"):
    env = {**os.environ, "COLUMNS": columns, "TERM": "xterm-256color", "FORCE_COLOR": ""}
    env.pop("FORCE_COLOR")
    return subprocess.run([sys.executable, "-m", "cheapconv_cli.main", *args], capture_output=True, text=True,
                           env=env, cwd=tmp_path, timeout=300)


@pytest.fixture(scope="module")
def long_path(tmp_path_factory):
    folder = tmp_path_factory.mktemp("a-folder-with-a-rather-long-name-" + "x" * 60)
    path = folder / ("student-with-a-long-file-name-" + "y" * 40 + ".pt")
    cheapconv.save(cheapconv.cheapen(cheapconv.create_model("wrn_10_1"), "G(2)"), path)
    return path


def test_evaluate_json_parses_whatever_the_width(long_path, tmp_path):
    proc = _run(["evaluate", str(long_path), "--data", "synthetic:3x32x32:10:64", "--json", "--batch-size", "32"],
                tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["model"] == str(long_path) and 0 <= result["top1"] <= 1
    assert "\x1b" not in proc.stdout


def test_search_policy_on_stdout_is_the_file_verbatim(tmp_path):
    proc = _run(["search", "wrn_10_1", "--budget", "60%", "--samples", "2", "--batch-size", "8",
                 "--candidates", "S, G(2), B(2)", "--top", "1"], tmp_path, columns="20")
    assert proc.returncode == 0, proc.stderr
    # the results table comes first (for people); the policy file follows verbatim, from its header on
    text = proc.stdout[proc.stdout.index("# cheapconv search"):]
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert all("=" in ln for ln in lines), text  # every line a whole rule: nothing was wrapped
    policy = cheapconv.parse_policy("\n".join(lines))
    assert policy.rules and "\x1b" not in proc.stdout


def test_tables_in_a_pipe_carry_no_escape_codes(long_path, tmp_path):
    proc = _run(["inspect", str(long_path)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stdout and "G(2)" in proc.stdout
