"""Which packages a wheel holds, found rather than listed: every package under cheapconv/ (a hand-written list once
left cheapconv.reconstruction out, and every non-editable install failed to import), plus the command line, which
lives in the top-level cli/ folder but installs as ``cheapconv_cli`` so that it cannot collide with other
distributions that ship a package called ``cli``. Everything else about the distribution is in setup.cfg."""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["cheapconv", "cheapconv.*"]) + ["cheapconv_cli"],
    package_dir={"cheapconv_cli": "cli"},
)
