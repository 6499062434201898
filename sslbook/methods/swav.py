"""SwAV: the clustering architecture (Caron, Misra, Mairal, Goyal, Bojanowski, Joulin, 2020).

"Unsupervised Learning of Visual Features by Contrasting Cluster Assignments", NeurIPS 2020.
The paper's Algorithm 1 (PyTorch-like pseudocode), line by line:

    # C: prototypes (DxK), model: convnet + projection head, temp: 0.1
    for x in loader:
        x_t, x_s = augment(x), augment(x)                 -> the trainer's Augment: views (2 global
                                                             crops first, then any local crops)
        z = model(cat(x_t, x_s))                          -> _embed: backbone per resolution group,
                                                             one projector pass, then normalize
        scores = mm(z, C)                                 -> _scores: self.prototypes, in float32
        scores_t, scores_s = scores[:B], scores[B:]
        with torch.no_grad():
            q_t, q_s = sinkhorn(scores_t), sinkhorn(scores_s)  -> assign(): losses.sinkhorn, over
                                                             [queue scores; batch scores] if the
                                                             queue is on, keeping the batch rows
        p_t = Softmax(scores_t / temp)
        p_s = Softmax(scores_s / temp)
        loss = -0.5 * mean(q_t * log(p_s) + q_s * log(p_t))   -> losses.swav_loss (swapped
                                                             prediction, over every crop pair)
        loss.backward(); update(model.params); update(C)  -> the trainer (with
                                                             before_optimizer_step: C frozen
                                                             during the first epoch(s))
        with torch.no_grad(): C = normalize(C, dim=0, p=2)   -> self.prototypes.normalize_(), at the
                                                             start of the next forward

What makes the family different. The end-to-end, memory-bank and momentum architectures compare
*instances*: every other image is a negative, even another picture of a cat when the anchor is a
cat (a false negative). SwAV compares *cluster assignments* instead: each view is scored against K
learned prototypes, and the target of one view is the soft cluster code q of the other view. There
are no pairwise negatives at all. What stops every image from landing in the same cluster (the
trivial solution) is the equipartition constraint: Sinkhorn-Knopp computes codes that spread each
batch evenly over the prototypes. The cost moves from "many negatives" to "enough samples per
prototype": with a batch of B and K prototypes each prototype gets mass B/K per batch, so small
batches (B/K < 1) force blurry codes. SwAV's remedy is a short queue of recent features that joins
the batch inside Sinkhorn (only the batch rows' codes are used); it needs no gradient and no
momentum encoder, because it only feeds the assignment, never the loss. Here the queue is filled
from the first step and used from ``queue_start_epoch`` on (the epoch the trainer last passed to
``before_optimizer_step``); the official code creates it empty at that epoch and uses it once full.

Multi-crop: besides the two global crops, several small local crops (2 x 224 + 6 x 96 on ImageNet,
2 x 32 + 6 x 18 on CIFAR here) are only ever asked to *predict* the codes of the global crops, never
to provide them. Crops of different sizes cannot share a batch, so the backbone runs once per
group of consecutive equal-sized crops (the official code's resolution grouping, which any method
can use: :func:`sslbook.methods.base.encode_crops`); the projector then sees all crops together.

Distributed training: Sinkhorn's sums run over the whole global batch (``all_reduce_sum``). The
queue holds *gathered* features, so it is the same on every process (DDP may broadcast buffers
harmlessly), and each process feeds Sinkhorn its own share of it (every ``world_size``-th row), so
every queued feature is counted once, as with the official per-process queues.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import distributed
from ..losses import sinkhorn, swav_loss
from ..models import Prototypes, swav_projector
from .base import Method, encode_crops


class SwAV(Method):
    def __init__(
        self,
        backbone,
        dim: int = 128,
        hidden_dim: int = 2048,
        num_prototypes: int = 3000,
        temperature: float = 0.1,
        epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        num_global: int = 2,
        queue_length: int = 0,
        queue_start_epoch: int = 15,
        freeze_prototypes_epochs: int = 1,
    ):
        super().__init__(backbone)
        self.projector = swav_projector(backbone.feature_dim, hidden_dim, dim)  # Linear-BN-ReLU-Linear
        self.prototypes = Prototypes(dim, num_prototypes)  # C: K unit rows
        self.temperature = temperature
        self.epsilon = epsilon
        self.sinkhorn_iterations = sinkhorn_iterations
        self.num_global = num_global  # the first crops: they get codes ("crops_for_assign")
        self.queue_start_epoch = queue_start_epoch
        self.freeze_prototypes_epochs = freeze_prototypes_epochs
        # Feature queue (SwAV's small-batch trick): the newest features first, per global crop.
        # Its length is rounded down to a multiple of the number of processes (each uses its share).
        world = distributed.world_size()
        length = queue_length - queue_length % world
        self.register_buffer("queue", torch.zeros(num_global, length, dim))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))  # valid rows
        # The epoch the trainer last reported (before_optimizer_step); decides when the queue is used.
        self.register_buffer("epoch", torch.zeros((), dtype=torch.long))

    # ------------------------------------------------------------------ the pieces
    def _embed(self, views: list[torch.Tensor]) -> torch.Tensor:
        """z = normalize(projector(backbone(x))) for all crops, in order: [V*B, dim]."""
        # consecutive crops of one size go through the backbone together, then all through the projector
        return F.normalize(self.projector(encode_crops(self.backbone, views)), dim=1)

    def _scores(self, z: torch.Tensor) -> torch.Tensor:
        """Cosines of z with the prototypes, in float32 even under autocast: Sinkhorn divides them by
        epsilon (0.05), which would magnify bf16/fp16 rounding twenty-fold."""
        with torch.autocast(z.device.type, enabled=False):
            return self.prototypes(z.float())

    def queue_active(self) -> bool:
        """True once the trainer has reached ``queue_start_epoch`` and the queue holds features."""
        return self.queue.shape[1] > 0 and int(self.epoch) >= self.queue_start_epoch and int(self.queue_filled) > 0

    @torch.no_grad()
    def assign(self, scores: torch.Tensor, crop: int = 0) -> torch.Tensor:
        """Sinkhorn codes q [B, K] for the scores of global crop ``crop``, without gradient.

        When the queue is active, Sinkhorn runs on [queue scores; batch scores] (this process's
        share of the valid queue rows, scored against the current prototypes) and only the last B
        rows, the batch's, are returned.
        """
        batch = scores.shape[0]
        scores = scores.detach().float()
        if self.queue_active():
            world, rank = distributed.world_size(), distributed.rank()
            queued = self.queue[crop, : int(self.queue_filled)][rank::world]  # this process's share
            scores = torch.cat([self._scores(queued), scores])
        codes = sinkhorn(
            scores,
            self.epsilon,
            self.sinkhorn_iterations,
            distributed.world_size(),
            all_reduce=distributed.all_reduce_sum if distributed.is_distributed() else None,
        )
        return codes[-batch:]  # the batch rows only

    @torch.no_grad()
    def _enqueue(self, z_global: list[torch.Tensor]) -> None:
        """Put the global crops' features at the front of the queue; the oldest fall off the end."""
        length = self.queue.shape[1]
        if length == 0:
            return
        for crop, z in enumerate(z_global):
            z = distributed.gather(z.detach()).to(self.queue.dtype)  # the global batch, rank order
            self.queue[crop] = torch.cat([z, self.queue[crop]])[:length]
        self.queue_filled.add_(len(z)).clamp_(max=length)

    # ------------------------------------------------------------------ training
    def forward(self, views, index=None):
        if len(views) < max(2, self.num_global):
            raise ValueError(f"SwAV needs at least {max(2, self.num_global)} views, got {len(views)}")
        self.prototypes.normalize_()  # unit prototypes before every forward, as the official code
        batch = views[0].shape[0]
        z = self._embed(views)
        scores = self._scores(z).chunk(len(views))  # V tensors [B, K]
        codes = [self.assign(scores[t], t) for t in range(self.num_global)]  # targets, no gradient
        loss = swav_loss(scores, codes, self.temperature)  # each code predicted from every other crop
        if self.training:  # the queue is filled after computing the codes (it fills from the start,
            # so it is full when it comes into use at queue_start_epoch)
            self._enqueue([z[t * batch : (t + 1) * batch] for t in range(self.num_global)])
        return {
            "loss": loss,
            "z": z[:batch].detach(),
            # How sure the assignments are: the mean largest entry of a code (1 = one-hot). With B
            # samples spread over K prototypes a prototype can take at most B/K of them in total.
            "code_max": torch.stack([q.max(dim=1).values.mean() for q in codes]).mean(),
        }

    def before_optimizer_step(self, epoch: int) -> None:
        self.epoch.fill_(epoch)
        if epoch < self.freeze_prototypes_epochs:  # SwAV: no prototype update at the start
            self.prototypes.weight.grad = None

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The unit features z [B, dim] of a batch (what the prototypes score), for inspection."""
        return F.normalize(self.projector(self.backbone(images)), dim=1)

    @torch.no_grad()
    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """Prototype scores [B, K] (cosines) of a batch, for inspection; call ``eval()`` first."""
        self.prototypes.normalize_()
        return self._scores(self.features(images))


@torch.no_grad()
def prototype_coverage(z: torch.Tensor, prototypes: torch.Tensor, directions: int = 2) -> dict:
    """Do the features still meet the prototypes? SwAV's collapse, measured.

    SwAV's trivial solution is not one code for every image (Sinkhorn forbids it) but scores that are
    all zero: then the prediction and the codes are uniform, the loss is log K and its gradient
    vanishes. K unit prototypes that span the feature space leave no unit feature orthogonal to all of
    them; trained prototypes can stop spanning it, leaving *empty* directions that the features
    may then move into. For unit features ``z`` [B, dim] and the prototypes [K, dim]:

    - ``feature_energy``: the share of the features' variance (squared singular values of the centred
      features) in their top 1, 2 and 10 directions: {"top1", "top2", "top10"} (top1 = 1: every
      feature on one line);
    - ``prototype_svals``: the smallest singular values of the unit prototypes over the feature space,
      smallest first (near 0: a direction no prototype points along; K >= dim random prototypes have none,
      fewer than dim leave dim - K directions at exactly 0);
    - ``share_in_empty``: the mean share of a feature's squared norm that lies in the ``directions``
      directions the prototypes cover least, or in all dim - K directions that K < dim prototypes leave
      out (1: the features live where no prototype points);
    - ``max_score``: the largest |cos(z, c_k)| over the batch and the prototypes.
    """
    z = F.normalize(z.float(), dim=1)
    c = F.normalize(prototypes.float(), dim=1)
    energy = torch.linalg.svdvals(z - z.mean(0)).square()
    # The eigenvalues of C^T C [dim, dim] are the squared singular values of C, with a 0 for every direction
    # beyond K when there are fewer prototypes than dimensions (a thin SVD of C would miss those directions).
    # float64: a singular value near 0 is the square root of a tiny eigenvalue.
    eigenvalues, eigenvectors = torch.linalg.eigh(c.double().T @ c.double())  # ascending
    svals = eigenvalues.clamp(min=0).sqrt().float()
    uncovered = max(directions, c.shape[1] - c.shape[0])  # and every direction fewer prototypes leave out
    empty = eigenvectors[:, :uncovered].T.float()  # the directions the prototypes cover least
    return {
        "feature_energy": {f"top{k}": (energy[:k].sum() / energy.sum()).item() for k in (1, 2, 10)},
        "prototype_svals": svals[: max(directions, 3)].tolist(),
        "share_in_empty": (z @ empty.T).square().sum(1).mean().item(),
        "max_score": (z @ c.T).abs().max().item(),
    }
