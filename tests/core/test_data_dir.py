"""Issue 15 item 9: one data dir whichever folder a command starts in; `serve` and `demo` say which; `demo`
adds to a running server's database and says where to look."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import platformdirs
import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from app.core.settings import Settings
from app.models import Dataset
from tests.browser import ROOT, serve, server_env


def test_the_default_data_dir_is_the_users_data_directory(monkeypatch) -> None:
    monkeypatch.delenv("ERRORBOOK_DATA_DIR")
    expected = Path(platformdirs.user_data_dir("errorbook", appauthor=False))
    assert Settings().data_dir == expected and expected.is_absolute()
    monkeypatch.setenv("ERRORBOOK_DATA_DIR", "/srv/errorbook")
    assert Settings().data_dir == Path("/srv/errorbook")


@pytest.mark.slow
def test_demo_from_another_folder_goes_to_the_running_servers_database(tmp_path: Path) -> None:
    server_data = tmp_path / "server-data"
    env = server_env(data_dir=server_data)
    log = tmp_path / "serve.log"
    with serve(env, log) as base_url:
        assert f"data dir: {server_data}" in log.read_text()
        elsewhere = tmp_path / "another-folder"
        elsewhere.mkdir()
        demo_env = {key: value for key, value in env.items() if key != "ERRORBOOK_DATA_DIR"}
        demo_env["HOME"] = str(tmp_path / "home")  # its own default data dir would be under here
        demo_env["PYTHONPATH"] = str(ROOT)
        result = subprocess.run(
            [sys.executable, "-m", "app.cli", "demo", "--images", "40", "--name", "Followed"],
            cwd=elsewhere,
            env=demo_env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"a server is running at {base_url}" in result.stdout
        assert f"data dir: {server_data}" in result.stdout
        engine = create_engine(f"sqlite:///{server_data / 'errorbook.db'}")
        with Session(engine) as session:
            dataset_id = session.scalar(select(Dataset.id).where(Dataset.name == "Followed"))
        engine.dispose()
        assert dataset_id is not None
        assert f"Open {base_url}/datasets/{dataset_id}" in result.stdout
        assert not (tmp_path / "home").exists() or not any((tmp_path / "home").rglob("errorbook.db"))
    assert not os.path.exists(tmp_path / "state" / "running-server.json")  # withdrawn when the server stopped
