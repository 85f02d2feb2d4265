"""Baselines (zero-shot, Ortho-Cali, RoboShot, random heads) against hand computations."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import math  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ltcutils import baselines as B  # noqa: E402

torch.set_num_threads(1)


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ----------------------------------------------------------------------------- zero-shot


def test_zero_shot_logits_and_candidates():
    emb = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    W = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.5]])  # [d_embed=2, n_class=3]
    logits = B.zero_shot_logits(emb, W)
    torch.testing.assert_close(logits, torch.tensor([[1.0, 2.0, 2.0], [0.0, -1.0, -0.5]]))
    assert B.predict(emb, W).tolist() == [1, 0]  # tie 2.0/2.0 -> lowest index
    cand = np.array([[0, 2], [1, 2]])
    masked = B.zero_shot_logits(emb, W, cand)
    assert torch.isinf(masked[0, 1]) and torch.isinf(masked[1, 0])
    assert masked[0, 2] == 2.0 and masked[1, 2] == -0.5
    assert B.predict(emb, W, cand).tolist() == [2, 2]  # global indices
    with pytest.raises(ValueError, match="candidate class indices"):
        B.predict(emb, W, [[0, 3], [0, 1]])
    with pytest.raises(ValueError, match="classifier.T"):
        B.predict(emb, W.T)


# ----------------------------------------------------------------------------- Ortho-Cali


def _span_residual(vectors, spurious):
    """Largest |component| of the columns of ``vectors`` in the span of the rows of ``spurious``."""
    U, _ = torch.linalg.qr(F.normalize(spurious.double(), dim=1).T)
    return (U.T @ vectors.double()).abs().max().item()


def test_ortho_projection_by_hand():
    # d = 3, spurious = e1 -> P0 = diag(0, 1, 1); pair (e2, e3), lam = 1 -> G = I + (e2-e3)(e2-e3)^T
    e = torch.eye(3, dtype=torch.float64)
    P, P0, G = B.ortho_projection(e[:1] * 5.0, (e[1:2], e[2:3]), lam=1.0, return_parts=True)
    torch.testing.assert_close(P0, torch.diag(torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64)))
    torch.testing.assert_close(G, torch.tensor([[1.0, 0, 0], [0, 2, -1], [0, -1, 2]], dtype=torch.float64))
    # t = (1, 1, 0): G^-1 t = (1, 2/3, 1/3); P0 -> (0, 2/3, 1/3); normalised (0, 2, 1)/sqrt(5)
    t = torch.tensor([[1.0], [1.0], [0.0]])
    out = B.ortho_cali(t, e[:1], [(e[1], e[2])], lam=1.0)
    torch.testing.assert_close(out[:, 0], torch.tensor([0.0, 2.0, 1.0]) / math.sqrt(5))


def test_ortho_cali_two_pairs_by_hand():
    # pairs (e2, e3), (e1, e2): M = mean of the two outer products = [[1,-1,0],[-1,2,-1],[0,-1,1]] / 2
    e = torch.eye(3, dtype=torch.float64)
    pairs = [(e[1], e[2]), (e[0], e[1])]
    _, _, G = B.ortho_projection(e[:1], pairs, lam=2.0, return_parts=True)
    torch.testing.assert_close(G, torch.tensor([[2.0, -1, 0], [-1, 3, -1], [0, -1, 2]], dtype=torch.float64))
    t = torch.tensor([[1.0], [1.0], [0.0]])
    # P0 G^-1 t: G^-1 t = (7/8, 3/4, 3/8) -> (0, 3/4, 3/8) -> (0, 2, 1)/sqrt(5)
    out = B.ortho_cali(t, e[:1], pairs, lam=2.0)
    torch.testing.assert_close(out[:, 0], torch.tensor([0.0, 2.0, 1.0]) / math.sqrt(5))
    # the LTC repository's order G^-1 P0 t: P0 t = e2, G^-1 e2 = (1/4, 1/2, 1/4): e1 (spurious) is back
    wrong = B.ortho_cali(t, e[:1], pairs, lam=2.0, ltc_repo_order=True)
    torch.testing.assert_close(wrong[:, 0], torch.tensor([1.0, 2.0, 1.0]) / math.sqrt(6))


def test_p0_is_an_orthogonal_projection():
    S = _rand(3, 8, seed=1)
    _, P0, _ = B.ortho_projection(S, None, return_parts=True)
    torch.testing.assert_close(P0 @ P0, P0, atol=1e-12, rtol=0)
    torch.testing.assert_close(P0, P0.T, atol=1e-12, rtol=0)
    assert torch.linalg.matrix_rank(P0).item() == 8 - 3
    assert (P0 @ S.T).abs().max() < 1e-12  # kills the spurious embeddings
    # a repeated (linearly dependent) prompt does not change the projection
    _, P0d, _ = B.ortho_projection(torch.cat([S, 2 * S[:1]]), None, return_parts=True)
    torch.testing.assert_close(P0d, P0, atol=1e-10, rtol=0)


@pytest.mark.parametrize("lam", [0.0, 1000.0])
def test_ortho_cali_removes_spurious_span(lam):
    S, W = _rand(3, 16, seed=2), _rand(16, 5, seed=3)
    pairs = (_rand(6, 16, seed=4), _rand(6, 16, seed=5))
    out = B.ortho_cali(W, S, pairs, lam=lam)
    assert out.shape == (16, 5) and out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=0), torch.ones(5))
    assert _span_residual(out, S) < 1e-6
    # the two pair formats give the same classifier
    listed = [(pairs[0][i], pairs[1][i]) for i in range(6)]
    torch.testing.assert_close(B.ortho_cali(W, S, listed, lam=lam), out)


def test_transposed_ordering_does_not_remove_spurious_span():
    S, W = _rand(3, 16, seed=2), _rand(16, 5, seed=3)
    pairs = (_rand(6, 16, seed=4), _rand(6, 16, seed=5))
    P = B.ortho_projection(S, pairs, lam=1000.0)
    wrong = F.normalize(P.T @ W, dim=0)  # G^-1 P0 t, the LTC repository's port
    assert _span_residual(wrong, S) > 0.05
    assert _span_residual(F.normalize(P @ W, dim=0), S) < 1e-10
    assert _span_residual(B.ortho_cali(W, S, pairs, ltc_repo_order=True), S) > 0.05
    # with lam = 0 the two orders agree (G = I)
    torch.testing.assert_close(B.ortho_cali(W, S, pairs, lam=0.0, ltc_repo_order=True),
                               B.ortho_cali(W, S, pairs, lam=0.0))


def test_ortho_cali_errors():
    S, W = _rand(3, 16), _rand(16, 5)
    with pytest.raises(ValueError, match="classifier.T"):
        B.ortho_cali(W.T, S)
    with pytest.raises(ValueError, match="d_embed=16"):
        B.ortho_cali(W, S, (_rand(2, 15), _rand(2, 15)))


# ----------------------------------------------------------------------------- RoboShot


def test_roboshot_reject_by_hand():
    out = B.roboshot(torch.tensor([[3.0, 4.0, 0.0]]), reject_dirs=torch.tensor([[2.0, 0.0, 0.0]]))
    torch.testing.assert_close(out, torch.tensor([[0.0, 1.0, 0.0]]))


def test_roboshot_accept_by_hand():
    # x = (0.6, 0.8, 0); cos(x, e1) = 0.6 -> (1.2, 0.8, 0) / sqrt(2.08)
    out = B.roboshot(torch.tensor([[0.6, 0.8, 0.0]]), accept_dirs=torch.tensor([[1.0, 0.0, 0.0]]))
    torch.testing.assert_close(out, torch.tensor([[1.2, 0.8, 0.0]]) / math.sqrt(2.08))
    assert out[0, 0] > 0.6  # the component along the accepted direction grew


def test_roboshot_reject_span_and_unit_norm():
    emb = _rand(20, 12, seed=6).float()
    dirs = _rand(3, 12, seed=7).float()
    dirs = torch.cat([dirs, dirs[:1] + dirs[1:2]])  # a dependent 4th direction: dropped by the QR
    out = B.roboshot(emb, reject_dirs=dirs)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(20))
    assert (out @ dirs.T).abs().max() < 1e-5  # orthogonal to every rejected direction
    # the dependent direction changes nothing
    torch.testing.assert_close(out, B.roboshot(emb, reject_dirs=dirs[:3]), atol=1e-5, rtol=0)
    # accept increases the component along the accepted direction (for positive components)
    acc = F.normalize(_rand(1, 12, seed=8).float(), dim=1)
    x0 = F.normalize(emb, dim=1)
    out_a = B.roboshot(emb, accept_dirs=acc)
    before, after = (x0 @ acc.T).abs().squeeze(1), (out_a @ acc.T).abs().squeeze(1)
    assert bool((after >= before - 1e-6).all()) and bool((after > before).any())


def test_roboshot_identity_and_errors():
    emb = _rand(4, 6).float()
    torch.testing.assert_close(B.roboshot(emb), F.normalize(emb, dim=1))
    with pytest.raises(ValueError, match="zero"):
        B.roboshot(emb, reject_dirs=torch.zeros(2, 6))
    with pytest.raises(ValueError, match="d_embed=6"):
        B.roboshot(emb, reject_dirs=torch.ones(2, 5))


# ----------------------------------------------------------------------------- random heads


def test_random_head_sets():
    sets = B.random_head_sets(30, 3, layers=[2, 3], n_heads=4, exclude=[(3, 0), (2, 1)], seed=0)
    assert len(sets) == 30 and all(len(s) == 3 and len(set(s)) == 3 for s in sets)
    allowed = {(l, h) for l in (2, 3) for h in range(4)} - {(3, 0), (2, 1)}
    assert set().union(*map(set, sets)) <= allowed
    assert all(isinstance(l, int) and isinstance(h, int) for s in sets for l, h in s)
    assert sets == B.random_head_sets(30, 3, [2, 3], 4, exclude=[(3, 0), (2, 1)], seed=0)
    assert sets != B.random_head_sets(30, 3, [2, 3], 4, exclude=[(3, 0), (2, 1)], seed=1)
    assert any(s != sorted(s) for s in sets)  # random order within a draw
    # all 6 allowed heads used when k equals what is available
    full = B.random_head_sets(2, 6, [2, 3], 4, exclude=[(3, 0), (2, 1)])
    assert all(set(s) == allowed for s in full)
    # too few heads left: the located heads are let back in, with a warning (never an error)
    info = {}
    with pytest.warns(UserWarning, match="may include located heads"):
        seven = B.random_head_sets(3, 7, [2, 3], 4, exclude=[(3, 0), (2, 1)], info=info)
    assert info["fallback"] == "readmitted" and all(len(set(s)) == 7 for s in seven)
    with pytest.raises(ValueError, match="cannot draw 9"):
        B.random_head_sets(1, 9, [2, 3], 4)


def test_random_head_pool_is_the_last_layers_minus_located_heads():
    layers = list(range(6))
    located = [(5, 0), (5, 1), (4, 3), (0, 0)]
    pool, info = B.random_head_pool(4, layers, 8, exclude=located)
    # the paper's pool: layers 2..5 (4 x 8 = 32 heads) minus the 3 located heads there
    assert info["pool_layers"] == [2, 3, 4, 5] and info["pool_size"] == 29 == len(pool)
    assert not set(pool) & set(located) and {l for l, _ in pool} == {2, 3, 4, 5}
    assert info["fallback"] is None and info["message"] == ""
    assert info["n_possible"] == math.comb(29, 4)  # all heads ablated
    # 2 ablated + 2 injected: ordered roles, C(29, 2) * C(27, 2) assignments
    _, info2 = B.random_head_pool(4, layers, 8, exclude=located, n_ablate=2)
    assert info2["n_possible"] == math.comb(29, 2) * math.comb(27, 2)
    # pool_layers=None: every layer
    _, every = B.random_head_pool(4, layers, 8, exclude=located, pool_layers=None)
    assert every["pool_size"] == 48 - 4 and every["pool_layers"] == layers
    # the pool is too small: earlier layers are added until it is big enough
    with pytest.warns(UserWarning, match="drawing from layers 3..5"):
        sets = B.random_head_sets(5, 20, layers, 8, exclude=located, pool_layers=2)
    assert all(min(l for l, _ in s) >= 3 for s in sets) and all(not set(s) & set(located) for s in sets)
    _, wide = B.random_head_pool(20, layers, 8, exclude=located, pool_layers=2)
    assert wide["fallback"] == "widened" and wide["pool_layers"] == [3, 4, 5] and wide["pool_size"] == 21
    with pytest.raises(ValueError, match="n_ablate"):
        B.random_head_pool(4, layers, 8, n_ablate=5)


def test_mean_and_sd_by_hand():
    m, sd = B.mean_and_sd([1.0, 2.0, 3.0, 4.0])
    assert m == pytest.approx(2.5)
    assert sd == pytest.approx(math.sqrt(5 / 3))  # sum of squares 5, ddof = 1
    m1, sd1 = B.mean_and_sd([7.0])
    assert m1 == 7.0 and math.isnan(sd1)
    with pytest.raises(ValueError):
        B.mean_and_sd([])


def test_roboshot_with_per_image_directions_by_hand():
    """Each image uses its own class pair's directions (ConceptBases); index -1 skips the step."""
    from ltcutils.correct import ConceptBases

    emb = torch.tensor([[3.0, 4.0, 0.0], [3.0, 4.0, 0.0], [0.0, 3.0, 4.0]])
    reject = ConceptBases([torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]])], [0, 1, -1])
    out = B.roboshot(emb, reject_dirs=reject)
    # image 0 loses its e_0 part -> e_1; image 1 loses e_1 -> e_0; image 2 is only normalised
    torch.testing.assert_close(out, torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.6, 0.8]]))
    # a shared reject list then per-image accept steps equal the shared RoboShot of each image alone
    shared = torch.tensor([[0.0, 0.0, 1.0]])
    accept = ConceptBases([torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]])], [1, 0, 0])
    both = B.roboshot(emb, shared, accept)
    for i, b in enumerate([1, 0, 0]):
        torch.testing.assert_close(both[i:i + 1], B.roboshot(emb[i:i + 1], shared, accept.bases[b]))
    with pytest.raises(ValueError, match="for 3 images, got 2"):
        B.roboshot(emb[:2], reject_dirs=reject)


def test_roboshot_directions_from_plain_and_pair_keyed_banks():
    names = ["nurse", "surgeon", "pilot"]
    plain = torch.eye(4)[[0]]
    text = {"roboshot_reject": plain, "roboshot_reject_keyed": None, "roboshot_accept": None,
            "roboshot_accept_keyed": {"surgeon|nurse": torch.eye(4)[[1]], "pilot|nurse": torch.eye(4)[[2]]}}
    with pytest.warns(UserWarning, match="1 of 3 images have no accept pairs"):
        rej, acc = B.roboshot_directions(text, names, candidates=np.array([[0, 1], [2, 0], [1, 2]]))
    assert rej is plain
    assert acc.index.tolist() == [0, 1, -1] and acc.keys == ["surgeon|nurse", "pilot|nurse"]
    # without candidates, the two highest zero-shot classes form the pair
    with pytest.warns(UserWarning, match="1 of 2 images"):  # surgeon|pilot has no pairs, nurse|pilot has
        _, acc = B.roboshot_directions(text, names, logits=torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 2.0]]))
    assert acc.index.tolist() == [-1, 1]
    assert B.roboshot_directions({}, names) == (None, None)
