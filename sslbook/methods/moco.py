"""MoCo: the momentum-encoder architecture (He, Fan, Wu, Xie, Girshick, 2020; v2: Chen, Fan, Girshick, He, 2020).

Papers: He et al. (2020), "Momentum Contrast for Unsupervised Visual Representation Learning", CVPR;
Chen et al. (2020), "Improved Baselines with Momentum Contrastive Learning", arXiv:2003.04297.

Contrastive learning as a dictionary look-up: a query q must pick its positive key k+ out of a
dictionary of keys. MoCo keeps the dictionary *large* (a FIFO queue of the keys of many past
batches, not just this batch) and *consistent* (the keys come from a key encoder that is a slowly
moving average of the query encoder, so keys enqueued many steps ago still resemble today's).
The paper's Algorithm 1, line by line:

    f_k.params = f_q.params                         -> __init__: key_backbone/key_projector are deep copies
    for x in loader:                                -> the trainer
        x_q = aug(x); x_k = aug(x)                  -> the trainer's Augment: views[0], views[1]
        q = f_q.forward(x_q)                        -> normalize(projector(backbone(x_q)))
        k = f_k.forward(x_k); k = k.detach()        -> encode_keys (no_grad; with Shuffle BN, below)
        l_pos = bmm(q.view(N,1,C), k.view(N,C,1))   -> losses.info_nce_logits, column 0
        l_neg = mm(q.view(N,C), queue.view(C,K))    -> losses.info_nce_logits, columns 1..K
        logits = cat([l_pos, l_neg], dim=1)
        labels = zeros(N)                           -> losses.info_nce: the positive is class 0
        loss = CrossEntropyLoss(logits/t, labels)   -> losses.info_nce
        loss.backward(); update(f_q.params)         -> the trainer (SGD step)
        f_k.params = m*f_k.params+(1-m)*f_q.params  -> after_optimizer_step (Eq. 2)
        enqueue(queue, k); dequeue(queue)           -> dequeue_and_enqueue (end of forward)

Ordering. The trainer calls ``after_optimizer_step`` right after the optimiser step, which is
exactly where Algorithm 1 puts the momentum update (facebookresearch/moco's ``builder.py`` does it
at the start of the next forward instead: the same sequence of key encoders, since nothing reads
f_k in between). The queue is updated inside ``forward``, after the loss is computed; the loss
uses a copy of the queue, so backward never sees the in-place update.

v1 vs v2. ``version=1``: a linear head (``linear_projector``), temperature 0.07. ``version=2``: a
2-layer MLP head (``moco_v2_projector``, hidden width = the encoder's feature width unless
``hidden_dim`` is given: 2048 for ResNet-50, as in the paper), temperature 0.2. v2's other changes
(Gaussian blur in the augmentation, a cosine schedule) live in the config.

Shuffle BN (He et al., Sec. 3.3). With BatchNorm computed per GPU, a query and its positive key
would be normalised with statistics of the *same* images, a signature the network can use to
"cheat" the pretext task. MoCo therefore shuffles the key batch across GPUs before the key
encoder and unshuffles after, so each key is normalised with a random other subset. Here:

* under DDP (``torchrun``), the real thing: ``shuffle_batch`` gathers the global key batch, permutes
  it with a permutation broadcast from rank 0, each process encodes its slice, ``unshuffle_batch``
  gathers the keys and restores the order;
* on one device, the MoCo CIFAR demo's emulation: every BatchNorm of both encoders becomes a
  ``SplitBatchNorm`` whose training-mode statistics are computed over ``shuffle_bn_splits``
  contiguous sub-batches (each playing a GPU), and the key batch is shuffled the same way.

Under DDP the two compose: each process's batch is split ``shuffle_bn_splits`` more times, so W
processes with S splits compute the same function as one process with W*S splits (tested).
``shuffle_bn_splits=1`` on one device turns both off: plain BN over the whole batch, no shuffle.

Where the negatives come from, and the cost: the K keys of the queue, encoded by the key
encoder during the last K/N steps; no gradient flows into them, so a negative costs one
forward pass of the key encoder (once, when enqueued) and 128 floats of memory, independent
of the batch size. Compare SimCLR (negatives = this batch, full backward through all of them)
and InstDisc (a memory bank of every image, refreshed once per epoch).
"""

from __future__ import annotations

import copy
from itertools import chain

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.modules.batchnorm import _BatchNorm

from .. import distributed
from ..losses import info_nce, info_nce_logits
from ..models import linear_projector, moco_v2_projector
from .base import Method, momentum_update

DEFAULT_TEMPERATURE = {1: 0.07, 2: 0.2}  # He et al. 2020 Sec. 3.3; Chen et al. 2020 Table 1


# --------------------------------------------------------------------------- Shuffle BN on one device
class SplitBatchNormFunction(torch.autograd.Function):
    """Batch normalisation of each of ``splits`` contiguous sub-batches with its own statistics, as one
    autograd node.

    Forward and backward call ATen's batch-norm kernels (``native_batch_norm`` and its backward) on each
    sub-batch and write into one output (one input gradient). The same arithmetic as ``F.batch_norm`` on
    every chunk followed by ``torch.cat``, but without the autograd graph of that loop, whose backward
    gives every one of the ``splits`` slices a zero-filled gradient of the *whole* batch and adds them up.
    Sub-batches along the batch dimension stay contiguous in either memory format, so ``channels_last``
    is kept. (One ``F.batch_norm`` call on the batch regrouped as [N/S, S*C, *] computes the same
    statistics, but on ``channels_last`` activations the regrouping is a transposition of the whole
    tensor, in and out, and it measured slower than this.) ResNet-18 at width 16, batch 256, 8 splits,
    forward + backward of its five BatchNorm shapes, 1 thread: 93 ms as a loop, 44 ms here, 26 ms for
    plain BatchNorm over the whole batch.

    ``running_mean``/``running_var`` (or None) are updated in place with the mean of the per-split
    updates (``momentum`` is the update's factor). Differentiable once.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, splits: int, momentum: float, eps: float):
        y = torch.empty_like(x)
        statistics, means, variances = [], [], []
        for chunk, out in zip(x.tensor_split(splits), y.tensor_split(splits)):
            mean = running_mean.clone() if running_mean is not None else None  # each split's own copy ...
            var = running_var.clone() if running_var is not None else None
            normalised, batch_mean, batch_invstd = torch.ops.aten.native_batch_norm(
                chunk, weight, bias, mean, var, True, momentum, eps
            )
            out.copy_(normalised)
            statistics += [batch_mean, batch_invstd]
            means.append(mean)
            variances.append(var)
        if running_mean is not None:  # ... and the layer keeps their average
            running_mean.copy_(torch.stack(means).mean(0))
            running_var.copy_(torch.stack(variances).mean(0))
        ctx.save_for_backward(x, weight, *statistics)
        ctx.splits, ctx.eps = splits, eps
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight, *statistics = ctx.saved_tensors
        affine = weight is not None
        mask = [ctx.needs_input_grad[0], affine and ctx.needs_input_grad[1], affine and ctx.needs_input_grad[2]]
        grad_x = torch.empty_like(x) if mask[0] else None
        grad_outs = grad_x.tensor_split(ctx.splits) if mask[0] else [None] * ctx.splits
        grad_weight = grad_bias = None
        for i, (chunk, grad_chunk) in enumerate(zip(x.tensor_split(ctx.splits), grad.tensor_split(ctx.splits))):
            gx, gw, gb = torch.ops.aten.native_batch_norm_backward(
                grad_chunk, chunk, weight, None, None, statistics[2 * i], statistics[2 * i + 1], True, ctx.eps, mask
            )
            if mask[0]:
                grad_outs[i].copy_(gx)
            if mask[1]:
                grad_weight = gw if grad_weight is None else grad_weight + gw
            if mask[2]:
                grad_bias = gb if grad_bias is None else grad_bias + gb
        return grad_x, grad_weight, grad_bias, None, None, None, None, None


class SplitBatchNorm(_BatchNorm):
    """BatchNorm that, in training mode, normalises ``num_splits`` contiguous sub-batches separately.

    One device pretending to be ``num_splits`` GPUs, each running ordinary BatchNorm on its share of
    the batch (the MoCo CIFAR demo's ``SplitBatchNorm``; ours splits into contiguous chunks, as DDP
    does, and accepts a batch that does not divide evenly: ``torch.tensor_split``'s chunk sizes).
    The running statistics are updated with the mean of the per-split updates. In eval mode it is
    plain BatchNorm with the running statistics. Works for [N, C] and [N, C, *] inputs. Training runs
    through :class:`SplitBatchNormFunction` (:meth:`forward_fused`), which gives the same numbers as
    the plain loop over sub-batches (:meth:`forward_loop`, tested) at about half its cost.
    """

    def __init__(
        self,
        num_features: int,
        num_splits: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        if num_splits < 1:
            raise ValueError(f"num_splits must be >= 1, got {num_splits}")
        self.num_splits = num_splits

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected an input of shape [N, C, ...], got {tuple(x.shape)}")

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_splits={self.num_splits}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.num_splits == 1:
            return super().forward(x)
        self._check_input_dim(x)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as nn.BatchNorm does
                factor = 1.0 / float(self.num_batches_tracked)
        return self.forward_fused(x, factor)

    def forward_fused(self, x: torch.Tensor, factor: float) -> torch.Tensor:
        """Training-mode forward through :class:`SplitBatchNormFunction`: the same numbers as
        :meth:`forward_loop`, at about half its cost on the CPU (measured in ``SplitBatchNormFunction``)."""
        return SplitBatchNormFunction.apply(
            x,
            self.weight,
            self.bias,
            self.running_mean if self.track_running_stats else None,
            self.running_var if self.track_running_stats else None,
            min(self.num_splits, len(x)),
            factor,
            self.eps,
        )

    def forward_loop(self, x: torch.Tensor, factor: float) -> torch.Tensor:
        """Training-mode forward, one ``F.batch_norm`` per sub-batch (any batch size, uneven splits too)."""
        outputs, means, variances = [], [], []
        for chunk in x.tensor_split(min(self.num_splits, len(x))):
            # Each split updates its own copy of the running statistics ...
            mean = self.running_mean.clone() if self.track_running_stats else None
            var = self.running_var.clone() if self.track_running_stats else None
            outputs.append(F.batch_norm(chunk, mean, var, self.weight, self.bias, True, factor, self.eps))
            means.append(mean)
            variances.append(var)
        if self.track_running_stats:  # ... and the layer keeps their average
            with torch.no_grad():
                self.running_mean.copy_(torch.stack(means).mean(0))
                self.running_var.copy_(torch.stack(variances).mean(0))
        return torch.cat(outputs)


def split_batchnorm(module: nn.Module, num_splits: int) -> nn.Module:
    """Replace every BatchNorm layer inside ``module`` by a ``SplitBatchNorm`` holding the same state.

    In place (and returned, so a bare BatchNorm layer can be converted too). SyncBatchNorm layers are
    left alone: they are the opposite choice (statistics over the whole global batch).
    """
    if isinstance(module, _BatchNorm) and not isinstance(module, (SplitBatchNorm, nn.SyncBatchNorm)):
        like = module.weight if module.weight is not None else module.running_mean
        new = SplitBatchNorm(
            module.num_features,
            num_splits,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
            device=None if like is None else like.device,
            dtype=None if like is None else like.dtype,
        )
        new.load_state_dict(module.state_dict())
        return new.train(module.training)
    for name, child in module.named_children():
        setattr(module, name, split_batchnorm(child, num_splits))
    return module


# --------------------------------------------------------------------------- Shuffle BN across processes
@torch.no_grad()
def shuffle_batch(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Permute the global batch at random; return this process's slice of it and the permutation.

    The global batch is the concatenation of every process's ``x`` in rank order (``gather``). Every
    process must use the same permutation, so rank 0's is broadcast. On one process this is just
    ``x[perm]``. Undo with :func:`unshuffle_batch`.
    """
    x_all = distributed.gather(x)
    perm = torch.randperm(len(x_all), device=x.device)  # row i of the shuffled batch is x_all[perm[i]]
    if distributed.is_distributed():
        torch.distributed.broadcast(perm, src=0)
    mine = perm.view(distributed.world_size(), -1)[distributed.rank()]
    return x_all[mine], perm


@torch.no_grad()
def unshuffle_batch(y: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`shuffle_batch`: gather the outputs of the shuffled slices, put every row back
    where its input came from, and return this process's rows (aligned with its own ``x``)."""
    y_all = distributed.gather(y)
    restored = y_all[perm.argsort()]  # argsort(perm) is the inverse permutation
    n = len(y)
    return restored[distributed.rank() * n : (distributed.rank() + 1) * n]


# --------------------------------------------------------------------------- MoCo
class MoCo(Method):
    def __init__(
        self,
        backbone,
        version: int = 2,
        dim: int = 128,
        hidden_dim: int | None = None,
        queue_size: int = 65536,
        momentum: float = 0.999,
        temperature: float | None = None,
        shuffle_bn_splits: int = 8,
        symmetric: bool = False,
    ):
        """MoCo v1 or v2 around ``backbone`` (the query encoder's trunk, evaluated downstream).

        Args:
            version: 1 (linear head, T=0.07) or 2 (MLP head, T=0.2).
            dim: C, the dimension of queries and keys (128 in both papers).
            hidden_dim: v2's MLP hidden width; default the backbone's feature width (2048 on ResNet-50).
            queue_size: K, the number of keys in the dictionary (65536 on ImageNet).
            momentum: m of Eq. 2 (0.999 on ImageNet); 0 makes f_k a copy of f_q after every step.
            temperature: T of Eq. 1; None = the version's (0.07 for v1, 0.2 for v2).
            shuffle_bn_splits: BatchNorm sub-batches per process (Shuffle BN emulation; 8 = the
                paper's 8 GPUs on one device, 1 = off on one device).
            symmetric: also use view 2 as the query and view 1 as the key and add the two losses (the
                MoCo CIFAR demo's option; the papers are asymmetric). Enqueues 2N keys per step.
        """
        super().__init__(backbone)
        if version not in DEFAULT_TEMPERATURE:
            raise ValueError(f"version must be 1 or 2, got {version!r}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        if queue_size < 1 or shuffle_bn_splits < 1:
            raise ValueError(f"queue_size and shuffle_bn_splits must be >= 1, got {queue_size}, {shuffle_bn_splits}")
        self.version = version
        self.momentum = momentum
        self.temperature = DEFAULT_TEMPERATURE[version] if temperature is None else temperature
        self.shuffle_bn_splits = shuffle_bn_splits
        self.symmetric = symmetric

        # f_q = backbone + head. v1: "the last fully-connected layer ... has a 128-D output";
        # v2: "a 2-layer MLP head (hidden layer 2048-d, with ReLU)".
        if version == 1:
            self.projector = linear_projector(backbone.feature_dim, dim)
        else:
            self.projector = moco_v2_projector(backbone.feature_dim, hidden_dim or backbone.feature_dim, dim)
        if shuffle_bn_splits > 1:  # one device playing shuffle_bn_splits GPUs, for both encoders
            split_batchnorm(self.backbone, shuffle_bn_splits)
            split_batchnorm(self.projector, shuffle_bn_splits)

        # f_k: "f_k.params = f_q.params", then only ever moved by the momentum update.
        self.key_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.key_projector = copy.deepcopy(self.projector).requires_grad_(False)

        # The dictionary: K unit-length keys (rows), random to begin with, and the slot of the oldest.
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    # ---- the two encoders
    def encode_queries(self, x: torch.Tensor) -> torch.Tensor:
        """q = f_q(x), L2-normalised: [N, C], with gradient."""
        return F.normalize(self.projector(self.backbone(x)), dim=1)

    @torch.no_grad()
    def encode_keys(self, x: torch.Tensor) -> torch.Tensor:
        """k = f_k(x), L2-normalised: [N, C], no gradient; with Shuffle BN when BN is split at all."""
        shuffle = self.shuffle_bn_splits * distributed.world_size() > 1
        if shuffle:
            x, perm = shuffle_batch(x)
        k = F.normalize(self.key_projector(self.key_backbone(x)), dim=1)
        return unshuffle_batch(k, perm) if shuffle else k

    def _query_parameters(self):
        return chain(self.backbone.parameters(), self.projector.parameters())

    def _key_parameters(self):
        return chain(self.key_backbone.parameters(), self.key_projector.parameters())

    # ---- one step
    def forward(self, views, index=None):
        x_q, x_k = views[0], views[1]
        q = self.encode_queries(x_q)  # queries: N x C
        k = self.encode_keys(x_k)  # keys: N x C
        queue = self.queue.clone()  # the K negatives, as they were before this step's enqueue
        loss = info_nce(q, k, queue, self.temperature)
        keys = [k]
        if self.symmetric:  # the demo's option: swap the roles of the two views and add
            q2, k2 = self.encode_queries(x_k), self.encode_keys(x_q)
            loss = loss + info_nce(q2, k2, queue, self.temperature)
            keys.append(k2)
        with torch.no_grad():  # the pretext task's top-1: how often the positive wins among 1+K keys
            accuracy = (info_nce_logits(q, k, queue, self.temperature).argmax(1) == 0).float().mean() * 100
        self.dequeue_and_enqueue(torch.cat(keys))
        return {"loss": loss, "z": q.detach(), "contrast_acc": accuracy}

    @torch.no_grad()
    def dequeue_and_enqueue(self, keys: torch.Tensor) -> None:
        """Enqueue the keys of the global batch (every process's, in rank order), dropping the oldest.

        The queue is a ring buffer: ``queue_ptr`` is the slot of the oldest key, so
        ``queue.roll(-queue_ptr, 0)`` lists the K keys from oldest to newest. Any batch size works
        (the pointer wraps around); a batch larger than K leaves only its newest K keys. Pointer
        arithmetic stays on the device, so no host synchronisation.
        """
        keys = distributed.gather(keys)
        n, size = len(keys), len(self.queue)
        kept = min(n, size)
        slots = (self.queue_ptr + (n - kept) + torch.arange(kept, device=self.queue.device)) % size
        self.queue.index_copy_(0, slots, keys[n - kept :].to(self.queue.dtype))
        self.queue_ptr.copy_((self.queue_ptr + n) % size)

    @torch.no_grad()
    def after_optimizer_step(self, progress: float) -> None:
        """Eq. 2, theta_k <- m theta_k + (1 - m) theta_q, on the parameters (BN running statistics of
        f_k come from its own forward passes, as in the official code)."""
        momentum_update(self._query_parameters(), self._key_parameters(), self.momentum)
