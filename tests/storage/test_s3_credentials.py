"""Wrong credentials: a store that checks keys refuses ours, and every command says so clearly, without the secret
in its output or in any log record (the SDK's debug logs included)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.s3_server import S3Server, s3_server

SECRET = "wrong-secret-4c1d9e-never-printed"


@pytest.fixture(scope="module")
def strict_server() -> Iterator[S3Server]:
    with s3_server(checks_credentials=True) as running:
        yield running


@pytest.mark.parametrize("command", [["storage", "verify"], ["worker"], ["serve", "--no-worker"], ["storage", "init"]])
def test_wrong_credentials_are_refused_clearly_and_the_secret_never_shows(
    command: list[str],
    strict_server: S3Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    from app.cli import cli
    from app.core.settings import get_settings

    for name, value in {
        "ERRORBOOK_DATA_DIR": str(tmp_path / "data"),
        "ERRORBOOK_STORAGE": "s3",
        "ERRORBOOK_S3_BUCKET": "errorbook",
        "ERRORBOOK_S3_ENDPOINT_URL": strict_server.endpoint_url,
        "AWS_ACCESS_KEY_ID": "AKIAWRONGKEY0000",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    caplog.set_level(logging.DEBUG)  # botocore logs requests at DEBUG: the secret must not be among them
    get_settings.cache_clear()
    try:
        refused = CliRunner().invoke(cli, command)
    finally:
        get_settings.cache_clear()
    captured = capfd.readouterr()
    assert refused.exit_code != 0, refused.output
    assert "refused the credentials" in refused.output, refused.output
    assert f"s3://errorbook/errorbook at {strict_server.endpoint_url}" in refused.output
    for text in (refused.output, caplog.text, captured.out, captured.err, repr(refused.exception)):
        assert SECRET not in text
    assert not (tmp_path / "data" / "errorbook.db").exists()  # refused before anything was written
