"""The memory-bank architecture: InstDisc (Wu et al. 2018) and PIRL (Misra & van der Maaten 2020).

Papers: Wu, Xiong, Yu & Lin (2018), "Unsupervised Feature Learning via Non-Parametric Instance
Discrimination", CVPR; Misra & van der Maaten (2020), "Self-Supervised Learning of
Pretext-Invariant Representations", CVPR.

InstDisc treats every training image as its own class: with n images it is an n-way
classification whose "class weight" for image i is a stored feature m_i, so
P(i | v) = exp(m_i . v / tau) / sum_j exp(m_j . v / tau). Computing every m_j afresh each step
would need a forward pass over the whole data set, so the m_j are kept in a **memory bank**, one
unit vector per image, refreshed only when the image is in the batch; the n-way softmax is
approximated with noise-contrastive estimation (NCE) against m uniformly drawn bank entries.

InstDisc, Sec. 3 of the paper, line by line:

    M = {m_1..m_n}: random unit vectors                     -> MemoryBank.__init__
    for each mini-batch {x_i} with dataset indices {i}:     -> the trainer (views[0], index)
        v_i = f(x_i) / ||f(x_i)||   (linear head, 128-D)    -> InstDisc.project
        positive score  m_i . v_i / tau                     -> MemoryMethod.contrast (m_i = bank row i)
        draw m noise indices j ~ Uniform(n)                 -> MemoryBank.sample_negatives
        noise scores    m_j . v_i / tau
        Z ~= n * mean exp(m_j . v / tau), once, 1st batch   -> losses.estimate_log_normaliser -> log_z buffer
        J = -log h(i, v_i) - sum_j log(1 - h(j, v_i)),
            h(i, v) = P(i|v) / (P(i|v) + m/n)               -> losses.nce_loss
        backprop, SGD step                                  -> the trainer
        m_i <- normalise(0.5 m_i + 0.5 v_i)                 -> MemoryBank.update (after the loss)

The last line is the paper's "proximal" regularisation as the official code (and PIRL, which calls
the bank "an exponential moving average of feature representations") implements it: the bank
entry moves half-way to the new feature instead of being replaced. ``loss="softmax"`` swaps NCE
for InfoNCE over [positive, negatives], as the authors' later release and most re-implementations
do; with ``num_negatives=None`` it scores every bank row, which is the paper's Eq. 2 without any
approximation (affordable for CIFAR-10's 50,000 images: the authors' CIFAR command does this).

PIRL keeps InstDisc's bank but changes what is compared with it. Besides the image I it builds a
transformed image I_t, here the jigsaw puzzle (:func:`sslbook.pretext.jigsaw_tiles`): 9 tiles
in random order, each encoded by the same backbone, projected to 128-D, concatenated and
projected again by g. Its loss (Eq. 5) is a convex combination of two NCE terms against the bank:

    v_I = f(backbone(I)),  v_It = g(backbone(tiles(I_t)))   -> PIRL.project, PIRL.project_tiles
    L = lambda * NCE(m_I, g(v_It)) + (1 - lambda) * NCE(m_I, f(v_I)),  lambda = 0.5
    negatives m_I' from the bank; the bank stores f(v_I)    -> MemoryBank.update with v_I

The first term asks the representation of the puzzle to match the image's memory: invariance to
the pretext transform, where the Jigsaw pretext task (Noroozi & Favaro 2016) predicted the
permutation and so learned features that *vary* with it. The second term is InstDisc's loss
(lambda = 0 is InstDisc).

Where the negatives come from, and the cost. Each step scores m bank rows (no forward pass, no
gradient): a negative costs 128 floats of memory per *training image* and nothing per step, so m
can be thousands with any batch size. The price is staleness: row j was written the last time
image j was in a batch, up to an epoch ago, by an encoder that has changed since, and the rows
in one step come from many different encoders. MoCo (He et al. 2020) replaces the bank by a
queue of recent keys from a slowly moving encoder so that the keys stay consistent;
:func:`bank_staleness` measures the drift.

Implementation notes.

* The m negatives are drawn once per step and shared by all images of the batch (one ``[m, d]``
  gather and a ``[B, m]`` matrix product, instead of the papers' independent draws per image,
  ``[B, m, d]``); each image's negatives are still uniform draws. The batch's own images are
  excluded (PIRL: "drawn uniformly at random from D excluding image I"), so no image is its own
  negative; the NCE noise rate keeps InstDisc's m/n.
* The scores are computed in float32 even under autocast (an NCE logit at tau = 0.07 is up to
  ~14, where bfloat16 keeps only ~2 decimal digits), and the bank is always float32.
* DDP: every process keeps the whole bank; :meth:`MemoryBank.update` all-gathers the batch's
  indices and features so every copy receives the same writes, and the bank starts from the
  same seeded random vectors on every process. DDP is told not to broadcast the bank (hundreds
  of MB at ImageNet scale) at every step. log Z is estimated from the noise scores of all
  processes.
* The bank, its write times and log Z are registered buffers: a checkpoint carries them and a
  resumed run continues exactly (the negatives use torch's global generator, which the trainer
  checkpoints).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from ..losses import estimate_log_normaliser, info_nce, nce_loss
from ..models import linear_projector
from ..pretext import jigsaw_tiles
from ..utils import eval_mode
from .base import Method

LOSSES = ("nce", "softmax")


class MemoryBank(nn.Module):
    """One L2-normalised vector per training image, refreshed with a momentum (moving-average) update.

    Buffers (they travel in ``state_dict()``): ``vectors`` ``[num_data, dim]`` float32 unit rows;
    ``written_at`` ``[num_data]``: the value of ``num_updates`` when each row was last written (0 =
    never, still the random start); ``num_updates``: how many times :meth:`update` has run.
    ``num_updates - written_at`` is therefore each row's age in steps.
    """

    def __init__(self, num_data: int, dim: int = 128, seed: int = 1805_01978):
        super().__init__()
        if num_data < 2:
            raise ValueError(f"a memory bank needs num_data >= 2 images, got {num_data}")
        # Random unit vectors (Gaussian, normalised: uniform on the sphere). A private generator (its
        # default seed is InstDisc's arXiv number, so it never repeats the stream of torch.manual_seed(0)),
        # so every DDP process starts from the same bank and the global RNG is not consumed.
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("vectors", F.normalize(torch.randn(num_data, dim, generator=g), dim=1))
        self.register_buffer("written_at", torch.zeros(num_data, dtype=torch.long))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    @property
    def num_data(self) -> int:
        return self.vectors.shape[0]

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        """The stored vectors of ``index`` (a copy: later in-place updates do not change it)."""
        return self.vectors[index]

    @torch.no_grad()
    def sample_negatives(self, m: int, exclude: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``m`` indices drawn uniformly (with replacement) from the rows not in ``exclude``.

        Uses torch's global generator on the bank's device and always exactly one ``randint`` of
        ``m`` values, however many rows are excluded: the r-th allowed row is found by skipping
        the excluded ones, so the draw is exactly uniform without rejection sampling.
        """
        device = self.vectors.device
        if exclude is None or exclude.numel() == 0:
            return torch.randint(self.num_data, (m,), device=device)
        excluded = torch.unique(exclude.to(device))  # sorted, no repeats
        allowed = self.num_data - excluded.numel()
        if allowed < 1:
            raise ValueError("every row of the memory bank is excluded; nothing is left to sample")
        r = torch.randint(allowed, (m,), device=device)  # rank among the allowed rows
        # excluded[j] - j allowed rows lie before the j-th excluded row, so the r-th allowed row is
        # r plus the number of excluded rows with (excluded[j] - j) <= r.
        before = excluded - torch.arange(excluded.numel(), device=device)
        return r + torch.searchsorted(before, r, right=True)

    @torch.no_grad()
    def update(self, index: torch.Tensor, features: torch.Tensor, momentum: float = 0.5) -> None:
        """m_i <- normalise(momentum * m_i + (1 - momentum) * f_i) for every i in ``index``.

        ``features`` are this process's ``[B, dim]`` features of the images ``index`` (``[B]``);
        under DDP both are gathered from all processes first, so every copy of the bank gets the
        same writes. ``momentum=0`` replaces the rows by the (normalised) new features.
        """
        index = distributed.gather(index.to(self.vectors.device).long())
        features = distributed.gather(features.detach().to(self.vectors.dtype))
        mixed = momentum * self.vectors[index] + (1 - momentum) * features
        self.vectors.index_copy_(0, index, F.normalize(mixed, dim=1))
        self.num_updates += 1
        self.written_at.index_fill_(0, index, self.num_updates)

    def age(self, index: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Steps since each row (or the rows of ``index``) was last written."""
        written = self.written_at if index is None else self.written_at[index]
        return self.num_updates - written

    def extra_repr(self) -> str:
        return f"num_data={self.num_data}, dim={self.dim}"


class MemoryMethod(Method):
    """What InstDisc and PIRL share: the bank, log Z, and the NCE / InfoNCE score against the bank."""

    data_needs = ("num_data",)  # passed by the trainer (see Method.data_needs)

    def __init__(
        self,
        backbone,
        num_data: int,
        dim: int,
        num_negatives: Optional[int],
        temperature: float,
        bank_momentum: float,
        loss: str,
    ):
        super().__init__(backbone)
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if num_negatives is None and loss == "nce":
            raise ValueError(
                "num_negatives=None (score every bank row: the exact non-parametric softmax) needs loss='softmax'"
            )
        if num_data is None:
            raise ValueError(
                "a memory-bank method needs num_data = the number of training images "
                "(train() passes it when it builds the method from a config)"
            )
        if not 0 <= bank_momentum < 1:
            raise ValueError(f"bank_momentum must be in [0, 1), got {bank_momentum}")
        self.bank = MemoryBank(num_data, dim)
        self.num_negatives = num_negatives
        self.temperature = temperature
        self.bank_momentum = bank_momentum
        self.loss = loss
        # log Z of NCE: NaN until it is estimated from the first batch, then a constant (a buffer,
        # so a resumed run keeps the same Z).
        self.register_buffer("log_z", torch.tensor(float("nan")))
        self._log_z_known: Optional[bool] = None  # cache of isfinite(log_z): one host sync, not one per step
        # DDP must not broadcast the bank from rank 0 at every forward: every process makes the same
        # writes (MemoryBank.update gathers them) and starts from the same seeded vectors.
        self._ddp_params_and_buffers_to_ignore = [f"bank.{name}" for name, _ in self.bank.named_buffers()]

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._log_z_known = None  # log_z may have changed: look again at the next forward

    def sample_negatives(self, index: torch.Tensor) -> Optional[torch.Tensor]:
        """This step's noise rows (shared by the batch, the batch excluded), or None for every row."""
        if self.num_negatives is None:
            return None
        return self.bank.sample_negatives(self.num_negatives, exclude=index)

    def scores(self, v: torch.Tensor, index: torch.Tensor, negatives: torch.Tensor):
        """Positive scores m_i . v_i / tau ``[B]`` and noise scores m_j . v_i / tau ``[B, m]``, in float32."""
        with torch.autocast(v.device.type, enabled=False):
            v = v.float() / self.temperature  # 1/tau on the [B, d] features, not on the [B, m] scores
            positive = (v * self.bank(index)).sum(dim=1)
            negative = v @ self.bank(negatives).T
        return positive, negative

    @torch.no_grad()
    def estimate_log_z(self, negative_scores: torch.Tensor) -> None:
        """Fix log Z from the first batch's noise scores (of all processes), as InstDisc does."""
        if self._log_z_known is None:
            self._log_z_known = bool(torch.isfinite(self.log_z))
        if not self._log_z_known:
            self.log_z.fill_(estimate_log_normaliser(distributed.gather(negative_scores.float()), self.bank.num_data))
            self._log_z_known = True

    def contrast(self, v: torch.Tensor, index: torch.Tensor, negatives: Optional[torch.Tensor]) -> torch.Tensor:
        """The loss of normalised features ``v`` ``[B, d]`` whose positives are bank rows ``index``.

        ``"nce"``: :func:`sslbook.losses.nce_loss` with the fixed log Z (estimated here on the first
        call). ``"softmax"``: :func:`sslbook.losses.info_nce`, a (1+m)-way softmax with the positive
        first; with ``negatives=None`` the n-way softmax over every row of the bank, the positive
        being row i itself (the paper's Eq. 2, exact: its "non-parametric softmax").
        """
        if self.loss == "softmax":
            with torch.autocast(v.device.type, enabled=False):
                if negatives is None:
                    # A copy of the bank: backward needs it after this step's in-place write. 1/tau
                    # scales the [B, d] features: cheaper than scaling the [B, n] logits.
                    logits = (v.float() / self.temperature) @ self.bank.vectors.clone().T  # [B, n]
                    return F.cross_entropy(logits, index)
                return info_nce(v.float(), self.bank(index), self.bank(negatives), self.temperature)
        positive, negative = self.scores(v, index, negatives)
        self.estimate_log_z(negative)
        return nce_loss(positive, negative, self.log_z.float(), self.bank.num_data)


class InstDisc(MemoryMethod):
    """Instance discrimination with a memory bank and NCE (Wu et al. 2018); see the module docstring.

    Defaults are the paper's ImageNet setting: 128-D, m = 4096 noise samples, tau = 0.07, bank
    momentum 0.5, NCE. ``num_data``: the number of training images (the size of the bank).
    ``loss="softmax"``: InfoNCE over the positive and the m negatives, or, with
    ``num_negatives=None``, the exact softmax over all n bank rows.
    """

    def __init__(
        self,
        backbone,
        num_data: int,
        dim: int = 128,
        num_negatives: Optional[int] = 4096,
        temperature: float = 0.07,
        bank_momentum: float = 0.5,
        loss: str = "nce",
    ):
        super().__init__(backbone, num_data, dim, num_negatives, temperature, bank_momentum, loss)
        self.projector = linear_projector(backbone.feature_dim, dim)  # "a linear layer to 128-D"

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """v = normalise(W backbone(x)): the feature compared with (and written to) the bank."""
        return F.normalize(self.projector(self.backbone(x)), dim=1)

    def forward(self, views, index):
        index = index.to(self.bank.vectors.device)
        v = self.project(views[0])  # one view per image: the other side of the pair is the bank
        negatives = self.sample_negatives(index)
        loss = self.contrast(v, index, negatives)
        with torch.no_grad():
            positive_cos = (v.float() * self.bank(index)).sum(dim=1).mean()  # before this step's write
        self.bank.update(index, v, self.bank_momentum)  # after the loss: the positive was the old m_i
        return {"loss": loss, "z": v.detach(), "positive_cos": positive_cos}


class PIRL(MemoryMethod):
    """Pretext-Invariant Representation Learning with the jigsaw transform (Misra & van der Maaten 2020).

    ``views[0]`` is the image I (standard augmentation). The puzzle I_t is cut from ``views[1]``
    if the augmentation gives a second view (PIRL crops the puzzle separately, from at least 60%
    of the image, at 255 px -> 85 px cells -> 64 px tiles), otherwise from ``views[0]``.

    Heads, as in the paper's Appendix A.1: f = one linear layer to ``dim``; g = a linear layer per
    tile to ``dim`` (shared by the tiles), the ``grid**2`` results concatenated in the shuffled
    order, then a linear layer to ``dim``. Defaults are the paper's ImageNet setting (N = 32,000
    negatives, tau = 0.07, bank momentum 0.5, lambda = 0.5); ``tile`` defaults to 64/85 of a cell.
    Both terms score the same negatives; with NCE, log Z is fixed from the first batch's puzzle
    scores (the first term computed, as in the authors' VISSL code).
    """

    def __init__(
        self,
        backbone,
        num_data: int,
        dim: int = 128,
        num_negatives: Optional[int] = 32000,
        temperature: float = 0.07,
        bank_momentum: float = 0.5,
        loss_weight: float = 0.5,
        grid: int = 3,
        tile: Optional[int] = None,
        loss: str = "nce",
    ):
        super().__init__(backbone, num_data, dim, num_negatives, temperature, bank_momentum, loss)
        if not 0 <= loss_weight <= 1:
            raise ValueError(f"loss_weight (lambda) must be in [0, 1], got {loss_weight}")
        self.loss_weight = loss_weight
        self.grid = grid
        self.tile = tile
        self.projector = linear_projector(backbone.feature_dim, dim)  # f
        self.tile_projector = linear_projector(backbone.feature_dim, dim)  # g, per tile
        self.jigsaw_projector = linear_projector(grid * grid * dim, dim)  # g, on the concatenation

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """f(v_I): the image's normalised feature, the one the bank stores."""
        return F.normalize(self.projector(self.backbone(x)), dim=1)

    def project_tiles(self, tiles: torch.Tensor) -> torch.Tensor:
        """g(v_It) for tiles ``[B * grid**2, C, t, t]`` (slot order): ``[B, dim]``, normalised."""
        per_tile = self.tile_projector(self.backbone(tiles))  # [B*9, dim]
        concatenated = per_tile.reshape(-1, self.grid * self.grid * per_tile.shape[1])  # [B, 9*dim]
        return F.normalize(self.jigsaw_projector(concatenated), dim=1)

    def forward(self, views, index):
        index = index.to(self.bank.vectors.device)
        image = views[0]
        puzzle = views[1] if len(views) > 1 else views[0]
        v = self.project(image)  # f(v_I)
        tiles, _ = jigsaw_tiles(puzzle, self.grid, self.tile)  # I_t: shuffled tiles
        v_t = self.project_tiles(tiles)  # g(v_It)
        negatives = self.sample_negatives(index)  # shared by both terms
        loss_jigsaw = self.contrast(v_t, index, negatives)  # NCE(m_I, g(v_It))
        loss_image = self.contrast(v, index, negatives)  # NCE(m_I, f(v_I))
        loss = self.loss_weight * loss_jigsaw + (1 - self.loss_weight) * loss_image  # Eq. 5
        self.bank.update(index, v, self.bank_momentum)  # the bank stores f(v_I), after the loss
        return {"loss": loss, "z": v.detach(), "loss_jigsaw": loss_jigsaw.detach(), "loss_image": loss_image.detach()}


@torch.no_grad()
def bank_staleness(method: MemoryMethod, images: torch.Tensor, index: torch.Tensor, batch_size: int = 512) -> dict:
    """How far the memory bank lags behind the current encoder, image by image.

    For the training images ``images`` (normalised float ``[N, 3, H, W]``, e.g. an evaluation
    view) with dataset indices ``index``, computes the current encoder's bank feature
    (``method.project``, in eval mode) and compares it with what the bank holds for them.

    Returns a dict of ``[N]`` CPU tensors: ``"cos"``: cos(m_i, f_now(x_i)); ``"age"``: steps since
    row i was written (:meth:`MemoryBank.age`). A freshly written row differs from f_now(x_i)
    only because it was computed from an augmented view (and, with momentum, mixed with older
    writes); the older a row, the more the encoder has moved since.
    """
    index = index.to(method.bank.vectors.device)
    fresh = []
    with eval_mode(method):
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].to(method.bank.vectors.device)
            fresh.append(method.project(x).float())
    fresh = torch.cat(fresh)
    cos = (fresh * method.bank(index)).sum(dim=1)
    return {"cos": cos.cpu(), "age": method.bank.age(index).cpu()}


def staleness_by_age(report: dict, steps_per_epoch: int, edges=(0.25, 0.5, 0.75, 1.0)) -> list:
    """Group a :func:`bank_staleness` report by the age of the rows, in epochs.

    Returns one dict per bin, ``{"bin": label, "cos": mean cos (nan if empty), "count": rows}``;
    the bins are [0, edges[0]), [edges[0], edges[1]), ..., [edges[-1], inf) epochs.
    """
    age = report["age"].float() / steps_per_epoch
    which = torch.bucketize(age, torch.tensor(edges, dtype=torch.float32), right=True)
    bounds = [0.0, *edges, float("inf")]
    rows = []
    for b in range(len(edges) + 1):
        mask = which == b
        label = f"{bounds[b]:g}-{bounds[b + 1]:g}" if b < len(edges) else f">={bounds[b]:g}"
        rows.append(
            {
                "bin": label,
                "cos": float(report["cos"][mask].mean()) if mask.any() else float("nan"),
                "count": int(mask.sum()),
            }
        )
    return rows
