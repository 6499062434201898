"""Supervised: the same encoder trained with the labels, the reference every other method is compared with.

Not self-supervised at all: a linear classifier on the backbone's pooled features, trained with
cross-entropy on one augmented view of each image, the labels looked up by the images' dataset
indices. It goes through the same trainer, augmentation, optimiser and schedule as the methods
of the book, so a zoo entry trained this way differs from theirs only in where its training signal
comes from -- which makes it the reference of the visualisation and transfer chapters.

    for x, index in loader:                      -> the trainer
        v = aug(x)                               -> views[0]
        logits = classifier(backbone(v))
        loss = cross_entropy(logits, labels[index])

The labels are a buffer given at construction (``data_needs = ("labels",)`` tells the trainer to
pass the training set's labels). A method rebuilt only to be loaded from a checkpoint may be built
without them (``num_data`` sizes the buffer and ``load_state_dict`` fills it); training a method
that never got its labels is a one-line error, not a silent loss on zeros.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .base import Method


class Supervised(Method):
    data_needs = ("labels",)

    def __init__(
        self,
        backbone,
        labels: Optional[torch.Tensor] = None,
        num_data: Optional[int] = None,
        num_classes: Optional[int] = None,
    ):
        """A linear classifier on ``backbone``'s features, trained on the dataset's labels.

        Args:
            labels: the class of every training image, indexed by the loader's ``index`` ([N] ints).
            num_data: N, when the labels are not given (the buffer is then filled by ``load_state_dict``).
            num_classes: classes of the classifier; default the labels' ``max + 1``, else 10 (CIFAR-10).
        """
        super().__init__(backbone)
        if labels is None and num_data is None:
            raise ValueError(
                "Supervised needs the training labels (labels=...) or, to load a checkpoint, "
                "num_data=<number of training images>"
            )
        if labels is not None:
            labels = torch.as_tensor(labels, dtype=torch.long).flatten()
        if num_classes is None:
            num_classes = int(labels.max()) + 1 if labels is not None and len(labels) else 10
        self.num_classes = num_classes
        self.classifier = nn.Linear(backbone.feature_dim, num_classes)
        self.register_buffer("labels", labels if labels is not None else torch.zeros(num_data, dtype=torch.long))
        self.has_labels = labels is not None

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.has_labels = self.has_labels or "labels" in state_dict
        return result

    def as_classifier(self) -> nn.Sequential:
        """The trained network as an image -> class-scores model, ``nn.Sequential(encoder=..., head=...)``
        like :func:`sslbook.eval.fine_tune`'s (sharing this method's modules), for Grad-CAM and predictions."""
        return nn.Sequential(OrderedDict(encoder=self.backbone, head=self.classifier))

    def forward(self, views, index=None):
        if not self.has_labels:
            raise RuntimeError(
                "Supervised was built without its training labels; pass labels=... (the trainer "
                "does so for methods whose data_needs include 'labels') or load a state_dict"
            )
        if index is None:
            raise ValueError("Supervised needs the batch's dataset indices to look up its labels")
        labels = self.labels[index.to(self.labels.device)]
        logits = self.classifier(self.backbone(views[0]))
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.detach().argmax(dim=1) == labels).float().mean() * 100
        return {"loss": loss, "accuracy": accuracy}
