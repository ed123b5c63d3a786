"""The registry behind every extension point (cheapconv.registry): names from file names without importing,
entries loaded on first use, run-time entries, clear errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from helpers import module_from_file, package_from_folder

from cheapconv.errors import UsageError
from cheapconv.registry import Registry


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    """A package ``toyplugins`` with two entry files and a private helper (importable by name: no sys.path edit)."""
    pkg = tmp_path / "toyplugins"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "_helpers.py").write_text("raise RuntimeError('helpers are not entries')\n")
    (pkg / "fashion_mnist.py").write_text(textwrap.dedent("""
        from toyregistry import REG
        @REG.register("fashion-mnist", help="clothes", aliases=("fmnist",))
        def build():
            return "fashion"
    """))
    (pkg / "cifar10.py").write_text(textwrap.dedent("""
        from toyregistry import REG
        REG.add("cifar10", "ten")
    """))
    (tmp_path / "toyregistry.py").write_text(textwrap.dedent("""
        from cheapconv.registry import Registry
        REG = Registry("dataset", package="toyplugins", hyphens=True)
    """))
    package_from_folder("toyplugins", pkg, monkeypatch)
    return module_from_file("toyregistry", tmp_path / "toyregistry.py", monkeypatch).REG


def test_names_come_from_file_names_without_importing(plugins):
    assert plugins.names() == ("cifar10", "fashion-mnist")
    assert "toyplugins.fashion_mnist" not in sys.modules
    assert plugins.describe() == "cifar10 or fashion-mnist"


def test_get_imports_on_first_use_and_aliases_resolve(plugins):
    assert plugins.get("fashion-mnist")() == "fashion"
    assert plugins.entry("fashion-mnist").help == "clothes"
    assert plugins.get("fmnist")() == "fashion" and "fmnist" in plugins
    assert plugins.get("cifar10") == "ten"


def test_unknown_name_lists_the_valid_ones_and_suggests(plugins):
    with pytest.raises(UsageError, match=r"Unknown dataset 'fashion-mnis'\. Valid: cifar10, fashion-mnist\. Did you "
                                         r"mean 'fashion-mnist'\?"):
        plugins.get("fashion-mnis")


def test_run_time_entries_join_and_leave(plugins):
    plugins.add("toy", object())
    assert "toy" in plugins.names()
    plugins.remove("toy")
    assert "toy" not in plugins.names()


def test_a_name_claimed_twice_is_an_error():
    reg = Registry("loss")
    reg.add("at", 1)
    reg.add("at", 1)                         # the same object again (a module imported twice): fine
    with pytest.raises(ValueError, match="registered twice"):
        reg.add("at", 2)


def test_listing_a_cheapconv_package_imports_nothing(tmp_path):
    code = ("import sys; from cheapconv.registry import Registry; before = set(sys.modules); "
            "print(Registry('x', package='cheapconv.blockswap').names()); print(sorted(set(sys.modules) - before))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    names, imported = done.stdout.splitlines()
    assert "searcher" in names and imported == "[]"


def test_an_alias_is_found_before_its_file_is_imported(plugins):
    assert "toyplugins.fashion_mnist" not in sys.modules
    assert plugins.get("fmnist")() == "fashion"


def test_spellings_name_entries_that_no_file_name_can_hold(tmp_path, monkeypatch):
    pkg = tmp_path / "toylosses"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "at_kd.py").write_text("from toylossreg import REG\nREG.add('at+kd', 'both')\n")
    (tmp_path / "toylossreg.py").write_text(
        "from cheapconv.registry import Registry\n"
        "REG = Registry('loss', package='toylosses', spellings={'at_kd': 'at+kd'})\n")
    package_from_folder("toylosses", pkg, monkeypatch)
    toylossreg = module_from_file("toylossreg", tmp_path / "toylossreg.py", monkeypatch)

    assert toylossreg.REG.names() == ("at+kd",) and "toylosses.at_kd" not in sys.modules
    assert toylossreg.REG.get("at+kd") == "both"
