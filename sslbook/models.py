"""Encoders and heads: the networks every method in the book shares.

Read top to bottom:

1. ``ResNet`` (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016) with a
   CIFAR or an ImageNet stem, a width knob and a ``forward_maps`` for visualisation.
2. ``VisionTransformer`` (Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021), a
   small one for 32 px images whose attention weights can be read out.
3. ``build_encoder``: a name -> constructor table used by configs.
4. Heads: one ``mlp`` builder, then one named constructor per paper (SimCLR, MoCo v1/v2, BYOL,
   SimSiam, SwAV) whose docstring quotes the paper's definition, and SwAV's ``Prototypes``.

An encoder maps images ``[B, 3, H, W]`` to features ``[B, encoder.feature_dim]`` and has no
classifier; a method puts a head on top. Every module here works with channels_last inputs and
under ``torch.autocast("cpu", dtype=torch.bfloat16)``.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Type, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

# ---------------------------------------------------------------------------------------------
# ResNet
# ---------------------------------------------------------------------------------------------
# Attribute names (conv1, bn1, layer1.0.downsample.0, ...) follow torchvision's on purpose: with
# the ImageNet stem at width 64 a torchvision state dict (minus ``fc``) loads into ours as is.


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` that runs a strided convolution of a 1x1 input with stride 1.

    The result is the same (on a 1x1 map only the centre tap meets the input, and the output is
    1x1 either way), but it avoids a CPU bug: in bf16 with channels_last, the weight gradient of a
    strided convolution of a 1x1 input comes out wrong or non-finite in most calls (torch 2.14,
    oneDNN; measured for the blocks of layer4 on 4 px inputs, as jigsaw tiles and CPC patches of
    16 px test images give).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != (1, 1) and x.shape[-2:] == (1, 1):
            return F.conv2d(x, self.weight, self.bias, 1, self.padding, self.dilation, self.groups)
        return super().forward(x)


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    # No bias: every conv is followed by BatchNorm, whose shift would cancel it.
    return Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)


def _shortcut(in_channels: int, out_channels: int, stride: int) -> Optional[nn.Module]:
    """Projection shortcut (option B of the ResNet paper) when the shape changes, else identity."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))


class BasicBlock(nn.Module):
    """Two 3x3 convs and a residual connection (ResNet-18/34)."""

    expansion = 1  # output channels = planes * expansion

    def __init__(self, in_channels: int, planes: int, stride: int = 1):
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = conv3x3(in_channels, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4), and a residual connection (ResNet-50 and deeper).

    The stride sits on the 3x3 conv, not on the first 1x1 as in the 2016 paper: this is the
    "ResNet v1.5" of torchvision, and so of most PyTorch self-supervised code.
    """

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1):
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = conv1x1(in_channels, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3


# Blocks per stage for each depth (Table 1 of the ResNet paper).
RESNET_CONFIGS: Dict[int, tuple] = {
    18: (BasicBlock, [2, 2, 2, 2]),
    34: (BasicBlock, [3, 4, 6, 3]),
    50: (Bottleneck, [3, 4, 6, 3]),
}

STEMS = ("cifar", "imagenet")


class ResNet(nn.Module):
    """A ResNet encoder without classifier: ``forward(x) -> [B, feature_dim]``.

    ``stem="imagenet"``: 7x7 conv stride 2, then 3x3 max-pool stride 2, so a 224 px image
    reaches ``layer1`` at 56x56. ``stem="cifar"``: a single 3x3 conv stride 1 and no max-pool,
    so a 32 px image reaches ``layer1`` at 32x32 and ``layer4`` at 4x4. Feeding 32 px images
    to the ImageNet stem leaves ``layer4`` with 1x1 maps (8x8 already at ``layer1``): this is
    the most common reason CIFAR reproductions of SimCLR & co. land far below the paper.

    ``width`` is the number of channels of the first stage (stages have width x 1, 2, 4, 8,
    times 4 for bottlenecks); 64 is the standard network. ``stem_kernel`` overrides the first
    conv's kernel size (odd, stride unchanged), e.g. 7 or 9 on CIFAR so the learned filters
    are large enough to look at. ``zero_init_residual`` starts the last BN of every block at
    zero so each block begins as the identity (Goyal et al. 2017, "Accurate, Large Minibatch
    SGD").
    """

    def __init__(
        self,
        block: Type[Union[BasicBlock, Bottleneck]],
        layers: List[int],
        stem: str = "cifar",
        width: int = 64,
        stem_kernel: Optional[int] = None,
        zero_init_residual: bool = False,
    ):
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        kernel = stem_kernel if stem_kernel is not None else (3 if stem == "cifar" else 7)
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"stem_kernel must be a positive odd number, got {kernel}")
        stride = 1 if stem == "cifar" else 2
        self.stem_name = stem

        # Stem. padding = kernel // 2 keeps "same" size for any odd kernel (before the stride).
        self.conv1 = nn.Conv2d(3, width, kernel_size=kernel, stride=stride, padding=kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if stem == "imagenet" else nn.Identity()

        # Four stages; every stage but the first halves the resolution and doubles the channels.
        in_channels = width
        for i, num_blocks in enumerate(layers):
            planes = width * 2**i
            blocks = []
            for j in range(num_blocks):
                blocks.append(block(in_channels, planes, stride=2 if (i > 0 and j == 0) else 1))
                in_channels = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_stages = len(layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = in_channels

        # torchvision's initialisation (He et al. 2015 "Delving deep into rectifiers", fan_out).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_bn().weight)

    def forward_maps(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Named feature maps ``{"stem", "layer1", ..., "layer4"}``, each ``[B, C, h, w]``.

        For feature-map pictures and Grad-CAM (call ``.retain_grad()`` on a map, or take the
        gradient with respect to it, then pool ``maps["layer4"]`` yourself as ``forward`` does).
        """
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        maps = {"stem": x}
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{i}")(x)
            maps[f"layer{i}"] = x
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = self.forward_maps(x)[f"layer{self.num_stages}"]
        return torch.flatten(self.avgpool(last), 1)  # global average pool -> [B, feature_dim]


def resnet(
    depth: int = 18,
    stem: str = "cifar",
    width: int = 64,
    stem_kernel: Optional[int] = None,
    zero_init_residual: bool = False,
) -> ResNet:
    """ResNet-18/34/50 encoder. See ``ResNet`` for the arguments (and why the stem matters)."""
    if depth not in RESNET_CONFIGS:
        raise ValueError(f"depth must be one of {sorted(RESNET_CONFIGS)}, got {depth}")
    block, layers = RESNET_CONFIGS[depth]
    return ResNet(block, layers, stem=stem, width=width, stem_kernel=stem_kernel, zero_init_residual=zero_init_residual)


# ---------------------------------------------------------------------------------------------
# Vision Transformer
# ---------------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head self-attention. Returns the output *and* the softmax weights it used.

    Written out (no fused kernel) so the weights that ``attention_maps`` shows are exactly the
    ones the forward pass multiplied with: there is no second implementation to drift.
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.heads = heads
        self.scale = (dim // heads) ** -0.5  # 1/sqrt(d_head): keeps logits O(1) at init
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor):
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        attn = (q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1)  # [B, heads, N, N], rows sum to 1
        out = rearrange(attn @ v, "b h n d -> b n (h d)")
        return self.proj(out), attn


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor):
        y, attn = self.attn(self.norm1(x))
        x = x + y
        x = x + self.mlp(self.norm2(x))
        return x, attn


class VisionTransformer(nn.Module):
    """A ViT encoder: ``forward(x) -> [B, dim]``, the final-LayerNorm'd class token.

    Dosovitskiy et al. 2021: cut the image into ``patch_size`` x ``patch_size`` patches,
    flatten each and embed it linearly, prepend a learned class token, add learned position
    embeddings, run ``depth`` pre-norm blocks, LayerNorm. For 32 px CIFAR images a 4 px patch
    gives an 8x8 grid (64 tokens + 1); ``img_size=224, patch_size=16`` is the ImageNet setting.
    Self-supervised ViTs of this kind are trained in MoCo v3 (Chen, Xie & He, ICCV 2021) and
    DINO (Caron et al., ICCV 2021).
    """

    def __init__(
        self,
        img_size: int = 32,
        patch_size: int = 4,
        dim: int = 192,
        depth: int = 6,
        heads: int = 3,
        mlp_ratio: float = 4.0,
        in_channels: int = 3,
    ):
        super().__init__()
        if img_size % patch_size != 0:
            raise ValueError(f"img_size ({img_size}) must be divisible by patch_size ({patch_size})")
        self.img_size = img_size
        self.patch_size = patch_size
        self.grid_size = img_size // patch_size  # attention of the class token reshapes to this grid
        self.num_patches = self.grid_size**2
        self.depth = depth
        self.heads = heads
        self.feature_dim = dim

        self.patch_embed = nn.Linear(in_channels * patch_size**2, dim)  # = a conv with stride = kernel
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches + 1, dim))
        self.blocks = nn.ModuleList([Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

        # ViT/timm initialisation: small truncated normals, zero biases, LayerNorm = identity.
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> ``[B, num_patches, patch_size**2 * C]``, patches in row-major order."""
        p = self.patch_size
        return rearrange(x, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=p, p2=p)

    def _run(self, x: torch.Tensor, keep_attention: bool):
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"expected {self.img_size}x{self.img_size} images, got {tuple(x.shape[-2:])}")
        tokens = self.patch_embed(self.patchify(x))
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        x = torch.cat([cls, tokens], dim=1) + self.pos_embed
        attentions = []
        for block in self.blocks:
            x, attn = block(x)
            if keep_attention:
                attentions.append(attn)
        return self.norm(x), attentions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, _ = self._run(x, keep_attention=False)
        return tokens[:, 0]

    def attention_maps(self, x: torch.Tensor, layer: Optional[int] = None) -> torch.Tensor:
        """Softmax attention weights of the forward pass, as float32.

        ``layer=None``: every layer, ``[B, depth, heads, N+1, N+1]``; ``layer=i`` (``-1`` = last):
        ``[B, heads, N+1, N+1]``. Token 0 is the class token, so ``[..., 0, 1:]`` reshaped to
        ``(grid_size, grid_size)`` is where the class token looks.
        """
        _, attentions = self._run(x, keep_attention=True)
        maps = torch.stack(attentions, dim=1).float()
        return maps if layer is None else maps[:, layer]


def vit_tiny(
    img_size: int = 32,
    patch_size: int = 4,
    dim: int = 192,
    depth: int = 6,
    heads: int = 3,
    mlp_ratio: float = 4.0,
) -> VisionTransformer:
    """ViT-Tiny's width (192, 3 heads of 64) at half its depth (6 blocks) for 32 px images."""
    return VisionTransformer(
        img_size=img_size, patch_size=patch_size, dim=dim, depth=depth, heads=heads, mlp_ratio=mlp_ratio
    )


# ---------------------------------------------------------------------------------------------
# Encoder registry
# ---------------------------------------------------------------------------------------------

ENCODERS = {
    "resnet18": lambda **kw: resnet(18, **kw),
    "resnet34": lambda **kw: resnet(34, **kw),
    "resnet50": lambda **kw: resnet(50, **kw),
    "vit_tiny": vit_tiny,
}


def build_encoder(name: str, **kwargs) -> nn.Module:
    """``build_encoder("resnet18", stem="cifar", width=16)``; kwargs go to the constructor."""
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; valid names: {', '.join(ENCODERS)}")
    return ENCODERS[name](**kwargs)


def with_input_channels(encoder: nn.Module, channels: int) -> nn.Module:
    """Give a ResNet a first convolution that reads ``channels`` input channels instead of 3.

    For encoders that see something other than RGB: the lightness channel alone (colorization,
    Zhang et al. 2016) or the two colour channels (CMC's ab view, Tian et al. 2020, whose encoders
    take 1 and 2 channels). The new ``conv1`` has the old one's kernel, stride and padding, the same
    He initialisation, and is modified in place (the encoder is returned for convenience); the rest of
    the network is unchanged.
    """
    old = getattr(encoder, "conv1", None)
    if not isinstance(old, nn.Conv2d):
        raise ValueError(f"with_input_channels needs a ResNet (an encoder with a conv1), got {type(encoder).__name__}")
    if old.in_channels == channels:
        return encoder
    new = nn.Conv2d(
        channels,
        old.out_channels,
        kernel_size=old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        bias=old.bias is not None,
    ).to(old.weight.device)
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    encoder.conv1 = new
    return encoder


# ---------------------------------------------------------------------------------------------
# Heads
# ---------------------------------------------------------------------------------------------


def mlp(
    in_dim: int,
    hidden_dim: int,
    out_dim: int,
    num_layers: int = 2,
    hidden_bn: bool = True,
    last_bn: bool = False,
    last_bn_affine: bool = True,
    bias: Optional[bool] = None,
) -> nn.Sequential:
    """The one builder behind every head: ``num_layers`` Linear layers, ReLU between them.

    Hidden layers are Linear[-BN]-ReLU (BN if ``hidden_bn``); the last is Linear[-BN] (BN if
    ``last_bn``, with learnable scale/shift only if ``last_bn_affine``) and never a ReLU.
    ``bias=None`` gives a Linear a bias only when no BN follows it (BN's mean subtraction would
    cancel it); ``True``/``False`` forces it. ``num_layers=1`` is a single Linear layer.
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
    layers: List[nn.Module] = []
    for i in range(num_layers):
        is_last = i == num_layers - 1
        use_bn = last_bn if is_last else hidden_bn
        layers.append(nn.Linear(dims[i], dims[i + 1], bias=(not use_bn) if bias is None else bias))
        if use_bn:
            layers.append(nn.BatchNorm1d(dims[i + 1], affine=last_bn_affine if is_last else True))
        if not is_last:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def linear_projector(in_dim: int, out_dim: int = 128) -> nn.Sequential:
    """One linear layer: InstDisc (Wu et al. 2018) and MoCo v1 (He et al. 2020).

    MoCo v1: "The last fully-connected layer (after global average pooling) has a
    fixed-dimensional output (128-D). This output vector is normalized by its L2-norm." (Here
    the loss does the normalising.) InstDisc also maps the pooled feature linearly to 128-D.
    """
    return mlp(in_dim, in_dim, out_dim, num_layers=1)


def simclr_projector(in_dim: int, hidden_dim: int = 2048, out_dim: int = 128, last_bn: bool = False) -> nn.Sequential:
    """SimCLR's g(.): Linear-BN-ReLU-Linear (Chen et al., ICML 2020).

    Paper: "we use a MLP with one hidden layer to obtain z_i = g(h_i) = W2 sigma(W1 h_i) where
    sigma is a ReLU non-linearity", 128-D output. The BN is from the official code, which also
    sizes the hidden layer as the encoder's width (2048 for ResNet-50, the default here) and
    batch-normalises the output too (``last_bn=True`` to follow it).
    """
    return mlp(in_dim, hidden_dim, out_dim, num_layers=2, hidden_bn=True, last_bn=last_bn)


def moco_v2_projector(in_dim: int, hidden_dim: int = 2048, out_dim: int = 128) -> nn.Sequential:
    """MoCo v2's head: Linear-ReLU-Linear, no BN (Chen, Fan, Girshick & He 2020).

    Paper: "we replace the fc head in MoCo with a 2-layer MLP head (hidden layer 2048-d, with
    ReLU)". MoCo v1 used a single linear layer: see ``linear_projector``.
    """
    return mlp(in_dim, hidden_dim, out_dim, num_layers=2, hidden_bn=False)


def byol_projector(in_dim: int, hidden_dim: int = 4096, out_dim: int = 256) -> nn.Sequential:
    """BYOL's projector g: Linear-BN-ReLU-Linear (Grill et al., NeurIPS 2020).

    Paper: "a linear layer with output size 4096 followed by batch normalization, rectified
    linear units (ReLU), and a final linear layer with output dimension 256 ... Contrary to
    SimCLR, the output of this MLP is not batch normalized."
    """
    return mlp(in_dim, hidden_dim, out_dim, num_layers=2, hidden_bn=True, last_bn=False)


def byol_predictor(dim: int = 256, hidden_dim: int = 4096) -> nn.Sequential:
    """BYOL's predictor q: "uses the same architecture as g" (dim -> 4096 -> dim)."""
    return mlp(dim, hidden_dim, dim, num_layers=2, hidden_bn=True, last_bn=False)


def simsiam_projector(in_dim: int, dim: int = 2048, hidden_dim: int = 2048, num_layers: int = 3) -> nn.Sequential:
    """SimSiam's projection MLP: 3 layers, BN on every layer, output BN without affine.

    Paper (Chen & He, CVPR 2021): "The projection MLP (in f) has BN applied to each
    fully-connected (fc) layer, including its output fc. Its output fc has no ReLU. The hidden
    fc is 2048-d. This MLP has 3 layers." In the official code the output BN has
    ``affine=False`` and no Linear has a bias (each is followed by BN).
    """
    return mlp(in_dim, hidden_dim, dim, num_layers=num_layers, hidden_bn=True, last_bn=True, last_bn_affine=False)


def simsiam_predictor(dim: int = 2048, pred_dim: int = 512) -> nn.Sequential:
    """SimSiam's prediction MLP: Linear-BN-ReLU-Linear, a 2048 -> 512 -> 2048 bottleneck.

    Paper: "The prediction MLP (h) has BN applied to its hidden fc layers. Its output fc does
    not have BN or ReLU. This MLP has 2 layers. The dimension of h's input and output (z and p)
    is d = 2048, and h's hidden layer's dimension is 512, making h a bottleneck structure."
    """
    return mlp(dim, pred_dim, dim, num_layers=2, hidden_bn=True, last_bn=False)


def swav_projector(in_dim: int, hidden_dim: int = 2048, out_dim: int = 128) -> nn.Sequential:
    """SwAV's projection head: Linear-BN-ReLU-Linear to 128-D (Caron et al., NeurIPS 2020).

    As in SimCLR, the pooled feature goes through a 2-layer MLP to 128-D (hidden 2048 with BN
    in the official code); the output is then L2-normalised and scored against the
    ``Prototypes`` (3000 of them for ImageNet).
    """
    return mlp(in_dim, hidden_dim, out_dim, num_layers=2, hidden_bn=True, last_bn=False)


class Prototypes(nn.Module):
    """SwAV's prototypes C: a bias-free linear layer whose K rows are unit vectors.

    ``forward(z)`` L2-normalises ``z`` and returns ``z @ C.T``, ``[B, num_prototypes]``: the
    cosine similarity of each feature to each prototype. The rows are trainable, so the
    method re-normalises them after each optimiser step with ``normalize_()`` (the official
    SwAV code does this under ``torch.no_grad()`` before every forward pass). They start
    normalised.
    """

    def __init__(self, dim: int, num_prototypes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_prototypes, dim))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)  # nn.Linear's default init, then unit rows
        self.normalize_()

    @torch.no_grad()
    def normalize_(self) -> "Prototypes":
        self.weight.copy_(F.normalize(self.weight, dim=1))
        return self

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.normalize(z, dim=1) @ self.weight.t()
