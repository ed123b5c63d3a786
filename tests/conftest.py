"""Shared fixtures. Everything runs on CPU; tests that need minutes are marked ``slow``."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def wrn16():
    from cheapconv.models import WideResNet

    return WideResNet(16, 2)
