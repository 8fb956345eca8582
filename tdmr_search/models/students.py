"""The deployable student: a timm backbone, its projector and the proxy classifier as one module."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from tdmr_search.config import StudentConfig
from tdmr_search.models.heads import build_classifier, build_projector
from tdmr_search.models.timm_utils import create_timm, feature_dim

__all__ = ["DeployedStudent", "build_student"]


class DeployedStudent(nn.Module):
    """Student backbone S + projector P_S + proxy classifier H, taking target-size images.

    The module resizes the target image (values in [0, 1]) to the student's resolution and
    normalises it with mean = std = 0.5 before the backbone.

    Args:
        backbone: A timm model returning pooled features (``num_classes=0``).
        projector: P_S.
        classifier: H.
        resolution: The student's input side.
    """

    def __init__(self, backbone: nn.Module, projector: nn.Module, classifier: nn.Module, resolution: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = projector
        self.classifier = classifier
        self.resolution = int(resolution)

    def proxy(self, x: torch.Tensor) -> torch.Tensor:
        """Proxy-space features z_S of target images."""
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False)
        return self.projector(self.backbone((x - 0.5) / 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of target images."""
        return self.classifier(self.proxy(x))


def build_student(cfg: StudentConfig, in_chans: int, proxy_dim: int, num_classes: int,
                  pretrained: bool | None = None) -> DeployedStudent:
    """Build the deployed student of ``cfg`` for images with ``in_chans`` channels."""
    backbone = create_timm(
        cfg.name, "student.name", img_size=cfg.resolution,
        pretrained=cfg.pretrained if pretrained is None else pretrained,
        num_classes=0, in_chans=in_chans,
    )
    projector = build_projector(cfg.projector, feature_dim(backbone), proxy_dim)
    return DeployedStudent(backbone, projector, build_classifier(proxy_dim, num_classes), cfg.resolution)
