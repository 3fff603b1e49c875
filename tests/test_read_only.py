"""An experiment folder that cannot be written to gets one line saying so (not an OSError traceback)."""

import json
import shutil
import subprocess

import pytest

from widthtune.cli import main
from widthtune.results.files import EXPERIMENT_FILE

pytestmark = pytest.mark.skipif(
    shutil.which("chattr") is None, reason="needs chattr to make a folder immutable"
)


@pytest.fixture
def frozen(tmp_path):
    folder = tmp_path / "exp"
    folder.mkdir()
    state = {
        "format": "widthtune.experiment",
        "config": {
            "name": "exp",
            "model": "resnet_cifar:depth=8",
            "method": "uniform",
            "storage": str(tmp_path),
        },
        "config_hash": "x",
        "tracking": {"uri": "sqlite:///x", "experiment_id": "1", "parent_run_id": "p"},
        "tune_storage": str(folder / "tune"),
        "studies": {"uniform": "pending"},
    }
    (folder / EXPERIMENT_FILE).write_text(json.dumps(state))
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("this filesystem does not take the immutable attribute")
    yield folder
    subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_resume_on_a_folder_that_cannot_be_written_says_so(frozen, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["resume", str(frozen)])
    err = capsys.readouterr().err.strip()
    assert exited.value.code == 2 and len(err.splitlines()) == 1, err
    assert "is not writable" in err and "Traceback" not in err


def test_report_on_a_folder_that_cannot_be_written_names_out_and_writes_there(frozen, tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["report", str(frozen)])
    err = capsys.readouterr().err.strip()
    assert exited.value.code == 2 and "is not writable" in err and "--out" in err, err
    with pytest.raises(SystemExit) as exited:
        main(["report", str(frozen), "--out", str(tmp_path / "elsewhere")])
    assert exited.value.code == 0, capsys.readouterr().err
    assert (tmp_path / "elsewhere" / "report.html").is_file()
