"""Tests for sslbook.losses: every loss against a hand computation.

The expected values are computed with explicit Python/NumPy loops that follow each
paper's formula, never with the torch operations the implementation uses.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sslbook import losses as L

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------
# Loop helpers: the formulas of the papers, written out with NumPy
# ------------------------------------------------------------------------------------


def np_unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x)


def np_cos(a, b):
    return float(np.dot(np_unit(a), np_unit(b)))


def t64(x):
    return torch.tensor(x, dtype=torch.float64)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def randn(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def normed(gen, *shape):
    return F.normalize(randn(gen, *shape), dim=-1)


# ------------------------------------------------------------------------------------
# cosine_similarity_matrix
# ------------------------------------------------------------------------------------


def test_cosine_similarity_matrix_matches_loop(gen):
    a, b = randn(gen, 3, 2), randn(gen, 4, 2)
    s = L.cosine_similarity_matrix(a, b)
    assert s.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            assert s[i, j].item() == pytest.approx(np_cos(a[i].numpy(), b[j].numpy()))


# ------------------------------------------------------------------------------------
# InfoNCE (MoCo)
# ------------------------------------------------------------------------------------


def loop_info_nce(q, k_pos, queue, temperature):
    q, k_pos, queue = (np.asarray(x, dtype=np.float64) for x in (q, k_pos, queue))
    total = 0.0
    for n in range(q.shape[0]):
        pos = math.exp(np.dot(q[n], k_pos[n]) / temperature)
        neg = sum(math.exp(np.dot(q[n], k) / temperature) for k in queue)
        total += -math.log(pos / (pos + neg))
    return total / q.shape[0]


def test_info_nce_logits_layout(gen):
    q, k, queue = normed(gen, 3, 2), normed(gen, 3, 2), normed(gen, 4, 2)
    logits = L.info_nce_logits(q, k, queue, temperature=0.5)
    assert logits.shape == (3, 5)
    for n in range(3):
        assert logits[n, 0].item() == pytest.approx(np.dot(q[n].numpy(), k[n].numpy()) / 0.5)
        for j in range(4):
            assert logits[n, 1 + j].item() == pytest.approx(np.dot(q[n].numpy(), queue[j].numpy()) / 0.5)


def test_info_nce_matches_loop_and_cross_entropy(gen):
    q, k, queue = normed(gen, 3, 3), normed(gen, 3, 3), normed(gen, 4, 3)
    loss = L.info_nce(q, k, queue, temperature=0.2)
    assert loss.item() == pytest.approx(loop_info_nce(q, k, queue, 0.2), rel=1e-10)
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.T], dim=1) / 0.2
    expected = F.cross_entropy(logits, torch.zeros(3, dtype=torch.long))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-10)


def test_info_nce_temperature_direction():
    # Positive more similar than every negative: a lower temperature lowers the loss.
    q = t64([[1.0, 0.0]])
    k = t64([[math.cos(0.3), math.sin(0.3)]])
    queue = t64([[0.0, 1.0], [-1.0, 0.0]])
    assert L.info_nce(q, k, queue, 0.1) < L.info_nce(q, k, queue, 0.5) < L.info_nce(q, k, queue, 2.0)
    # Positive less similar than a negative: a lower temperature raises the loss.
    queue_hard = t64([[1.0, 0.0], [-1.0, 0.0]])
    assert L.info_nce(q, k, queue_hard, 0.1) > L.info_nce(q, k, queue_hard, 0.5)


# ------------------------------------------------------------------------------------
# NT-Xent (SimCLR)
# ------------------------------------------------------------------------------------


def loop_nt_xent(z1, z2, temperature):
    views = [np_unit(v) for v in np.concatenate([np.asarray(z1), np.asarray(z2)])]
    n = len(views) // 2
    total = 0.0
    for a in range(2 * n):
        partner = a + n if a < n else a - n
        numerator = math.exp(np.dot(views[a], views[partner]) / temperature)
        denominator = sum(math.exp(np.dot(views[a], views[b]) / temperature) for b in range(2 * n) if b != a)
        total += -math.log(numerator / denominator)
    return total / (2 * n)


@pytest.mark.parametrize("n,d", [(2, 2), (3, 3), (4, 2)])
def test_nt_xent_matches_loop(gen, n, d):
    z1, z2 = randn(gen, n, d), randn(gen, n, d)
    for temperature in (0.1, 0.5, 1.0):
        loss = L.nt_xent(z1, z2, temperature)
        assert loss.item() == pytest.approx(loop_nt_xent(z1, z2, temperature), rel=1e-10)


def test_nt_xent_symmetric_and_scale_invariant(gen):
    z1, z2 = randn(gen, 4, 3), randn(gen, 4, 3)
    loss = L.nt_xent(z1, z2)
    assert L.nt_xent(z2, z1).item() == pytest.approx(loss.item(), rel=1e-12)
    assert L.nt_xent(7.0 * z1, 0.01 * z2).item() == pytest.approx(loss.item(), rel=1e-10)


def test_nt_xent_temperature_direction():
    # Each pair is almost aligned and pairs are far apart: sharper softmax, lower loss.
    z1 = t64([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    z2 = t64([[1.0, 0.1], [0.1, 1.0], [-1.0, -0.1]])
    assert L.nt_xent(z1, z2, 0.1) < L.nt_xent(z1, z2, 0.5) < L.nt_xent(z1, z2, 1.0)


def test_nt_xent_gradient_reaches_both_views(gen):
    z1 = randn(gen, 3, 2).requires_grad_()
    z2 = randn(gen, 3, 2).requires_grad_()
    L.nt_xent(z1, z2).backward()
    assert torch.isfinite(z1.grad).all() and z1.grad.abs().sum() > 0
    assert torch.isfinite(z2.grad).all() and z2.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------
# NCE (InstDisc)
# ------------------------------------------------------------------------------------


def loop_nce(positive_logits, negative_logits, log_z, n_data):
    positive_logits = np.asarray(positive_logits, dtype=np.float64)
    negative_logits = np.asarray(negative_logits, dtype=np.float64)
    m = negative_logits.shape[1]
    p_noise = 1.0 / n_data
    z = math.exp(log_z)
    total = 0.0
    for i in range(len(positive_logits)):
        p = math.exp(positive_logits[i]) / z
        h = p / (p + m * p_noise)
        loss = -math.log(h)
        for x in negative_logits[i]:
            p = math.exp(x) / z
            h = p / (p + m * p_noise)
            loss += -math.log(1 - h)
        total += loss
    return total / len(positive_logits)


def test_nce_loss_matches_formula(gen):
    positive_logits = randn(gen, 3) * 2
    negative_logits = randn(gen, 3, 4) * 2
    log_z, n_data = 3.0, 50
    loss = L.nce_loss(positive_logits, negative_logits, log_z, n_data)
    expected = loop_nce(positive_logits, negative_logits, log_z, n_data)
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    # log Z may also be a 0-d tensor.
    loss_t = L.nce_loss(positive_logits, negative_logits, torch.tensor(log_z), n_data)
    assert loss_t.item() == pytest.approx(expected, rel=1e-10)


def test_nce_loss_is_finite_for_extreme_logits():
    positive_logits = t64([500.0, -500.0])
    negative_logits = t64([[-500.0, 500.0], [0.0, 0.0]])
    loss = L.nce_loss(positive_logits, negative_logits, 0.0, 1000)
    assert torch.isfinite(loss)


def test_estimate_log_normaliser_matches_formula(gen):
    negative_logits = randn(gen, 3, 4)
    n_data = 1000
    mean_exp = np.mean([math.exp(x) for x in negative_logits.flatten().tolist()])
    expected = math.log(n_data * mean_exp)
    log_z = L.estimate_log_normaliser(negative_logits, n_data)
    assert isinstance(log_z, float)
    assert log_z == pytest.approx(expected, rel=1e-10)
    # Large logits (e.g. 1/tau = 1/0.07 times a similarity) must not overflow.
    assert math.isfinite(L.estimate_log_normaliser(negative_logits * 1000, n_data))


# ------------------------------------------------------------------------------------
# CPC
# ------------------------------------------------------------------------------------


def test_cpc_info_nce_matches_loop(gen):
    predictions, targets = randn(gen, 4, 3), randn(gen, 4, 3)
    pred, targ = predictions.numpy(), targets.numpy()
    total = 0.0
    for i in range(4):
        scores = [math.exp(np.dot(pred[i], targ[j])) for j in range(4)]
        total += -math.log(scores[i] / sum(scores))
    assert L.cpc_info_nce(predictions, targets).item() == pytest.approx(total / 4, rel=1e-10)


def test_cpc_info_nce_with_a_candidate_set_by_hand():
    # Two predictions, three candidates; prediction 0's positive is candidate 0, prediction 1's is 2.
    predictions = t64([[1.0, 0.0], [0.0, 1.0]])
    candidates = t64([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # Row 0 scores [1, 0, 1] -> -log(e / (e + 1 + e)); row 1 scores [0, 1, 1] -> -log(e / (1 + e + e)).
    expected = math.log(2 * math.e + 1) - 1
    loss = L.cpc_info_nce(predictions, candidates, positives=torch.tensor([0, 2]))
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    # With the aligned layout the same as passing positives = arange.
    p, t = t64([[0.3, -1.0], [2.0, 0.5]]), t64([[1.0, 1.0], [-0.5, 0.2]])
    assert L.cpc_info_nce(p, t).item() == pytest.approx(L.cpc_info_nce(p, t, torch.arange(2)).item(), rel=1e-12)
    with pytest.raises(ValueError, match="positives="):
        L.cpc_info_nce(predictions, candidates)


def test_multi_positive_nt_xent_by_hand():
    # Two groups of two orthogonal directions, T = 1: every anchor has one positive at cos 1 and two
    # negatives at cos 0, so l(a) = -log(e / (e + 1 + 1)).
    z = t64([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    loss = L.multi_positive_nt_xent(z, torch.tensor([0, 0, 1, 1]), temperature=1.0)
    assert loss.item() == pytest.approx(math.log(math.e + 2) - 1, rel=1e-12)
    # A group of three: z0 = z1 = e1, z2 = (0.6, 0.8); a group of two: z3 = z4 = e2; T = 0.5.
    z = t64([[1.0, 0.0], [1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.0, 1.0]])
    e = lambda c: math.exp(c / 0.5)  # noqa: E731
    # anchor 0: others cos [1, 0.6, 0, 0]; positives 1 and 2
    d0 = e(1) + e(0.6) + 2 * e(0)
    l0 = -(math.log(e(1) / d0) + math.log(e(0.6) / d0)) / 2
    l1 = l0  # anchor 1 is the same vector
    # anchor 2: others cos [0.6, 0.6, 0.8, 0.8]; positives 0 and 1
    d2 = 2 * e(0.6) + 2 * e(0.8)
    l2 = -math.log(e(0.6) / d2)
    # anchor 3: others cos [0, 0, 0.8, 1]; positive 4
    d3 = 2 * e(0) + e(0.8) + e(1)
    l3 = -math.log(e(1) / d3)
    expected = (l0 + l1 + l2 + 2 * l3) / 5
    loss = L.multi_positive_nt_xent(z, torch.tensor([7, 7, 7, 2, 2]), temperature=0.5)
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_multi_positive_nt_xent_with_pairs_is_nt_xent(gen):
    z1, z2 = randn(gen, 6, 4), randn(gen, 6, 4)
    groups = torch.arange(6).repeat(2)
    assert L.multi_positive_nt_xent(torch.cat([z1, z2]), groups, 0.3).item() == pytest.approx(
        L.nt_xent(z1, z2, 0.3).item(), rel=1e-10
    )
    with pytest.raises(ValueError, match="groups \\[5\\]"):
        L.multi_positive_nt_xent(randn(gen, 5, 3), torch.tensor([0, 0, 1, 1, 5]))


def test_mutual_information_bound():
    assert L.mutual_information_bound(1.0, 255) == pytest.approx(math.log(256) - 1.0)
    bound = L.mutual_information_bound(torch.tensor(0.5), 3)
    assert isinstance(bound, float) and bound == pytest.approx(math.log(4) - 0.5)


# ------------------------------------------------------------------------------------
# BYOL and SimSiam
# ------------------------------------------------------------------------------------


def test_byol_loss_identical_opposite_and_loop(gen):
    p = randn(gen, 3, 2)
    assert L.byol_loss(p, p).item() == pytest.approx(0.0, abs=1e-12)
    assert L.byol_loss(p, -p).item() == pytest.approx(4.0)
    assert L.byol_loss(p, 5.0 * p).item() == pytest.approx(0.0, abs=1e-12)
    z = randn(gen, 3, 2)
    expected = np.mean([np.sum((np_unit(p[i]) - np_unit(z[i])) ** 2) for i in range(3)])
    assert L.byol_loss(p, z).item() == pytest.approx(expected, rel=1e-10)


def test_byol_loss_target_gets_no_gradient(gen):
    p = randn(gen, 3, 2).requires_grad_()
    z = randn(gen, 3, 2).requires_grad_()
    L.byol_loss(p, z).backward()
    assert p.grad is not None and p.grad.abs().sum() > 0
    assert z.grad is None


def test_negative_cosine_values(gen):
    p = randn(gen, 4, 3)
    assert L.negative_cosine(p, p).item() == pytest.approx(-1.0)
    assert L.negative_cosine(p, -2.0 * p).item() == pytest.approx(1.0)
    z = randn(gen, 4, 3)
    expected = -np.mean([np_cos(p[i], z[i]) for i in range(4)])
    assert L.negative_cosine(p, z).item() == pytest.approx(expected, rel=1e-10)


def test_negative_cosine_stop_gradient(gen):
    p = randn(gen, 4, 3).requires_grad_()
    z = randn(gen, 4, 3).requires_grad_()
    L.negative_cosine(p, z).backward()
    assert p.grad is not None and p.grad.abs().sum() > 0
    assert z.grad is None or torch.all(z.grad == 0)

    p.grad = None
    L.negative_cosine(p, z, stop_gradient=False).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_simsiam_loss_is_symmetrised_negative_cosine(gen):
    p1, p2, z1, z2 = (randn(gen, 3, 2) for _ in range(4))
    expected = -0.5 * np.mean([np_cos(p1[i], z2[i]) for i in range(3)]) - 0.5 * np.mean(
        [np_cos(p2[i], z1[i]) for i in range(3)]
    )
    assert L.simsiam_loss(p1, p2, z1, z2).item() == pytest.approx(expected, rel=1e-10)
    assert L.simsiam_loss(p1, p2, p2, p1).item() == pytest.approx(-1.0)

    p1.requires_grad_(), z1.requires_grad_(), z2.requires_grad_()
    L.simsiam_loss(p1, p2, z1, z2).backward()
    assert p1.grad.abs().sum() > 0
    assert z1.grad is None and z2.grad is None
    L.simsiam_loss(p1, p2, z1, z2, stop_gradient=False).backward()
    assert z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0


def test_output_std_collapsed_and_gaussian(gen):
    collapsed = randn(gen, 1, 16).repeat(32, 1) * 3.0
    assert L.output_std(collapsed) == pytest.approx(0.0, abs=1e-7)
    z = randn(gen, 512, 128).float()
    assert L.output_std(z) == pytest.approx(1 / math.sqrt(128), rel=0.1)


def test_output_std_matches_loop(gen):
    z = randn(gen, 4, 3)
    units = np.stack([np_unit(row) for row in z.numpy()])
    stds = []
    for c in range(3):
        column = units[:, c]
        mean = sum(column) / 4
        stds.append(math.sqrt(sum((x - mean) ** 2 for x in column) / (4 - 1)))
    assert L.output_std(z) == pytest.approx(np.mean(stds), rel=1e-10)


# ------------------------------------------------------------------------------------
# Sinkhorn and SwAV
# ------------------------------------------------------------------------------------


def loop_sinkhorn(scores, epsilon, iterations):
    """SwAV Algorithm 1 with plain loops over a K x B list of lists."""
    scores = np.asarray(scores, dtype=np.float64)
    b, k = scores.shape
    q = [[math.exp(scores[j, i] / epsilon) for j in range(b)] for i in range(k)]
    total = sum(sum(row) for row in q)
    q = [[x / total for x in row] for row in q]
    for _ in range(iterations):
        for i in range(k):
            row_sum = sum(q[i])
            q[i] = [x / row_sum / k for x in q[i]]
        for j in range(b):
            col_sum = sum(q[i][j] for i in range(k))
            for i in range(k):
                q[i][j] = q[i][j] / col_sum / b
    return np.array([[q[i][j] * b for i in range(k)] for j in range(b)])


def row_entropy(codes):
    c = codes.clamp_min(1e-300)
    return -(c * c.log()).sum(1).mean().item()


def test_sinkhorn_matches_loop(gen):
    scores = normed(gen, 4, 3) @ normed(gen, 3, 3).T  # cosine scores, B=4, K=3
    for epsilon, iterations in [(0.05, 3), (0.5, 1), (0.2, 10)]:
        codes = L.sinkhorn(scores, epsilon, iterations)
        np.testing.assert_allclose(codes.numpy(), loop_sinkhorn(scores, epsilon, iterations), rtol=1e-9, atol=1e-12)


def test_sinkhorn_marginals(gen):
    b, k = 32, 8
    scores = normed(gen, b, 16) @ normed(gen, k, 16).T
    codes = L.sinkhorn(scores, epsilon=0.05, iterations=3)
    assert codes.shape == (b, k)
    assert torch.all(codes >= 0)
    # Each sample's code is a probability vector (exactly, after the last column step).
    torch.testing.assert_close(codes.sum(1), torch.ones(b, dtype=codes.dtype))

    # Equipartition: each prototype gets B/K samples' worth of mass. With SwAV's 3
    # iterations this holds only roughly; the gap shrinks with every iteration and
    # vanishes in the limit.
    def imbalance(iterations):
        usage = L.sinkhorn(scores, epsilon=0.05, iterations=iterations).sum(0)
        return (usage - b / k).abs().max().item()

    gaps = [imbalance(i) for i in (1, 3, 10, 50)]
    assert all(x > y for x, y in zip(gaps, gaps[1:])), gaps
    softmax_usage = np.sum([np.exp(row / 0.05) / np.exp(row / 0.05).sum() for row in scores.numpy()], 0)
    assert imbalance(3) < np.abs(softmax_usage - b / k).max()
    codes_many = L.sinkhorn(scores, epsilon=0.05, iterations=200)
    torch.testing.assert_close(codes_many.sum(0), torch.full((k,), b / k, dtype=codes.dtype), rtol=1e-6, atol=0)


def test_sinkhorn_equipartition_beats_argmax(gen):
    # Scores that all favour prototype 0: the argmax would use one prototype, the codes
    # still spread the batch evenly.
    b, k = 12, 4
    scores = 0.3 * normed(gen, b, k) + t64([1.0, 0.0, 0.0, 0.0])
    assert torch.all(scores.argmax(1) == 0)
    codes = L.sinkhorn(scores, epsilon=0.05, iterations=50)
    torch.testing.assert_close(codes.sum(0), torch.full((k,), b / k, dtype=codes.dtype), rtol=1e-3, atol=0)


def test_sinkhorn_uniform_for_random_scores_and_sharper_for_small_epsilon(gen):
    b, k = 16, 4
    scores = normed(gen, b, 8) @ normed(gen, k, 8).T
    # Large epsilon: the scores barely matter, the codes are nearly uniform.
    flat = L.sinkhorn(scores, epsilon=100.0)
    torch.testing.assert_close(flat, torch.full((b, k), 1 / k, dtype=flat.dtype), rtol=0.02, atol=0)
    entropies = [row_entropy(L.sinkhorn(scores, epsilon=e)) for e in (1.0, 0.1, 0.05, 0.01)]
    assert entropies[0] <= math.log(k) + 1e-9
    assert all(a > b_ for a, b_ in zip(entropies, entropies[1:])), entropies


def test_sinkhorn_is_stable_for_large_scores_and_small_epsilon(gen):
    # Cosine scores with epsilon = 0.005: exp(1 / 0.005) = exp(200) overflows float32 and
    # exp(-400) underflows it; the shift and the float64 work dtype handle both.
    scores = (normed(gen, 8, 4) @ normed(gen, 4, 4).T).float()
    codes = L.sinkhorn(scores, epsilon=0.005)
    assert codes.dtype == torch.float32
    assert torch.isfinite(codes).all()
    torch.testing.assert_close(codes.sum(1), torch.ones(8))
    # Unnormalised scores: exp(15 / 0.05) would overflow even float64 without the shift.
    codes = L.sinkhorn(randn(gen, 8, 4) * 5, epsilon=0.05)
    assert torch.isfinite(codes).all()


def test_sinkhorn_no_gradient(gen):
    scores = randn(gen, 4, 3).requires_grad_()
    assert not L.sinkhorn(scores).requires_grad


def test_sinkhorn_distributed_matches_single_process(gen):
    """Split the batch over two simulated processes (threads) with a summing all_reduce."""
    world_size = 2
    scores = normed(gen, 8, 6) @ normed(gen, 5, 6).T
    # Different per-rank maxima so that the shared shift is exercised.
    scores[:4] += 0.5
    expected = L.sinkhorn(scores, epsilon=0.05, iterations=3)

    barrier = threading.Barrier(world_size)
    slots = [None] * world_size
    results = [None] * world_size

    def make_all_reduce(rank):
        def all_reduce(tensor):
            slots[rank] = tensor.clone()
            barrier.wait()
            total = sum(slots)
            barrier.wait()
            tensor.copy_(total)

        return all_reduce

    def run(rank):
        local = scores[rank * 4 : (rank + 1) * 4]
        results[rank] = L.sinkhorn(local, 0.05, 3, world_size=world_size, all_reduce=make_all_reduce(rank))

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world_size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    torch.testing.assert_close(torch.cat(results), expected, rtol=1e-10, atol=1e-12)


def loop_swav(scores, codes, temperature):
    scores = [np.asarray(s, dtype=np.float64) for s in scores]
    codes = [np.asarray(c, dtype=np.float64) for c in codes]
    pair_losses = []
    for t, q in enumerate(codes):
        for v, s in enumerate(scores):
            if v == t:
                continue
            batch = []
            for n in range(s.shape[0]):
                exps = [math.exp(x / temperature) for x in s[n]]
                log_p = [math.log(e / sum(exps)) for e in exps]
                batch.append(-sum(q[n][k] * log_p[k] for k in range(len(exps))))
            pair_losses.append(sum(batch) / len(batch))
    return sum(pair_losses) / len(pair_losses)


def test_swav_loss_two_crops_matches_loop(gen):
    s1, s2 = randn(gen, 3, 4), randn(gen, 3, 4)
    q1, q2 = L.sinkhorn(s1), L.sinkhorn(s2)
    loss = L.swav_loss([s1, s2], [q1, q2], temperature=0.1)
    assert loss.item() == pytest.approx(loop_swav([s1, s2], [q1, q2], 0.1), rel=1e-10)


def test_swav_loss_multi_crop_matches_loop(gen):
    scores = [randn(gen, 2, 3) for _ in range(4)]  # 2 global + 2 local crops
    codes = [L.sinkhorn(s) for s in scores[:2]]
    loss = L.swav_loss(scores, codes, temperature=0.5)
    assert loss.item() == pytest.approx(loop_swav(scores, codes, 0.5), rel=1e-10)


def test_swav_loss_gradient_only_through_scores(gen):
    s1 = randn(gen, 3, 4).requires_grad_()
    s2 = randn(gen, 3, 4).requires_grad_()
    q1 = torch.softmax(randn(gen, 3, 4), 1).requires_grad_()
    q2 = torch.softmax(randn(gen, 3, 4), 1).requires_grad_()
    L.swav_loss([s1, s2], [q1, q2]).backward()
    assert s1.grad.abs().sum() > 0 and s2.grad.abs().sum() > 0
    assert q1.grad is None and q2.grad is None


def test_swav_loss_rejects_bad_crop_lists(gen):
    s = randn(gen, 2, 3)
    with pytest.raises(ValueError):
        L.swav_loss([s], [s])
    with pytest.raises(ValueError):
        L.swav_loss([s, s], [s, s, s])


# ------------------------------------------------------------------------------------
# Alignment and uniformity (Wang & Isola)
# ------------------------------------------------------------------------------------


def test_alignment_matches_loop(gen):
    z1, z2 = normed(gen, 4, 3), normed(gen, 4, 3)
    for alpha in (1, 2, 3):
        expected = np.mean(
            [math.sqrt(sum((z1[n, c] - z2[n, c]).item() ** 2 for c in range(3))) ** alpha for n in range(4)]
        )
        assert L.alignment(z1, z2, alpha).item() == pytest.approx(expected, rel=1e-10)
    assert L.alignment(z1, z1).item() == pytest.approx(0.0, abs=1e-12)
    assert L.alignment(z1, -z1).item() == pytest.approx(4.0)


def test_uniformity_matches_loop(gen):
    z = normed(gen, 4, 3)
    for t in (1, 2):
        kernel = []
        for i in range(4):
            for j in range(i + 1, 4):
                sq = sum((z[i, c] - z[j, c]).item() ** 2 for c in range(3))
                kernel.append(math.exp(-t * sq))
        expected = math.log(sum(kernel) / len(kernel))
        assert L.uniformity(z, t).item() == pytest.approx(expected, rel=1e-10)


def test_uniformity_collapsed_vs_spread():
    collapsed = F.normalize(torch.ones(4, 2, dtype=torch.float64), dim=1)
    assert L.uniformity(collapsed).item() == pytest.approx(0.0, abs=1e-12)
    # Four points evenly spaced on the circle are more uniform than a clump.
    angles = torch.arange(4, dtype=torch.float64) * math.pi / 2
    spread = torch.stack([angles.cos(), angles.sin()], dim=1)
    clump = torch.stack([(0.1 * angles).cos(), (0.1 * angles).sin()], dim=1)
    assert L.uniformity(spread) < L.uniformity(clump) < 0


# ------------------------------------------------------------------------------------
# Batch-hard triplet loss (Hermans et al. 2017; S4L-Exemplar)
# ------------------------------------------------------------------------------------


def test_batch_hard_triplet_loss_by_hand():
    # Four points on a line, two identities: 0 -> {0, 1}, 1 -> {3, 7}.
    z = torch.tensor([[0.0], [1.0], [3.0], [7.0]], dtype=torch.float64)
    ids = torch.tensor([0, 0, 1, 1])
    # anchor: hardest positive distance, hardest (closest) negative distance
    #   0: d+ = 1, d- = 3;  1: d+ = 1, d- = 2;  3: d+ = 4, d- = 2;  7: d+ = 4, d- = 6
    pairs = [(1, 3), (1, 2), (4, 2), (4, 6)]
    for margin in (0.0, 0.5):
        soft = np.mean([math.log1p(math.exp(p - n + margin)) for p, n in pairs])
        hard = np.mean([max(0.0, p - n + margin) for p, n in pairs])
        assert L.batch_hard_triplet_loss(z, ids, margin).item() == pytest.approx(soft, rel=1e-10)
        assert L.batch_hard_triplet_loss(z, ids, margin, soft=False).item() == pytest.approx(hard, rel=1e-10)


def test_batch_hard_triplet_loss_gradient_and_checks():
    z = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [1.0, 0.0]], requires_grad=True)  # zero distances
    L.batch_hard_triplet_loss(z, torch.tensor([0, 0, 1, 1])).backward()
    assert torch.isfinite(z.grad).all()
    with pytest.raises(ValueError, match="two rows"):
        L.batch_hard_triplet_loss(torch.randn(3, 2), torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="two identities"):
        L.batch_hard_triplet_loss(torch.randn(2, 2), torch.tensor([0, 0]))
