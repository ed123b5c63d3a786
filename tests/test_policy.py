"""The policy grammar: ordered rules, first match wins, globs and regexes, files, errors with columns."""

from __future__ import annotations

import pytest

from cheapconv.blocks import parse_block
from cheapconv.errors import PolicySyntaxError, UsageError
from cheapconv.surgery.policy import Policy, parse_policy


@pytest.mark.parametrize("text,canonical", [
    ("G(4)", "G(4)"),
    ("conv1=keep; layer4.*=BG(2,4); G(4)", "conv1=S; layer4.*=BG(2,4); G(4)"),
    ("  conv1 = keep ;layer4.*= BG( 2 , M/4 )", "conv1=S; layer4.*=BG(2,M/4)"),
    ("re:layer[34]\\..*=G(N/2); DW", "re:layer[34]\\..*=G(N/2); G(N)"),
])
def test_round_trip(text, canonical):
    policy = parse_policy(text)
    assert str(policy) == canonical
    assert parse_policy(str(policy)) == policy


def test_first_match_wins_and_default_skips_the_stem():
    policy = parse_policy("layer4.*=BG(2,4); layer*=G(2); G(4)")
    assert policy.first_match("layer4.0.conv1")[1].block == parse_block("BG(2,4)")
    assert policy.first_match("layer1.0.conv1")[1].block == parse_block("G(2)")
    assert policy.first_match("features.3")[1].block == parse_block("G(4)")
    assert policy.first_match("conv1", is_stem=True) is None
    assert parse_policy("conv1=G(N); G(4)").first_match("conv1", is_stem=True)[0] == 0


def test_regex_must_match_the_whole_name():
    policy = parse_policy("re:layer1\\.0=G(2)")
    assert policy.first_match("layer1.0") is not None
    assert policy.first_match("layer1.0.conv1") is None


def test_policy_file_with_comments(tmp_path):
    f = tmp_path / "policy.txt"
    f.write_text("# searched by cheapconv\nconv1=keep   # the stem\n\nlayer4.*=B(2)\nG(4)\n")
    assert str(Policy.from_file(f)) == "conv1=S; layer4.*=B(2); G(4)"


def test_missing_policy_file():
    with pytest.raises(UsageError, match="Cannot read the policy file"):
        Policy.from_file("/nonexistent/policy.txt")


@pytest.mark.parametrize("text,fragment,line", [
    ("conv1=keep; layer4.*=BG(2); G(4)", "BG takes 2 arguments", "conv1=keep; layer4.*=BG(2); G(4)"),
    ("a=G(4)\nb=Q(3)", "unknown block 'Q'", "b=Q(3)"),
    ("=G(4)", "needs a selector", "=G(4)"),
    ("re:(=G(4)", "bad regular expression", "re:(=G(4)"),
])
def test_errors_show_the_offending_line(text, fragment, line):
    with pytest.raises(PolicySyntaxError) as info:
        parse_policy(text)
    assert fragment in str(info.value)
    assert f"    {line}\n" in str(info.value)


def test_caret_column_in_a_multi_rule_policy():
    with pytest.raises(PolicySyntaxError) as info:
        parse_policy("conv1=keep; layer4.*=G(0)")
    lines = str(info.value).splitlines()
    caret_line = lines[2]
    assert caret_line.index("^") - 4 == "conv1=keep; layer4.*=G(".__len__()


def test_empty_policy():
    with pytest.raises(PolicySyntaxError, match="empty"):
        parse_policy("  # nothing\n;")


def test_the_readmes_policy_error_example_is_the_real_output(capsys, tmp_path, monkeypatch):
    """README.md quotes a policy error on wrn_40_2: the command is run, and its output must be the quoted one."""
    import shlex
    from pathlib import Path

    from cheapconv_cli.main import main

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("$ cheapconv cheapen wrn_40_2 --policy", 1)[1].split("```", 1)[0]
    command, _, quoted = block.partition("\n")
    args = shlex.split("cheapen wrn_40_2 --policy" + command)
    monkeypatch.chdir(tmp_path)   # the command names an output file; it must fail before writing it
    assert main(args) == 2
    assert capsys.readouterr().err.rstrip() == quoted.rstrip()
    assert not any(tmp_path.iterdir())
