"""Full-scale tier: task ``aesthetic-sd`` (Stable Diffusion 1.5 + CLIP ViT-L/14 + LAION aesthetic head).

The official online-BBO protocol of the SQDF paper: designs are 512x512 RGB images in [0, 1] decoded
from SD1.5 latents; the oracle is the LAION aesthetic head on the L2-normalised CLIP ViT-L/14 image
embedding, observed with N(0, 0.1^2) noise (``noise_std = 0.1``, added by the environment). Prompts are
common animal names (``assets/sd_animals_train.txt``, 45 names; held-out ``assets/sd_animals_eval.txt``,
6 names), each wrapped with probability 0.2 as "A stunning beautiful oil painting of a {name}, cinematic
lighting, golden hour light.".

**Proxy feature map.** As in the official protocol, the proxy's features are the CLIP embedding itself
(the proxy is a freshly initialised head of the oracle-head architecture on top of it: agent default
``proxy_arch=laion``, 768 → 1024 → 128 → 64 → 16 → 1 with dropout and no activations). The agent gets
only the embedding function; the oracle head stays with the harness.

Weights are user-provided (local folders or the Hugging Face cache; nothing downloads):
``sd_path`` (diffusers SD1.5 folder), ``clip_path`` (transformers CLIP ViT-L/14), ``head_path`` (LAION head
``.pth``/``.safetensors``), optional ``lcm_lora_path`` (LCM-LoRA for SD1.5; without it SQDF falls back to
Tweedie with the reference, the "w/o CM" variant). They can also come from the environment variables
``SQDF_SD_PATH``, ``SQDF_CLIP_PATH``, ``SQDF_AESTHETIC_HEAD``, ``SQDF_LCM_LORA_PATH``.
"""
from __future__ import annotations

import os
from importlib import resources
from typing import Optional

import torch

from sqdf_bbo.tasks import check_overrides
from sqdf_bbo.tasks.base import RunDefaults, Task, TaskInfo

Tensor = torch.Tensor

TEMPLATE = "A stunning beautiful oil painting of a {name}, cinematic lighting, golden hour light."
ENV_VARS = {"sd_path": "SQDF_SD_PATH", "clip_path": "SQDF_CLIP_PATH", "head_path": "SQDF_AESTHETIC_HEAD",
            "lcm_lora_path": "SQDF_LCM_LORA_PATH"}

DEFAULTS = {
    "sd_path": None, "clip_path": None, "head_path": None, "lcm_lora_path": None,
    "cm_mode": "fused",  # fused (official) | toggle (LCM-LoRA as a second adapter, one UNet less)
    "guidance_scale": 7.5, "num_steps": 50, "noise_std": 0.1, "template_prob": 0.2,
    "weights_dtype": "fp32", "autocast": None, "gradient_checkpointing": False, "decode_batch": 8,
    "device": None, "eval_batch": 16, "n_eval": 192, "batch_size": 16,
}


def read_prompt_list(name: str) -> list[str]:
    """Non-empty stripped lines of ``sqdf_bbo/tasks/assets/<name>``."""
    text = resources.files("sqdf_bbo.tasks").joinpath("assets", name).read_text()
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


TRAIN_ANIMALS = read_prompt_list("sd_animals_train.txt")
EVAL_ANIMALS = read_prompt_list("sd_animals_eval.txt")


def sample_prompts(names: list[str], n: int, generator: torch.Generator, template_prob: float = 0.2) -> list[str]:
    """n prompts: a uniformly drawn name, wrapped in :data:`TEMPLATE` with probability ``template_prob``."""
    idx = torch.randint(len(names), (n,), generator=generator)
    wrap = torch.rand(n, generator=generator) < template_prob
    return [TEMPLATE.format(name=names[i]) if w else names[i] for i, w in zip(idx.tolist(), wrap.tolist())]


def _resolve_paths(kw: dict) -> dict:
    """Fill missing weight paths from the environment; raise one error listing everything missing."""
    out = dict(kw)
    for key, var in ENV_VARS.items():
        if not out.get(key):
            out[key] = os.environ.get(var) or None
    missing = [k for k in ("sd_path", "clip_path", "head_path") if not out.get(k)]
    if missing:
        raise ValueError(
            "task 'aesthetic-sd' needs local weights (nothing is downloaded); missing: "
            + ", ".join(f"{k} (--set task.{k}=... or ${ENV_VARS[k]})" for k in missing)
            + ". sd_path: a diffusers SD1.5 folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/) or the "
            "repo id if it is in your Hugging Face cache; clip_path: a transformers CLIP ViT-L/14 folder or cached "
            "repo id; head_path: the LAION aesthetic head state dict (.pth or .safetensors); optional "
            "lcm_lora_path: the LCM-LoRA SD1.5 folder (else the CM falls back to Tweedie). See the manual's page "
            "docs/tasks/stable-diffusion.md (Stable Diffusion with local weights)."
        )
    return out


class AestheticSDTask(Task):
    """Aesthetic score of SD1.5 images (see module docstring). Values are maximised; noise std 0.1."""

    tier = "sd"
    differentiable = True

    def harness_reference(self):
        """None: a second copy of SD's frozen weights is too large; the harness evaluates against the agent's
        LoRA-disabled view of its own UNet (docs/development.md, Known gaps)."""
        return None

    def __init__(self, **kw):
        check_overrides("aesthetic-sd", kw, DEFAULTS)
        cfg = dict(DEFAULTS)
        cfg.update(kw)
        cfg = _resolve_paths(cfg)
        for key in ("num_steps", "eval_batch", "n_eval", "batch_size"):
            if not isinstance(cfg[key], int) or cfg[key] < 1:
                raise ValueError(f"{key} must be a positive integer, got {cfg[key]!r}")
        if not 0.0 <= float(cfg["template_prob"]) <= 1.0:
            raise ValueError(f"template_prob must be in [0, 1], got {cfg['template_prob']!r}")
        if float(cfg["noise_std"]) < 0:
            raise ValueError(f"noise_std must be >= 0, got {cfg['noise_std']!r}")
        self.cfg = cfg
        self.device = torch.device(cfg["device"] or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.noise_std = float(cfg["noise_std"])
        from sqdf_bbo.backbones.stable_diffusion import WEIGHT_DTYPES, _dtype
        from sqdf_bbo.oracles.clip_aesthetic import CLIPAestheticOracle

        dt = _dtype(cfg["weights_dtype"], WEIGHT_DTYPES, "weights_dtype")
        self.oracle = CLIPAestheticOracle.from_pretrained(cfg["clip_path"], cfg["head_path"], dtype=dt,
                                                          device=self.device)
        self.embedder = self.oracle.embedder  # shared with the agent's feature map; the head is not
        self._design_shape = None
        self._backbone_kwargs = dict(
            lcm_lora_path=cfg["lcm_lora_path"], cm_mode=cfg["cm_mode"], weights_dtype=dt, device=self.device,
            guidance_scale=float(cfg["guidance_scale"]), autocast=cfg["autocast"],
            gradient_checkpointing=bool(cfg["gradient_checkpointing"]), decode_batch=int(cfg["decode_batch"]))
        self.view = SDAgentView(cfg["sd_path"], self._backbone_kwargs, self.embedder, float(cfg["template_prob"]),
                                cfg["clip_path"], dt, self.device)
        design_shape, latent_shape = self._read_shapes()
        n_steps = int(cfg["num_steps"])
        self.info = TaskInfo(
            name="aesthetic-sd",
            tier="sd",
            design_shape=design_shape,
            make_backbone=self.view.make_backbone,
            features=self.view.features,
            feature_dim=self.embedder.embed_dim,
            bounds=(torch.zeros(design_shape), torch.ones(design_shape)),
            sample_conditions=self.view.sample_conditions,
            latent_shape=latent_shape,
            run_defaults=RunDefaults(n_eval=int(cfg["n_eval"]), batch_size=int(cfg["batch_size"])),
            # the official BBO run, scaled to one process: 40 updates/round, lr 1e-3, wd 0.1, clip 5, LoRA rank 4,
            # alpha 1, gamma 0.9, CFG in the backbone; sampling in batches of 8 (memory)
            agent_defaults={"num_steps": n_steps, "eta": 1.0, "sample_batch": 8, "lora_rank": 4,
                            "updates_per_round": 40, "lr": 1e-3, "weight_decay": 0.1, "max_grad_norm": 5.0,
                            "proxy_batch": 512, "proxy_epochs": 300, "proxy_arch": "laion",
                            "alpha": 1.0, "gamma": 0.9},
            num_steps=n_steps,
        )
        if cfg["lcm_lora_path"] and cfg["cm_mode"]:
            # zero-argument CM factory read by sqdf_bbo.consistency.find_consistency_model: the CM of the
            # backbone most recently made by make_backbone (the agent's own; toggle mode shares its UNet)
            self.info.make_consistency_model = self.view.make_consistency

    def __getstate__(self):
        """Pickle the settings only (the oracle and any backbone are reloaded from the weight paths)."""
        return {"cfg": self.cfg}

    def __setstate__(self, state):
        self.__init__(**state["cfg"])

    def _read_shapes(self) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        """Design (3, H, W) and latent (C, h, w) shapes from the UNet/VAE configs, without loading weights."""
        from diffusers import AutoencoderKL, UNet2DConditionModel

        from sqdf_bbo.backbones.stable_diffusion import HOW_TO_PROVIDE

        p = self.cfg["sd_path"]
        try:
            uc = UNet2DConditionModel.load_config(p, subfolder="unet", local_files_only=True)
            vc = AutoencoderKL.load_config(p, subfolder="vae", local_files_only=True)
        except (OSError, ValueError, EnvironmentError) as e:
            raise FileNotFoundError(f"could not read the SD configs in {p!r}: {e}\n{HOW_TO_PROVIDE}") from None
        size = uc["sample_size"] if isinstance(uc["sample_size"], int) else uc["sample_size"][0]
        f = 2 ** (len(vc["block_out_channels"]) - 1)
        design = (int(vc.get("out_channels", 3)), int(size) * f, int(size) * f)
        return design, (int(uc["in_channels"]), int(size), int(size))

    def sample_conditions(self, n: int, generator: torch.Generator, split: str = "train") -> list[str]:
        """n prompts from the training (default) or held-out evaluation animal list, 20 % templated."""
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        names = TRAIN_ANIMALS if split == "train" else EVAL_ANIMALS
        return sample_prompts(names, n, generator, float(self.cfg["template_prob"]))

    def eval_conditions(self, n: int) -> list[str]:
        """The official evaluation grid: the eval prompts cycled (6 prompts x n/6 seeds), untemplated."""
        return [EVAL_ANIMALS[i % len(EVAL_ANIMALS)] for i in range(n)]

    # -- harness-only pieces --
    def evaluate_true(self, designs: Tensor) -> Tensor:
        x = torch.as_tensor(designs)
        out = []
        with torch.no_grad():
            for chunk in x.split(int(self.cfg["eval_batch"])):
                out.append(self.oracle(chunk.to(self.device).float()).double().cpu())
        return torch.cat(out) if out else torch.empty(0, dtype=torch.float64)

    def diversity_features(self, designs: Tensor) -> Tensor:
        """CLIP embeddings (cosine Vendi)."""
        with torch.no_grad():
            return torch.cat([self.embedder(c.to(self.device).float()).double().cpu()
                              for c in torch.as_tensor(designs).split(int(self.cfg["eval_batch"]))])

    render_each_round = True

    def design_array(self, designs: Tensor):
        from sqdf_bbo.tasks.image import images_as_uint8

        return images_as_uint8(designs)

    def render(self, designs: Tensor, path: str, title: str = "", reference: Optional[Tensor] = None,
               max_images: int = 16) -> None:
        """A PNG grid of up to ``max_images`` images (4 per row), and the pretrained model's beside them."""
        from sqdf_bbo.tasks.image import render_image_panels

        x = torch.as_tensor(designs)[:max_images].float()
        ref = None if reference is None else torch.as_tensor(reference)[:max_images].float()
        render_image_panels(x, path, title, ref, ncol=4)


class SDAgentView:
    """What an agent of ``aesthetic-sd`` receives through TaskInfo: the backbone factory (and the consistency
    model of the backbone it made last), the proxy feature map (the L2-normalised CLIP image embedding, as
    in the official protocol) and the training prompts. It holds no reference to the task, the aesthetic
    head (the oracle) or the held-out evaluation prompts; pickled, it keeps its settings only and reloads
    the CLIP embedding."""

    def __init__(self, sd_path, backbone_kwargs: dict, embedder, template_prob: float, clip_path, dtype, device):
        self.sd_path, self.backbone_kwargs, self.embedder = sd_path, dict(backbone_kwargs), embedder
        self.template_prob, self.clip_path, self.dtype, self.device = template_prob, clip_path, dtype, device
        self._last_backbone = None

    def make_backbone(self):
        from sqdf_bbo.backbones.stable_diffusion import StableDiffusionBackbone

        self._last_backbone = StableDiffusionBackbone.from_pretrained(self.sd_path, **self.backbone_kwargs)
        return self._last_backbone

    def make_consistency(self):
        from sqdf_bbo.backbones.stable_diffusion import SDConsistencyModel

        if self._last_backbone is None:
            raise RuntimeError("make_backbone() must be called before the consistency model is requested")
        return SDConsistencyModel(self._last_backbone)

    def features(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, D) unit CLIP embeddings; differentiable in x."""
        return self.embedder(x.to(self.device))

    def sample_conditions(self, n: int, generator: torch.Generator) -> list[str]:
        """n training prompts (the 45 training animals, 20 % templated)."""
        return sample_prompts(TRAIN_ANIMALS, n, generator, self.template_prob)

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("embedder", "_last_backbone")}

    def __setstate__(self, state):
        from sqdf_bbo.oracles.clip_aesthetic import CLIPEmbedder, load_clip_vision

        self.__dict__.update(state)
        self._last_backbone = None
        vision, proj, size = load_clip_vision(self.clip_path, self.dtype)
        self.embedder = CLIPEmbedder(vision, proj, size).to(self.device)


def make_aesthetic_sd(**overrides) -> AestheticSDTask:
    return AestheticSDTask(**overrides)


__all__ = ["AestheticSDTask", "TRAIN_ANIMALS", "EVAL_ANIMALS", "TEMPLATE", "sample_prompts", "DEFAULTS"]
