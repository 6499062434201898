"""The shared public helpers: eval_mode, fork_rng, module_device, feature_dim, top1."""

import pytest
import torch
from torch import nn

from sslbook.utils import eval_mode, feature_dim, fork_rng, module_device, top1


def test_eval_mode_restores_each_submodules_flag_even_on_error():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Dropout())
    model.train()
    model[1].eval()  # a frozen BatchNorm stays frozen
    with eval_mode(model, lambda x: x):  # non-modules are ignored
        assert not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == [True, True, False, True]
    with pytest.raises(RuntimeError, match="boom"):
        with eval_mode(model):
            raise RuntimeError("boom")
    assert [m.training for m in model.modules()] == [True, True, False, True]


def test_fork_rng_leaves_the_callers_stream_alone():
    torch.manual_seed(0)
    state = torch.random.get_rng_state()
    with fork_rng("cpu"):
        torch.manual_seed(123)
        inside = torch.rand(3)
    assert torch.equal(torch.random.get_rng_state(), state)
    with fork_rng(torch.device("cpu")):
        torch.manual_seed(123)
        assert torch.equal(torch.rand(3), inside)


def test_module_device_feature_dim_and_top1():
    assert module_device(nn.ReLU()) == torch.device("cpu") and module_device(None) == torch.device("cpu")
    encoder = nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    before = encoder[1].running_mean.clone()
    assert feature_dim(encoder, 8) == 5 and encoder.training
    assert torch.equal(encoder[1].running_mean, before)  # measured in eval mode
    encoder.feature_dim = 7
    assert feature_dim(encoder) == 7
    assert top1(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 1, 2])) == 75.0


def test_moved_names_stay_importable_from_their_old_modules():
    from sslbook import bench, diagnostics, eval, report, supervised

    for name in (
        "results_table",
        "accuracy_vs_time",
        "save_results",
        "load_results",
        "load_environment",
        "environment",
        "step_records",
        "BenchError",
        "COLUMNS",
        "DEFAULT_COLUMNS",
    ):
        assert getattr(bench, name) is getattr(report, name), name
    for name in ("alignment_uniformity", "same_class_neighbour_rate"):
        assert getattr(eval, name) is getattr(diagnostics, name), name
    assert eval.fit_epochs_to_budget is supervised.fit_epochs_to_budget
