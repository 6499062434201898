"""Every loss of the book, written as a pure function.

Each function takes whole tensors and returns a number (a 0-d tensor, or a Python float for
the diagnostics). There are no ``nn.Module`` wrappers, no hidden state (queues, memory banks
and momentum encoders belong to the training code of each method) and no distributed calls:
under DDP the caller all-gathers the embeddings *with gradient* before calling a loss. The
one exception is :func:`sinkhorn`, which needs global sums in the middle of its loop and
therefore accepts an ``all_reduce`` callable.

Notation used in the docstrings: ``.`` is the dot product, ``||x||`` the Euclidean norm,
``cos(a, b) = a.b / (||a|| ||b||)``, ``T`` or ``tau`` a temperature, ``N`` a batch size and
``d`` an embedding dimension.

Contents, in the order the book meets them:

* :func:`cosine_similarity_matrix`            - helper used by several chapters
* :func:`nce_loss`, :func:`estimate_log_normaliser` - InstDisc (Wu et al. 2018)
* :func:`info_nce`, :func:`info_nce_logits`   - MoCo (He et al. 2020)
* :func:`nt_xent`                             - SimCLR (Chen et al. 2020)
* :func:`cmc_loss`                            - CMC (Tian et al. 2020)
* :func:`multi_positive_nt_xent`              - temporal contrast (frames of one clip; Khosla et al. 2020's form)
* :func:`cpc_info_nce`, :func:`mutual_information_bound` - CPC (van den Oord et al. 2018)
* :func:`byol_loss`                           - BYOL (Grill et al. 2020)
* :func:`negative_cosine`, :func:`simsiam_loss`, :func:`output_std` - SimSiam (Chen & He 2021)
* :func:`sinkhorn`, :func:`swav_loss`         - SwAV (Caron et al. 2020)
* :func:`alignment`, :func:`uniformity`       - Wang & Isola (2020)
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "cosine_similarity_matrix",
    "nce_loss",
    "estimate_log_normaliser",
    "info_nce_logits",
    "info_nce",
    "nt_xent",
    "cmc_loss",
    "multi_positive_nt_xent",
    "cpc_info_nce",
    "mutual_information_bound",
    "byol_loss",
    "negative_cosine",
    "simsiam_loss",
    "output_std",
    "sinkhorn",
    "swav_loss",
    "alignment",
    "uniformity",
    "batch_hard_triplet_loss",
]


# --------------------------------------------------------------------------------------
# Helper
# --------------------------------------------------------------------------------------


def cosine_similarity_matrix(a: Tensor, b: Tensor) -> Tensor:
    """All pairwise cosine similarities between the rows of ``a`` and the rows of ``b``.

    S[i, j] = cos(a_i, b_j) = (a_i / ||a_i||) . (b_j / ||b_j||)

    Args:
        a: ``[N, d]`` embeddings (any scale; they are L2-normalised here).
        b: ``[M, d]`` embeddings (any scale; they are L2-normalised here).

    Returns:
        ``[N, M]`` matrix with entries in [-1, 1].
    """
    a = F.normalize(a, dim=1)
    b = F.normalize(b, dim=1)
    return a @ b.T


# --------------------------------------------------------------------------------------
# InstDisc: noise-contrastive estimation against a memory bank
# --------------------------------------------------------------------------------------


def nce_loss(
    positive_logits: Tensor,
    negative_logits: Tensor,
    log_normaliser: Union[float, Tensor],
    num_data: int,
) -> Tensor:
    """Noise-contrastive estimation loss of instance discrimination (InstDisc).

    Paper: Wu, Xiong, Yu & Lin (2018), "Unsupervised Feature Learning via Non-Parametric
    Instance Discrimination", CVPR, Section 3.2.

    Every image i is its own class. Its memory-bank entry v_i plays the role of a class
    weight, and the probability that feature f belongs to instance i is

        P(i | f) = exp(v_i . f / tau) / Z,

    where the normaliser Z = sum_j exp(v_j . f / tau), a sum over all n images, is too
    expensive to compute, so it is replaced by a constant (see
    :func:`estimate_log_normaliser`). NCE turns the n-way problem into binary
    "data or noise?" classifications. With m noise samples per data sample, drawn
    uniformly (P_n(i) = 1/n), the posterior that (i, f) came from the data is

        h(i, f) = P(i | f) / (P(i | f) + m * P_n(i))

    and the loss for one feature f with true instance i and noise instances j_1..j_m is

        L = -log h(i, f) - sum_{k=1..m} log(1 - h(j_k, f)),

    averaged over the batch. Writing x = v.f/tau - log Z - log(m/n), h = sigmoid(x), so
    -log h = softplus(-x) and -log(1 - h) = softplus(x); we use that form because it does
    not overflow or take log(0).

    Args:
        positive_logits: ``[N]`` values v_i . f / tau for each sample's own memory entry.
        negative_logits: ``[N, m]`` values v_j . f / tau for m noise entries per sample
            (drawn uniformly from the memory bank).
        log_normaliser: log Z, a scalar held constant during training.
        num_data: n, the number of images in the data set (size of the memory bank).

    Returns:
        Scalar loss (mean over the N samples).
    """
    num_negatives = negative_logits.shape[1]
    # log(m * P_n) = log(m / n): the noise term in the denominator of h.
    log_noise = math.log(num_negatives / num_data)
    positive_x = positive_logits - log_normaliser - log_noise  # logit of h(i, f)
    negative_x = negative_logits - log_normaliser - log_noise  # logits of h(j_k, f)
    loss_positive = F.softplus(-positive_x)  # -log h(i, f)
    loss_negative = F.softplus(negative_x).sum(dim=1)  # -sum_k log(1 - h(j_k, f))
    return (loss_positive + loss_negative).mean()


def estimate_log_normaliser(negative_logits: Tensor, num_data: int) -> float:
    """Monte-Carlo estimate of log Z for :func:`nce_loss`, as InstDisc does on its first batch.

    Paper: Wu et al. (2018), Section 3.2. Since the noise entries are drawn uniformly,

        Z = sum_{j=1..n} exp(v_j . f / tau)  ~=  n * mean_over_samples(exp(v_j . f / tau)).

    InstDisc computes this once, from the first mini-batch, and keeps it fixed afterwards.
    Here the mean runs over every entry of ``negative_logits`` (all N samples, all m noise
    entries), and it is computed with logsumexp so that exp() cannot overflow.

    Args:
        negative_logits: ``[N, m]`` values v_j . f / tau for uniformly drawn memory entries.
        num_data: n, the number of images in the data set.

    Returns:
        log Z as a Python float (a constant: no gradient flows through it).
    """
    logits = negative_logits.detach().flatten().double()
    log_mean_exp = torch.logsumexp(logits, dim=0) - math.log(logits.numel())
    return float(math.log(num_data) + log_mean_exp)


# --------------------------------------------------------------------------------------
# MoCo: InfoNCE against a queue of keys
# --------------------------------------------------------------------------------------


def info_nce_logits(query: Tensor, positive: Tensor, negatives: Tensor, temperature: float = 0.07) -> Tensor:
    """The ``[N, 1+K]`` logits of MoCo's InfoNCE, positive first (see :func:`info_nce`).

    logits[n] = [q_n . k+_n, q_n . k_1, ..., q_n . k_K] / T

    Args:
        query: ``[N, d]`` queries q, assumed L2-normalised (not normalised here).
        positive: ``[N, d]`` positive keys k+ (row n is the key of query n), assumed
            L2-normalised.
        negatives: ``[K, d]`` negative keys (MoCo's queue), assumed L2-normalised.
        temperature: T.

    Returns:
        ``[N, 1+K]`` logits; column 0 holds the positive.
    """
    positive_logits = (query * positive).sum(dim=1, keepdim=True)  # [N, 1]
    negative_logits = query @ negatives.T  # [N, K]
    return torch.cat([positive_logits, negative_logits], dim=1) / temperature


def info_nce(query: Tensor, positive: Tensor, negatives: Tensor, temperature: float = 0.07) -> Tensor:
    """MoCo's InfoNCE loss: pick the positive key out of 1 + K keys.

    Paper: He, Fan, Wu, Xie & Girshick (2020), "Momentum Contrast for Unsupervised Visual
    Representation Learning", CVPR, Eq. 1 and Algorithm 1.

        L_q = -log( exp(q . k+ / T) / (exp(q . k+ / T) + sum_{i=1..K} exp(q . k_i / T)) )

    i.e. a (1+K)-way softmax cross-entropy whose correct class is the positive, placed at
    index 0 of the logits (Algorithm 1: ``labels = zeros(N)``). Averaged over the N
    queries.

    All inputs are assumed to be L2-normalised already (MoCo normalises the encoder
    outputs before they enter the loss and the queue); nothing is normalised here. This
    function does not detach the keys: in MoCo they come from the momentum encoder, which
    receives no gradient, so the caller computes them under ``torch.no_grad()``.

    Args:
        query: ``[N, d]`` queries q (from the query encoder).
        positive: ``[N, d]`` positive keys k+ (row n is the other view of image n).
        negatives: ``[K, d]`` negative keys (the queue).
        temperature: T (MoCo uses 0.07).

    Returns:
        Scalar loss (mean over the N queries).
    """
    logits = info_nce_logits(query, positive, negatives, temperature)
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, labels)


# --------------------------------------------------------------------------------------
# SimCLR: NT-Xent over the 2N views of a batch
# --------------------------------------------------------------------------------------


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.5) -> Tensor:
    """SimCLR's normalised-temperature cross-entropy (NT-Xent).

    Paper: Chen, Kornblith, Norouzi & Hinton (2020), "A Simple Framework for Contrastive
    Learning of Visual Representations", ICML, Eq. 1 and Algorithm 1.

    Stack the two views into 2N embeddings u_1..u_2N (u_k = z1_k, u_{N+k} = z2_k) and let
    s(a, b) = cos(a, b). For anchor a with partner p(a) (the other view of the same image),

        l(a) = -log( exp(s(u_a, u_p(a)) / T) / sum_{b != a} exp(s(u_a, u_b) / T) )

    The denominator runs over the 2N - 1 other views: the partner (positive) and the
    2(N-1) views of the other images (negatives); the anchor's similarity with itself is
    excluded. The loss is the mean of l(a) over all 2N anchors, so every pair (k, N+k)
    counts in both directions.

    Args:
        z1: ``[N, d]`` projections of the first view (any scale; normalised here).
        z2: ``[N, d]`` projections of the second view; row k is the partner of z1 row k.
        temperature: T (0.5 here, a common choice for CIFAR-10).

    Returns:
        Scalar loss (mean over the 2N anchors).
    """
    n = z1.shape[0]
    u = torch.cat([z1, z2], dim=0)  # [2N, d]
    logits = cosine_similarity_matrix(u, u) / temperature  # [2N, 2N]
    # Remove self-similarity: exp(-inf) = 0, so the diagonal drops out of every softmax.
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=u.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    # Anchor k (first view) has its partner at N + k, and anchor N + k at k.
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(u.device)
    return F.cross_entropy(logits, partner)


# --------------------------------------------------------------------------------------
# CMC: InfoNCE between two views, in both directions
# --------------------------------------------------------------------------------------


def cmc_loss(z1: Tensor, z2: Tensor, temperature: float = 0.07) -> Tensor:
    """Contrastive Multiview Coding's two-view loss, with the other images of the batch as negatives.

    Paper: Tian, Krishnan & Isola (2020), "Contrastive Multiview Coding", ECCV, Eq. 2-3. With the
    critic h(a, b) = exp(cos(a, b) / T), anchoring on view 1 and picking its partner among view 2's
    embeddings,

        L^{V1,V2} = -1/N sum_i log( h(z1_i, z2_i) / sum_j h(z1_i, z2_j) ),

    and the paper's objective is the sum of both directions, L = L^{V1,V2} + L^{V2,V1}. The N - 1
    negatives of an anchor are the *other view* of the other images only (SimCLR's NT-Xent,
    :func:`nt_xent`, also uses the anchor's own view of the other images). The paper draws its
    negatives from a memory bank and approximates the softmax with NCE; this is the in-batch form.

    Args:
        z1: ``[N, d]`` embeddings of view 1 (any scale; normalised here).
        z2: ``[N, d]`` embeddings of view 2; row i is the partner of z1 row i.
        temperature: T (0.07 in the paper).

    Returns:
        Scalar: the sum of the two directions' mean losses.
    """
    logits = cosine_similarity_matrix(z1, z2) / temperature  # [N, N]; the diagonal holds the positives
    target = torch.arange(z1.shape[0], device=z1.device)
    return F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)


# --------------------------------------------------------------------------------------
# Temporal contrast: NT-Xent with several positives per anchor
# --------------------------------------------------------------------------------------


def multi_positive_nt_xent(z: Tensor, groups: Tensor, temperature: float = 0.1) -> Tensor:
    """NT-Xent where every embedding has *several* positives: all the others of its group.

    Used for frame-based contrast (Jaiswal et al. 2020, Sec. 2.2.3): the frames of one video (here:
    of one clip, or of two clips of the same video) are one group; the frames of the other videos
    of the batch are the negatives. The form is the "L_out" loss of Khosla et al. (2020),
    "Supervised Contrastive Learning", NeurIPS, Eq. 2, with groups in place of class labels.

    With s(a, b) = cos(z_a, z_b), P(a) = {p != a : groups[p] = groups[a]} the anchor's positives
    and the denominator over every other embedding of the batch (positives and negatives, never
    the anchor itself),

        l(a) = -1/|P(a)| sum_{p in P(a)} log( exp(s(a, p) / T) / sum_{b != a} exp(s(a, b) / T) )

    and the loss is the mean of l(a) over all anchors. When every group has exactly two members
    this is SimCLR's NT-Xent (:func:`nt_xent`) of the two members.

    Args:
        z: ``[N, d]`` embeddings (any scale; normalised here).
        groups: ``[N]`` integer group ids (e.g. the video each frame came from); every group needs
            at least two members.
        temperature: T.

    Returns:
        Scalar loss (mean over the N anchors).
    """
    groups = torch.as_tensor(groups, device=z.device)
    same = groups[:, None] == groups[None, :]
    self_mask = torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
    positives = same & ~self_mask
    counts = positives.sum(dim=1)
    if bool((counts == 0).any()):
        lonely = groups[counts == 0].unique().tolist()
        raise ValueError(f"every group needs at least two members; groups {lonely} have only one")
    logits = (cosine_similarity_matrix(z, z) / temperature).masked_fill(self_mask, float("-inf"))
    log_prob = F.log_softmax(logits, dim=1)  # log( exp(s_ab/T) / sum_{b != a} exp(s_ab/T) )
    # Mean of log_prob over each anchor's positives (masked_fill keeps -inf of the diagonal out).
    positive_log_prob = log_prob.masked_fill(~positives, 0.0).sum(dim=1) / counts
    return -positive_log_prob.mean()


# --------------------------------------------------------------------------------------
# CPC: InfoNCE for predicted embeddings, and the mutual-information bound
# --------------------------------------------------------------------------------------


def cpc_info_nce(predictions: Tensor, targets: Tensor, positives: Optional[Tensor] = None) -> Tensor:
    """CPC's InfoNCE for a set of predictions, each scored against every target.

    Paper: van den Oord, Li & Vinyals (2018), "Representation Learning with Contrastive
    Predictive Coding", arXiv:1807.03748, Eq. 4.

    With f(x_j, c) = exp(z_j . W_k c), and the prediction W_k c given as a row of
    ``predictions``:

        L = -mean_i log( exp(pred_i . target_pos(i)) / sum_{j=1..N} exp(pred_i . target_j) )

    No normalisation and no temperature: CPC uses raw dot products (the bilinear score).

    Two layouts:

    * ``positives=None``: ``targets`` is aligned with ``predictions`` row by row (M = N): row i's
      positive is target i, the other N - 1 targets are its negatives;
    * ``positives`` given (``[M]`` long): ``targets`` is the whole candidate set ``[N, d]`` and row i's
      positive is ``targets[positives[i]]``; every other candidate is a negative. This is CPC v2's
      image loss (Hénaff et al. 2020, Appendix A.2 pseudocode): each prediction is scored against
      the patch embeddings of *every* position of *every* image of the batch, including positions
      that are never predicted.

    Args:
        predictions: ``[M, d]`` predicted embeddings W_k c_t.
        targets: ``[N, d]`` candidate (true) embeddings z; N = M when ``positives`` is None.
        positives: optional ``[M]`` index of each prediction's true target among the N candidates.

    Returns:
        Scalar loss (mean over the M predictions). The softmax has N candidates, so
        :func:`mutual_information_bound` takes ``num_negatives = N - 1``.
    """
    logits = predictions @ targets.T  # [M, N]
    if positives is None:
        if predictions.shape[0] != targets.shape[0]:
            raise ValueError(
                f"{predictions.shape[0]} predictions but {targets.shape[0]} targets: pass positives= "
                "to score predictions against a larger candidate set"
            )
        positives = torch.arange(logits.shape[0], device=logits.device)  # the diagonal holds the positives
    return F.cross_entropy(logits, positives.to(logits.device))


def mutual_information_bound(loss: Union[float, Tensor], num_negatives: int) -> float:
    """Lower bound on mutual information implied by an InfoNCE loss value.

    Paper: van den Oord, Li & Vinyals (2018), Section 2.3:  I(x; c) >= log N - L_N,
    where N is the number of candidates in each softmax (one positive plus N - 1
    negatives). With K negatives, N = K + 1:

        I >= log(K + 1) - L       (in nats)

    The bound can never exceed log(K + 1), which is why more negatives are needed to
    certify more information.

    Args:
        loss: the InfoNCE loss value L (mean over queries), float or 0-d tensor.
        num_negatives: K, the number of negatives per query.

    Returns:
        log(K + 1) - L as a Python float.
    """
    return math.log(num_negatives + 1) - float(loss)


# --------------------------------------------------------------------------------------
# BYOL and SimSiam: prediction losses without negatives
# --------------------------------------------------------------------------------------


def byol_loss(p: Tensor, z: Tensor) -> Tensor:
    """BYOL's normalised mean-squared error between prediction and target projection.

    Paper: Grill et al. (2020), "Bootstrap Your Own Latent: A New Approach to
    Self-Supervised Learning", NeurIPS, Eq. 2.

        L = || p/||p|| - z/||z|| ||^2 = 2 - 2 * cos(p, z)     per sample, then the mean.

    Ranges from 0 (same direction) to 4 (opposite directions). The full BYOL loss is
    symmetrised by the caller: byol_loss(p1, z2) + byol_loss(p2, z1).

    The target z is detached here: it comes from the target network, whose weights are an
    exponential moving average of the online weights and never receive gradients (the
    loss is minimised with respect to the online parameters only, Section 3.1; Fig. 2
    marks the target branch "sg"). Detaching inside makes that impossible to forget.

    Args:
        p: ``[N, d]`` predictor outputs of the online network (any scale).
        z: ``[N, d]`` projections of the other view from the target network (any scale).

    Returns:
        Scalar loss (mean over the N samples).
    """
    return (2 - 2 * F.cosine_similarity(p, z.detach(), dim=1)).mean()


def negative_cosine(p: Tensor, z: Tensor, stop_gradient: bool = True) -> Tensor:
    """SimSiam's D(p, z): negative cosine similarity with a stop-gradient on z.

    Paper: Chen & He (2021), "Exploring Simple Siamese Representation Learning", CVPR,
    Eqs. 1-3 and Algorithm 1.

        D(p, z) = -cos(p, stopgrad(z)) = -(p/||p||) . (z/||z||)    per sample, then the mean.

    Ranges from -1 (aligned) to 1. ``stop_gradient=True`` is SimSiam; ``False`` lets the
    gradient flow into z too, which the book's collapse experiment uses to show that
    without the stop-gradient the outputs collapse to a constant (paper, Section 4.1).

    Args:
        p: ``[N, d]`` predictor outputs for one view.
        z: ``[N, d]`` projections of the other view.
        stop_gradient: detach z (the SimSiam setting) or not.

    Returns:
        Scalar loss (mean over the N samples).
    """
    if stop_gradient:
        z = z.detach()
    return -F.cosine_similarity(p, z, dim=1).mean()


def simsiam_loss(p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor, stop_gradient: bool = True) -> Tensor:
    """SimSiam's symmetrised loss: L = D(p1, z2) / 2 + D(p2, z1) / 2.

    Paper: Chen & He (2021), Eqs. 2-3 and Algorithm 1. D is :func:`negative_cosine`.

    Args:
        p1, p2: ``[N, d]`` predictor outputs for views 1 and 2.
        z1, z2: ``[N, d]`` projector outputs for views 1 and 2.
        stop_gradient: passed to :func:`negative_cosine`.

    Returns:
        Scalar loss in [-1, 1].
    """
    return negative_cosine(p1, z2, stop_gradient) / 2 + negative_cosine(p2, z1, stop_gradient) / 2


@torch.no_grad()
def output_std(z: Tensor) -> float:
    """SimSiam's collapse monitor: per-channel std of the L2-normalised outputs, averaged.

    Paper: Chen & He (2021), Section 4.1 and Fig. 2 (middle).

        output_std = mean_over_channels( std_over_batch( z / ||z|| ) )

    (std with Bessel's correction, as ``torch.std``.)

    If the outputs collapse to one vector the std is 0. If they were spread like a
    zero-mean isotropic Gaussian, each coordinate of z/||z|| would have std about
    1/sqrt(d), which is the healthy reference value.

    Args:
        z: ``[N, d]`` outputs (any scale; normalised here), N >= 2.

    Returns:
        The average std as a Python float (a diagnostic; no gradient).
    """
    return float(F.normalize(z, dim=1).std(dim=0).mean())


# --------------------------------------------------------------------------------------
# SwAV: Sinkhorn-Knopp codes and the swapped-prediction loss
# --------------------------------------------------------------------------------------


@torch.no_grad()
def sinkhorn(
    scores: Tensor,
    epsilon: float = 0.05,
    iterations: int = 3,
    world_size: int = 1,
    all_reduce: Optional[Callable[[Tensor], object]] = None,
) -> Tensor:
    """SwAV's Sinkhorn-Knopp: turn prototype scores into equipartitioned soft codes.

    Paper: Caron, Misra, Mairal, Goyal, Bojanowski & Joulin (2020), "Unsupervised Learning
    of Visual Features by Contrasting Cluster Assignments", NeurIPS, Section 3.1 and
    Algorithm 1; after Cuturi (2013), "Sinkhorn Distances: Lightspeed Computation of
    Optimal Transport".

    SwAV looks for codes Q (K prototypes x B samples) that agree with the scores C^T Z
    but use every prototype equally often over the batch. The solution has the form
    Q = diag(u) exp(C^T Z / epsilon) diag(v), found by alternately rescaling:

        Q <- exp(scores / epsilon)^T                  [K, B]
        Q <- Q / sum(Q)
        repeat `iterations` times:
            Q <- Q / row_sums(Q) / K      every prototype gets total mass 1/K
            Q <- Q / col_sums(Q) / B      every sample gets total mass 1/B
        codes = B * Q^T                               [B, K], each row sums to 1

    After the last step each row of ``codes`` sums to exactly 1 and each column sums to
    about B/K (exactly, in the limit of many iterations). A smaller epsilon gives sharper
    (closer to one-hot) codes.

    Numerics: we subtract a constant from the scores before exp(). Multiplying Q by a
    constant is undone by the first normalisation, so the result is unchanged, but exp()
    can no longer overflow. The work is done in float64 (float32 on Apple MPS, which has
    no float64), so that entries far below the maximum do not underflow to 0 when epsilon
    is small (float64 holds exp(-700); with cosine scores in [-1, 1] that is safe down to
    epsilon ~ 0.003). The codes are returned in the dtype of ``scores``.

    Distributed use: the columns (samples) are split over processes, so the total sum and
    the row sums must be global. Pass ``all_reduce=torch.distributed.all_reduce`` and
    ``world_size=torch.distributed.get_world_size()``; ``all_reduce(t)`` must sum ``t`` in
    place over all processes. The constant subtracted before exp() is then the mean of the
    per-process maxima, which is the same on every process, as it must be.

    Args:
        scores: ``[B, K]`` scores of the local batch against the K prototypes (SwAV: the
            dot products of normalised features and normalised prototypes).
        epsilon: entropic regularisation; SwAV uses 0.05.
        iterations: number of Sinkhorn iterations; SwAV uses 3.
        world_size: number of processes; the global batch size is B * world_size.
        all_reduce: in-place sum over processes, or None for a single process.

    Returns:
        ``[B, K]`` codes q (rows sum to 1), with no gradient. They are the targets of
        :func:`swav_loss`.
    """
    input_dtype = scores.dtype
    work_dtype = torch.float32 if scores.device.type == "mps" else torch.float64
    scores = scores.to(work_dtype)

    # A shift shared by all processes; it cancels in the normalisation by sum(Q) below.
    shift = scores.max()
    if all_reduce is not None:
        all_reduce(shift)
        shift = shift / world_size
    q = torch.exp((scores - shift) / epsilon).T  # [K, B]: prototypes x samples
    num_prototypes = q.shape[0]
    batch_size = q.shape[1] * world_size  # global B

    total = q.sum()
    if all_reduce is not None:
        all_reduce(total)
    q = q / total

    for _ in range(iterations):
        row_sums = q.sum(dim=1, keepdim=True)  # mass of each prototype, over all samples
        if all_reduce is not None:
            all_reduce(row_sums)
        q /= row_sums * num_prototypes  # Q / row_sums / K, in one pass over Q
        col_sums = q.sum(dim=0, keepdim=True)  # mass of each sample (local)
        q /= col_sums * batch_size

    codes = (q * batch_size).T  # [B, K]; each row is a probability vector
    return codes.to(input_dtype)


def swav_loss(scores: Sequence[Tensor], codes: Sequence[Tensor], temperature: float = 0.1) -> Tensor:
    """SwAV's swapped-prediction loss over several crops.

    Paper: Caron et al. (2020), Eqs. 1-2 and Section 3.2 (multi-crop).

    Crop indexing: ``scores`` holds the prototype scores of all V crops of the batch,
    ``scores[v]`` of shape ``[B, K]``. ``codes`` holds the Sinkhorn codes of the crops
    used as targets, and ``codes[t]`` belongs to crop t, i.e. the targets are the *first*
    T = len(codes) crops. Put the global (high-resolution) crops first: SwAV computes
    codes only for those ("crops_for_assign" = [0, 1]) and the small local crops only
    ever predict. For each target crop t and every other crop v != t,

        l(t, v) = -mean_over_batch( sum_k q_t[k] * log softmax(scores_v / tau)[k] )

    and the loss is the mean of l(t, v) over all T * (V - 1) pairs. With two crops this
    is (l(0, 1) + l(1, 0)) / 2: predict the code of each view from the other.

    The codes are targets and are detached here (:func:`sinkhorn` already returns them
    without gradient).

    Args:
        scores: V tensors ``[B, K]``: for each crop, the dot products of its normalised
            features with the normalised prototypes.
        codes: T <= V tensors ``[B, K]`` from :func:`sinkhorn`, for crops 0..T-1.
        temperature: tau; SwAV uses 0.1.

    Returns:
        Scalar loss.
    """
    if not 1 <= len(codes) <= len(scores) or len(scores) < 2:
        raise ValueError(
            f"need at least 2 crops and 1..{len(scores)} target crops, got {len(scores)} crops and {len(codes)} codes"
        )
    log_p = [F.log_softmax(scores_v / temperature, dim=1) for scores_v in scores]  # once per crop
    pair_losses = []
    for t, q_t in enumerate(codes):
        q_t = q_t.detach()
        for v, log_p_v in enumerate(log_p):
            if v == t:
                continue
            pair_losses.append(-(q_t * log_p_v).sum(dim=1).mean())
    return torch.stack(pair_losses).mean()


# --------------------------------------------------------------------------------------
# Wang & Isola: alignment and uniformity on the hypersphere
# --------------------------------------------------------------------------------------


def alignment(z1: Tensor, z2: Tensor, alpha: float = 2) -> Tensor:
    """Alignment: how close the two views of the same image are.

    Paper: Wang & Isola (2020), "Understanding Contrastive Representation Learning through
    Alignment and Uniformity on the Hypersphere", ICML, Section 4.1 (L_align).

        L_align = E_{(x, y) positive pair} ||f(x) - f(y)||^alpha

    Lower is better aligned; for unit vectors and alpha = 2 it lies in [0, 4].
    As in the paper, f maps to the unit hypersphere: pass L2-normalised embeddings (the
    inputs are not normalised here).

    Args:
        z1: ``[N, d]`` normalised embeddings of the first views.
        z2: ``[N, d]`` normalised embeddings of the second views; row n pairs with z1 row n.
        alpha: exponent (the paper uses 2).

    Returns:
        Scalar: the mean over the N positive pairs.
    """
    return (z1 - z2).norm(p=2, dim=1).pow(alpha).mean()


def uniformity(z: Tensor, t: float = 2) -> Tensor:
    """Uniformity: how evenly the embeddings spread over the hypersphere.

    Paper: Wang & Isola (2020), Section 4.1 (L_uniform).

        L_uniform = log E_{x, y independent} exp(-t * ||f(x) - f(y)||^2)

    estimated over all N(N-1)/2 distinct pairs of the batch (``torch.pdist``). Lower
    (more negative) is more uniform; a fully collapsed batch gives 0.
    Pass L2-normalised embeddings (they are not normalised here).

    Args:
        z: ``[N, d]`` normalised embeddings, N >= 2.
        t: the Gaussian-kernel scale (the paper uses 2).

    Returns:
        Scalar.
    """
    return torch.pdist(z, p=2).pow(2).mul(-t).exp().mean().log()


# --------------------------------------------------------------------------------------
# Exemplar / S4L: batch-hard triplet loss
# --------------------------------------------------------------------------------------


def batch_hard_triplet_loss(z: Tensor, identities: Tensor, margin: float = 0.0, soft: bool = True) -> Tensor:
    """Batch-hard triplet loss over the copies of the images in a batch.

    Paper: Hermans, Beyer & Leibe (2017), "In Defense of the Triplet Loss for Person
    Re-Identification", arXiv:1703.07737 (the "batch hard" loss and its soft margin); the
    self-supervised loss of S4L-Exemplar (Zhai, Oliver, Kolesnikov & Beyer 2019), where the identity
    of a row is the image it is an augmented copy of. With Euclidean distances D:

        for every anchor a:  d+ = max_{p: id(p) = id(a), p != a} D(a, p)    (hardest positive)
                             d- = min_{n: id(n) != id(a)}          D(a, n)    (hardest negative)
        L = mean_a  softplus(d+ - d- + margin)     (soft=True: log(1 + exp(.)), S4L's choice)
                    max(0, d+ - d- + margin)       (soft=False: hinge)

    The official S4L code L2-normalises the embeddings first and uses margin 0 with the soft
    version; pass normalised ``z`` to follow it (they are not normalised here).

    Args:
        z: ``[N, d]`` embeddings.
        identities: ``[N]`` integer identities; every identity needs >= 2 rows, and there
            must be >= 2 identities.

    Returns:
        Scalar: the mean over the N anchors.
    """
    same = identities[:, None] == identities[None, :]
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    if not (same & ~eye).any(1).all() or same.all():
        raise ValueError("every identity needs at least two rows, and there must be two identities or more")
    # sqrt has an infinite gradient at 0: clamp the squared distances (as the S4L code does).
    sq = (z[:, None, :] - z[None, :, :]).pow(2).sum(-1)
    dist = sq.clamp_min(1e-12).sqrt()
    hardest_pos = dist.masked_fill(~(same & ~eye), float("-inf")).max(1).values
    hardest_neg = dist.masked_fill(same, float("inf")).min(1).values
    diff = hardest_pos - hardest_neg + margin
    return (F.softplus(diff) if soft else F.relu(diff)).mean()
