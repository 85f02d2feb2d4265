"""Probes (ERM, JTT, JTT + LTC): the hand-written trainer against autograd and torch's AdamW,
upsampling, pseudo groups, model selection, determinism, and the embedding path through stores."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ltcutils as ltc
from ltcutils import probes
from ltcutils.probes import ProbeMLP, _FlatAdamW


def _toy(n=200, d=16, seed=0, spurious_strength=2.0):
    """Class along axis 0, a spurious attribute along axis 1 that agrees with the class 90% of the time."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = np.where(rng.random(n) < 0.9, y, 1 - y)
    x = rng.normal(0, 0.3, (n, d))
    x[:, 0] += 0.6 * (2 * y - 1)
    x[:, 1] += spurious_strength * (2 * s - 1)
    return probes.unit(torch.as_tensor(x)), y, s, 2 * y + s


@pytest.mark.parametrize("n_class", [2, 3])
def test_hand_written_gradients_equal_autograd(n_class):
    torch.manual_seed(0)
    probe = ProbeMLP(8, n_class, hidden=5)
    x = torch.randn(7, 8)
    y = torch.randint(0, n_class, (7,))
    flat = _FlatAdamW(probe, lr=1e-2, weight_decay=1e-4)
    loss_sum = flat.gradients(x, y)
    probe.zero_grad()
    mean_loss = probe.loss(x, y)
    mean_loss.backward()
    assert torch.allclose(loss_sum / len(x), mean_loss.detach(), atol=1e-6)
    for got, ref in zip((flat.gW1, flat.gW2, flat.gc1, flat.gc2),
                        (probe.fc1.weight, probe.fc2.weight, probe.fc1.bias, probe.fc2.bias)):
        assert torch.allclose(got, ref.grad, atol=1e-6), (got, ref.grad)


def test_updates_equal_torch_adamw_with_decay_on_weights_only():
    torch.manual_seed(1)
    ours = ProbeMLP(6, 2, hidden=4)
    ref = ProbeMLP(6, 2, hidden=4)
    ref.load_state_dict(ours.state_dict())
    flat = _FlatAdamW(ours, lr=1e-2, weight_decay=0.5)  # a large decay, so a wrong target would show
    opt = torch.optim.AdamW([{"params": [ref.fc1.weight, ref.fc2.weight], "weight_decay": 0.5},
                             {"params": [ref.fc1.bias, ref.fc2.bias], "weight_decay": 0.0}], lr=1e-2)
    for step in range(5):
        x, y = torch.randn(9, 6), torch.randint(0, 2, (9,))
        flat.step(x, y)
        opt.zero_grad()
        ref.loss(x, y).backward()
        opt.step()
    flat.load_into(ours)
    for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_binary_logits_are_zero_and_z():
    torch.manual_seed(0)
    probe = ProbeMLP(4, 2)
    x = torch.randn(10, 4)
    z = probe(x).squeeze(1).detach()
    logits = probe.logits(x)
    assert torch.equal(logits[:, 0], torch.zeros(10)) and torch.equal(logits[:, 1], z)
    assert torch.equal(logits.argmax(1), (z > 0).long())


def test_hidden_size_follows_the_reference():
    assert [probes.hidden_size(d) for d in (64, 512, 768, 1024)] == [128, 128, 256, 256]
    assert ProbeMLP(512, 2).hidden == 128 and ProbeMLP(1024, 2).hidden == 256
    with pytest.raises(ValueError, match="at least two classes"):
        ProbeMLP(8, 1)


def test_upsample_index_counts():
    chosen = np.array([False, True, False, True, True])
    idx = probes.upsample_index(5, chosen, 4)
    assert len(idx) == 5 + 3 * 3
    assert np.bincount(idx, minlength=5).tolist() == [1, 4, 1, 4, 4]
    assert probes.upsample_index(5, chosen, 1).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="integer >= 1"):
        probes.upsample_index(5, chosen, 0)
    with pytest.raises(ValueError, match="bool mask"):
        probes.upsample_index(4, chosen, 2)


def test_pseudo_conflicting_by_hand():
    # group = 2 * y + s; conflicting groups 1 (y0, s1) and 2 (y1, s0)
    y = np.array([0, 0, 1, 1, 0, 1])
    s = np.array([0, 1, 0, 1, 0, 1])
    s_logits = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    # predicted s: 1, 0, 0, 1, 0, 0 -> pseudo groups 1, 0, 2, 3, 0, 2
    got = probes.pseudo_conflicting(2 * y + s, s, s_logits, [1, 2])
    assert got.tolist() == [True, False, True, False, False, True]


def test_training_is_deterministic_for_a_seed_and_selects_the_best_epoch():
    x, y, s, g = _toy()
    xv, yv, sv, gv = _toy(seed=1)
    kw = dict(n_class=2, hidden=16, epochs=6, seed=3, n_groups=4)
    a = probes.train_probe(x, y, xv, yv, gv, **kw)
    b = probes.train_probe(x, y, xv, yv, gv, **kw)
    c = probes.train_probe(x, y, xv, yv, gv, **dict(kw, seed=4))
    assert a.fingerprint == b.fingerprint == probes.fingerprint(b.probe)
    assert a.history.equals(b.history)
    assert c.fingerprint != a.fingerprint
    # the probe handed back is the selected epoch's: re-scoring it reproduces the best val WG
    pred = a.probe.logits(xv).argmax(1).numpy()
    wg = ltc.metrics.worst_group_accuracy(pred, yv, gv, n_groups=4)
    assert wg == a.best_val_wg == a.history["val_wg"].max()
    assert a.best_epoch == int(a.history["val_wg"].to_numpy().argmax()) + 1
    last = probes.train_probe(x, y, xv, yv, gv, **dict(kw, select="last"))
    assert last.best_epoch == 6 and last.best_val_wg == last.history["val_wg"].iloc[-1]
    # the caller's global RNG is untouched
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    probes.train_probe(x, y, xv, yv, gv, **dict(kw, epochs=1))
    assert torch.equal(torch.rand(1), before)


def test_jtt_rows_per_epoch_and_errors():
    x, y, s, g = _toy()
    xv, yv, sv, gv = _toy(seed=1)
    kw = dict(n_class=2, hidden=16, epochs=3, seed=0, n_groups=4)
    chosen = ltc.locate.conflicting_mask(g, [1, 2])
    ref = probes.train_jtt_reference(x, y, chosen, xv, yv, gv, upweight=10, **kw)
    assert ref.rows_per_epoch == len(y) + 9 * int(chosen.sum()) and ref.n_upsampled == int(chosen.sum())
    two, errors = probes.train_jtt_two_stage(x, y, xv, yv, gv, stage1_epochs=1, lambda_up=5, **kw)
    stage1 = probes.train_probe(x, y, xv, yv, gv, **dict(kw, epochs=1, select="last"))
    assert errors.tolist() == (stage1.probe.logits(x).argmax(1).numpy() != y).tolist()
    assert two.config["stage1_fingerprint"] == stage1.fingerprint
    assert two.rows_per_epoch == len(y) + 4 * int(errors.sum()) and len(two.history) == 3


def test_upsampling_the_conflicting_images_raises_the_worst_group():
    """On a toy where the spurious feature is the easier one, ERM leans on it and JTT-style
    upsampling of the bias-conflicting images corrects that (the point of the method)."""
    x, y, s, g = _toy(n=400, spurious_strength=3.0)
    xv, yv, sv, gv = _toy(n=400, seed=1, spurious_strength=3.0)
    xt, yt, st, gt = _toy(n=400, seed=2, spurious_strength=3.0)
    kw = dict(n_class=2, hidden=16, epochs=15, seed=0, n_groups=4)
    erm = probes.train_probe(x, y, xv, yv, gv, **kw)
    jtt = probes.train_jtt_reference(x, y, ltc.locate.conflicting_mask(g, [1, 2]), xv, yv, gv, upweight=20, **kw)
    wg = lambda fit: ltc.metrics.worst_group_accuracy(fit.probe.logits(xt).argmax(1).numpy(), yt, gt)  # noqa: E731
    assert wg(jtt) > wg(erm) + 5


def test_split_embeddings_reuses_stores_and_needs_no_heads(tmp_path, monkeypatch):
    torch.manual_seed(0)
    ex = ltc.experiment.setup(model="ltc-tiny", pretrained=None, dataset="synthetic", output_dir=tmp_path / "out",
                              cache_dir=tmp_path / "cache", n_per_group=3)
    train = probes.split_embeddings(ex, "train", n=12, seed=0, progress=False)
    keep = ltc.experiment.stratified_subset(ex.split("train").group, 12, 0)
    assert len(train.y) == len(keep) and set(train.group) == {0, 1, 2, 3}  # stratified: every group kept
    n = len(keep)
    assert train.terms.heads.shape[1] == 0  # no per-head terms stored for a train split
    assert torch.allclose(train.lens.total.norm(dim=1), torch.ones(n), atol=1e-2)
    # the stored sum is the model's unit embedding
    ds = ex.split("train").subset(keep)
    pixels = torch.stack([ex.model.preprocess(ds.image(i)) for i in range(len(ds))])
    assert torch.allclose(train.lens.total, ex.model.encode_image(pixels), atol=5e-3)
    # second call: nothing is captured again; a full store of the split is reused as it is
    full_val = ex.store("val", progress=False)
    monkeypatch.setattr(ltc.capture, "capture", lambda *a, **k: pytest.fail("captured again"))
    again = probes.split_embeddings(ex, "train", n=12, seed=0, progress=False)
    assert torch.equal(again.lens.total, train.lens.total)
    val = probes.split_embeddings(ex, "val", progress=False)
    assert val.terms.heads.shape == full_val.terms.heads.shape
