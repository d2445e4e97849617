"""For the released-model tests: hand-built state dicts in the released layout, and an independent reading of the
released Part fViT forward (face_pre_pro/ViT_face.py) written with plain tensor operations on released names."""

from __future__ import annotations

import argparse
import functools

import torch
import torch.nn.functional as F

from lafs.models.released_mobilenet import ReleasedLandmarkNet

HEAD_WIDTH = 64  # the released dim_head


def released_vit(
    depth: int = 1, dim: int = 64, heads: int = 2, mlp: int = 96, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A ViT_face_landmark_patch8 state dict: released names and shapes, written out by hand (196 tokens of 8 x 8)."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 0.1, offset: float = 0.0) -> torch.Tensor:
        return offset + scale * torch.randn(*shape, generator=generator)

    inner = heads * HEAD_WIDTH
    state = {
        "pos_embedding": rand(1, 197, dim, scale=0.5),
        "patch_to_embedding.weight": rand(dim, 192),
        "patch_to_embedding.bias": rand(dim),
        "cls_token": rand(1, 1, dim, scale=0.5),
        "mlp_head.0.weight": rand(dim, offset=1.0),
        "mlp_head.0.bias": rand(dim),
    }
    for i in range(depth):
        block = f"transformer.layers.{i}."
        state |= {
            block + "0.fn.norm.weight": rand(dim, offset=1.0),
            block + "0.fn.norm.bias": rand(dim),
            block + "0.fn.fn.to_qkv.weight": rand(3 * inner, dim),
            block + "0.fn.fn.to_out.0.weight": rand(dim, inner),
            block + "0.fn.fn.to_out.0.bias": rand(dim),
            block + "1.fn.norm.weight": rand(dim, offset=1.0),
            block + "1.fn.norm.bias": rand(dim),
            block + "1.fn.fn.net.0.weight": rand(mlp, dim),
            block + "1.fn.fn.net.0.bias": rand(mlp),
            block + "1.fn.fn.net.3.weight": rand(dim, mlp),
            block + "1.fn.fn.net.3.bias": rand(dim),
        }
    return state


def released_landmark_network(seed: int = 0) -> dict[str, torch.Tensor]:
    """``stn.*`` and ``output_layer.*`` tensors (names pinned by test_released_mobilenet), fresh copies."""
    return {name: tensor.clone() for name, tensor in _calibrated_network(seed).items()}


@functools.cache
def _calibrated_network(seed: int) -> dict[str, torch.Tensor]:
    """A network whose BatchNorm statistics were measured on random images: with the default ones (mean 0,
    variance 1) an untrained MobileNetV3 in eval mode loses the image, and every face gets the same landmarks."""
    torch.manual_seed(seed)
    network = ReleasedLandmarkNet()
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # a plain average over the calibration batches
    with torch.no_grad():
        network.train().stn(torch.rand(8, 3, 112, 112) * 2 - 1)
    return network.state_dict()


def released_supervised(
    depth: int = 1, dim: int = 64, heads: int = 2, mlp: int = 96, classes: int = 10
) -> dict[str, torch.Tensor]:
    """What train_largescale.py saves: the Part fViT, its landmark network and the CosFace ``loss.weight``."""
    generator = torch.Generator().manual_seed(7)
    return {
        **released_vit(depth, dim, heads, mlp),
        **released_landmark_network(),
        "loss.weight": torch.randn(classes, dim, generator=generator),
    }


def released_self_supervised(depth: int = 1, dim: int = 64, heads: int = 2) -> dict[str, object]:
    """What lafs_train.py saves: teacher (not DDP-wrapped) and student (DDP) with the DINO head, and the run state."""
    head = {"head.mlp.0.weight": torch.randn(32, dim), "head.last_layer.weight_g": torch.ones(100, 1)}
    return {
        "student": {f"module.backbone.{k}": v for k, v in released_vit(depth, dim, heads, seed=1).items()},
        "teacher": {**{f"backbone.{k}": v for k, v in released_vit(depth, dim, heads, seed=2).items()}, **head},
        "optimizer": {"state": {}, "param_groups": [{"lr": 5e-4, "params": [0, 1]}]},
        "epoch": 41,
        "args": argparse.Namespace(arch="mynet", lr=5e-4, global_crops_scale=(0.4, 1.0), data_path="/data"),
        "dino_loss": {"center": torch.zeros(1, 100)},
    }


def _layer_norm(x: torch.Tensor, state: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], state[name + ".weight"], state[name + ".bias"], eps=1e-5)


def reference_patches(bgr: torch.Tensor, landmarks: torch.Tensor, patch: int = 8) -> torch.Tensor:
    """Tokens (B, K, patch * patch * 3): per landmark, grid_sample at (x + i - p/2, y + j - p/2) over half the
    height, the patch stored with i (x) as rows, flattened row by row with the channels last."""
    half = bgr.shape[2] * 0.5
    steps = torch.arange(patch, dtype=torch.float32) - patch // 2
    tokens = []
    for k in range(landmarks.shape[1]):
        x = landmarks[:, k, 0, None, None] + steps[None, :, None]  # (B, i, 1)
        y = landmarks[:, k, 1, None, None] + steps[None, None, :]  # (B, 1, j)
        grid = torch.stack(torch.broadcast_tensors(x, y), -1) / half - 1  # (B, i, j, 2)
        sampled = F.grid_sample(bgr, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        tokens.append(sampled.permute(0, 2, 3, 1).reshape(len(bgr), -1))  # (B, i * j * c)
    return torch.stack(tokens, 1)


def reference_forward(
    state: dict[str, torch.Tensor], rgb: torch.Tensor, landmarks: torch.Tensor, heads: int
) -> torch.Tensor:
    """Embeddings (B, dim) of the released Part fViT in eval mode, from its released-name ``state``."""
    tokens = reference_patches(rgb[:, [2, 1, 0]], landmarks)
    x = tokens @ state["patch_to_embedding.weight"].T + state["patch_to_embedding.bias"]
    x = torch.cat([state["cls_token"].expand(len(x), -1, -1), x], 1) + state["pos_embedding"][:, : x.shape[1] + 1]
    dim, depth = x.shape[-1], 1 + max(int(k.split(".")[2]) for k in state if k.startswith("transformer."))
    for i in range(depth):
        block = f"transformer.layers.{i}."
        h = _layer_norm(x, state, block + "0.fn.norm")
        q, k, v = (h @ state[block + "0.fn.fn.to_qkv.weight"].T).chunk(3, dim=-1)
        q, k, v = (t.unflatten(-1, (heads, HEAD_WIDTH)).transpose(1, 2) for t in (q, k, v))
        attention = torch.softmax(q @ k.transpose(-1, -2) * dim**-0.5, dim=-1)
        out = (attention @ v).transpose(1, 2).flatten(2)
        x = x + out @ state[block + "0.fn.fn.to_out.0.weight"].T + state[block + "0.fn.fn.to_out.0.bias"]
        h = _layer_norm(x, state, block + "1.fn.norm")
        h = F.gelu(h @ state[block + "1.fn.fn.net.0.weight"].T + state[block + "1.fn.fn.net.0.bias"])
        x = x + h @ state[block + "1.fn.fn.net.3.weight"].T + state[block + "1.fn.fn.net.3.bias"]
    return _layer_norm(x[:, 0], state, "mlp_head.0")
