"""Benchmarks (not timed tests): ratios measured side by side in one run.

    python -m ltcutils.bench decompose --model ViT-B-16 --batch 16 --reps 3
    python -m ltcutils.bench locate [--n 5794 --layers 12 --heads 12 --d-embed 512]
    python -m ltcutils.bench capture [--model ltc-tiny --n 1000 --reps 5 --workers auto]
    python -m ltcutils.bench all

``decompose`` interleaves plain open_clip ``encode_image`` and the hooked decomposition on the
same random-weight model and inputs and prints both throughputs and their ratio; then it
captures N and 4N random images into a store, each in a fresh process, and prints the peak RSS
of both and the bytes stored per image. ``locate`` fabricates a memory-mapped fp16 cache the
size of the Waterbirds test set at ViT-B-16 and times locate + correct + evaluate on it.
``capture`` fabricates a Waterbirds-layout folder of real-size JPEGs (300-500 px, random
content) and interleaves, rep by rep: (a) open_clip ``encode_image`` fed by a DataLoader with the
same workers, (b) our capture into a store, (c) the serial path (``num_workers=0``), then one
and two capture processes under ``torchrun`` (gloo); it prints images/s, per-rep ratios and
their medians, and the CPU time per image of each in-process pass (all its processes together).
Each process keeps torch at ``--threads`` intra-op threads (default 1).

Which model the capture figures are for: ``--model ltc-tiny`` (the default), the embedded model
this workbook runs without downloads (48 px input, 6 layers x 8 heads). Reading one 300-500 px
JPEG (decode, then open_clip's bicubic resize) costs ~2.5-3.5 ms of CPU and the decomposition
~1.4 ms at one thread, so reading is about two thirds of the serial path, and (b)/(c) measures how
much of it the workers hide. For ViT-B-32 at one thread the forward takes ~175 ms per image and
reading ~4 ms (~2%), so (b)/(c) is ~1.0 whatever the pipeline does; the figure to read there is
(b)/(a). On an accelerator the forward shrinks and reading becomes the bound again.
The machine should be otherwise idle: with another process on one of two cores, the workers have
no core to overlap on and (b)/(c) falls to ~1.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _random_dataset(n: int, size: int, seed: int = 0):
    from PIL import Image

    from .datasets.base import GroupDataset

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = rng.integers(0, 2, n)

    def load(i: int):
        r = np.random.default_rng(seed * 1_000_003 + i)
        return Image.fromarray(r.integers(0, 256, (size, size, 3), dtype=np.uint8))

    return GroupDataset("random", "bench", ["a", "b"], ["u", "v"], y, s, 2 * y + s, ["0", "1", "2", "3"], load,
                        [str(i) for i in range(n)], info={"seed": seed, "size": size})


def bench_decompose(model_name: str, batch: int, reps: int, n_capture: int, device: str) -> dict:
    from .decompose import decompose
    from .models import load_model

    torch.manual_seed(0)
    m = load_model(model_name, None, device=device)
    size = m.hooked.cfg.image_size
    px = torch.randn(batch, 3, size, size, device=device)
    with torch.inference_mode():
        m.clip.encode_image(px[:2])  # warm-up
        decompose(m.hooked, px[:2])
    plain, dec = [], []
    for _ in range(reps):
        for kind, out in (("plain", plain), ("decompose", dec)):
            t = time.perf_counter()
            with torch.inference_mode():
                if kind == "plain":
                    m.clip.encode_image(px)
                else:
                    decompose(m.hooked, px)
            out.append(batch / (time.perf_counter() - t))
    ratios = [d / p for d, p in zip(dec, plain)]
    res = {
        "model": model_name, "batch": batch, "reps": reps, "threads": torch.get_num_threads(),
        "plain_img_per_s": plain, "decompose_img_per_s": dec, "ratio_per_rep": ratios,
        "ratio_median": float(np.median(ratios)), "ratio_of_best": max(dec) / max(plain),
    }
    rss = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (n_capture, 4 * n_capture):
            out = subprocess.run([sys.executable, "-m", "ltcutils.bench", "_capture", "--model", model_name,
                                  "--n", str(n), "--out", str(Path(tmp) / f"n{n}"), "--device", device],
                                 capture_output=True, text=True, check=True)
            rss[n] = json.loads(out.stdout.strip().splitlines()[-1])
        out = subprocess.run([sys.executable, "-m", "ltcutils.bench", "_capture", "--model", model_name,
                              "--n", str(n_capture), "--out", str(Path(tmp) / "sum"), "--device", device,
                              "--mlps", "sum"], capture_output=True, text=True, check=True)
        summed = json.loads(out.stdout.strip().splitlines()[-1])
    a, b = rss[n_capture], rss[4 * n_capture]
    res.update({
        "capture_n": n_capture, "peak_rss_mb_n": a["peak_rss_mb"], "peak_rss_mb_4n": b["peak_rss_mb"],
        "rss_ratio_4n_over_n": b["peak_rss_mb"] / a["peak_rss_mb"],
        "bytes_per_image_fp16": b["bytes_per_image"], "mb_per_image_fp16": b["bytes_per_image"] / 1e6,
        "mib_per_image_fp16": b["bytes_per_image"] / 2**20,
        "mb_per_image_fp16_mlps_summed": summed["bytes_per_image"] / 1e6,
    })
    return res


def _capture_child(model_name: str, n: int, out: str, device: str, mlps: str = "each") -> None:
    from .models import load_model
    from .capture import capture

    m = load_model(model_name, None, device=device)
    ds = _random_dataset(n, m.hooked.cfg.image_size)
    st = capture(m, ds, path=out, batch_size=16, shard_size=64, dtype="float16", mlps=mlps, progress=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mb": peak, "bytes_per_image": st.nbytes_per_image()}))


def bench_locate(n: int, n_val: int, layers: int, heads: int, d_embed: int, seed: int = 0) -> dict:
    """Fabricate fp16 memory-mapped caches and time locate + correct + evaluate end to end."""
    from . import correct, lens as lens_mod, locate, metrics
    from .store import Terms

    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        def fabricate(name: str, rows: int) -> tuple[Terms, np.ndarray, np.ndarray]:
            heads_a = np.lib.format.open_memmap(Path(tmp) / f"{name}_heads.npy", "w+", np.float16,
                                                (rows, layers, heads, d_embed))
            for i in range(0, rows, 512):
                k = min(512, rows - i)
                heads_a[i:i + k] = (rng.standard_normal((k, layers, heads, d_embed), dtype=np.float32) * 0.01)
            heads_a.flush()
            mlps = rng.standard_normal((rows, layers + 1, d_embed), dtype=np.float32).astype(np.float16) * 0.01
            y = rng.integers(0, 2, rows)
            s = rng.integers(0, 2, rows)
            hm = np.load(Path(tmp) / f"{name}_heads.npy", mmap_mode="r")
            return Terms(hm, mlps, None, np.ones(rows, np.float32), tuple(range(layers)), True), y, 2 * y + s

        val, y_val, g_val = fabricate("val", n_val)
        test, y_test, g_test = fabricate("test", n)
        W = torch.nn.functional.normalize(torch.randn(d_embed, 2, generator=torch.Generator().manual_seed(seed)), dim=0)
        basis = correct.orthonormal_basis(torch.randn(6, d_embed, generator=torch.Generator().manual_seed(1)))
        t0 = time.perf_counter()
        lv = lens_mod.logit_lens(val, W)
        sel = locate.locate(lv, y_val, g_val, groups="true", conflicting=[1, 2], rule="topk", k=4)  # group = 2y + s
        means = correct.head_means(val)
        t1 = time.perf_counter()
        lt = lens_mod.logit_lens(test, W)
        t_lens = time.perf_counter()
        corr = correct.Correction.mean_ablation(sel.spurious, means, val.layers, "val")
        corr = corr.with_injection(sel.salient, basis)
        logits = correct.corrected_logits(lt, corr, test)
        pred = logits.argmax(1).numpy()
        summ = metrics.summary(pred, y_test, g_test)
        t2 = time.perf_counter()
    return {"n_test": n, "n_val": n_val, "shape": [layers, heads, d_embed], "dtype": "float16",
            "seconds_locate_on_val": t1 - t0, "seconds_correct_evaluate_test": t2 - t1,
            "seconds_lens_test": t_lens - t1, "seconds_edit_and_score": t2 - t_lens, "seconds_total": t2 - t0,
            "gb_test_cache": n * layers * heads * d_embed * 2 / 1e9, "wg_random_data": summ["wg"]}


def fabricate_folder(root: Path, n: int, seed: int = 0) -> Path:
    """A Waterbirds-layout folder (``metadata.csv``, class folders) of ``n`` JPEGs, 300-500 px a side, all test."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    lines = ["img_id,img_filename,y,split,place,place_filename"]
    for i in range(n):
        w, h = (int(v) for v in rng.integers(300, 501, 2))
        low = rng.integers(0, 256, (max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)  # photo-like: smooth
        im = Image.fromarray(low).resize((w, h), Image.BILINEAR)
        px = np.asarray(im, dtype=np.int16) + rng.integers(-12, 13, (h, w, 3))  # plus some texture
        rel = f"{'001.Albatross' if i % 2 else '094.Nuthatch'}/img_{i:05d}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(px, 0, 255).astype(np.uint8)).save(root / rel, quality=90)
        lines.append(f"{i + 1},{rel},{i % 2},2,{(i // 2) % 2},/o/ocean/{i:08d}.jpg")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return root


def _plain_pass(m, ds, batch: int, workers: int, device) -> float:
    """Images/s of open_clip ``encode_image`` fed by the capture's own DataLoader (same decoding, same workers)."""
    from .capture import _Images, _loader

    dev = torch.device(device)
    batches = [list(range(i, min(i + batch, len(ds)))) for i in range(0, len(ds), batch)]
    t = time.perf_counter()
    with torch.inference_mode():
        for _, px, _, _ in _loader(_Images(ds, m.preprocess), batches, workers, dev):
            m.clip.encode_image(px.to(dev, non_blocking=dev.type != "cpu")).sum().item()
    return len(ds) / (time.perf_counter() - t)


def _capture_pass(m, ds, out: Path, batch: int, workers: int, precision: str) -> float:
    from .capture import capture

    t = time.perf_counter()
    capture(m, ds, path=out, batch_size=batch, shard_size=4 * batch, num_workers=workers, precision=precision,
            progress=False)
    dt = time.perf_counter() - t
    import shutil

    shutil.rmtree(out)
    return len(ds) / dt


def _dist_capture_child(model_name: str, root: str, out: str, batch: int, threads: int, device: str,
                        precision: str) -> None:
    """One rank of a torchrun capture: times the capture alone (after model and data are loaded)."""
    import torch.distributed as dist

    from .capture import _device, capture
    from .datasets.registry import load_dataset
    from .models import load_model

    torch.set_num_threads(threads)
    dev = _device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group(backend=dist.get_default_backend_for_device(dev))
    torch.manual_seed(0)
    m = load_model(model_name, None, device=dev)
    ds = load_dataset("waterbirds", "test", root)
    if world > 1:
        dist.barrier()
    t = time.perf_counter()
    capture(m, ds, path=out, batch_size=batch, shard_size=batch, progress=False, precision=precision)
    dt = time.perf_counter() - t  # capture ends with a barrier: every rank's shards are in
    if world == 1 or dist.get_rank() == 0:
        print(json.dumps({"world": world, "img_per_s": len(ds) / dt, "seconds": dt}))
    if world > 1:
        dist.destroy_process_group()


def _torchrun_capture(k: int, model_name: str, root: Path, out: Path, batch: int, threads: int, device: str,
                      precision: str) -> float:
    import shutil

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(k),
           "-m", "ltcutils.bench", "_dist_capture", "--model", model_name, "--root", str(root), "--out", str(out),
           "--batch", str(batch), "--threads", str(threads), "--device", device, "--precision", precision]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"torchrun with {k} processes failed:\n{(res.stdout + res.stderr)[-3000:]}")
    shutil.rmtree(out, ignore_errors=True)
    return float(json.loads([ln for ln in res.stdout.splitlines() if ln.startswith("{")][-1])["img_per_s"])


def _cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (DataLoader workers, torchrun ranks)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def bench_capture(model_name: str, n: int, reps: int, batch: int, workers: str, threads: int, device: str,
                  precision: str, dist: bool = True) -> dict:
    """Interleaved images/s of (a) DataLoader + encode_image, (b) capture, (c) serial capture; 1 vs 2 ranks."""
    from .capture import default_workers
    from .datasets.registry import load_dataset
    from .models import load_model

    torch.set_num_threads(threads)
    w = default_workers() if workers == "auto" else int(workers)
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        root = fabricate_folder(Path(tmp) / "waterbird_complete95_forest2water2", n)
        torch.manual_seed(0)
        m = load_model(model_name, None, device=device)
        ds = load_dataset("waterbirds", "test", root)
        _capture_pass(m, ds.subset(range(min(n, batch))), Path(tmp) / "warm", batch, 0, precision)  # warm-up
        runs = {"a_plain_dataloader": [], "b_capture": [], "c_serial_capture": [], "one_process": [], "two_processes": []}
        passes = {
            "a_plain_dataloader": lambda: _plain_pass(m, ds, batch, w, device),
            "b_capture": lambda: _capture_pass(m, ds, Path(tmp) / "b", batch, w, precision),
            "c_serial_capture": lambda: _capture_pass(m, ds, Path(tmp) / "c", batch, 0, precision),
        }
        for k in ("one_process", "two_processes"):
            passes[k] = (lambda k=k: _torchrun_capture(1 if k == "one_process" else 2, model_name, root,
                                                       Path(tmp) / k, batch, threads, device, precision))
        order = list(passes)[:3]
        cpu: dict[str, list[float]] = {k: [] for k in order}  # torchrun runs would count their start-up too

        def run(r: int, key: str) -> None:
            c0 = _cpu_seconds()
            runs[key].append(passes[key]())
            if key in cpu:
                cpu[key].append((_cpu_seconds() - c0) / n * 1e3)
            print(f"rep {r}: {key} {runs[key][-1]:.2f} img/s" + (f", {cpu[key][-1]:.2f} CPU ms/img" if key in cpu
                  else "") + f" (load {os.getloadavg()[0]:.2f})", file=sys.stderr)

        for r in range(reps):
            for key in order[r % 3:] + order[:r % 3]:  # rotate so no pass always runs first
                run(r, key)
            if dist:
                for key in ("one_process", "two_processes")[::(1 if r % 2 == 0 else -1)]:
                    run(r, key)
    ratio = lambda x, y: [p / q for p, q in zip(runs[x], runs[y])]  # noqa: E731
    res = {"model": model_name, "weights": "random", "n_images": n, "image_px": "300-500 JPEG q90", "batch": batch,
           "workers": w, "threads_per_process": threads, "device": device, "precision": precision, "reps": reps,
           "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
           "loadavg_before": load0, "loadavg_after": os.getloadavg(), "img_per_s": runs,
           "median_img_per_s": {k: float(np.median(v)) for k, v in runs.items() if v},
           "cpu_ms_per_img": cpu, "median_cpu_ms_per_img": {k: float(np.median(v)) for k, v in cpu.items() if v},
           "b_over_a_per_rep": ratio("b_capture", "a_plain_dataloader"),
           "b_over_c_per_rep": ratio("b_capture", "c_serial_capture")}
    if dist:
        res["two_over_one_per_rep"] = ratio("two_processes", "one_process")
    for k in [k for k in res if k.endswith("_per_rep")]:
        res[k.replace("_per_rep", "_median")] = float(np.median(res[k]))
    return res


def _print_capture(r: dict) -> None:
    f = lambda v: ", ".join(f"{x:.3f}" for x in v)  # noqa: E731
    med = r["median_img_per_s"]
    print(f"{r['model']} ({r['weights']} weights), {r['n_images']} JPEGs, batch {r['batch']}, {r['workers']} workers, "
          f"{r['threads_per_process']} thread(s)/process, {r['cores']} cores, load {r['loadavg_before'][0]:.2f} -> "
          f"{r['loadavg_after'][0]:.2f}")
    print(f"img/s median: (a) plain+DataLoader {med['a_plain_dataloader']:.2f}  (b) capture {med['b_capture']:.2f}  "
          f"(c) serial capture {med['c_serial_capture']:.2f}")
    cpu = r["median_cpu_ms_per_img"]
    print("CPU ms/img median (all processes): " + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()))
    print(f"(b)/(a) median {r['b_over_a_median']:.3f} (per rep {f(r['b_over_a_per_rep'])}); "
          f"(b)/(c) median {r['b_over_c_median']:.3f} (per rep {f(r['b_over_c_per_rep'])})")
    if "two_over_one_median" in r:
        print(f"torchrun 2 processes / 1: median {r['two_over_one_median']:.3f} (per rep {f(r['two_over_one_per_rep'])}); "
              f"img/s 1 process {med['one_process']:.2f}, 2 processes {med['two_processes']:.2f}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m ltcutils.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("decompose", help="encode_image vs hooked decomposition throughput; store RSS and size")
    d.add_argument("--model", default="ViT-B-16")
    d.add_argument("--batch", type=int, default=16)
    d.add_argument("--reps", type=int, default=3)
    d.add_argument("--n-capture", type=int, default=16)
    d.add_argument("--device", default="cpu")
    lo = sub.add_parser("locate", help="locate + correct + evaluate on a Waterbirds-test-sized fp16 cache")
    lo.add_argument("--n", type=int, default=5794)
    lo.add_argument("--n-val", type=int, default=1199)
    lo.add_argument("--layers", type=int, default=12)
    lo.add_argument("--heads", type=int, default=12)
    lo.add_argument("--d-embed", type=int, default=512)
    cp = sub.add_parser("capture", help="DataLoader-fed encode_image vs capture vs serial capture; 2 vs 1 process")
    cp.add_argument("--model", default="ltc-tiny", help="ltc-tiny (the acceptance figure) or an open_clip name")
    cp.add_argument("--n", type=int, default=256, help="images in the fabricated folder")
    cp.add_argument("--reps", type=int, default=3)
    cp.add_argument("--batch", type=int, default=32)
    cp.add_argument("--workers", default="auto", help="DataLoader workers for (a) and (b): a number or auto")
    cp.add_argument("--threads", type=int, default=1, help="torch intra-op threads per process")
    cp.add_argument("--device", default="cpu")
    cp.add_argument("--precision", default="fp32")
    cp.add_argument("--no-dist", action="store_true", help="skip the torchrun 1 vs 2 process runs")
    dc = sub.add_parser("_dist_capture")
    dc.add_argument("--model")
    dc.add_argument("--root")
    dc.add_argument("--out")
    dc.add_argument("--batch", type=int)
    dc.add_argument("--threads", type=int)
    dc.add_argument("--device")
    dc.add_argument("--precision")
    sub.add_parser("all", help="decompose and locate, with defaults")
    c = sub.add_parser("_capture")
    c.add_argument("--model")
    c.add_argument("--n", type=int)
    c.add_argument("--out")
    c.add_argument("--device", default="cpu")
    c.add_argument("--mlps", default="each")
    a = ap.parse_args(argv)
    if a.cmd == "_capture":
        _capture_child(a.model, a.n, a.out, a.device, a.mlps)
        return
    if a.cmd == "_dist_capture":
        _dist_capture_child(a.model, a.root, a.out, a.batch, a.threads, a.device, a.precision)
        return
    if a.cmd == "capture":
        r = bench_capture(a.model, a.n, a.reps, a.batch, a.workers, a.threads, a.device, a.precision, not a.no_dist)
        print(json.dumps(r, indent=1))
        _print_capture(r)
        return
    if a.cmd in ("decompose", "all"):
        r = bench_decompose(a.model if a.cmd == "decompose" else "ViT-B-16", getattr(a, "batch", 16),
                            getattr(a, "reps", 3), getattr(a, "n_capture", 16), getattr(a, "device", "cpu"))
        print(json.dumps(r, indent=1))
        print(f"decompose/plain throughput ratio: median {r['ratio_median']:.3f} (per rep "
              f"{', '.join(f'{x:.3f}' for x in r['ratio_per_rep'])}); peak RSS 4N/N = {r['rss_ratio_4n_over_n']:.3f}; "
              f"{r['mb_per_image_fp16']:.4f} MB ({r['mib_per_image_fp16']:.4f} MiB) per image stored (fp16); "
              f"{r['mb_per_image_fp16_mlps_summed']:.4f} MB with the MLP terms summed (mlps='sum')")
    if a.cmd in ("locate", "all"):
        kw = dict(n=5794, n_val=1199, layers=12, heads=12, d_embed=512)
        if a.cmd == "locate":
            kw = dict(n=a.n, n_val=a.n_val, layers=a.layers, heads=a.heads, d_embed=a.d_embed)
        r = bench_locate(**kw)
        print(json.dumps(r, indent=1))
        print(f"locate + correct + evaluate: {r['seconds_total']:.2f} s for a {r['gb_test_cache']:.2f} GB fp16 test cache")


if __name__ == "__main__":
    main()
