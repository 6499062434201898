"""Run configurations: plain dataclasses, read from YAML, changed with ``key=value`` overrides.

    cfg = load_config("configs/cifar10/simclr.yaml", ["optim.lr=0.3", "epochs=100"])

Every key is checked: a misspelt key fails at once with the list of valid keys, and a value of
the wrong type names the key. A config is built in three layers: the dataclass defaults, the YAML
file, the run profile (``smoke``/``cpu`` shrink the run to fit a CPU; ``gpu`` keeps the file's
recipe), and finally the command-line overrides, which win over everything.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
import yaml

from .profiles import PROFILES, Profile, get_profile


class ConfigError(ValueError):
    """A config file or override that cannot be used as it is."""


@dataclass
class DataConfig:
    dataset: str = "cifar10"  # cifar10 | cifar100 | stl10 | imagefolder
    root: Optional[str] = None  # data root (default $SSLBOOK_DATA); for imagefolder the folder holding train/ and val/
    train_images: Optional[int] = None  # use a class-balanced subset of this many training images
    test_images: Optional[int] = None  # likewise for the test images of the kNN monitor
    load_size: int = 256  # imagefolder: decode to this square size; the augmentations crop from it
    crop_size: Optional[int] = None  # side of the (global) training views; default: the images' side (224: imagefolder)
    crop_schedule: Optional[list] = None  # progressive resizing: [[0, 16], [0.5, 24], [0.8, 32]] = from this fraction
    # of the training steps on, views of this side (at epoch starts; at the step with a time budget, which then plans
    # its length with each side's measured step time); evaluation stays at crop_size
    local_crops: Optional[int] = None  # multi-crop recipes (swav): how many small crops; None = the paper's (6)
    variant: Optional[str] = None  # rotated | tinted: train and evaluate on a copy of an in-memory dataset
    # (sslbook.data.rotated_copy / tinted_copy: every image turned by its own quarter / grayscale times one of ten
    # tints, the tint its label), for the pretext chapter's experiments
    num_workers: int = 8  # imagefolder: decoding processes
    on_device: bool = True  # in-memory datasets: keep the whole uint8 dataset on the GPU


@dataclass
class ModelConfig:
    encoder: str = "resnet18"  # resnet18 | resnet34 | resnet50 | vit_tiny
    width: int = 64  # ResNet first-stage channels (64 = standard)
    stem: str = "cifar"  # cifar (3x3, stride 1, no max-pool) | imagenet (7x7, stride 2, max-pool)
    stem_kernel: Optional[int] = None  # ResNet first-conv kernel (odd); None = the stem's own (3 or 7)
    zero_init_residual: bool = False  # ResNet: start the last BN scale of every residual block at 0 (Goyal et al. 2017)


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adamw | lars
    lr: float = 0.06  # base learning rate for a batch of `lr_batch` images (see lr_scaling)
    lr_scaling: str = "linear"  # linear: lr * batch/lr_batch (Goyal et al. 2017) | sqrt | none
    lr_batch: int = 256
    momentum: float = 0.9
    betas: tuple = (0.9, 0.999)  # adamw
    weight_decay: float = 5e-4
    exclude_bias_and_norm: bool = True  # no decay (and no LARS adaptation) for biases and norm layers
    lars_eta: float = 0.001  # LARS trust coefficient
    lars_clip: bool = False  # LARC clipping: a layer's adapted rate never above the global one
    warmup_epochs: float = 10.0
    schedule: str = "cosine"  # cosine | constant
    min_lr: float = 0.0  # as a fraction of the peak learning rate


@dataclass
class Config:
    method: str = "simclr"
    method_args: dict = field(default_factory=dict)  # keyword arguments of the method's constructor
    paper: str = ""  # where the hyper-parameters come from
    profile: Optional[str] = None  # smoke | cpu | gpu; None = $SSLBOOK_PROFILE or auto
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: Union[str, list] = "simclr"  # a recipe name of sslbook.augment, or a list of view dicts
    batch_size: int = 512  # images per step over all processes (each gives two or more views)
    epochs: int = 200
    max_minutes: Optional[float] = None  # wall-clock budget for training (evaluation not counted)
    max_steps: Optional[int] = None  # interrupt after this many steps (schedule unchanged; resumable)
    precision: str = "fp32"  # fp32 | bf16 | fp16 (fp16 uses a gradient scaler)
    channels_last: bool = False
    compile: bool = False  # torch.compile the method
    sync_bn: bool = False  # convert BatchNorm to SyncBatchNorm under DDP
    seed: int = 0
    out_dir: Optional[str] = None  # default runs/<method>-<dataset>-<profile>
    resume: str = "auto"  # auto: continue from out_dir/checkpoint.pt if there | never | a checkpoint path
    overwrite: bool = False  # with resume=never: replace an existing run in out_dir
    eval_every: int = 10  # kNN monitor every this many epochs (0 = only at the end)
    final_eval: bool = True  # kNN (k=200 and k=20) on the test set when training ends
    knn_k: int = 200
    knn_temperature: float = 0.1
    log_every: int = 50  # steps between logged metrics (and host syncs)
    checkpoint_minutes: float = 10.0  # also checkpoint mid-epoch this often
    progress: bool = True  # tqdm progress bar
    verbose: bool = True  # one line per epoch / evaluation


# --------------------------------------------------------------------------- building and checking
def _type_ok(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return True
    if origin is Union:
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple) or annotation in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _unknown_key(key: str, valid: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown config key '{where}{key}'{hint}; valid keys: {', '.join(valid)}")


def _set(obj, key: str, value: Any, where: str = "") -> None:
    """Set ``obj.key = value`` after checking the key exists and the type fits."""
    hints = _hints(type(obj))
    if key not in hints:
        raise _unknown_key(key, list(hints), where)
    annotation = hints[key]
    current = getattr(obj, key)
    if dataclasses.is_dataclass(current):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{where}{key}' is a section; give it a mapping of its keys")
        for k, v in value.items():
            _set(current, k, v, f"{where}{key}.")
        return
    if isinstance(value, list) and (annotation is tuple or typing.get_origin(annotation) is tuple):
        value = tuple(value)
    if _accepts_float(annotation) and isinstance(value, str) and NUMBER.fullmatch(value.strip()):
        value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not _type_ok(value, annotation):
        raise ConfigError(f"config key '{where}{key}' must be {_type_name(annotation)}, got {value!r}")
    if key == "method_args" and obj.__class__ is Config:
        value = exponent_floats(value)
    setattr(obj, key, value)


NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def exponent_floats(value: Any) -> Any:
    """``value`` with every string like "1e-3" or "1.0e6" (YAML 1.1 reads them as strings) made a float,
    in nested dicts and lists too: for ``method_args``, whose types the config cannot know."""
    if isinstance(value, str) and EXPONENT_NUMBER.fullmatch(value.strip()):
        return float(value)
    if isinstance(value, dict):
        return {k: exponent_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [exponent_floats(v) for v in value]
    return value


def _accepts_float(annotation) -> bool:
    return annotation is float or (typing.get_origin(annotation) is Union and float in typing.get_args(annotation))


def _type_name(annotation) -> str:
    if typing.get_origin(annotation) is Union:
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    return "null" if annotation is type(None) else getattr(annotation, "__name__", str(annotation))


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=0.3"`` -> (["optim", "lr"], 0.3); the value is read as YAML (numbers, true, null, lists)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value (e.g. optim.lr=0.3)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_override(cfg: Config, path: list[str], value: Any) -> None:
    obj, where = cfg, ""
    for part in path[:-1]:
        if part == "method_args" and obj is cfg:
            cfg.method_args = dict(cfg.method_args)
            nested = cfg.method_args
            for sub in path[path.index(part) + 1 : -1]:
                nested = nested.setdefault(sub, {})
            nested[path[-1]] = exponent_floats(value)
            return
        hints = _hints(type(obj))
        if part not in hints or not dataclasses.is_dataclass(getattr(obj, part)):
            sections = [k for k in hints if dataclasses.is_dataclass(getattr(obj, k))]
            raise _unknown_key(part, sections or list(hints), where)
        obj, where = getattr(obj, part), f"{where}{part}."
    _set(obj, path[-1], value, where)


def read_config_file(path: Path, what: str = "config") -> dict:
    """The mapping a YAML config file holds; bad YAML or anything but a mapping is one ConfigError line."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of {what} keys, not {type(raw).__name__}")
    return raw


def configure(cfg, path: Optional[Path], overrides: Sequence[str], what: str = "config"):
    """``cfg`` (a config dataclass) with the keys of the YAML file at ``path`` (if any), then the
    ``key=value`` ``overrides``, set on it: unknown keys and wrong types fail with the key's name."""
    if path is not None:
        for key, value in read_config_file(path, what).items():
            apply_override(cfg, [key], value)
    for text in overrides:
        apply_override(cfg, *parse_override(text))
    return cfg


def apply_profile(cfg: Config, profile: Profile) -> None:
    """Shrink a run to the profile (``smoke``/``cpu``); ``gpu`` keeps the config's own recipe."""
    if profile.name == "gpu":
        return
    cfg.model.width = profile.encoder_width
    cfg.batch_size = profile.batch_size
    cfg.epochs = min(cfg.epochs, profile.epochs)
    cfg.max_minutes = profile.train_minutes
    cfg.data.train_images = profile.train_images
    cfg.data.test_images = profile.test_images
    cfg.eval_every = profile.eval_every
    cfg.data.num_workers = min(cfg.data.num_workers, profile.num_workers)
    # A few-minute run cannot afford the papers' 10-epoch warm-up; the trainer also caps warm-up
    # at a tenth of the planned steps.
    cfg.optim.warmup_epochs = min(cfg.optim.warmup_epochs, 1.0)
    cfg.log_every = min(cfg.log_every, 20)
    if profile.name == "cpu":
        # oneDNN runs convolutions fastest in NHWC, and in bf16 where the CPU has native bf16
        # instructions (measured: benchmarks/train_throughput.py); elsewhere bf16 would be emulated.
        cfg.channels_last = True
        cfg.precision = "bf16" if cpu_has_native_bf16() else "fp32"


SHIPPED = Path(__file__).resolve().parent / "configs"


def shipped_configs() -> list[str]:
    """Names of the pre-training configs that ship with the package, e.g. "cifar10/simclr"
    (``detection/`` and ``segmentation/`` hold downstream configs, read by
    :func:`sslbook.voc.load_detection_config` and :func:`sslbook.dense.load_segmentation_config`)."""
    return sorted(
        str(p.relative_to(SHIPPED).with_suffix(""))
        for p in SHIPPED.rglob("*.yaml")
        if p.relative_to(SHIPPED).parts[0] not in ("detection", "segmentation")
    )


def resolve_config_path(path: str | Path) -> Path:
    """A YAML file on disk, or the name of a shipped config ("cifar10/simclr")."""
    candidate = Path(path).expanduser()
    if candidate.is_file():
        return candidate
    shipped = SHIPPED / Path(path).with_suffix(".yaml")
    if shipped.is_file():
        return shipped
    raise ConfigError(f"config file {path} does not exist; shipped configs: {', '.join(shipped_configs())}")


BF16_CPU_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}  # x86 (AVX-512 BF16, AMX) and Arm (FEAT_BF16) names


def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether the CPU computes bf16 in hardware. oneDNN also *emulates* bf16 on any AVX-512 CPU, where
    it runs about 2.4x slower than fp32 (measured on this project's Xeon without avx512_bf16), so
    oneDNN's own answer is not enough: the CPU's feature flags decide where Linux lists them."""
    try:
        if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
            return False
    except (AttributeError, RuntimeError):
        return False
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return True  # no feature list to read (not Linux): trust oneDNN
    flags = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return bool(flags & BF16_CPU_FLAGS)


def load_config(
    path: Optional[str | Path] = None, overrides: Optional[list[str]] = None, profile: Optional[str] = None
) -> Config:
    """Defaults <- YAML file (a path or a shipped name like "cifar10/simclr") <- profile <- overrides.

    ``path=None`` gives SimCLR on CIFAR-10. A YAML file may also hold per-profile recipes,
    ``profiles: {cpu: {batch_size: 256, optim: {lr: 0.5}, method_args: {temperature: 0.2}}}``: the
    chosen profile's entry applies after the profile's shrinking, before the overrides. The config
    returned (and saved with a run) is the resolved one, without the ``profiles`` key.
    """
    cfg, recipes = Config(), {}
    if path is not None:
        path = resolve_config_path(path)
        raw = read_config_file(path)
        recipes = raw.pop("profiles", None) or {}
        for key, value in raw.items():
            _set(cfg, key, value)
    parsed = [parse_override(o) for o in overrides or []]
    for key_path, value in parsed:  # the profile override must be known before the profile applies
        if key_path == ["profile"]:
            _set(cfg, "profile", value)
    if profile is not None:
        cfg.profile = profile
    try:
        chosen = get_profile(cfg.profile)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    cfg.profile = chosen.name
    apply_profile(cfg, chosen)
    apply_recipe(cfg, recipes, chosen.name)
    for key_path, value in parsed:
        apply_override(cfg, key_path, value)
    validate(cfg)
    return cfg


def apply_recipe(cfg: Config, recipes: Any, profile: str) -> None:
    """Apply ``recipes[profile]`` (a YAML file's ``profiles:`` entry) with the checks of every key;
    ``method_args`` are merged into the file's, not replaced."""
    if not isinstance(recipes, dict) or any(not isinstance(r, dict) for r in recipes.values()):
        raise ConfigError(
            "config key 'profiles' must map profile names to mappings of config keys, e.g. "
            "profiles: {cpu: {batch_size: 256}}"
        )
    unknown = [name for name in recipes if name not in PROFILES]
    if unknown:
        raise ConfigError(f"config key 'profiles' names unknown profiles {unknown}; valid: {', '.join(PROFILES)}")
    for key, value in (recipes.get(profile) or {}).items():
        where = f"profiles.{profile}."
        if key in ("profile", "profiles"):
            raise ConfigError(f"config key '{where}{key}' cannot be set inside a profile's recipe")
        if key == "method_args":
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{where}method_args' must be a mapping, got {value!r}")
            cfg.method_args = {**cfg.method_args, **exponent_floats(value)}
        else:
            _set(cfg, key, value, where)


CHOICES = {
    ("data", "dataset"): ("cifar10", "cifar100", "stl10", "imagefolder"),
    ("data", "variant"): (None, "rotated", "tinted"),
    ("model", "stem"): ("cifar", "imagenet"),
    ("optim", "name"): ("sgd", "adamw", "lars"),
    ("optim", "lr_scaling"): ("linear", "sqrt", "none"),
    ("optim", "schedule"): ("cosine", "constant"),
    ("precision",): ("fp32", "bf16", "fp16"),
}


def _positive(v):
    return v > 0


def _non_negative(v):
    return v >= 0


def _any(v):
    return True


# (dotted key, lower check, upper check); None (where allowed) is never checked.
RANGES = [
    ("optim.lr", _positive, _any),
    ("optim.lr_batch", _positive, _any),
    ("optim.momentum", _non_negative, lambda v: v < 1),
    ("optim.weight_decay", _non_negative, _any),
    ("optim.warmup_epochs", _non_negative, _any),
    ("optim.min_lr", _non_negative, lambda v: v <= 1),
    ("optim.lars_eta", _positive, _any),
    ("seed", _non_negative, lambda v: v < 2**32),
    ("batch_size", _positive, _any),
    ("epochs", _positive, _any),
    ("max_minutes", _positive, _any),
    ("max_steps", _positive, _any),
    ("log_every", _positive, _any),
    ("eval_every", _non_negative, _any),
    ("checkpoint_minutes", _positive, _any),
    ("knn_k", _positive, _any),
    ("knn_temperature", _positive, _any),
    ("model.width", _positive, _any),
    ("data.train_images", _positive, _any),
    ("data.test_images", _positive, _any),
    ("data.load_size", _positive, _any),
    ("data.crop_size", _positive, _any),
    ("data.num_workers", _non_negative, _any),
]
RANGE_TEXT = {key: "positive" for key, low, high in RANGES if low is _positive}
RANGE_TEXT.update({key: ">= 0" for key, low, high in RANGES if low is _non_negative})
RANGE_TEXT.update(
    {"optim.momentum": "in [0, 1)", "optim.min_lr": "in [0, 1] (a fraction of the peak lr)", "seed": "in [0, 2**32)"}
)


def _get(cfg: Config, dotted: str):
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def validate(cfg: Config) -> None:
    from .methods import check_method_args  # here, not at the top: the methods import this module

    check_method_args(cfg.method, cfg.method_args)
    for path, choices in CHOICES.items():
        obj = cfg
        for part in path[:-1]:
            obj = getattr(obj, part)
        value = getattr(obj, path[-1])
        if value not in choices:
            valid = ", ".join(str(c or "null") for c in choices)
            raise ConfigError(f"config key {'.'.join(path)!r} must be one of {valid}, got {value!r}")
    kernel = cfg.model.stem_kernel
    if kernel is not None and (kernel < 1 or kernel % 2 == 0 or not cfg.model.encoder.startswith("resnet")):
        raise ConfigError(
            f"config key 'model.stem_kernel' must be a positive odd number (a ResNet's first-conv "
            f"kernel, e.g. 7) or null, got {kernel!r} for encoder {cfg.model.encoder}"
        )
    from .models import ENCODERS

    _check_crop_schedule(cfg)
    _check_local_crops(cfg)
    if cfg.model.zero_init_residual and not cfg.model.encoder.startswith("resnet"):
        raise ConfigError(f"config key 'model.zero_init_residual' needs a ResNet encoder, got {cfg.model.encoder}")

    if cfg.model.encoder not in ENCODERS:
        raise ConfigError(f"config key 'model.encoder' must be one of {', '.join(ENCODERS)}, got {cfg.model.encoder!r}")
    for key, low, high in RANGES:
        value = _get(cfg, key)
        if value is not None and not (low(value) and high(value)):
            raise ConfigError(f"config key {key!r} must be {RANGE_TEXT[key]}, got {value!r}")
    if cfg.resume not in ("auto", "never") and not Path(cfg.resume).suffix:
        raise ConfigError(f"config key 'resume' must be auto, never or a checkpoint path, got {cfg.resume!r}")


def _check_crop_schedule(cfg: Config) -> None:
    schedule = cfg.data.crop_schedule
    if schedule is None:
        return
    example = "e.g. [[0, 16], [0.5, 24], [0.8, 32]]: from this fraction of the training steps on, views of this side"
    pairs = [tuple(p) for p in schedule if isinstance(p, (list, tuple)) and len(p) == 2]
    if (
        not schedule
        or len(pairs) != len(schedule)
        or not all(_type_ok(f, float) and 0 <= f < 1 and _type_ok(side, int) and side > 0 for f, side in pairs)
    ):
        raise ConfigError(
            f"config key 'data.crop_schedule' must be a list of [fraction, side] pairs, {example}; got {schedule!r}"
        )
    fractions = [f for f, _ in pairs]
    if fractions[0] != 0 or fractions != sorted(set(fractions)):
        raise ConfigError(
            f"config key 'data.crop_schedule' must start at fraction 0 and increase, {example}; got {schedule!r}"
        )
    if not isinstance(cfg.augment, str) or not cfg.model.encoder.startswith("resnet"):
        raise ConfigError(
            "config key 'data.crop_schedule' needs a named augment recipe and a ResNet encoder (a list "
            "of views sets its own sizes; a ViT takes one image size)"
        )


def _check_local_crops(cfg: Config) -> None:
    from .augment import MULTI_CROP

    count = cfg.data.local_crops
    if count is None:
        return
    if not _type_ok(count, int) or count < 0:
        raise ConfigError(f"config key 'data.local_crops' must be a whole number >= 0 or null, got {count!r}")
    if cfg.augment not in MULTI_CROP:
        raise ConfigError(
            f"config key 'data.local_crops' needs a multi-crop augment recipe ({', '.join(MULTI_CROP)}), "
            f"got augment={cfg.augment!r}"
        )


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(d: dict) -> Config:
    cfg = Config()
    for key, value in d.items():
        _set(cfg, key, value)
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    data = to_dict(cfg)
    data["optim"]["betas"] = list(data["optim"]["betas"])
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))
