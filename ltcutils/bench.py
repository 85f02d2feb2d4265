"""Benchmarks (not timed tests): ratios measured side by side in one run.

    python -m ltcutils.bench decompose --model ViT-B-16 --batch 16 --reps 3
    python -m ltcutils.bench locate [--n 5794 --layers 12 --heads 12 --d-embed 512]
    python -m ltcutils.bench all

``decompose`` interleaves plain open_clip ``encode_image`` and the hooked decomposition on the
same random-weight model and inputs and prints both throughputs and their ratio; then it
captures N and 4N random images into a store, each in a fresh process, and prints the peak RSS
of both and the bytes stored per image. ``locate`` fabricates a memory-mapped fp16 cache the
size of the Waterbirds test set at ViT-B-16 and times locate + correct + evaluate on it.
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
    sub.add_parser("all", help="both, with defaults")
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
