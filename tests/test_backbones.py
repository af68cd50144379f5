"""The video ResNets in torchvision's layout: every parameter and buffer name and shape of torchvision's
`r2plus1d_18` and `r3d_18`, parameter counts, `fame-train export` and `pretrain --init`, and checkpoints of the
layout before."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainer.backbones import build_backbone, midplanes
from trainer.checkpoint import CheckpointError, load_backbone, load_init
from trainer.cli import build_parser, main
from trainer.config import TrainConfig
from trainer.train import TrainError, _model

# Transcribed from torchvision/models/video/resnet.py (VideoResNet with BasicBlock, layers [2, 2, 2, 2], the
# R2Plus1dStem + Conv2Plus1D for r2plus1d_18, BasicStem + Conv3DSimple for r3d_18, num_classes 400): the state dict's
# names in order and their shapes ('-' a scalar). Conv2Plus1D's width is midplanes(in, out) of its BasicBlock, used by
# both of the block's convolutions: 230 for conv2 of layer2.0 (in 64, out 128), not midplanes(128, 128) = 288.
R2PLUS1D_18 = """
stem.0.weight 45x3x1x7x7
stem.1.weight 45
stem.1.bias 45
stem.1.running_mean 45
stem.1.running_var 45
stem.1.num_batches_tracked -
stem.3.weight 64x45x3x1x1
stem.4.weight 64
stem.4.bias 64
stem.4.running_mean 64
stem.4.running_var 64
stem.4.num_batches_tracked -
layer1.0.conv1.0.0.weight 144x64x1x3x3
layer1.0.conv1.0.1.weight 144
layer1.0.conv1.0.1.bias 144
layer1.0.conv1.0.1.running_mean 144
layer1.0.conv1.0.1.running_var 144
layer1.0.conv1.0.1.num_batches_tracked -
layer1.0.conv1.0.3.weight 64x144x3x1x1
layer1.0.conv1.1.weight 64
layer1.0.conv1.1.bias 64
layer1.0.conv1.1.running_mean 64
layer1.0.conv1.1.running_var 64
layer1.0.conv1.1.num_batches_tracked -
layer1.0.conv2.0.0.weight 144x64x1x3x3
layer1.0.conv2.0.1.weight 144
layer1.0.conv2.0.1.bias 144
layer1.0.conv2.0.1.running_mean 144
layer1.0.conv2.0.1.running_var 144
layer1.0.conv2.0.1.num_batches_tracked -
layer1.0.conv2.0.3.weight 64x144x3x1x1
layer1.0.conv2.1.weight 64
layer1.0.conv2.1.bias 64
layer1.0.conv2.1.running_mean 64
layer1.0.conv2.1.running_var 64
layer1.0.conv2.1.num_batches_tracked -
layer1.1.conv1.0.0.weight 144x64x1x3x3
layer1.1.conv1.0.1.weight 144
layer1.1.conv1.0.1.bias 144
layer1.1.conv1.0.1.running_mean 144
layer1.1.conv1.0.1.running_var 144
layer1.1.conv1.0.1.num_batches_tracked -
layer1.1.conv1.0.3.weight 64x144x3x1x1
layer1.1.conv1.1.weight 64
layer1.1.conv1.1.bias 64
layer1.1.conv1.1.running_mean 64
layer1.1.conv1.1.running_var 64
layer1.1.conv1.1.num_batches_tracked -
layer1.1.conv2.0.0.weight 144x64x1x3x3
layer1.1.conv2.0.1.weight 144
layer1.1.conv2.0.1.bias 144
layer1.1.conv2.0.1.running_mean 144
layer1.1.conv2.0.1.running_var 144
layer1.1.conv2.0.1.num_batches_tracked -
layer1.1.conv2.0.3.weight 64x144x3x1x1
layer1.1.conv2.1.weight 64
layer1.1.conv2.1.bias 64
layer1.1.conv2.1.running_mean 64
layer1.1.conv2.1.running_var 64
layer1.1.conv2.1.num_batches_tracked -
layer2.0.conv1.0.0.weight 230x64x1x3x3
layer2.0.conv1.0.1.weight 230
layer2.0.conv1.0.1.bias 230
layer2.0.conv1.0.1.running_mean 230
layer2.0.conv1.0.1.running_var 230
layer2.0.conv1.0.1.num_batches_tracked -
layer2.0.conv1.0.3.weight 128x230x3x1x1
layer2.0.conv1.1.weight 128
layer2.0.conv1.1.bias 128
layer2.0.conv1.1.running_mean 128
layer2.0.conv1.1.running_var 128
layer2.0.conv1.1.num_batches_tracked -
layer2.0.conv2.0.0.weight 230x128x1x3x3
layer2.0.conv2.0.1.weight 230
layer2.0.conv2.0.1.bias 230
layer2.0.conv2.0.1.running_mean 230
layer2.0.conv2.0.1.running_var 230
layer2.0.conv2.0.1.num_batches_tracked -
layer2.0.conv2.0.3.weight 128x230x3x1x1
layer2.0.conv2.1.weight 128
layer2.0.conv2.1.bias 128
layer2.0.conv2.1.running_mean 128
layer2.0.conv2.1.running_var 128
layer2.0.conv2.1.num_batches_tracked -
layer2.0.downsample.0.weight 128x64x1x1x1
layer2.0.downsample.1.weight 128
layer2.0.downsample.1.bias 128
layer2.0.downsample.1.running_mean 128
layer2.0.downsample.1.running_var 128
layer2.0.downsample.1.num_batches_tracked -
layer2.1.conv1.0.0.weight 288x128x1x3x3
layer2.1.conv1.0.1.weight 288
layer2.1.conv1.0.1.bias 288
layer2.1.conv1.0.1.running_mean 288
layer2.1.conv1.0.1.running_var 288
layer2.1.conv1.0.1.num_batches_tracked -
layer2.1.conv1.0.3.weight 128x288x3x1x1
layer2.1.conv1.1.weight 128
layer2.1.conv1.1.bias 128
layer2.1.conv1.1.running_mean 128
layer2.1.conv1.1.running_var 128
layer2.1.conv1.1.num_batches_tracked -
layer2.1.conv2.0.0.weight 288x128x1x3x3
layer2.1.conv2.0.1.weight 288
layer2.1.conv2.0.1.bias 288
layer2.1.conv2.0.1.running_mean 288
layer2.1.conv2.0.1.running_var 288
layer2.1.conv2.0.1.num_batches_tracked -
layer2.1.conv2.0.3.weight 128x288x3x1x1
layer2.1.conv2.1.weight 128
layer2.1.conv2.1.bias 128
layer2.1.conv2.1.running_mean 128
layer2.1.conv2.1.running_var 128
layer2.1.conv2.1.num_batches_tracked -
layer3.0.conv1.0.0.weight 460x128x1x3x3
layer3.0.conv1.0.1.weight 460
layer3.0.conv1.0.1.bias 460
layer3.0.conv1.0.1.running_mean 460
layer3.0.conv1.0.1.running_var 460
layer3.0.conv1.0.1.num_batches_tracked -
layer3.0.conv1.0.3.weight 256x460x3x1x1
layer3.0.conv1.1.weight 256
layer3.0.conv1.1.bias 256
layer3.0.conv1.1.running_mean 256
layer3.0.conv1.1.running_var 256
layer3.0.conv1.1.num_batches_tracked -
layer3.0.conv2.0.0.weight 460x256x1x3x3
layer3.0.conv2.0.1.weight 460
layer3.0.conv2.0.1.bias 460
layer3.0.conv2.0.1.running_mean 460
layer3.0.conv2.0.1.running_var 460
layer3.0.conv2.0.1.num_batches_tracked -
layer3.0.conv2.0.3.weight 256x460x3x1x1
layer3.0.conv2.1.weight 256
layer3.0.conv2.1.bias 256
layer3.0.conv2.1.running_mean 256
layer3.0.conv2.1.running_var 256
layer3.0.conv2.1.num_batches_tracked -
layer3.0.downsample.0.weight 256x128x1x1x1
layer3.0.downsample.1.weight 256
layer3.0.downsample.1.bias 256
layer3.0.downsample.1.running_mean 256
layer3.0.downsample.1.running_var 256
layer3.0.downsample.1.num_batches_tracked -
layer3.1.conv1.0.0.weight 576x256x1x3x3
layer3.1.conv1.0.1.weight 576
layer3.1.conv1.0.1.bias 576
layer3.1.conv1.0.1.running_mean 576
layer3.1.conv1.0.1.running_var 576
layer3.1.conv1.0.1.num_batches_tracked -
layer3.1.conv1.0.3.weight 256x576x3x1x1
layer3.1.conv1.1.weight 256
layer3.1.conv1.1.bias 256
layer3.1.conv1.1.running_mean 256
layer3.1.conv1.1.running_var 256
layer3.1.conv1.1.num_batches_tracked -
layer3.1.conv2.0.0.weight 576x256x1x3x3
layer3.1.conv2.0.1.weight 576
layer3.1.conv2.0.1.bias 576
layer3.1.conv2.0.1.running_mean 576
layer3.1.conv2.0.1.running_var 576
layer3.1.conv2.0.1.num_batches_tracked -
layer3.1.conv2.0.3.weight 256x576x3x1x1
layer3.1.conv2.1.weight 256
layer3.1.conv2.1.bias 256
layer3.1.conv2.1.running_mean 256
layer3.1.conv2.1.running_var 256
layer3.1.conv2.1.num_batches_tracked -
layer4.0.conv1.0.0.weight 921x256x1x3x3
layer4.0.conv1.0.1.weight 921
layer4.0.conv1.0.1.bias 921
layer4.0.conv1.0.1.running_mean 921
layer4.0.conv1.0.1.running_var 921
layer4.0.conv1.0.1.num_batches_tracked -
layer4.0.conv1.0.3.weight 512x921x3x1x1
layer4.0.conv1.1.weight 512
layer4.0.conv1.1.bias 512
layer4.0.conv1.1.running_mean 512
layer4.0.conv1.1.running_var 512
layer4.0.conv1.1.num_batches_tracked -
layer4.0.conv2.0.0.weight 921x512x1x3x3
layer4.0.conv2.0.1.weight 921
layer4.0.conv2.0.1.bias 921
layer4.0.conv2.0.1.running_mean 921
layer4.0.conv2.0.1.running_var 921
layer4.0.conv2.0.1.num_batches_tracked -
layer4.0.conv2.0.3.weight 512x921x3x1x1
layer4.0.conv2.1.weight 512
layer4.0.conv2.1.bias 512
layer4.0.conv2.1.running_mean 512
layer4.0.conv2.1.running_var 512
layer4.0.conv2.1.num_batches_tracked -
layer4.0.downsample.0.weight 512x256x1x1x1
layer4.0.downsample.1.weight 512
layer4.0.downsample.1.bias 512
layer4.0.downsample.1.running_mean 512
layer4.0.downsample.1.running_var 512
layer4.0.downsample.1.num_batches_tracked -
layer4.1.conv1.0.0.weight 1152x512x1x3x3
layer4.1.conv1.0.1.weight 1152
layer4.1.conv1.0.1.bias 1152
layer4.1.conv1.0.1.running_mean 1152
layer4.1.conv1.0.1.running_var 1152
layer4.1.conv1.0.1.num_batches_tracked -
layer4.1.conv1.0.3.weight 512x1152x3x1x1
layer4.1.conv1.1.weight 512
layer4.1.conv1.1.bias 512
layer4.1.conv1.1.running_mean 512
layer4.1.conv1.1.running_var 512
layer4.1.conv1.1.num_batches_tracked -
layer4.1.conv2.0.0.weight 1152x512x1x3x3
layer4.1.conv2.0.1.weight 1152
layer4.1.conv2.0.1.bias 1152
layer4.1.conv2.0.1.running_mean 1152
layer4.1.conv2.0.1.running_var 1152
layer4.1.conv2.0.1.num_batches_tracked -
layer4.1.conv2.0.3.weight 512x1152x3x1x1
layer4.1.conv2.1.weight 512
layer4.1.conv2.1.bias 512
layer4.1.conv2.1.running_mean 512
layer4.1.conv2.1.running_var 512
layer4.1.conv2.1.num_batches_tracked -
fc.weight 400x512
fc.bias 400
"""

R3D_18 = """
stem.0.weight 64x3x3x7x7
stem.1.weight 64
stem.1.bias 64
stem.1.running_mean 64
stem.1.running_var 64
stem.1.num_batches_tracked -
layer1.0.conv1.0.weight 64x64x3x3x3
layer1.0.conv1.1.weight 64
layer1.0.conv1.1.bias 64
layer1.0.conv1.1.running_mean 64
layer1.0.conv1.1.running_var 64
layer1.0.conv1.1.num_batches_tracked -
layer1.0.conv2.0.weight 64x64x3x3x3
layer1.0.conv2.1.weight 64
layer1.0.conv2.1.bias 64
layer1.0.conv2.1.running_mean 64
layer1.0.conv2.1.running_var 64
layer1.0.conv2.1.num_batches_tracked -
layer1.1.conv1.0.weight 64x64x3x3x3
layer1.1.conv1.1.weight 64
layer1.1.conv1.1.bias 64
layer1.1.conv1.1.running_mean 64
layer1.1.conv1.1.running_var 64
layer1.1.conv1.1.num_batches_tracked -
layer1.1.conv2.0.weight 64x64x3x3x3
layer1.1.conv2.1.weight 64
layer1.1.conv2.1.bias 64
layer1.1.conv2.1.running_mean 64
layer1.1.conv2.1.running_var 64
layer1.1.conv2.1.num_batches_tracked -
layer2.0.conv1.0.weight 128x64x3x3x3
layer2.0.conv1.1.weight 128
layer2.0.conv1.1.bias 128
layer2.0.conv1.1.running_mean 128
layer2.0.conv1.1.running_var 128
layer2.0.conv1.1.num_batches_tracked -
layer2.0.conv2.0.weight 128x128x3x3x3
layer2.0.conv2.1.weight 128
layer2.0.conv2.1.bias 128
layer2.0.conv2.1.running_mean 128
layer2.0.conv2.1.running_var 128
layer2.0.conv2.1.num_batches_tracked -
layer2.0.downsample.0.weight 128x64x1x1x1
layer2.0.downsample.1.weight 128
layer2.0.downsample.1.bias 128
layer2.0.downsample.1.running_mean 128
layer2.0.downsample.1.running_var 128
layer2.0.downsample.1.num_batches_tracked -
layer2.1.conv1.0.weight 128x128x3x3x3
layer2.1.conv1.1.weight 128
layer2.1.conv1.1.bias 128
layer2.1.conv1.1.running_mean 128
layer2.1.conv1.1.running_var 128
layer2.1.conv1.1.num_batches_tracked -
layer2.1.conv2.0.weight 128x128x3x3x3
layer2.1.conv2.1.weight 128
layer2.1.conv2.1.bias 128
layer2.1.conv2.1.running_mean 128
layer2.1.conv2.1.running_var 128
layer2.1.conv2.1.num_batches_tracked -
layer3.0.conv1.0.weight 256x128x3x3x3
layer3.0.conv1.1.weight 256
layer3.0.conv1.1.bias 256
layer3.0.conv1.1.running_mean 256
layer3.0.conv1.1.running_var 256
layer3.0.conv1.1.num_batches_tracked -
layer3.0.conv2.0.weight 256x256x3x3x3
layer3.0.conv2.1.weight 256
layer3.0.conv2.1.bias 256
layer3.0.conv2.1.running_mean 256
layer3.0.conv2.1.running_var 256
layer3.0.conv2.1.num_batches_tracked -
layer3.0.downsample.0.weight 256x128x1x1x1
layer3.0.downsample.1.weight 256
layer3.0.downsample.1.bias 256
layer3.0.downsample.1.running_mean 256
layer3.0.downsample.1.running_var 256
layer3.0.downsample.1.num_batches_tracked -
layer3.1.conv1.0.weight 256x256x3x3x3
layer3.1.conv1.1.weight 256
layer3.1.conv1.1.bias 256
layer3.1.conv1.1.running_mean 256
layer3.1.conv1.1.running_var 256
layer3.1.conv1.1.num_batches_tracked -
layer3.1.conv2.0.weight 256x256x3x3x3
layer3.1.conv2.1.weight 256
layer3.1.conv2.1.bias 256
layer3.1.conv2.1.running_mean 256
layer3.1.conv2.1.running_var 256
layer3.1.conv2.1.num_batches_tracked -
layer4.0.conv1.0.weight 512x256x3x3x3
layer4.0.conv1.1.weight 512
layer4.0.conv1.1.bias 512
layer4.0.conv1.1.running_mean 512
layer4.0.conv1.1.running_var 512
layer4.0.conv1.1.num_batches_tracked -
layer4.0.conv2.0.weight 512x512x3x3x3
layer4.0.conv2.1.weight 512
layer4.0.conv2.1.bias 512
layer4.0.conv2.1.running_mean 512
layer4.0.conv2.1.running_var 512
layer4.0.conv2.1.num_batches_tracked -
layer4.0.downsample.0.weight 512x256x1x1x1
layer4.0.downsample.1.weight 512
layer4.0.downsample.1.bias 512
layer4.0.downsample.1.running_mean 512
layer4.0.downsample.1.running_var 512
layer4.0.downsample.1.num_batches_tracked -
layer4.1.conv1.0.weight 512x512x3x3x3
layer4.1.conv1.1.weight 512
layer4.1.conv1.1.bias 512
layer4.1.conv1.1.running_mean 512
layer4.1.conv1.1.running_var 512
layer4.1.conv1.1.num_batches_tracked -
layer4.1.conv2.0.weight 512x512x3x3x3
layer4.1.conv2.1.weight 512
layer4.1.conv2.1.bias 512
layer4.1.conv2.1.running_mean 512
layer4.1.conv2.1.running_var 512
layer4.1.conv2.1.num_batches_tracked -
fc.weight 400x512
fc.bias 400
"""

TORCHVISION = {"r2plus1d18": R2PLUS1D_18, "r3d18": R3D_18}
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def listed(text: str) -> list[tuple[str, tuple[int, ...]]]:
    rows = [line.split() for line in text.strip().splitlines()]
    return [(name, () if dims == "-" else tuple(int(d) for d in dims.split("x"))) for name, dims in rows]


def layout(module: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in module.state_dict().items()]


@pytest.mark.parametrize("name", ["r2plus1d18", "r3d18"])
def test_state_dict_is_torchvisions(name):
    assert layout(build_backbone(name, num_classes=400)) == listed(TORCHVISION[name])
    assert layout(build_backbone(name)) == [row for row in listed(TORCHVISION[name]) if not row[0].startswith("fc.")]


@pytest.mark.parametrize(
    ("name", "with_fc", "without_fc"),
    [("r2plus1d18", 31_505_325, 31_300_125), ("r3d18", 33_371_472, 33_166_272)],  # torchvision's num_params
)
def test_parameter_counts(name, with_fc, without_fc):
    count = sum(math.prod(shape) for key, shape in listed(TORCHVISION[name]) if not key.endswith(BUFFERS))
    assert count == with_fc
    assert sum(p.numel() for p in build_backbone(name, num_classes=400).parameters()) == with_fc
    assert sum(p.numel() for p in build_backbone(name).parameters()) == without_fc
    assert midplanes(64, 128) == 230 and midplanes(128, 128) == 288


def test_small_backbone_keeps_its_layout():
    net = build_backbone("small")
    assert sum(p.numel() for p in net.parameters()) == 900_528
    keys = list(net.state_dict())
    assert keys[:2] == ["stem.0.weight", "stem.1.weight"] and "stages.1.0.shortcut.0.weight" in keys
    with pytest.raises(ValueError, match="no torchvision layout"):
        build_backbone("small", num_classes=10)


def test_small_backbone_stays_channels_last_and_computes_what_the_default_layout_does():
    """Its speed comes from channels-last weights: they must survive loading a contiguous state dict, MoCo's copy
    for the key encoder and an SGD step, and change nothing but the memory layout."""
    cl = torch.channels_last_3d
    torch.manual_seed(0)
    net = build_backbone("small")
    contiguous_copy = build_backbone("small").to(memory_format=torch.contiguous_format)
    contiguous_copy.load_state_dict({k: v.contiguous() for k, v in net.state_dict().items()})
    reloaded = build_backbone("small")
    reloaded.load_state_dict({k: v.contiguous() for k, v in net.state_dict().items()})
    model = _model(TrainConfig(backbone="small", queue_size=64))
    optimizer = torch.optim.SGD(model.encoder_q.parameters(), lr=0.1, momentum=0.9)
    model.encoder_q(torch.randn(2, 3, 4, 32, 32)).sum().backward()
    optimizer.step()
    for module in (net, reloaded, model.encoder_q[0], model.encoder_k[0]):
        convs = [m.weight for m in module.modules() if isinstance(m, nn.Conv3d) and m.kernel_size != (1, 1, 1)]
        assert convs and all(w.is_contiguous(memory_format=cl) and not w.is_contiguous() for w in convs)
    x = torch.randn(2, 3, 8, 40, 40)
    net.eval(), contiguous_copy.eval()
    assert torch.allclose(net(x), contiguous_copy(x), atol=1e-5)
    assert net.forward_blocks(x)[1].is_contiguous(memory_format=cl)


def fake_checkpoint(path, backbone: nn.Module, name: str, old_layout: bool = False) -> None:
    """A checkpoint as pretrain saves it, holding only what eval and export read (the query backbone)."""
    model = {f"encoder_q.0.{k}": v for k, v in backbone.state_dict().items()}
    if old_layout:  # the names before torchvision's layout: stages.<i>.<j>, shortcut
        for key in list(model):
            parts = key.split(".")
            if parts[2].startswith("layer"):
                parts[2:3] = ["stages", str(int(parts[2][5:]) - 1)]
                parts = ["shortcut" if p == "downsample" else p for p in parts]
                model[".".join(parts)] = model.pop(key)
    torch.save({"model": model, "config": TrainConfig(backbone=name).to_dict()}, path)


def test_export_loads_into_a_torchvision_layout_model_strictly(tmp_path, capsys):
    torch.manual_seed(0)
    trained = build_backbone("r2plus1d18").eval()
    for module in trained.modules():  # statistics that differ from a fresh model's, so loading them shows
        if isinstance(module, nn.BatchNorm3d):
            module.running_mean.uniform_(-0.1, 0.1)
    fake_checkpoint(tmp_path / "checkpoint.pt", trained, "r2plus1d18")
    out = tmp_path / "backbone.pt"
    assert main(["export", str(tmp_path / "checkpoint.pt"), "--out", str(out)]) == 0
    assert "r2plus1d18 backbone" in capsys.readouterr().out
    state = torch.load(out, weights_only=True)
    assert type(state) is dict and [(k, tuple(v.shape)) for k, v in state.items()] == layout(trained)
    torchvision_like = build_backbone("r2plus1d18", num_classes=400)
    torchvision_like.fc = nn.Identity()  # how torchvision's model takes a backbone without classifier
    torchvision_like.load_state_dict(state, strict=True)
    x = torch.randn(1, 3, 4, 32, 32)
    assert torch.equal(torchvision_like.eval()(x), trained(x))
    assert main(["export", str(tmp_path / "checkpoint.pt"), "--out", str(out), "--num-classes", "7"]) == 0
    with_fc = torch.load(out, weights_only=True)
    build_backbone("r2plus1d18", num_classes=7).load_state_dict(with_fc, strict=True)
    assert with_fc["fc.weight"].std() < 0.02 and not with_fc["fc.bias"].any()
    assert main(["export", str(tmp_path / "checkpoint.pt"), "--out", str(tmp_path)]) == 1  # a folder
    assert "is a folder" in capsys.readouterr().err


def test_checkpoints_of_the_older_layout(tmp_path):
    torch.manual_seed(0)
    r3d = build_backbone("r3d18").eval()
    fake_checkpoint(tmp_path / "r3d.pt", r3d, "r3d18", old_layout=True)
    assert "encoder_q.0.stages.1.0.shortcut.0.weight" in torch.load(tmp_path / "r3d.pt", weights_only=True)["model"]
    loaded, _ = load_backbone(tmp_path / "r3d.pt")  # same shapes as torchvision's: renamed on load
    x = torch.randn(1, 3, 4, 32, 32)
    assert torch.equal(loaded(x), r3d(x))
    fake_checkpoint(tmp_path / "r2p1d.pt", build_backbone("r2plus1d18"), "r2plus1d18", old_layout=True)
    with pytest.raises(CheckpointError, match=r"r2plus1d18 checkpoint of the layout before torchvision's"):
        load_backbone(tmp_path / "r2p1d.pt")


def test_init_starts_both_encoders_from_the_given_weights(tmp_path):
    torch.manual_seed(1)
    given = build_backbone("small")
    state = dict(given.state_dict())
    state["fc.weight"], state["fc.bias"] = torch.zeros(4, 128), torch.zeros(4)  # a classifier: left out
    torch.save(state, tmp_path / "init.pt")
    assert build_parser().parse_args(["pretrain", "--init", str(tmp_path / "init.pt")]).init == str(
        tmp_path / "init.pt"
    )
    model = _model(TrainConfig(backbone="small", init=str(tmp_path / "init.pt"), queue_size=8, dim=16))
    for encoder in (model.encoder_q, model.encoder_k):
        for key, value in given.state_dict().items():
            assert torch.equal(encoder[0].state_dict()[key], value), key
    assert not torch.equal(
        _model(TrainConfig(backbone="small", queue_size=8, dim=16)).backbone.stem[0].weight, given.stem[0].weight
    )
    torch.save({"state_dict": state}, tmp_path / "wrapped.pt")
    assert load_init(build_backbone("small"), tmp_path / "wrapped.pt") == ["fc.bias", "fc.weight"]
    torch.save(build_backbone("r3d18").state_dict(), tmp_path / "r3d.pt")
    with pytest.raises(TrainError, match=r"--init: .*r3d\.pt: does not fit the StagedResNet backbone: .* missing"):
        _model(TrainConfig(backbone="small", init=str(tmp_path / "r3d.pt"), queue_size=8, dim=16))
    del state["stem.0.weight"]
    state["stem.1.weight"] = torch.ones(3)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"1 key\(s\) missing: stem\.0\.weight"):
        load_init(build_backbone("small"), tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_init(build_backbone("small"), tmp_path / "nope.pt")
