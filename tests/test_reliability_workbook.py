"""Run records tell the truth: a notebook counts as ok only when the runner recorded its success;
a dead kernel, Ctrl-C, a full disk or a second run into the same folder are named as such."""

import errno
import json
import os
import subprocess
import sys

import pytest

from ltcutils import workbook as wb
from ltcutils.workbook import execution
from test_workbook import FIXTURE, write_nb


def _status(run_dir):
    df = wb.report([run_dir])
    return dict(zip(df["notebook"], df["status"]))


def test_a_killed_kernel_reports_failed(tmp_path):
    nbdir = tmp_path / "nb"
    nbdir.mkdir()
    write_nb(nbdir / "00_die_here.ipynb", "output_dir = '.'  # run folder",
             "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", "after = 1")
    out = tmp_path / "run"
    with pytest.raises(wb.NotebookFailed, match="00_die_here.ipynb failed outside its cells: DeadKernelError"):
        wb.run_workbook(notebooks_dir=nbdir, out=out, progress=False)
    assert _status(out) == {"00_die_here": "failed"}
    record = json.loads((out / wb.MANIFEST).read_text())
    assert not record["ok"] and record["notebooks"][0]["status"] == "failed"


def test_ctrl_c_is_one_line_and_never_reads_as_ok(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert wb.main(["run", str(FIXTURE), "--out", str(out), "-q"]) == 0
    assert _status(out) == {"00_demo_fixture": "ok"}
    import papermill

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(papermill, "execute_notebook", interrupted)
    capsys.readouterr()
    assert wb.main(["run", str(FIXTURE), "--out", str(out)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["ltc: interrupted; finished notebooks and cached captures are kept, resume with the same command"]
    # the executed notebook of the earlier ok run is still there, but the record of this run decides
    assert (out / "00_demo_fixture.ipynb").is_file()
    assert _status(out) == {"00_demo_fixture": "interrupted"}
    assert json.loads((out / wb.MANIFEST).read_text())["notebooks"][0]["status"] == "interrupted"


def test_the_record_says_running_while_a_notebook_runs_and_a_failing_write_does_not_hide_the_error(
        tmp_path, monkeypatch):
    out = tmp_path / "run"
    wb.run_workbook([FIXTURE], out=out, progress=False)  # an earlier ok run
    import papermill

    seen = {}

    def full_disk(*a, **k):
        seen["record"] = json.loads((out / wb.MANIFEST).read_text())
        seen["status"] = _status(out)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(papermill, "execute_notebook", full_disk)
    real = execution.atomic_write

    def no_space_for_the_final_record(path, data):
        if '"running"' not in str(data) and path.name == wb.MANIFEST:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(execution, "atomic_write", no_space_for_the_final_record)
    with pytest.raises(wb.NotebookFailed, match="No space left on device"):
        wb.run_workbook([FIXTURE], out=out, progress=False)
    assert seen["record"]["notebooks"][0]["status"] == "running" and not seen["record"]["ok"]
    assert seen["status"] == {"00_demo_fixture": "running"}  # the lock is held: it really runs
    # the final record could not be written: what is on disk says running, which report reads as
    # interrupted once nobody holds the folder, never the earlier "ok"
    assert _status(out) == {"00_demo_fixture": "interrupted"}


def test_a_second_run_into_a_held_folder_says_who_holds_it(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from ltcutils.workbook import execution as e; "
        f"lock = e.RunLock({str(out)!r}); lock.acquire(); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(wb.WorkbookError, match=rf"another ltc run \(pid {holder.pid}, started .*\) is using "
                                                   rf".*run.*wait for it to finish or pass another --out"):
            wb.run_workbook([FIXTURE], out=out, progress=False)
        assert holder.poll() is None  # refused while the lock was held: it did not wait for the holder
        assert not (out / "00_demo_fixture.ipynb").exists()
    finally:
        holder.kill()
        holder.wait()
    wb.run_workbook([FIXTURE], out=out, progress=False)  # the lock died with its process
    assert _status(out) == {"00_demo_fixture": "ok"}


def test_notebooks_of_an_earlier_run_into_the_same_folder_keep_their_record(tmp_path):
    nbdir = tmp_path / "nb"
    nbdir.mkdir()
    write_nb(nbdir / "00_first_step.ipynb", "output_dir = '.'  # run folder", "x = 1")
    write_nb(nbdir / "01_second_step.ipynb", "output_dir = '.'  # run folder", "y = 2")
    out = tmp_path / "run"
    wb.run_workbook(["00"], notebooks_dir=nbdir, out=out, progress=False)
    wb.run_workbook(["01"], notebooks_dir=nbdir, out=out, progress=False)
    assert _status(out) == {"00_first_step": "ok", "01_second_step": "ok"}


def _mount_tmpfs(where, size):
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True).returncode == 0


@pytest.mark.integration
def test_a_capture_into_a_full_disk_fails_with_the_size_and_keeps_earlier_results(tmp_path):
    """A notebook capturing into a 20 MB tmpfs: one clear error, the earlier notebook's results intact."""
    mnt = tmp_path / "small"
    if not _mount_tmpfs(mnt, "20m"):
        pytest.skip("cannot mount a tmpfs here (needs root); tests/test_reliability_store.py injects ENOSPC")
    try:
        nbdir = tmp_path / "nb"
        nbdir.mkdir()
        write_nb(nbdir / "00_small_step.ipynb", "output_dir = '.'  # run folder",
                 "import ltcutils as ltc\nltc.workbook.write_metrics('00_small_step', {'x': 1}, output_dir)")
        write_nb(nbdir / "01_big_capture.ipynb", "output_dir = '.'  # run folder\ncache = ''  # cache folder",
                 "import numpy as np, ltcutils as ltc\nfrom PIL import Image\n"
                 "from ltcutils.datasets.base import GroupDataset\n"
                 "n = 24000\ny = np.arange(n) % 2\n"
                 "ds = GroupDataset('big', 'test', ['a', 'b'], ['u', 'v'], y, y, 2 * y, ['a/u', 'a/v', 'b/u', 'b/v'],"
                 " lambda i: Image.new('RGB', (64, 64)), [str(i) for i in range(n)])\n"
                 "m = ltc.models.load_model('ltc-tiny')\n"
                 "ltc.capture.capture(m, ds, cache, dtype='float32', progress=False)")
        out = mnt / "run"
        wb.run_workbook(["00"], notebooks_dir=nbdir, out=out, progress=False)
        before = (out / "metrics" / "00_small_step.json").read_text()
        with pytest.raises(wb.NotebookFailed, match=r"StoreError: the store for big/test needs \d+\.\d MB at "
                                                    r".*cache.*only \d+ bytes"):
            wb.run_workbook(["01"], notebooks_dir=nbdir, out=out, params={"cache": str(mnt / "cache")},
                            progress=False)
        assert (out / "metrics" / "00_small_step.json").read_text() == before
        assert _status(out) == {"00_small_step": "ok", "01_big_capture": "failed"}
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mnt)], check=False)
