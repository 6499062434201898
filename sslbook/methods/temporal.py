"""Frame-based (temporal) contrast: frames of the same video are positives, other videos' frames negatives.

The survey's frame-based pretext task (Jaiswal et al. 2020, Sec. 2.2.3): frames close in time
look alike and frames of different videos do not, so a representation can be learned by pulling
together the frames (or clips) of one video and pushing apart those of different videos. The
survey's example is CVRL (Qian, Meng, Gong, Yang, Wang, Belongie & Cui, "Spatiotemporal
Contrastive Video Representation Learning", CVPR 2021), which it describes as contrasting two
positives -- two augmented clips of the same video -- against all the other clips of the batch,
so that every video ends up in its own small region of the embedding space.

CVRL, as its paper describes it:

    for each video of the batch:
        draw a time gap from a distribution favouring short gaps; take two clips that far apart
        augment each clip with one crop / colour draw shared by all its frames
            ("temporally consistent" spatial augmentation)
        encode each clip with a 3D ResNet, then an MLP head
    InfoNCE: the two clips of a video are positives, all other clips of the batch negatives

What this module does, line by line:

    for each image (our "video") of the batch, each trainer view v = 1..V  -> views[v]: own colour draw
        a clip of T frames along a random camera path (pan + zoom)         -> video.camera_clips
            (or a real clip [B, T, C, H, W] from video.ClipFolder)          -> views[v].ndim == 5
    h = f(frame) for all V*T frames of each video, one shared backbone      -> self.backbone
    z = g(h)                                                                -> self.projector
    L = multi-positive NT-Xent: every other frame of the same video is a    -> losses.multi_positive_nt_xent
        positive, every frame of another video a negative

Differences from CVRL, all forced by the CPU and the absence of video: the "videos" are CIFAR-10
images seen by a moving camera (:func:`sslbook.video.camera_clips`), so there is no motion of
objects, only of the camera; the encoder is the book's 2D ResNet applied to each frame, not a 3D
network over the clip, so the positives are frames rather than whole clips and the loss gives
each frame several positives (Khosla et al. 2020's form of the loss) where CVRL's has one. As in
CVRL, colour augmentation is shared by the frames of a clip and drawn afresh for the other clip of
the same video (the trainer's V views), so matching frames by colour alone does not solve the task.

``embed`` is the backbone on a whole image: the representation of one frame.
"""

from __future__ import annotations

import torch

from ..distributed import gather_with_grad, rank, world_size
from ..losses import multi_positive_nt_xent
from ..models import simclr_projector
from ..video import camera_clips
from .base import Method


class TemporalContrast(Method):
    """Contrast the frames of clips: same video positive, other videos negative; see the module docstring.

    ``frames``: T, frames per synthetic clip (a view given as a real clip ``[B, T, C, H, W]`` keeps its
    own T); ``scale``/``zoom``/``pan``: the camera paths (:func:`sslbook.video.camera_paths`);
    ``temperature``, ``out_dim``, ``hidden_dim``: the loss and SimCLR's projection head
    (hidden = the encoder's width by default).
    """

    def __init__(
        self,
        backbone,
        frames: int = 4,
        temperature: float = 0.5,
        out_dim: int = 128,
        hidden_dim: int | None = None,
        scale: tuple = (0.3, 0.8),
        zoom: float = 1.5,
        pan: float = 0.5,
    ):
        super().__init__(backbone)
        if frames < 1:
            raise ValueError(f"frames must be >= 1, got {frames}")
        self.frames, self.temperature = frames, temperature
        self.scale, self.zoom, self.pan = tuple(scale), zoom, pan
        self.projector = simclr_projector(backbone.feature_dim, hidden_dim or backbone.feature_dim, out_dim)

    def clips(self, views) -> torch.Tensor:
        """All frames of each video: ``[B, F, C, h, w]``, F = the frames of every view's clip together."""
        clips = [
            v if v.ndim == 5 else camera_clips(v, self.frames, None, self.scale, self.zoom, self.pan) for v in views
        ]
        return torch.cat(clips, dim=1)

    def forward(self, views, index=None):
        clips = self.clips(views)  # [B, F, C, h, w]
        B, F = clips.shape[:2]
        if F < 2:
            raise ValueError("temporal contrast needs at least two frames per video (frames >= 2, or two views)")
        h = self.backbone(clips.flatten(0, 1))  # frames of video b at rows b*F .. b*F + F - 1
        z = self.projector(h)
        z_all = gather_with_grad(z)  # under DDP the negatives come from every process's batch
        video = torch.arange(world_size() * B, device=z.device).repeat_interleave(F)
        with torch.autocast(z.device.type, enabled=False):
            loss = multi_positive_nt_xent(z_all.float(), video, self.temperature)
            with torch.no_grad():
                accuracy, positive_cos = frame_matching(z_all.float(), video)
        local = slice(rank() * B * F, (rank() + 1) * B * F)
        return {"loss": loss, "z": z_all[local].detach(), "accuracy": accuracy, "positive_cos": positive_cos}


@torch.no_grad()
def frame_matching(z: torch.Tensor, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The pretext task's accuracy: how often a frame's nearest other frame (cosine) is of its own video.

    Returns ``(accuracy in %, mean cosine of the positive pairs)``. Chance is (F - 1) / (N - 1) for
    N frames, F per video.
    """
    z = torch.nn.functional.normalize(z, dim=1)
    sim = z @ z.T
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    same = video[:, None] == video[None, :]
    nearest = sim.masked_fill(eye, float("-inf")).argmax(dim=1)
    accuracy = (video[nearest] == video).float().mean() * 100
    positive_cos = sim[same & ~eye].mean()
    return accuracy, positive_cos
