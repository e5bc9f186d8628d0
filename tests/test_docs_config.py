"""The README's configuration table lists every service setting (a new setting must be documented)."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import Settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("doc", ["README.md", "service/README.md"])
def test_every_setting_is_in_the_configuration_table(doc):
    text = (ROOT / doc).read_text()
    missing = [
        f"EDGEREC_{name.upper()}" for name in Settings.model_fields if f"`EDGEREC_{name.upper()}`" not in text
    ]
    assert missing == [], f"{doc} does not document {missing}"
