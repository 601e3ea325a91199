"""CLIP ViT-L/14 + LAION aesthetic head: the official BBO oracle of the SQDF paper, loaded from local files.

    images (B, 3, H, W) in [0, 1]
      -> clamp to [0, 1] -> resize to 224x224 (bilinear, align_corners=False, antialias off)
      -> (x - CLIP mean) / CLIP std
      -> CLIP image embedding (vision tower + visual projection), L2-normalised   (B, 768)
      -> LAION MLP head 768 -> 1024 -> 128 -> 64 -> 16 -> 1 (dropouts, no activations)   (B,)

The official code maps VAE output from [-1, 1] to [0, 1] and clamps first; our SD backbone's ``decode``
already returns clamped [0, 1] images, so the oracle takes [0, 1] (use :func:`from_vae_range` for raw
VAE output). Everything is differentiable. Observation noise N(0, 0.1^2) is added by the environment
(task ``noise_std = 0.1``), never here.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

HOW_TO_PROVIDE_CLIP = (
    "Provide a local CLIP ViT-L/14 folder in the transformers layout (config.json + model.safetensors), made "
    "once with internet by `CLIPModel.from_pretrained(<CLIP ViT-L/14 repo id>).save_pretrained(<folder>)` or "
    "`huggingface-cli download <repo id> --local-dir <folder>`, or the repo id if it is in your HF cache."
)
HOW_TO_PROVIDE_HEAD = (
    "Provide the LAION aesthetic predictor head (the 'sac+logos+ava1-l14-linearMSE.pth' state dict of the "
    "improved-aesthetic-predictor project, keys layers.{0,2,4,6,7}.{weight,bias}) as a local .pth or "
    ".safetensors file."
)


def from_vae_range(x: Tensor) -> Tensor:
    """[-1, 1] VAE output -> [0, 1], clamped (official BBO mapping)."""
    return (x / 2 + 0.5).clamp(0, 1)


class AestheticMLP(nn.Module):
    """LAION aesthetic head: Linear(d,1024) Drop(.2) Linear(1024,128) Drop(.2) Linear(128,64) Drop(.1)
    Linear(64,16) Linear(16,1); module names match the official state dict (``layers.N.*``). (B, d) -> (B, 1)."""

    def __init__(self, input_dim: int = 768):
        super().__init__()
        self.input_dim = int(input_dim)
        self.layers = nn.Sequential(
            nn.Linear(self.input_dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
        )

    def forward(self, e: Tensor) -> Tensor:
        return self.layers(e)


def load_head_state_dict(path: str) -> dict[str, Tensor]:
    """State dict from a ``.safetensors`` or ``.pth``/``.pt`` file (weights only, no pickled code)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"aesthetic head file {path!r} does not exist. {HOW_TO_PROVIDE_HEAD}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        sd = load_file(path)
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(sd, dict) and "state_dict" in sd:
            sd = sd["state_dict"]
    if not isinstance(sd, dict) or "layers.0.weight" not in sd:
        raise ValueError(f"{path!r} is not an aesthetic-head state dict (need keys layers.0.weight, ...; "
                         f"found {list(sd)[:4] if isinstance(sd, dict) else type(sd).__name__}). {HOW_TO_PROVIDE_HEAD}")
    return sd


def load_clip_vision(clip_path: str, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, nn.Module, int]:
    """(vision_model, visual_projection, image_size) of a local/cached transformers ``CLIPModel``; the text
    tower is dropped after loading."""
    from transformers import CLIPModel

    try:
        clip = CLIPModel.from_pretrained(os.fspath(clip_path), local_files_only=True, dtype=dtype)
    except (OSError, ValueError, EnvironmentError) as e:
        raise FileNotFoundError(f"could not load CLIP from {clip_path!r} (local files only): {e}\n"
                                f"{HOW_TO_PROVIDE_CLIP}") from None
    return clip.vision_model, clip.visual_projection, int(clip.config.vision_config.image_size)


class CLIPEmbedder(nn.Module):
    """Frozen CLIP image embedding e(x), (B, 3, H, W) in [0, 1] -> (B, D) unit vectors. Differentiable in x."""

    def __init__(self, vision_model: nn.Module, visual_projection: nn.Module, image_size: int = 224,
                 mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD):
        super().__init__()
        self.vision_model = vision_model
        self.visual_projection = visual_projection
        self.image_size = int(image_size)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False).eval()

    @property
    def embed_dim(self) -> int:
        return int(self.visual_projection.out_features)

    def preprocess(self, images: Tensor) -> Tensor:
        """[0, 1] images -> clamp -> bilinear resize (no antialias) -> CLIP normalisation, (B, 3, S, S)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        x = images.float().clamp(0, 1)
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False,
                          antialias=False)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def forward(self, images: Tensor) -> Tensor:
        px = self.preprocess(images)
        dt = next(self.vision_model.parameters()).dtype
        pooled = self.vision_model(pixel_values=px.to(dt)).pooler_output
        e = self.visual_projection(pooled).float()
        return e / e.norm(dim=-1, keepdim=True)


class CLIPAestheticOracle(nn.Module):
    """Noise-free aesthetic score head(normalise(CLIP(x))), (B, 3, H, W) in [0, 1] -> (B,) float32."""

    def __init__(self, embedder: CLIPEmbedder, head: AestheticMLP):
        super().__init__()
        if head.input_dim != embedder.embed_dim:
            raise ValueError(f"head input_dim {head.input_dim} != CLIP embedding dim {embedder.embed_dim}")
        self.embedder = embedder
        self.head = head
        self.requires_grad_(False).eval()

    @classmethod
    def from_pretrained(cls, clip_path: str, head_path: str, dtype: torch.dtype = torch.float32,
                        device: Optional[str] = None) -> "CLIPAestheticOracle":
        sd = load_head_state_dict(head_path)  # check the small file first: fail fast
        vision, proj, size = load_clip_vision(clip_path, dtype)
        head = AestheticMLP(int(sd["layers.0.weight"].shape[1]))
        head.load_state_dict({k: v.float() for k, v in sd.items()})
        oracle = cls(CLIPEmbedder(vision, proj, size), head)
        return oracle.to(device) if device is not None else oracle

    def score_embeddings(self, e: Tensor) -> Tensor:
        return self.head(e.float()).squeeze(-1)

    def forward(self, images: Tensor) -> Tensor:
        return self.score_embeddings(self.embedder(images))

    def train(self, mode: bool = True):  # always eval: dropout off in the oracle
        return nn.Module.train(self, False)


__all__ = ["AestheticMLP", "CLIPEmbedder", "CLIPAestheticOracle", "load_head_state_dict", "load_clip_vision",
           "from_vae_range", "CLIP_MEAN", "CLIP_STD"]
