"""``fedwarden new``: a starter project that runs at once, and never over existing files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

import fedwarden
from fedwarden.cli import app

# -P: no working directory on sys.path, as when the installed `fedwarden` script starts.
FEDWARDEN = [sys.executable, "-P", "-m", "fedwarden.cli"]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    source = str(Path(fedwarden.__file__).resolve().parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")])),
    }
    return subprocess.run(
        [*FEDWARDEN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def _new(folder: Path) -> Result:
    """``fedwarden new FOLDER`` in this process: what it writes, without a start-up to pay."""
    return CliRunner().invoke(app, ["new", str(folder)])


@pytest.mark.slow
def test_a_new_project_runs_from_its_folder_and_learns(tmp_path: Path) -> None:
    made = _new(tmp_path / "demo")
    assert made.exit_code == 0, made.output
    project = tmp_path / "demo"
    assert {p.name for p in project.iterdir()} == {
        ".gitignore",
        "README.md",
        "config.toml",
        "data",
        "model.py",
    }
    tables = sorted(p.name for p in (project / "data").glob("*.csv"))
    assert tables == ["_test.csv", "clinic_a.csv", "clinic_b.csv", "clinic_c.csv", "clinic_d.csv"]

    completed = _cli("run", "config.toml", "--json", cwd=project)
    assert completed.returncode == 0, completed.stderr
    summary = json.loads(completed.stdout)
    assert summary["rounds"] == 10
    assert summary["num_clients"] == 4
    assert summary["accuracy"] > 0.93  # central test set, 114 patients
    assert (project / summary["run_dir"] / "model.npz").is_file()


def test_an_existing_folder_with_files_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    project = tmp_path / "demo"
    project.mkdir()
    (project / "notes.txt").write_text("mine")
    refused = _new(project)
    assert refused.exit_code == 2
    assert "demo already exists and is not an empty folder" in refused.stderr
    assert "fedwarden new never overwrites files" in refused.stderr
    assert [p.name for p in project.iterdir()] == ["notes.txt"]


def test_a_name_the_run_cannot_take_is_refused(tmp_path: Path) -> None:
    refused = _new(tmp_path / "my project")
    assert refused.exit_code == 2
    assert "NAME 'my project' also names the run" in refused.stderr
    assert not (tmp_path / "my project").exists()
