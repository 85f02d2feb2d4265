"""Parameter sweeps (ltcutils.workbook.sweep) on a tiny fixture notebook that writes methods metrics.

The fixture stands in for notebook 05: its metrics depend on the seed in a known way, so the
summary's mean ± sd can be checked by hand. Each point costs one kernel start (1-4 s); the
tests run 9 in all. The summary and the grid are also tested on fabricated run folders.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import nbformat  # noqa: E402
import pytest  # noqa: E402
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook  # noqa: E402

from ltcutils import workbook as wb  # noqa: E402
from ltcutils.workbook import sweep as sw  # noqa: E402

PARAMS = '''seed = 0  # the seed
scale = 1.0  # multiplies nothing; a second grid key
fail_flag = None  # a file path: while it exists, the point with seed 1 raises
slow_flag = None  # a file path: while it exists, the point with seed 1 sleeps 120 s (to be killed)
log = None  # a file every execution appends "<seed> start" / "<seed> end" to
cache_dir = None  # the decomposition cache (the sweep sets one per point)
output_dir = "outputs"  # the run folder'''

BODY = '''import time
from pathlib import Path
import ltcutils as ltc

def note(what):
    if log:
        with open(log, "a") as f:
            f.write(f"{seed} {what}\\n")

note("start")
if cache_dir:  # what a decomposition cache would hold: data of this point only
    c = Path(cache_dir)
    c.mkdir(parents=True, exist_ok=True)
    (c / f"store-seed{seed}.txt").write_text(str(seed))
if slow_flag and Path(slow_flag).exists() and seed == 1:
    time.sleep(120)
if fail_flag and Path(fail_flag).exists() and seed == 1:
    raise RuntimeError("failing on purpose while the flag file exists")

def row(wg, avg):
    return {"wg": wg, "avg_sample": avg, "gap": avg - wg, "wg_ci_low": wg - 2, "wg_ci_high": wg + 2}

metrics = {"zero_shot": row(50.0 + seed, 80.0), "ltc": row(60.0 + 2 * seed, 82.0 + seed),
           "random": {"wg": 52.0, "wg_sd": 1.5, "avg_sample": 80.5, "gap": 28.5, "draws": 10}}
ltc.workbook.write_metrics("05_compare_methods", metrics, output_dir)
note("end")'''


def write_methods_nb(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    cells = [new_markdown_cell("# 05 fixture: methods metrics from the seed"),
             new_code_cell(PARAMS, metadata={"tags": ["parameters"]}), new_code_cell(BODY)]
    nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                            "language": "python"}})
    path = directory / "05_compare_methods.ipynb"
    nbformat.write(nb, str(path))
    return path


def log_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


# ------------------------------------------------------------------------------ without kernels
def test_grid_points_are_the_cartesian_product_in_file_order():
    pts = sw.grid_points({"model": ["ViT-B-16", "ltc-tiny"], "seed": [0, 1], "layers": [[10, 11]]})
    assert [n for n, _ in pts] == ["model-ViT-B-16__seed-0__layers-10-11", "model-ViT-B-16__seed-1__layers-10-11",
                                   "model-ltc-tiny__seed-0__layers-10-11", "model-ltc-tiny__seed-1__layers-10-11"]
    assert pts[1][1] == {"model": "ViT-B-16", "seed": 1, "layers": [10, 11]}
    with pytest.raises(wb.ParameterError, match="share the folder"):
        sw.grid_points({"tag": ["a b", "a/b"]})


def test_load_grid_validates(tmp_path):
    grid, opts, fixed = sw.load_grid({"grid": {"seed": [0, 1]}, "n_per_group": 20,
                                      "notebooks": {"05_compare_methods": {"scale": 2}}})
    assert grid == {"seed": [0, 1]} and opts == {"cache": "per_point", "over": "seed"}
    assert fixed == {"n_per_group": 20, "notebooks": {"05_compare_methods": {"scale": 2}}}
    with pytest.raises(wb.ParameterError, match="needs a grid"):
        sw.load_grid({"seed": 0})
    with pytest.raises(wb.ParameterError, match="non-empty list"):
        sw.load_grid({"grid": {"seed": 3}})
    with pytest.raises(wb.ParameterError, match="unknown sweep option"):
        sw.load_grid({"grid": {"seed": [0]}, "sweep": {"outdir": "x"}})
    with pytest.raises(wb.ParameterError, match="both in grid"):
        sw.load_grid({"grid": {"seed": [0]}, "seed": 1})
    with pytest.raises(FileNotFoundError):
        sw.load_grid(tmp_path / "nope.yaml")


def _fake_point(root: Path, name: str, values: dict, wg_zero: float, wg_ltc: float) -> sw.Point:
    d = root / name
    wb.write_metrics("05_compare_methods", {"zero_shot": {"wg": wg_zero, "avg_sample": 80.0, "gap": 80.0 - wg_zero},
                                            "ltc": {"wg": wg_ltc, "avg_sample": 81.0, "gap": 81.0 - wg_ltc}}, d)
    return sw.Point(name, values, d, status="ok")


def test_summary_mean_and_sd_over_seeds_per_other_combination(tmp_path):
    pts = [_fake_point(tmp_path, f"m{m}s{s}", {"model": m, "seed": s}, 40.0 + s + 10 * m, 60.0 + 3 * s)
           for m in (0, 1) for s in (0, 1, 2)]
    pts.append(sw.Point("broken", {"model": 0, "seed": 9}, tmp_path / "broken", status="failed"))
    table = sw.summarize(pts, over="seed")
    assert table.runs == ["model=0", "model=1"]
    # zero-shot WG for model 0: 40, 41, 42 -> mean 41, sample sd 1; model 1: 51 +- 1; LTC: 60, 63, 66 -> 63 +- 3
    z0, z1 = table.values["model=0"]["zero_shot"], table.values["model=1"]["zero_shot"]
    assert z0["wg"] == pytest.approx(41.0) and z0["wg_sd"] == pytest.approx(1.0)
    assert z1["wg"] == pytest.approx(51.0) and z1["wg_sd"] == pytest.approx(1.0)
    ltc = table.values["model=0"]["ltc"]
    assert ltc["wg"] == pytest.approx(63.0) and ltc["wg_sd"] == pytest.approx(3.0)
    assert ltc["gap_sd"] == pytest.approx(3.0)
    md = table.to_markdown()
    assert "41.0 ± 1.0" in md and "63.0 ± 3.0" in md and "51.0 ± 1.0" in md
    assert "over 3 values of seed" in md and "bootstrap" not in md  # the caption says what ± means
    single = sw.summarize(pts[:1], over="seed")
    assert "wg_sd" not in single.values["model=0"]["zero_shot"]  # one point: no sd


# ------------------------------------------------------------------------------ real sweeps
@pytest.fixture
def nb_dir(tmp_path):
    d = tmp_path / "nb"
    write_methods_nb(d)
    return d


@pytest.mark.integration  # starts a kernel per sweep point: make test, not make test-fast
def test_sweep_runs_points_skips_finished_and_retries_failed(tmp_path, nb_dir, capsys):
    log, flag = tmp_path / "log.txt", tmp_path / "fail.flag"
    flag.write_text("x")
    grid = {"grid": {"seed": [0, 1, 2]}, "fail_flag": str(flag), "log": str(log)}
    out = tmp_path / "sweep"
    r1 = sw.run_sweep(grid, out=out, notebooks_dir=nb_dir, progress=True)
    assert [p.status for p in r1.points] == ["ok", "failed", "ok"] and not r1.ok
    assert "failing on purpose" in r1.failed[0].error
    printed = capsys.readouterr().out
    assert "FAILED seed-1 (runs again on the next call)" in printed
    record = json.loads((out / sw.SWEEP_RECORD).read_text())
    assert [p["status"] for p in record["points"]] == ["ok", "failed", "ok"]
    # caches are per point: each holds its own seed's file only
    assert sorted(p.name for p in (out / "cache").iterdir()) == ["seed-0", "seed-1", "seed-2"]
    assert [f.name for f in (out / "cache" / "seed-2").iterdir()] == ["store-seed2.txt"]
    # the summary covers the two finished points: zero-shot WG 50, 52 -> 51 +- 1.414
    assert r1.summary.values["all"]["zero_shot"]["wg"] == pytest.approx(51.0)
    assert r1.summary.values["all"]["zero_shot"]["wg_sd"] == pytest.approx(2 ** 0.5)

    flag.unlink()
    n_before = len(log_lines(log))
    r2 = sw.run_sweep(grid, out=out, notebooks_dir=nb_dir, progress=False)
    assert [p.status for p in r2.points] == ["skipped", "ok", "skipped"] and r2.ok
    assert log_lines(log)[n_before:] == ["1 start", "1 end"]  # only the failed point ran again
    z = r2.summary.values["all"]["zero_shot"]  # 50, 51, 52
    assert z["wg"] == pytest.approx(51.0) and z["wg_sd"] == pytest.approx(1.0)
    assert "51.0 ± 1.0" in (out / "summary.md").read_text()
    capsys.readouterr()
    assert wb.main(["report", str(out)]) == 0  # a sweep folder: the same table, from its record
    assert capsys.readouterr().out.strip() == (out / "summary.md").read_text().strip()

    # a changed fixed parameter makes every point stale: they run again
    grid2 = dict(grid, scale=2.0)
    r3 = sw.run_sweep(grid2, ["05"], out=out, notebooks_dir=nb_dir, progress=False)
    assert [p.status for p in r3.points] == ["ok", "ok", "ok"]


@pytest.mark.integration
def test_sweep_killed_midway_completes_only_the_missing_points(tmp_path, nb_dir):
    log, slow = tmp_path / "log.txt", tmp_path / "slow.flag"
    slow.write_text("x")
    gfile = tmp_path / "grid.yaml"
    gfile.write_text(f"grid:\n  seed: [0, 1, 2]\nslow_flag: {slow}\nlog: {log}\nsweep:\n  out: {tmp_path / 'sw'}\n")
    cmd = [sys.executable, "-m", "ltcutils.workbook", "sweep", "-f", str(gfile), "--notebooks-dir", str(nb_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while "1 start" not in log_lines(log):
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.time() < deadline, "the slow point never started"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep, its kernel and everything they started
        proc.wait()
    assert log_lines(log) == ["0 start", "0 end", "1 start"]
    slow.unlink()  # the same command again, with the same parameters
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert log_lines(log)[3:] == ["1 start", "1 end", "2 start", "2 end"]  # point 0 is not run again
    assert "seed-0: finished earlier, skipped" in done.stderr
    assert "3/3 point(s) finished (1 skipped" in done.stdout and "51.0 ± 1.0" in done.stdout
