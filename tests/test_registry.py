"""One contract test over every registry entry: transforms, projectors, feature losses,
teacher weight sources and datasets, plus the registry's own behaviour."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from tdmr_search.config import TeacherConfig
from tdmr_search.data import DATASETS, FASHION_MNIST_ROOT, RawDataset
from tdmr_search.errors import ConfigError, ModelError
from tdmr_search.models.heads import PROJECTORS, build_projector
from tdmr_search.models.teachers import WEIGHT_SOURCES, FrozenTeacher, build_teacher, read_weights_file
from tdmr_search.models.transforms import TRANSFORMS, build_transform
from tdmr_search.pipeline.stages import FEATURE_LOSSES
from tdmr_search.registry import Registry, did_you_mean

#: Real tiny timm teachers: (name, input size) — a ViT and a CNN with batch norm.
TEACHERS = [("test_vit", 32), ("test_resnet", 48)]
#: Transforms documented to start as exactly the ``resize`` transform.
IDENTITY_AT_INIT = {"additive", "conv"}
#: Weight sources that need a network or a PyPI package the tests do not assume.
NOT_OFFLINE = {"hub", "package"}


@pytest.fixture(scope="module", params=TEACHERS, ids=[t[0] for t in TEACHERS])
def teacher(request) -> FrozenTeacher:
    name, size = request.param
    torch.manual_seed(0)
    return build_teacher(TeacherConfig(name=name, weights="random", input_size=size))


def _images(channels: int, side: int = 8, n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, channels, side, side, generator=torch.Generator().manual_seed(seed))


def _make_transform(name: str, teacher: FrozenTeacher, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_transform(name, teacher.input_size, teacher.mean, teacher.std, pad=4)


# ----------------------------------------------------------------------------- registry itself


@pytest.mark.parametrize("registry", [TRANSFORMS, PROJECTORS, FEATURE_LOSSES],
                         ids=["transforms", "projectors", "feature-losses"])
def test_every_name_the_config_accepts_is_registered(registry):
    # the config checks these names against the registry's declared ones, without torch
    assert all(callable(registry.get(name)) for name in registry.names())


@pytest.mark.parametrize(
    "registry, typo, expected",
    [(TRANSFORMS, "paad", "pad"), (PROJECTORS, "linaer", "linear"), (FEATURE_LOSSES, "cosin", "cosine"),
     (WEIGHT_SOURCES, "randon", "random"), (DATASETS, "digit", "digits")],
    ids=["transforms", "projectors", "feature-losses", "weight-sources", "datasets"],
)
def test_unknown_name_lists_the_closest(registry, typo, expected):
    with pytest.raises(ConfigError) as info:
        registry.create(typo)
    message = str(info.value)
    assert repr(typo) in message
    assert f"did you mean {expected!r}" in message
    assert "accepted: " + ", ".join(registry.names()) in message


def test_registry_register_names_and_double_registration():
    reg: Registry[int] = Registry("thing")
    reg.register("b")(lambda x=1: x)
    reg.register("a")(lambda x=2: x * 10)
    assert reg.names() == ["a", "b"]
    assert "a" in reg and "c" not in reg
    assert reg.create("a", x=3) == 30
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a")(lambda: 0)
    with pytest.raises(ConfigError, match="The 'x.kind' setting names an unknown thing 'z'"):
        reg.check("z", "x.kind")


def test_a_declared_registry_keeps_its_order_and_refuses_other_names():
    reg: Registry[int] = Registry("thing", ("b", "a"))
    assert reg.names() == ["b", "a"] and "a" in reg and "c" not in reg
    reg.register("a")(lambda: 1)
    with pytest.raises(ValueError, match="'c' is not among the names its registry declares"):
        reg.register("c")(lambda: 0)


def test_did_you_mean_names_the_closest_or_nothing():
    assert did_you_mean("paad", ["resize", "pad", "scale_pad"]) == " (did you mean 'pad'?)"
    assert did_you_mean("zzz", ["resize", "pad"]) == ""


def test_unknown_weight_word_through_build_teacher():
    with pytest.raises(ConfigError, match="did you mean 'random'"):
        build_teacher(TeacherConfig(name="test_vit", weights="randm", input_size=32))


# ----------------------------------------------------------------------------- input transforms


@pytest.mark.parametrize("name", TRANSFORMS.names())
def test_transform_contract(name, teacher):
    size = teacher.input_size
    transform = _make_transform(name, teacher)
    params = list(transform.parameters())

    # shapes: grey and colour target images of any size become 3 x size x size
    for channels, side in ((1, 8), (3, 8), (3, 28)):
        out = transform(_images(channels, side))
        assert out.shape == (4, 3, size, size), (channels, side)
        assert out.dtype == torch.float32 and torch.isfinite(out).all()

    # seeded determinism: same seed, same parameters and same output
    again = _make_transform(name, teacher)
    for a, b in zip(transform.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    x = _images(1)
    assert torch.equal(transform(x), again(x))

    # every transform starts from resize; additive and conv are exactly resize at init
    resize = _make_transform("resize", teacher)
    if name in IDENTITY_AT_INIT | {"resize"}:
        assert torch.equal(transform(x), resize(x))
    if name == "resize":
        assert params == []
        return
    assert params, f"{name} has no learnable parameters"

    # gradients reach the transform's parameters, never the frozen teacher
    teacher.train()  # a frozen teacher stays in eval mode whatever it is asked
    assert all(not m.training for m in teacher.model.modules())
    teacher.zero_grad(set_to_none=True)
    feats = teacher(transform(_images(3)))
    assert feats.shape == (4, teacher.feature_dim)
    feats.square().sum().backward()
    for p in params:
        assert p.grad is not None
    assert sum(float(p.grad.abs().sum()) for p in params) > 0
    for p in teacher.parameters():
        assert not p.requires_grad and p.grad is None


def test_resize_uses_the_teachers_mean_and_std():
    torch.manual_seed(0)
    teacher = build_teacher(TeacherConfig(name="test_efficientnet", weights="random", input_size=32))
    assert teacher.mean != (0.5, 0.5, 0.5)  # ImageNet statistics, so each channel differs
    transform = build_transform("resize", teacher.input_size, teacher.mean, teacher.std)
    grey = torch.full((2, 1, 8, 8), 0.25)
    out = transform(grey)
    expected = (0.25 - torch.tensor(teacher.mean)) / torch.tensor(teacher.std)
    assert torch.allclose(out, expected.view(1, 3, 1, 1).expand_as(out), atol=1e-6)


def test_pad_frame_surrounds_the_shrunk_image():
    teacher_size, pad = 32, 4
    mean = std = (0.5, 0.5, 0.5)
    transform = build_transform("pad", teacher_size, mean, std, pad=pad)
    resize = build_transform("resize", teacher_size - 2 * pad, mean, std)
    x = _images(1)
    out = transform(x)
    assert torch.equal(out[..., pad:-pad, pad:-pad], resize(x))
    frame = out.clone()
    frame[..., pad:-pad, pad:-pad] = 0
    assert torch.equal(frame, torch.zeros_like(frame))  # the learnable frame starts at zero
    with torch.no_grad():
        transform.prompt.fill_(1.0)
    moved = transform(x)
    assert torch.equal(moved[..., pad:-pad, pad:-pad], resize(x))  # the image is never covered
    assert torch.equal(moved[..., 0, :], torch.ones_like(moved[..., 0, :]))


# ----------------------------------------------------------------------------- projectors


@pytest.mark.parametrize("name", PROJECTORS.names())
def test_projector_contract(name):
    torch.manual_seed(0)
    projector = build_projector(name, in_dim=24, proxy_dim=8)
    torch.manual_seed(0)
    again = build_projector(name, in_dim=24, proxy_dim=8)
    x = torch.randn(5, 24, generator=torch.Generator().manual_seed(0))
    z = projector(x)
    assert z.shape == (5, 8)
    assert torch.equal(z, again(x))
    z.sum().backward()
    assert all(p.grad is not None for p in projector.parameters())
    wide = build_projector(name, in_dim=3, proxy_dim=64)
    assert wide(torch.randn(2, 3)).shape == (2, 64)


# ----------------------------------------------------------------------------- feature losses


@pytest.mark.parametrize("name", FEATURE_LOSSES.names())
def test_feature_loss_contract(name):
    loss_fn = FEATURE_LOSSES.get(name)
    gen = torch.Generator().manual_seed(0)
    z_t = torch.randn(6, 16, generator=gen)
    z_s = torch.randn(6, 16, generator=gen, requires_grad=True)
    same = loss_fn(z_t.clone(), z_t)
    assert same.shape == () and abs(float(same)) < 1e-6
    loss = loss_fn(z_s, z_t)
    assert loss.shape == () and torch.isfinite(loss) and loss.item() > 0.1
    assert torch.equal(loss_fn(z_s, z_t), loss)  # deterministic
    loss.backward()
    assert z_s.grad is not None and float(z_s.grad.abs().sum()) > 0


# ----------------------------------------------------------------------------- teacher weight sources


@pytest.mark.parametrize("source", [s for s in WEIGHT_SOURCES.names() if s not in NOT_OFFLINE])
def test_weight_source_contract(source):
    model = WEIGHT_SOURCES.create(source, name="test_vit", img_size=32)
    assert isinstance(model, nn.Module)
    torch.manual_seed(0)
    teacher = build_teacher(TeacherConfig(name="test_vit", weights=source, input_size=32))
    torch.manual_seed(0)
    again = build_teacher(TeacherConfig(name="test_vit", weights=source, input_size=32))
    assert teacher.input_size == 32 and len(teacher.mean) == 3 and len(teacher.std) == 3
    assert all(not m.training for m in teacher.model.modules())
    assert all(not p.requires_grad for p in teacher.parameters())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = teacher(x)
        assert out.shape == (2, teacher.feature_dim)
        assert torch.equal(out, again(x))
    assert source in teacher.identity


def test_a_new_frozen_teacher_reports_eval_mode():
    teacher = build_teacher(TeacherConfig(name="test_vit", weights="random", input_size=32))
    assert not teacher.training


def test_hub_and_package_are_the_only_sources_left_out():
    assert NOT_OFFLINE <= set(WEIGHT_SOURCES.names())
    assert set(WEIGHT_SOURCES.names()) - NOT_OFFLINE, "no offline weight source is tested"


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_weights_file_teacher_loads_exactly(tmp_path, suffix):
    torch.manual_seed(3)
    source = build_teacher(TeacherConfig(name="test_vit", weights="random", input_size=32))
    path = tmp_path / f"w{suffix}"
    state = {k: v.contiguous() for k, v in source.model.state_dict().items()}
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({"state_dict": state}, path)
    torch.manual_seed(99)
    loaded = build_teacher(TeacherConfig(name="test_vit", weights=str(path), input_size=32))
    classifier = source.model.pretrained_cfg["classifier"]  # never used, so deliberately not loaded
    body = {k: v for k, v in source.model.state_dict().items() if not k.startswith(classifier + ".")}
    assert len(body) > 10
    for key, value in body.items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))
    with pytest.raises(ModelError, match="does not fit teacher 'test_resnet'"):
        build_teacher(TeacherConfig(name="test_resnet", weights=str(path), input_size=32))


@pytest.mark.parametrize("wrap", [
    lambda s: s,
    lambda s: {"state_dict": s, "epoch": 3},
    lambda s: {"model": s},
    lambda s: {"model_state_dict": {f"module.{k}": v for k, v in s.items()}, "optimizer_state_dict": {}},
], ids=["plain", "state_dict", "model", "model_state_dict-of-ddp"])
def test_weights_file_checkpoint_wrappers_are_unwrapped(tmp_path, wrap):
    state = {"fc.weight": torch.ones(2, 2), "fc.bias": torch.zeros(2)}
    torch.save(wrap(state), tmp_path / "w.pth")
    assert read_weights_file(tmp_path / "w.pth").keys() == state.keys()


# ----------------------------------------------------------------------------- datasets


def _dataset_params():
    out = []
    for name in DATASETS.names():
        marks = []
        if name == "fashion-mnist" and not Path(FASHION_MNIST_ROOT).is_dir():
            marks = [pytest.mark.skip(reason=f"Fashion-MNIST is not installed at {FASHION_MNIST_ROOT} "
                                              "(apt-get install dataset-fashion-mnist)")]
        out.append(pytest.param(name, marks=marks, id=name))
    return out


def test_every_dataset_is_covered_by_the_contract():
    assert set(DATASETS.names()) == {"digits", "fashion-mnist"}, "add the new dataset to _dataset_params"


@pytest.mark.parametrize("name", _dataset_params())
def test_dataset_contract(name):
    raw = DATASETS.create(name, root=None, download=False, image_size=None)
    assert isinstance(raw, RawDataset)
    for images, labels in ((raw.train_images, raw.train_labels), (raw.test_images, raw.test_labels)):
        images = np.asarray(images)
        assert images.dtype == np.uint8 and images.ndim in (3, 4)
        assert len(images) == len(labels) > 0
        assert np.issubdtype(np.asarray(labels).dtype, np.integer)
    classes = np.unique(raw.train_labels)
    assert list(classes) == list(range(len(raw.class_names)))
    assert set(np.unique(raw.test_labels)) <= set(classes)
    again = DATASETS.create(name, root=None, download=False, image_size=None)
    assert np.array_equal(again.train_labels, raw.train_labels)
    assert np.array_equal(np.asarray(again.test_images), np.asarray(raw.test_images))
