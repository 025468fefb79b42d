"""Unit tests run against a fake machine whose running kernel is tests.fakes.V."""

import pytest

from tests.fakes import V


@pytest.fixture(autouse=True)
def running_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("platform.release", lambda: V)
