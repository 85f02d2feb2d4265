"""Two-process capture under torchrun (gloo): kill one rank mid-way, resume, compare with one process."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fixtures_real import make_waterbirds
from ltcutils.store import ActivationStore, StoreError

LINUX_ONLY = pytest.mark.skipif(not hasattr(os, "mkfifo") or not Path("/proc").is_dir(),
                                reason="blocks a rank on a named pipe and finds it through /proc (Linux)")

N, SHARD = 24, 2
STUCK = 10  # row of shard 5, which rank 1 takes on a fresh store (missing[1::2] = 1, 3, 5, ...)
ARRAYS = ("heads", "embed", "mlps", "norm", "valid")


def _cmd(root: Path, out: Path, nproc: int | None, workers: int) -> list[str]:
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), "-m"] \
        if nproc else [sys.executable, "-m"]
    return run + ["ltcutils.capture", "--model", "ltc-tiny", "--dataset", "waterbirds", "--split", "test",
                  "--root", str(root), "--out", str(out), "--batch-size", "2", "--shard-size", str(SHARD),
                  "--num-workers", str(workers), "--threads", "1", "--no-progress"]


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        kids = _children(todo.pop())
        out += kids
        todo += kids
    return out


def _rank_pid(launcher: int, rank: int) -> int | None:
    for pid in _descendants(launcher):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and b"LOCAL_RANK=" + str(rank).encode() in env:
            # the rank itself, not one of its DataLoader workers (they inherit the environment)
            parent_env = Path(f"/proc/{_ppid(pid)}/environ").read_bytes().split(b"\0")
            if f"RANK={rank}".encode() not in parent_env:
                return pid
    return None


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _why(res: subprocess.CompletedProcess) -> str:
    """The first traceback of a failed run (torchrun's own summary comes after it)."""
    text = res.stdout + res.stderr
    at = text.find("Traceback")
    return text[at:at + 4000] if at >= 0 else text[-4000:]


def _records(store: Path) -> dict[str, int]:
    folder = store / "shards"
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*.json")} if folder.is_dir() else {}


@pytest.mark.integration
@LINUX_ONLY
def test_two_ranks_killed_mid_way_resume_to_the_single_process_store(tmp_path):
    rows = [(f"001.Albatross/img_{i:03d}.jpg", i % 2, 2, (i // 2) % 2, "/o/ocean/1.jpg") for i in range(N)]
    root = make_waterbirds(tmp_path / "wb", rows)
    out = tmp_path / "store"
    stuck = root / rows[STUCK][0]
    stuck.rename(stuck.with_suffix(".keep"))
    os.mkfifo(stuck)  # rank 1's worker blocks opening it: shard 5 stays in flight until the kill

    log = open(tmp_path / "run1.log", "w")
    proc = subprocess.Popen(_cmd(root, out, 2, workers=1), env=_env(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    before = {f"{s:06d}.json" for s in list(range(0, N // SHARD, 2)) + [1, 3]}
    try:
        deadline = time.time() + 240
        while set(_records(out)) != before:
            assert proc.poll() is None, (tmp_path / "run1.log").read_text()[-3000:]
            assert time.time() < deadline, f"records {sorted(_records(out))}; log:\n" + \
                (tmp_path / "run1.log").read_text()[-3000:]
            time.sleep(0.05)
        time.sleep(0.5)  # rank 0 waits at its final barrier, rank 1 on the pipe: nothing more can commit
        assert set(_records(out)) == before
        rank1 = _rank_pid(proc.pid, 1)
        assert rank1 is not None, "rank 1 not found among the launcher's processes"
        for pid in [rank1] + _descendants(rank1):  # the rank and its decoding worker
            os.kill(pid, signal.SIGKILL)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    assert rc != 0, "the launcher must report the killed rank"
    done_before = _records(out)
    assert set(done_before) == before
    with pytest.raises(StoreError, match="incomplete"):
        ActivationStore(out)

    stuck.unlink()
    stuck.with_suffix(".keep").rename(stuck)
    res = subprocess.run(_cmd(root, out, 2, workers=1), env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, _why(res)
    after = _records(out)
    assert len(after) == N // SHARD
    assert {k: after[k] for k in done_before} == done_before  # finished shards were not redone

    ref = tmp_path / "ref"
    res = subprocess.run(_cmd(root, ref, None, workers=0), env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, _why(res)
    a, b = ActivationStore(out), ActivationStore(ref)
    assert list(a.labels["ids"]) == list(b.labels["ids"]) == [r[0] for r in rows]  # same row order
    assert json.loads((out / "meta.json").read_text())["fingerprint"] == \
        json.loads((ref / "meta.json").read_text())["fingerprint"]
    for k in ARRAYS:
        x, y = np.load(out / f"{k}.npy"), np.load(ref / f"{k}.npy")
        if x.dtype == bool:
            assert np.array_equal(x, y), k
        else:  # within fp16 rounding (other processes, other thread pools)
            np.testing.assert_allclose(x.astype(np.float32), y.astype(np.float32), rtol=2e-3, atol=1e-4,
                                       err_msg=k)
    assert np.abs(np.load(out / "heads.npy")).max() > 0


def _ltc_capture(argv: list[str]):
    from ltcutils.workbook.cli import _parser, capture_command

    args, extra = _parser().parse_known_args(["capture", *argv])
    return capture_command(args, extra)


def test_ltc_capture_builds_the_torchrun_command():
    opts = ["--model", "ltc-tiny", "--dataset", "waterbirds", "--cache", "c", "--num-workers", "1"]
    one = _ltc_capture(opts)
    assert one is None  # one process: runs here, no launcher
    two = _ltc_capture(["--nproc-per-node", "2", *opts])
    assert two[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
                       "ltcutils.capture", *opts] and two[0] == sys.executable
    nodes = _ltc_capture(["--nnodes", "2", "--nproc-per-node", "gpu", "--rdzv-backend", "c10d", "--rdzv-endpoint",
                          "node0:29400", "--rdzv-id", "wb", *opts])
    launcher = nodes[nodes.index("torch.distributed.run") + 1:nodes.index("ltcutils.capture") - 1]
    assert "--standalone" not in launcher  # a rendezvous across nodes, not a local one
    assert launcher == ["--nproc-per-node", "gpu", "--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint",
                        "node0:29400", "--rdzv-id", "wb"]
    with pytest.raises(SystemExit):  # a capture option misspelt fails here, before any rank starts
        _ltc_capture(["--nproc-per-node", "2", *opts, "--batchsize", "8"])


def test_ltc_rejects_stray_options_outside_capture(capsys):
    from ltcutils.workbook.cli import main

    with pytest.raises(SystemExit):
        main(["params", "--batch-size", "8"])
    assert "unrecognized arguments: --batch-size" in capsys.readouterr().err


@pytest.mark.integration
def test_ltc_capture_on_two_processes_equals_one(tmp_path):
    """``ltc capture --nproc-per-node 2`` (torchrun, gloo) writes the store one process writes."""
    from ltcutils.workbook.cli import main

    rows = [(f"094.Nuthatch/img_{i:03d}.jpg", i % 2, 2, (i // 2) % 2, "/o/ocean/1.jpg") for i in range(8)]
    root = make_waterbirds(tmp_path / "wb", rows)
    opts = ["--model", "ltc-tiny", "--dataset", "waterbirds", "--root", str(root), "--batch-size", "2",
            "--shard-size", "2", "--num-workers", "0", "--threads", "1", "--no-progress"]
    res = subprocess.run([sys.executable, "-m", "ltcutils.workbook.cli", "capture", "--nproc-per-node", "2", *opts,
                          "--out", str(tmp_path / "two")], env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, _why(res)
    assert main(["capture", *opts, "--out", str(tmp_path / "one")]) == 0
    a, b = ActivationStore(tmp_path / "two"), ActivationStore(tmp_path / "one")
    assert len(_records(tmp_path / "two")) == 4 and list(a.labels["ids"]) == list(b.labels["ids"])
    for k in ARRAYS:
        np.testing.assert_allclose(np.load(a.path / f"{k}.npy").astype(np.float32),
                                   np.load(b.path / f"{k}.npy").astype(np.float32), rtol=2e-3, atol=1e-4, err_msg=k)
