"""The extension surface: the worked example of book/add_a_method.md runs as the page shows it.

The method module, the registration and the config are read from the page's code blocks (each
starts with a comment naming it), so the page and this test cannot drift apart.
"""

import json
import re
import types

import pytest
import torch

from conftest import ROOT, tiny_encoder, write_cifar_fixture
from sslbook.__main__ import main
from sslbook.methods import METHODS, Method, build_method, register
from sslbook.methods.base import encode_crops

PAGE = ROOT / "book" / "add_a_method.md"


def page_block(first_line: str) -> str:
    """The fenced code block of the page whose first line is ``first_line``."""
    for body in re.findall(r"```[a-z]*\n(.*?)```", PAGE.read_text(), flags=re.S):
        if body.splitlines()[0].strip() == first_line:
            return body
    raise AssertionError(f"{PAGE.name} has no code block starting with {first_line!r}")


@pytest.fixture
def barlow_twins():
    """The page's module, executed as a module of its own; unregistered again afterwards."""
    module = types.ModuleType("barlow_twins_example")
    exec(compile(page_block("# sslbook/methods/barlow_twins.py"), str(PAGE), "exec"), module.__dict__)
    yield module.BarlowTwins
    METHODS.pop("barlow_twins", None)


def test_the_pages_method_registers_and_trains_one_step_through_the_cli(barlow_twins, tmp_path, capsys):
    namespace = {"BarlowTwins": barlow_twins}
    exec(page_block("# registration"), namespace)  # register("barlow_twins", BarlowTwins)
    assert METHODS["barlow_twins"] is barlow_twins
    config = tmp_path / "barlow_twins.yaml"
    config.write_text(page_block("# sslbook/configs/cifar10/barlow_twins.yaml"))
    write_cifar_fixture(tmp_path / "data", n_per_batch=8)
    out = tmp_path / "run"
    code = main(
        [
            "train",
            str(config),
            "profile=smoke",
            "max_steps=1",
            f"data.root={tmp_path / 'data'}",
            "model.width=4",
            "batch_size=8",
            f"out_dir={out}",
            "progress=false",
            "verbose=false",
            "log_every=1",
            "eval_every=0",
            "method_args.dim=32",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert (out / "checkpoint.pt").is_file() and (out / "config.yaml").is_file()
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if "step" in r and "loss" in r]
    assert steps[0]["step"] == 1 and "on_diagonal" in steps[0]  # the method's own scalar is logged
    assert torch.isfinite(torch.tensor(steps[0]["loss"]))
    assert main(["eval", str(out / "checkpoint.pt"), "--data-root", str(tmp_path / "data")]) == 0  # still registered
    assert "knn200_top1" in json.loads((out / "eval.json").read_text())


def test_the_pages_loss_is_the_barlow_twins_objective(barlow_twins):
    torch.manual_seed(0)
    method = barlow_twins(tiny_encoder(), dim=8, lambd=0.5)
    views = [torch.randn(6, 3, 16, 16), torch.randn(6, 3, 16, 16)]
    out = method(views)
    with torch.no_grad():  # the loss by hand: standardise each dimension over the batch, correlate
        z_a, z_b = method.projector(method.backbone(torch.cat(views))).chunk(2)
        a = (z_a - z_a.mean(0)) / torch.sqrt(z_a.var(0, unbiased=False) + 1e-5)
        b = (z_b - z_b.mean(0)) / torch.sqrt(z_b.var(0, unbiased=False) + 1e-5)
        c = a.T @ b / 6
        eye = torch.eye(8, dtype=torch.bool)
        expected = ((c[eye] - 1) ** 2).sum() + 0.5 * (c[~eye] ** 2).sum()
    assert float(out["loss"].detach()) == pytest.approx(float(expected), rel=1e-4)
    assert out["z"].shape == (6, 8) and not out["z"].requires_grad


def test_register_refuses_a_taken_name_and_a_non_method(barlow_twins):
    assert register("barlow_twins", barlow_twins) is barlow_twins
    assert register("barlow_twins", barlow_twins) is barlow_twins  # the same class again: harmless
    with pytest.raises(ValueError, match="method 'simclr' is already registered as SimCLR; choose another name"):
        register("simclr", barlow_twins)
    with pytest.raises(TypeError, match=r"needs a subclass of sslbook.methods.Method, got <class 'int'>"):
        register("number", int)
    assert isinstance(build_method("barlow_twins", tiny_encoder(), dim=16), Method)


def test_encode_crops_runs_one_pass_per_size():
    sizes = []

    def network(x):
        sizes.append(tuple(x.shape))
        return x.mean((1, 2, 3))[:, None]

    views = [torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 8, 8)]
    out = encode_crops(network, views)
    assert sizes == [(4, 3, 8, 8), (2, 3, 4, 4), (2, 3, 8, 8)]  # consecutive equal sizes only
    assert torch.allclose(out[:, 0], torch.cat([v.mean((1, 2, 3)) for v in views]))
