"""Shared fixtures. Everything runs on CPU; tests that need minutes are marked ``slow``."""

from __future__ import annotations

import pytest
import torch

from cheapconv.threads import limited_threads


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Every test on one intra-op thread (the count before is restored at the end). The models here are
    tiny and gain nothing from a second thread, and on a 2-core machine shared with other jobs two OpenMP
    threads wait on each other at every operator (5-10× slower steps, 100× for the tiniest forwards).
    Session-wide, so that module-scoped fixtures (trained models, search spaces) are built on one thread
    too."""
    with limited_threads(1):
        yield


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def wrn16():
    from cheapconv.models import WideResNet

    return WideResNet(16, 2)
