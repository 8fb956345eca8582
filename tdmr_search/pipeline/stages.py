"""Stage 1 (reprogram the frozen teacher) and stage 2 (progressive distillation), DESIGN.md section 2.

The modules here compute losses; :mod:`tdmr_search.pipeline.run` drives them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from tdmr_search.models.students import DeployedStudent
from tdmr_search.models.teachers import FrozenTeacher
from tdmr_search.models.transforms import InputTransform
from tdmr_search.registry import FEATURE_LOSSES

__all__ = [
    "ReprogrammedTeacher", "ProgressiveDistiller", "Phase", "plan_phases", "FEATURE_LOSSES", "kd_loss",
]


@FEATURE_LOSSES.register("mse")
def _mse(z_s: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(z_s, z_t)


@FEATURE_LOSSES.register("cosine")
def _cosine(z_s: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
    return (1.0 - F.cosine_similarity(z_s, z_t, dim=1)).mean()


@FEATURE_LOSSES.register("cka")
def _cka(z_s: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
    """1 - linear CKA between the batch's student and teacher features (Kornblith et al., 2019).

    Invariant to rotation and scale of either side: the student matches the geometry of the
    proxy space, not its coordinates.
    """
    x = z_s - z_s.mean(0, keepdim=True)
    y = z_t - z_t.mean(0, keepdim=True)
    cross = (y.T @ x).pow(2).sum()
    norm = torch.sqrt((x.T @ x).pow(2).sum() * (y.T @ y).pow(2).sum())
    return 1.0 - cross / norm.clamp_min(1e-12)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """tau^2 * KL(softmax(teacher / tau) || softmax(student / tau))."""
    log_p_s = F.log_softmax(student_logits.float() / tau, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / tau, dim=1)
    return (tau * tau) * F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)


class ReprogrammedTeacher(nn.Module):
    """x -> T(x) -> F (frozen) -> P_T -> z_T -> H -> logits.

    Args:
        transform: T, the input transform.
        teacher: F, frozen.
        projector: P_T.
        classifier: H.
    """

    def __init__(self, transform: InputTransform, teacher: FrozenTeacher, projector: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.transform = transform
        self.teacher = teacher
        self.projector = projector
        self.classifier = classifier

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher features F(T(x)) (gradients flow to T only)."""
        return self.teacher(self.transform(x))

    def head(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        """Proxy features and logits from teacher features."""
        z = self.projector(feats)
        return {"z": z, "logits": self.classifier(z)}

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Outputs, and the cross-entropy ``loss`` when labels are given."""
        out = self.head(self.features(x))
        if y is not None:
            out["loss"] = F.cross_entropy(out["logits"].float(), y)
        return out


@dataclass(frozen=True)
class Phase:
    """One phase of progressive distillation: its epochs, loss weights and temperature."""

    index: int
    epochs: int
    w_feat: float
    w_kd: float
    w_ce: float
    temperature: float
    train_classifier: bool


def plan_phases(n_stages: int, epochs: int, temperature: float, schedule: str) -> list[Phase]:
    """Split ``epochs`` into ``n_stages`` phases moving from features to predictions to the task.

    One phase mixes the three losses with fixed weights. With two or more, phase 1 aligns proxy
    features, the middle phases hand over from features to softened predictions, and the last
    phase is KD + cross-entropy with the proxy classifier unfrozen. An ``anneal`` schedule moves
    the temperature linearly from ``temperature`` to 1 across the phases.
    """
    base, extra = divmod(epochs, n_stages)
    phases = []
    for i in range(n_stages):
        t = i / (n_stages - 1) if n_stages > 1 else 1.0
        last = i == n_stages - 1
        if n_stages == 1:
            w = (1.0, 1.0, 1.0)
        elif last:
            w = (0.0, 1.0, 1.0)
        else:
            w = (1.0 - t, t, 0.0)
        tau = temperature if schedule == "constant" or n_stages == 1 else temperature + (1.0 - temperature) * t
        phases.append(Phase(i, base + (1 if i < extra else 0), *w, temperature=float(tau), train_classifier=last))
    return phases


class ProgressiveDistiller(nn.Module):
    """Student side of stage 2: z_S = P_S(S(x)), logits = H(z_S), and the three losses.

    Args:
        student: The deployed student (S, P_S and the shared H).
        feature_loss: A name in FEATURE_LOSSES.
    """

    def __init__(self, student: DeployedStudent, feature_loss: str = "mse") -> None:
        super().__init__()
        self.student = student
        self.feature_loss = FEATURE_LOSSES.get(feature_loss)

    def forward(self, x: torch.Tensor, y: torch.Tensor, z_t: torch.Tensor | None, t_logits: torch.Tensor | None,
                phase: Phase) -> dict[str, torch.Tensor]:
        """Losses of one batch: ``loss`` (weighted sum), ``feat``, ``kd``, ``ce``, and ``logits``.

        ``y`` labels the first ``len(y)`` rows of ``x``; the rows after them are unlabelled and
        enter the feature and prediction losses only. A loss whose weight is zero in ``phase``
        (or whose teacher tensor is None) is not computed.
        """
        z_s = self.student.proxy(x)
        logits = self.student.classifier(z_s)
        zero = logits.new_zeros((), dtype=torch.float32)
        feat = self.feature_loss(z_s.float(), z_t.detach().float()) if phase.w_feat and z_t is not None else zero
        kd = kd_loss(logits, t_logits.detach(), phase.temperature) if phase.w_kd and t_logits is not None else zero
        ce = F.cross_entropy(logits[: len(y)].float(), y) if phase.w_ce and len(y) else zero
        loss = phase.w_feat * feat + phase.w_kd * kd + phase.w_ce * ce
        return {"loss": loss, "feat": feat, "kd": kd, "ce": ce, "logits": logits}
