"""The names a study script needs are exported at the top level, and their documented examples run."""

from __future__ import annotations

import doctest

import pytest

import cheapconv

STUDY_NAMES = ("get_dataset", "block_timings", "measure_side_by_side")


@pytest.mark.parametrize("name", STUDY_NAMES)
def test_study_helpers_are_exported_and_their_examples_run(name):
    assert name in cheapconv.__all__
    function = getattr(cheapconv, name)
    tests = doctest.DocTestFinder().find(function, name, globs={"cheapconv": cheapconv})
    assert tests and tests[0].examples, f"{name} has no example in its docstring"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in tests:
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


def test_runner_parts_are_exported_and_their_example_runs():
    """A study that exports once and times several batch sizes uses the parts of ``measure_in_runtime``."""
    from cheapconv import measure

    assert {"describe_runtime", "make_runners", "time_side_by_side"} <= set(measure.__all__)
    tests = doctest.DocTestFinder().find(measure.make_runners, "make_runners", globs=vars(measure))
    assert tests and tests[0].examples
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in tests:
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
