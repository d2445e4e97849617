"""LAFS landmark-position regulariser (spec section 5(g) 7-8)."""

import pytest
import torch

from finetune.context import LossContext
from finetune.heads import MarginHead
from finetune.regularisers.landmark import LandmarkPosition
from lafs.models.landmark_predictor import LandmarkPredictorConfig, build_landmark_predictor


def context(student: torch.Tensor, reference: torch.Tensor) -> LossContext:
    features, labels = torch.zeros(student.shape[0], 3), torch.zeros(student.shape[0], dtype=torch.long)
    return LossContext.from_embeddings(
        MarginHead(2, 3), features, features[None], labels, landmarks=student, reference_landmarks=reference
    )


def test_hand_value_and_zero_at_identity():
    term = LandmarkPosition()
    student, teacher = torch.full((2, 5, 2), 11.1), torch.zeros(2, 5, 2)
    assert term(context(student, teacher))["landmark_loss"].item() == pytest.approx(0.01)
    assert term(context(teacher, teacher))["landmark_loss"].item() == 0.0


def test_gradient_reaches_the_student_predictor_only():
    cfg = LandmarkPredictorConfig(backbone="mobilenetv3_small_050", landmark_set="mediapipe49", image_size=112)
    torch.manual_seed(0)
    student, teacher = build_landmark_predictor(cfg), build_landmark_predictor(cfg)
    teacher.requires_grad_(False).eval()
    images = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        reference = teacher(images)
    predicted = student.train()(images)
    loss = LandmarkPosition()(context(predicted + 1.0, reference))["landmark_loss"]
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
