"""The exercise checkers: a right answer passes, each likely mistake gets its own hint, a stub gets
'not written yet', and the learner's notebook is derived from the solution one by its markers."""

import nbformat
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from ltcutils import exercises as exr


def _cfg(model):
    return model.cfg.n_layers, model.cfg.n_heads


@pytest.fixture(scope="module")
def hooked_px():
    """A 3-layer, 4-head ViT with every weight and bias O(1) (so a missing bias share shows), LayerScale on."""
    from ltcutils.hooked import HookedViT, ViTConfig

    cfg = ViTConfig(image_size=32, patch_size=16, d_model=16, n_layers=3, n_heads=4, d_mlp=32, d_embed=8,
                    layer_scale=True)
    m = HookedViT(cfg).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.dim() > 1 else 0.3))
            if name.endswith(("ls_1", "ls_2")) or name.endswith("ln_post.weight"):
                p.uniform_(0.5, 1.5, generator=g)
    px = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return m, px


# ------------------------------------------------------------------ right answers, written independently
def head_term(cache, model, layer, head, *, mean="share", bias="share", beta="share", share="head", norm=True):
    L, H = _cfg(model)
    K = 2 * L + 1
    s = 1 / (K * H) if share == "head" else 1 / K
    attn = model.blocks[layer].attn
    r = cache[f"blocks.{layer}.attn.hook_z"][:, 0, head] @ attn.W_O[head]
    r = r + {"share": attn.b_O / H, "none": 0, "full": attn.b_O}[bias]
    if model.blocks[layer].ls_1 is not None:
        r = r * model.blocks[layer].ls_1
    mu, sigma = cache["ln_post.hook_mean"], cache["ln_post.hook_scale"]
    c = {"share": r - s * mu, "full": r - mu, "none": r}[mean]
    t = (model.ln_post.weight * c / sigma + (s if beta == "share" else 1) * model.ln_post.bias) @ model.proj
    return t / cache["hook_image_embed"].norm(dim=-1, keepdim=True) if norm else t


def mlp_term(cache, model, layer, *, share="mlp", key="hook_mlp_out", norm=True):
    L, H = _cfg(model)
    K = 2 * L + 1
    s = 1 / K if share == "mlp" else 1 / (K * H)
    r = cache[f"blocks.{layer}.{key}"][:, 0]
    mu, sigma = cache["ln_post.hook_mean"], cache["ln_post.hook_scale"]
    t = (model.ln_post.weight * (r - s * mu) / sigma + s * model.ln_post.bias) @ model.proj
    return t / cache["hook_image_embed"].norm(dim=-1, keepdim=True) if norm else t


def head_margins(head_logits, logits, y, *, competitor="rule", sign=1):
    y = torch.as_tensor(y)
    pred = logits.argmax(1)
    runner = logits.scatter(1, pred[:, None], -torch.inf).argmax(1)
    comp = {"rule": torch.where(pred == y, runner, y), "true": y, "runner": runner}[competitor]
    idx = lambda c: c[:, None, None, None].expand(*head_logits.shape[:3], 1)  # noqa: E731
    return sign * (head_logits.gather(3, idx(pred)) - head_logits.gather(3, idx(comp)))[..., 0]


def top_head_frequencies(margin, mask, *, divide="mask"):
    sel = margin[torch.as_tensor(mask)]
    n, L, H = sel.shape
    counts = torch.bincount(sel.reshape(n, -1).argmax(1), minlength=L * H).double().reshape(L, H)
    return counts / {"mask": n, "none": 1, "all": len(margin)}[divide]


def mean_ablate(heads, total, ref_heads, layer, head, *, means="ref", renorm=False):
    m = (ref_heads if means == "ref" else heads)[:, layer, head].mean(0)
    out = total - heads[:, layer, head] + m
    return F.normalize(out, dim=-1) if renorm else out


def worst_group(pred, y, group, *, key="group", scale=100.0):
    k = group if key == "group" else y
    return min(scale * (pred[k == g] == y[k == g]).mean() for g in np.unique(k))


def gram_schmidt(d, *, normalise=True, orthogonalise=True):
    out = []
    for v in d:
        w = v.clone()
        if orthogonalise:
            for q in out:
                w = w - (w @ q) * q if normalise else w - (w @ q) / (q @ q) * q
        out.append(w / w.norm() if normalise else w)
    return torch.stack(out)


def inject(x, basis, strength, renormalize, *, cos=True, sub=False):
    if not renormalize:
        step = (x @ basis.T) @ basis
        return x - strength * step if sub else x + strength * step
    for q in basis:
        c = F.normalize(x, dim=-1) @ q if cos else x @ q
        x = F.normalize(x + strength * c[:, None] * q, dim=-1)
    return x


# ------------------------------------------------------------------ each checker: right, wrong, stub
def _model_case(fn):
    return lambda f, mode, hp: fn(f, hp[0], hp[1], mode=mode)


CASES = {
    "head_term": (_model_case(exr.check_head_term), head_term, {
        "full_mean": (lambda *a: head_term(*a, mean="full"), "whole ln_post mean"),
        "no_centring": (lambda *a: head_term(*a, mean="none"), "did not subtract the head's share of the mean"),
        "no_bias": (lambda *a: head_term(*a, bias="none"), "b_O / H per head"),
        "full_bias": (lambda *a: head_term(*a, bias="full"), "each of the H heads gets b_O / H"),
        "full_beta": (lambda *a: head_term(*a, beta="full"), "whole ln_post bias"),
        "mlp_share": (lambda *a: head_term(*a, share="mlp"), "a head's share is 1/(K·H)"),
        "not_normalized": (lambda *a: head_term(*a, norm=False), "not divided by the norm ||e||"),
    }),
    "mlp_term": (_model_case(exr.check_mlp_term), mlp_term, {
        "head_share": (lambda *a: mlp_term(*a, share="head"), "its share of μ and β is 1/K"),
        "resid": (lambda *a: mlp_term(*a, key="hook_resid_post"), "hook_resid_post"),
        "not_normalized": (lambda *a: mlp_term(*a, norm=False), "divide by the norm of the unedited embedding"),
    }),
    "head_margins": (lambda f, mode, hp: exr.check_head_margins(f, mode=mode), head_margins, {
        "always_true": (lambda *a: head_margins(*a, competitor="true"), "use the runner-up there"),
        "always_runner_up": (lambda *a: head_margins(*a, competitor="runner"), "the competitor is the true class"),
        "sign": (lambda *a: head_margins(*a, sign=-1), "the sign is flipped"),
    }),
    "top_head_frequencies": (lambda f, mode, hp: exr.check_top_head_frequencies(f, mode=mode), top_head_frequencies, {
        "counts": (lambda *a: top_head_frequencies(*a, divide="none"), "these are counts"),
        "all_images": (lambda *a: top_head_frequencies(*a, divide="all"), "images in the mask only"),
        "argmin": (lambda m, k: top_head_frequencies(-m, k), "the top head has the largest margin"),
        "per_layer": (lambda m, k: F.one_hot(m[torch.as_tensor(k)].argmax(2), m.shape[2]).double().mean(0),
                      "flatten [layer, head] first"),
    }),
    "mean_ablation": (lambda f, mode, hp: exr.check_mean_ablation(f, mode=mode), mean_ablate, {
        "eval_means": (lambda *a: mean_ablate(*a, means="eval"), "the mean comes from the reference split"),
        "renormalized": (lambda *a: mean_ablate(*a, renorm=True), "you divided by the edited norm"),
        "zero_ablation": (lambda h, t, r, l, k: t - h[:, l, k], "that is zero ablation"),
    }),
    "worst_group": (lambda f, mode, hp: exr.check_worst_group(f, mode=mode), worst_group, {
        "fraction": (lambda *a: worst_group(*a, scale=1.0), "in percent"),
        "per_class": (lambda *a: worst_group(*a, key="y"), "minimum over classes"),
        "average": (lambda p, y, g: 100 * (p == y).mean(), "average accuracy over all images"),
    }),
    "orthonormalise": (lambda f, mode, hp: exr.check_orthonormalise(f, mode=mode), gram_schmidt, {
        "normalised_only": (lambda d: gram_schmidt(d, orthogonalise=False), "not orthogonal"),
        "not_normalised": (lambda d: gram_schmidt(d, normalise=False), "not unit length"),
        "transposed": (lambda d: gram_schmidt(d).T, "one basis vector per row"),
    }),
    "inject": (lambda f, mode, hp: exr.check_inject(f, mode=mode), inject, {
        "dot_not_cos": (lambda *a: inject(*a, cos=False), "the cosine"),
        "reject": (lambda *a: inject(*a, sub=True), "RoboShot's reject step"),
        "no_renorm": (lambda x, b, s, r: inject(x, b, s, False) if not r else _paper_no_renorm(x, b, s),
                      "each step ends with x / ||x||"),
    }),
}


def _paper_no_renorm(x, basis, s):
    for q in basis:
        x = x + s * (F.normalize(x, dim=-1) @ q)[:, None] * q
    return x


def test_every_checker_is_covered_with_at_least_two_hints():
    assert set(CASES) == set(exr.CHECKERS)
    assert all(len(wrong) >= 2 for _, _, wrong in CASES.values())


@pytest.mark.parametrize("name", list(CASES))
def test_right_answer_passes(name, hooked_px, capsys):
    check, right, _ = CASES[name]
    result = check(right, "solution", hooked_px)
    assert result.passed, result.message
    assert "PASSED" in capsys.readouterr().out


CASE_IDS = [(n, w) for n, (_, _, wrong) in CASES.items() for w in wrong]


@pytest.mark.parametrize("name,mistake", CASE_IDS, ids=[f"{n}-{w}" for n, w in CASE_IDS])
def test_mistake_gets_its_hint(name, mistake, hooked_px, capsys):
    check, _, wrong = CASES[name]
    fn, hint = wrong[mistake]
    result = check(fn, "learner", hooked_px)
    assert not result.passed
    assert hint in result.message, result.message
    assert hint in capsys.readouterr().out  # the learner sees it printed, no traceback
    with pytest.raises(exr.ExerciseFailed, match="disagrees with the library"):
        check(fn, "solution", hooked_px)


@pytest.mark.parametrize("name", list(CASES))
def test_stub_says_not_written_yet(name, hooked_px):
    check, _, _ = CASES[name]

    def stub(*args):
        raise NotImplementedError("exercise")

    result = check(stub, "learner", hooked_px)
    assert not result.passed and result.message.startswith("not written yet")


def test_unknown_mistake_shows_the_difference_and_the_steps(hooked_px):
    result = exr.check_worst_group(lambda p, y, g: 12.5, mode="learner")
    assert not result.passed and "differ from the library" in result.message and "Steps:" in result.message
    result = exr.check_worst_group(lambda p, y, g: [1.0, 2.0], mode="learner")
    assert "shape (2,)" in result.message
    result = exr.check_worst_group(lambda p, y, g: 1 / 0, mode="learner")
    assert "raised ZeroDivisionError" in result.message
    with pytest.raises(ValueError, match="mode must be one of"):
        exr.check_worst_group(worst_group, mode="teacher")


# ------------------------------------------------------------------ stubs from markers
CELL = '''def f(x):
    """Double x."""
    # BEGIN SOLUTION
    y = 2 * x
    return y
    # END SOLUTION
'''


def test_stub_source_replaces_the_marked_block():
    stub = exr.stub_source(CELL)
    assert "2 * x" not in stub and '"""Double x."""' in stub and "    # YOUR CODE HERE" in stub
    ns: dict = {}
    exec(stub, ns)  # the stub is valid Python that raises when called
    with pytest.raises(NotImplementedError):
        ns["f"](1)
    assert exr.stub_source("x = 1\n") == "x = 1\n"


@pytest.mark.parametrize("bad,msg", [(CELL.replace("    # END SOLUTION\n", ""), "never closed"),
                                     ("# END SOLUTION\n", "without a"),
                                     ("# BEGIN SOLUTION\n# BEGIN SOLUTION\n# END SOLUTION\n", "inside another")])
def test_stub_source_refuses_bad_markers(bad, msg):
    with pytest.raises(ValueError, match=msg):
        exr.stub_source(bad)


def _nb():
    return new_notebook(cells=[
        new_markdown_cell("# 01 title"),
        new_code_cell('exercises = "solution"  # "solution" or "learner"\noutput_dir = "outputs"  # run folder',
                      metadata={"tags": ["parameters"]}),
        new_code_cell(CELL, metadata={"tags": ["exercise"]}),
        new_code_cell("print(2 * 3)"),
    ])


def test_learner_notebook_stubs_exercise_cells_only(tmp_path):
    nb = _nb()
    learner = exr.learner_notebook(nb, output_dir="outputs/class")
    assert "2 * x" in nb.cells[2].source  # the source is untouched
    assert "2 * x" not in learner.cells[2].source and "NotImplementedError" in learner.cells[2].source
    assert learner.cells[3].source == "print(2 * 3)"  # a cell not tagged exercise keeps its code
    params = learner.cells[1].source
    assert 'exercises = "learner"  # "solution" or "learner"' in params
    assert "output_dir = 'outputs/class'  # stage outputs of this copy" in params


def test_write_learner_notebooks(tmp_path):
    src = tmp_path / "nbs"
    src.mkdir()
    nbformat.write(_nb(), str(src / "01_decompose_embeddings.ipynb"))
    written = exr.write_learner_notebooks(tmp_path / "class", src)
    assert [p.name for p in written] == ["01_decompose_embeddings.ipynb"]
    nb = nbformat.read(str(written[0]), as_version=4)
    assert "NotImplementedError" in nb.cells[2].source and "output_dir = 'outputs'  # stage outputs of this copy" \
        in nb.cells[1].source
