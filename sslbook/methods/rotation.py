"""RotNet: predict by how much the image was rotated (Gidaris, Singh & Komodakis, 2018).

Paper: Gidaris, Singh & Komodakis (2018), "Unsupervised Representation Learning by Predicting
Image Rotations", ICLR.

The pretext task is a 4-way classification. With g(X, y) the image X turned by y x 90 degrees
and F(.) the network's 4 class probabilities, the paper's objective is

    loss(X) = - 1/4 sum_{y=0..3} log F_y(g(X, y))     (cross-entropy, averaged over the rotations)
    minimise the mean of loss(X_i) over the training images

and, line by line in the code:

    for each mini-batch of images X (augmented: random crop + horizontal flip)   -> views[0]
        all four rotations of every image, labels y = 0..3                        -> rotate_batch(x, "all")
        features h = f(g(X, y))                                                   -> self.backbone
        logits = classifier(h)                                                    -> self.classifier
        loss = cross-entropy(logits, y), averaged over the 4B rotated images      -> F.cross_entropy
        SGD step                                                                  -> the trainer

Why rotations? Multiples of 90 degrees are produced without interpolation, so there is no
low-level artefact to detect; to tell which way is up the network must recognise the objects
and where their parts are (heads above bodies, sky above ground). That is also the task's
limit: an image without a canonical orientation (a texture, a top-down photograph, a symmetric
object seen from above) gives the network nothing to learn from.

What makes this family different from the contrastive methods of the other chapters: there are
no pairs and no negatives. The pseudo-label is the transformation itself, and the network must
be *covariant* with it (its features must change when the image turns), where SimCLR or PIRL ask
for invariance. Evaluation uses the backbone's pooled features (``embed`` = ``self.backbone``),
the classifier is thrown away.
"""

from __future__ import annotations

from typing import Optional

import torch.nn.functional as F

from ..models import mlp
from ..pretext import NUM_ROTATIONS, rotate_batch
from .base import Method


class RotNet(Method):
    """Rotation prediction on top of any backbone; see the module docstring.

    ``all_rotations=True`` (the paper): each image contributes its four rotations, so a batch of
    B images is 4B network inputs. False: one random rotation per image.
    ``head_layers=1``: a linear classifier on the pooled features, as the paper's networks end;
    ``head_layers=2``: an MLP (Linear-BN-ReLU-Linear, ``hidden_dim`` wide, default the feature
    width), so the backbone's last layer is not itself the rotation classifier.
    """

    def __init__(self, backbone, all_rotations: bool = True, head_layers: int = 1, hidden_dim: Optional[int] = None):
        super().__init__(backbone)
        self.all_rotations = all_rotations
        d = backbone.feature_dim
        self.classifier = mlp(d, hidden_dim or d, NUM_ROTATIONS, num_layers=head_layers)

    def forward(self, views, index=None):
        x = views[0]
        rotated, labels = rotate_batch(x, "all" if self.all_rotations else None)  # g(X, y), y
        h = self.backbone(rotated)  # f(g(X, y))
        logits = self.classifier(h)
        loss = F.cross_entropy(logits, labels)  # mean over all rotated images
        accuracy = (logits.detach().argmax(dim=1) == labels).float().mean() * 100
        return {"loss": loss, "z": h.detach(), "accuracy": accuracy}
