"""colab.ipynb's Kaggle credentials, its own cell run here with a stand-in for Colab's ``google.colab.userdata``:
Colab's secrets first, else a ``kaggle.json`` uploaded beside the notebook (which has moved into its clone by
then), else one line that says what to do."""

from __future__ import annotations

import json
import stat
import sys
import types
from collections.abc import Callable
from pathlib import Path

import nbformat
import pytest

from tests.conftest import REPO

TOKEN = {"username": "someone", "key": "0123456789abcdef"}


def _credentials_cell() -> str:
    book = nbformat.read(REPO / "notebooks/colab.ipynb", as_version=4)
    (source,) = [cell.source for cell in book.cells if "def kaggle_credentials" in cell.source]
    return source


def _userdata(secrets: dict[str, str] | None) -> types.ModuleType:
    """``google.colab.userdata`` as Colab has it: ``get`` raises SecretNotFoundError for a secret not set."""
    userdata = types.ModuleType("google.colab.userdata")

    class SecretNotFoundError(Exception):
        pass

    class NotebookAccessError(Exception):
        pass

    def get(key: str) -> str:
        if secrets is None:
            raise NotebookAccessError(key)
        if key not in secrets:
            raise SecretNotFoundError(key)
        return secrets[key]

    userdata.SecretNotFoundError, userdata.NotebookAccessError, userdata.get = (
        SecretNotFoundError,
        NotebookAccessError,
        get,
    )
    return userdata


@pytest.fixture
def notebook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Callable[[], None]]:
    """The folder Jupyter started the notebook in, and the cell's ``kaggle_credentials``, called as in Colab: from
    inside the clone, with a home of its own. Outside Colab unless a test puts ``google.colab`` in place."""
    here, clone, home = tmp_path / "content", tmp_path / "content/dogs-vs-cats-dvc", tmp_path / "home"
    clone.mkdir(parents=True)
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setitem(sys.modules, "google.colab", None)  # import fails, as outside Colab
    monkeypatch.chdir(clone)  # where the cell before it went
    namespace = {"KAGGLE": False, "HERE": here}  # the earlier cells' settings; the test calls the function itself
    exec(compile(_credentials_cell(), "colab.ipynb", "exec"), namespace)
    return here, namespace["kaggle_credentials"]


def _in_colab(monkeypatch: pytest.MonkeyPatch, secrets: dict[str, str] | None) -> None:
    colab = types.ModuleType("google.colab")
    colab.userdata = _userdata(secrets)
    monkeypatch.setitem(sys.modules, "google.colab", colab)


def _written() -> dict:
    target = Path.home() / ".kaggle/kaggle.json"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    return json.loads(target.read_text())


def test_colab_secrets_are_written_readable_by_the_user_alone(notebook, monkeypatch, capsys) -> None:
    _, kaggle_credentials = notebook
    _in_colab(monkeypatch, {"KAGGLE_USERNAME": TOKEN["username"], "KAGGLE_KEY": TOKEN["key"]})
    kaggle_credentials()
    assert _written() == TOKEN
    assert TOKEN["key"] not in capsys.readouterr().out


@pytest.mark.parametrize("secrets", [{}, {"KAGGLE_USERNAME": "someone"}, None], ids=["none", "one", "no-access"])
def test_without_colab_secrets_a_kaggle_json_uploaded_beside_the_notebook_is_used(
    notebook, monkeypatch, secrets: dict | None
) -> None:
    here, kaggle_credentials = notebook
    _in_colab(monkeypatch, secrets)  # SecretNotFoundError, or NotebookAccessError: access not granted
    (here / "kaggle.json").write_text(json.dumps(TOKEN))
    kaggle_credentials()
    assert _written() == TOKEN
    assert not (here / "kaggle.json").exists()  # moved, not left beside the notebook


def test_outside_colab_a_kaggle_json_beside_the_notebook_is_used(notebook) -> None:
    here, kaggle_credentials = notebook
    (here / "kaggle.json").write_text(json.dumps(TOKEN))
    kaggle_credentials()
    assert _written() == TOKEN


def test_credentials_already_in_place_are_kept(notebook, monkeypatch) -> None:
    _, kaggle_credentials = notebook
    _in_colab(monkeypatch, {})
    (Path.home() / ".kaggle").mkdir()
    (Path.home() / ".kaggle/kaggle.json").write_text(json.dumps(TOKEN))
    kaggle_credentials()
    assert _written() == TOKEN


def test_no_credentials_anywhere_stop_the_notebook_with_one_line(notebook, monkeypatch) -> None:
    _, kaggle_credentials = notebook
    _in_colab(monkeypatch, {})
    with pytest.raises(SystemExit) as stopped:
        kaggle_credentials()
    message = str(stopped.value)
    assert "\n" not in message and "KAGGLE_USERNAME" in message and "kaggle.json" in message
