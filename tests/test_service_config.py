"""Settings from the environment: empty variables mean unset (compose/k8s pass empty strings through)."""

from __future__ import annotations

import pytest

from service.config import Settings


def test_empty_api_key_means_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEREC_API_KEY", "")
    monkeypatch.setenv("EDGEREC_ADMIN_API_KEY", "")
    s = Settings()
    assert s.api_key is None and s.admin_api_key is None


def test_set_api_key_and_port_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEREC_API_KEY", "k1")
    monkeypatch.setenv("EDGEREC_PORT", "9001")
    s = Settings()
    assert s.api_key is not None and s.api_key.get_secret_value() == "k1" and s.port == 9001


def test_invalid_port_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEREC_PORT", "70000")
    with pytest.raises(ValueError, match="port"):
        Settings()
