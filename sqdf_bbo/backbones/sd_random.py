"""Randomly initialised Stable Diffusion / CLIP / aesthetic-head components from code configs.

No download: the architectures are written here. ``size="full"`` reproduces SD1.5's UNet, VAE and text
encoder and CLIP ViT-L/14's vision tower (same shapes, so the same FLOPs and memory as the real weights);
``size="tiny"`` is a few-hundred-kB version for CPU tests. :func:`save_random_weights` writes them in the
layouts the production loaders read (a diffusers SD folder, a transformers CLIP folder, a head
``.safetensors`` file, an LCM-LoRA file), so tests go through exactly the production loading code.
The tokenizer is character-level (a byte-level BPE vocabulary with no merges): fine for tests and timing.
"""
from __future__ import annotations

import json
import os

import torch

SIZES = ("tiny", "full")

SD15_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      steps_offset=1, set_alpha_to_one=False, clip_sample=False)


def _check(size: str) -> None:
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")


def unet_config(size: str) -> dict:
    _check(size)
    if size == "full":  # SD1.5
        return dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                    block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    return dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))


def vae_config(size: str) -> dict:
    _check(size)
    if size == "full":
        return dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
                    block_out_channels=(128, 256, 512, 512), scaling_factor=0.18215,
                    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    return dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, sample_size=16,
                block_out_channels=(32, 64), norm_num_groups=8, scaling_factor=0.18215,
                down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)


def text_config(size: str, vocab_size: int) -> dict:
    _check(size)
    if size == "full":
        return dict(vocab_size=max(vocab_size, 49408), hidden_size=768, intermediate_size=3072,
                    num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                    hidden_act="quick_gelu", projection_dim=768, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=32,
                bos_token_id=0, eos_token_id=1, pad_token_id=1)


def clip_config(size: str, vocab_size: int) -> dict:
    """CLIPConfig kwargs (ViT-L/14 at 224 px, projection 768, for ``full``)."""
    _check(size)
    if size == "full":
        vision = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                      image_size=224, patch_size=14, hidden_act="quick_gelu")
        proj = 768
    else:
        vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                      image_size=32, patch_size=8, hidden_act="quick_gelu")
        proj = 24
    text = text_config(size, vocab_size)
    text.pop("projection_dim")
    return dict(text_config=text, vision_config=vision, projection_dim=proj)


def _byte_chars() -> list[str]:
    """The 256 printable characters byte-level BPE uses for the bytes 0..255 (GPT-2/CLIP convention)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    out, n = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + n)
            n += 1
    return [out[b] for b in range(256)]


def write_char_tokenizer(folder: str) -> int:
    """Write a character-level ``CLIPTokenizer`` (vocab.json, merges.txt) to ``folder``; returns vocab size."""
    os.makedirs(folder, exist_ok=True)
    chars = _byte_chars()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    for c in chars:
        vocab.setdefault(c + "</w>", len(vocab))
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    return len(vocab)


def make_tokenizer(folder: str):
    from transformers import CLIPTokenizer

    write_char_tokenizer(folder)
    return CLIPTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"),
                         model_max_length=77)


def build_sd_components(size: str, tokenizer_dir: str, seed: int = 0) -> dict:
    """Random ``unet``, ``vae``, ``text_encoder``, ``tokenizer``, ``scheduler`` (DDIM, SD1.5 schedule)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tok = make_tokenizer(tokenizer_dir)
    return dict(unet=UNet2DConditionModel(**unet_config(size)), vae=AutoencoderKL(**vae_config(size)),
                text_encoder=CLIPTextModel(CLIPTextConfig(**text_config(size, len(tok)))), tokenizer=tok,
                scheduler=DDIMScheduler(**SD15_SCHEDULER))


def build_clip(size: str, seed: int = 0):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    n = 2 + 2 * 256  # size of the character-level vocabulary of write_char_tokenizer
    return CLIPModel(CLIPConfig(**clip_config(size, n))).eval()


class _AestheticHeadLayout(torch.nn.Module):
    """A LAION-aesthetic-head-shaped MLP (d -> 1024 -> 128 -> 64 -> 16 -> 1, dropouts between): the state dict
    layout (``layers.N.*``) the oracle's head loader reads, written here so the backbones import no oracle."""

    def __init__(self, input_dim: int):
        super().__init__()
        nn = torch.nn
        self.input_dim = int(input_dim)  # read by the oracle's loader as for its own head
        self.layers = nn.Sequential(nn.Linear(input_dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                                    nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.layers(e)


def build_head(embed_dim: int, seed: int = 0):
    """A random aesthetic head for CLIP embeddings of size ``embed_dim`` (its state dict loads into the oracle's
    head: same keys, shapes and, for a seed, values)."""
    torch.manual_seed(seed)
    return _AestheticHeadLayout(embed_dim).eval()


def random_lcm_lora(unet, rank: int = 4, scale: float = 0.1, seed: int = 0) -> dict:
    """A random LoRA state dict for ``unet`` in peft key format (attention, conv and proj layers; alpha = rank),
    standing in for the LCM-LoRA. Both A and B are random so the adapter changes the output."""
    import copy

    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    u = copy.deepcopy(unet)
    cfg = LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_in",
                                                               "proj_out", "conv1", "conv2", "time_emb_proj"])
    inject_adapter_in_model(cfg, u)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in u.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    return get_peft_model_state_dict(u)


def save_random_weights(out_dir: str, size: str = "tiny", seed: int = 0, lcm: bool = True) -> dict:
    """Write random SD (diffusers layout), CLIP (transformers), aesthetic head (safetensors) and an LCM-LoRA
    stand-in under ``out_dir``. Returns the paths: ``sd_path``, ``clip_path``, ``head_path``, ``lcm_lora_path``."""
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    sd_path = os.path.join(out_dir, "sd")
    comps = build_sd_components(size, os.path.join(out_dir, "_tok"), seed)
    for name in ("unet", "vae", "text_encoder", "tokenizer"):
        comps[name].save_pretrained(os.path.join(sd_path, name))
    # the scheduler folder as SD1.5 ships it: a PNDMScheduler config with the DDIM-relevant keys
    os.makedirs(os.path.join(sd_path, "scheduler"), exist_ok=True)
    with open(os.path.join(sd_path, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump({"_class_name": "PNDMScheduler", **SD15_SCHEDULER, "skip_prk_steps": True,
                   "trained_betas": None}, f, indent=1)
    clip = build_clip(size, seed + 1)
    clip_path = os.path.join(out_dir, "clip")
    clip.save_pretrained(clip_path)
    head = build_head(clip.config.projection_dim, seed + 2)
    head_path = os.path.join(out_dir, "head.safetensors")
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, head_path)
    paths = {"sd_path": sd_path, "clip_path": clip_path, "head_path": head_path, "lcm_lora_path": None}
    if lcm:
        lora_dir = os.path.join(out_dir, "lcm_lora")
        StableDiffusionPipeline.save_lora_weights(lora_dir, unet_lora_layers=random_lcm_lora(comps["unet"], seed=seed + 3))
        paths["lcm_lora_path"] = lora_dir
    return paths


__all__ = ["unet_config", "vae_config", "text_config", "clip_config", "build_sd_components", "build_clip",
           "build_head", "random_lcm_lora", "save_random_weights", "write_char_tokenizer", "make_tokenizer",
           "SD15_SCHEDULER"]
