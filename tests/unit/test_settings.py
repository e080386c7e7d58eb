"""freestack.settings: every FREESTACK_* variable, typed and read in one place."""

from __future__ import annotations

import pytest

from freestack.settings import Settings, SettingsError, settings


def test_settings_follow_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FREESTACK_SERVE_PORT", "9123")
    assert settings().serve_port == 9123
    monkeypatch.setenv("FREESTACK_SERVE_PORT", "9124")  # read again: the variable changed
    assert settings().serve_port == 9124
    monkeypatch.setenv("FREESTACK_HOME", str(tmp_path))
    monkeypatch.delenv("FREESTACK_STORAGE_ROOT", raising=False)
    assert settings().default_storage_root == (tmp_path.resolve() / ".freestack" / "storage").as_uri()
    monkeypatch.setenv("FREESTACK_STORAGE_ROOT", "s3://conn@bucket/prefix/")
    assert settings().default_storage_root == "s3://conn@bucket/prefix"


@pytest.mark.parametrize(
    "value, on", [("1", True), ("on", True), (" true ", True), ("0", False), ("off", False)]
)
def test_on_off_settings(monkeypatch, value, on):
    monkeypatch.setenv("FREESTACK_SPEEDUPS", value)
    assert settings().speedups is on


def test_a_value_that_does_not_parse_names_the_variable(monkeypatch):
    monkeypatch.setenv("FREESTACK_SERVE_PORT", "ninety")
    with pytest.raises(
        SettingsError, match=r"FREESTACK_SERVE_PORT='ninety': Input should be a valid integer"
    ):
        settings()
    monkeypatch.setenv("FREESTACK_SERVE_PORT", "80")
    with pytest.raises(
        SettingsError, match=r"FREESTACK_SERVE_PORT='80': Input should be greater than or equal to 1024"
    ):
        settings()


def test_every_setting_is_documented():
    """The settings reference is generated from these descriptions: none may be missing."""
    undocumented = [name for name, field in Settings.model_fields.items() if not field.description]
    assert undocumented == []


def test_no_freestack_variable_is_read_outside_the_settings():
    """One settings object: the package reads no FREESTACK_* variable itself (the CLI may set one for the
    processes it starts)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    reads = re.compile(
        r"os\.(environ\.get|getenv)\(\s*[\"']FREESTACK_|os\.environ\[[\"']FREESTACK_[A-Z_]+[\"']\](?!\s*=)"
    )
    found = [
        f"{p.relative_to(root)}:{n}"
        for p in [*(root / "plugins").rglob("*.py"), root / "plugins/freestack_server/seldon/model.py"]
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if reads.search(line)
    ]
    assert found == []
