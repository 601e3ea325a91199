"""Stable Diffusion 1.5 as a :class:`~sqdf_bbo.backbones.Backbone` (the full-scale tier).

Everything is loaded from a **local folder or the user's Hugging Face cache** (``local_files_only=True``);
nothing is downloaded. The folder has the diffusers layout (``unet/``, ``vae/``, ``text_encoder/``,
``tokenizer/``, ``scheduler/``), e.g. a ``save_pretrained`` of ``StableDiffusionPipeline`` or a snapshot
folder of the SD1.5 repository in ``~/.cache/huggingface/hub``.

Shapes (SD1.5): latents z (B, 4, 64, 64), images (B, 3, 512, 512) in [0, 1], prompts: list of B strings.

- ``forward(z_t, t, cond)`` returns the classifier-free-guided noise prediction
  eps = eps(z, t, "") + w (eps(z, t, c) - eps(z, t, "")) with w = ``guidance_scale`` (classifier-free guidance);
  text embeddings are cached per prompt; ``cond=None`` means the empty prompt (no guidance needed).
- ``decode(z)`` = clamp(VAE.decode(z / scaling_factor) / 2 + 1/2, 0, 1), differentiable.
- LoRA (peft) on the UNet's ``to_q/to_k/to_v/to_out.0`` (rank r, lora_alpha = r, Gaussian A, zero B).
- :meth:`make_policy_and_reference` returns the policy and the frozen reference **sharing one UNet**: the
  reference view runs the same UNet with every adapter disabled (no deep copy at SD scale).
- The LCM-LoRA consistency model (SQDF's x̂₀ look-ahead) either fused into a frozen copy of the UNet
  (``cm_mode="fused"``, the official choice) or kept as a second adapter ``"lcm"`` on the shared UNet and
  switched on only for the CM call (``cm_mode="toggle"``, saves one UNet of memory).
"""
from __future__ import annotations

import contextlib
import copy
import os
import warnings
from typing import Any, Iterable, Optional, Sequence, Union

import torch
from torch import nn

from sqdf_bbo.backbones.base import Backbone

Tensor = torch.Tensor

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
POLICY_ADAPTER = "policy"
CM_ADAPTER = "lcm"
CM_MODES = (None, "fused", "toggle")
AUTOCAST_DTYPES = {None: None, "none": None, "fp32": None, "float32": None,
                   "fp16": torch.float16, "float16": torch.float16,
                   "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
WEIGHT_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
                 "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}

HOW_TO_PROVIDE = (
    "Provide the weights locally (nothing is downloaded at run time): either pass a folder in the diffusers "
    "layout (unet/, vae/, text_encoder/, tokenizer/, scheduler/), e.g. made once on a machine with internet by "
    "`StableDiffusionPipeline.from_pretrained(<SD1.5 repo id>).save_pretrained(<folder>)` or "
    "`huggingface-cli download <SD1.5 repo id> --local-dir <folder>`, or pass the repo id itself if it is "
    "already in your Hugging Face cache (HF_HOME / ~/.cache/huggingface)."
)


def _dtype(name: Union[str, torch.dtype, None], table: dict, what: str) -> Optional[torch.dtype]:
    if isinstance(name, torch.dtype) or (name is None and None in table):
        return name
    if name not in table:
        raise ValueError(f"{what} must be one of {sorted(k for k in table if k)}, got {name!r}")
    return table[name]


def _load(cls, path: str, subfolder: Optional[str], what: str, **kw):
    """``cls.from_pretrained(path, subfolder=..., local_files_only=True)`` with an error naming the path."""
    try:
        if subfolder is None:
            return cls.from_pretrained(path, local_files_only=True, **kw)
        return cls.from_pretrained(path, subfolder=subfolder, local_files_only=True, **kw)
    except (OSError, ValueError, EnvironmentError) as e:
        where = os.path.join(path, subfolder) if subfolder else path
        raise FileNotFoundError(
            f"could not load the {what} from {where!r} (local files only): {e}\n{HOW_TO_PROVIDE}"
        ) from None


def make_lcm_scheduler(scheduler_config: dict):
    """An ``LCMScheduler`` from the SD scheduler config (keys LCM does not take are dropped)."""
    import inspect

    from diffusers import LCMScheduler

    keys = set(inspect.signature(LCMScheduler.__init__).parameters)
    return LCMScheduler.from_config({k: v for k, v in dict(scheduler_config).items() if k in keys})


def lcm_timestep_grid(scheduler_config: dict, num_steps: int = 50) -> Tensor:
    """LCM timesteps (descending, long) of an ``LCMScheduler`` built from the SD scheduler config."""
    sched = make_lcm_scheduler(scheduler_config)
    sched.set_timesteps(num_steps)
    return sched.timesteps.long().clone()


def map_to_lcm_timestep(t: Tensor, grid: Tensor) -> Tensor:
    """Nearest LCM timestep argmin_{tau' in grid} |t - tau'| (first one on ties), (B,) -> (B,) long."""
    t = torch.as_tensor(t).long().reshape(-1)
    idx = (t[:, None] - grid[None, :].to(t.device)).abs().argmin(dim=1)
    return grid.to(t.device)[idx]


class StableDiffusionBackbone(Backbone):
    """SD1.5 UNet + VAE + CLIP text encoder behind the Backbone interface (see module docstring).

    Args:
        unet, vae, text_encoder, tokenizer: diffusers / transformers components (frozen here).
        scheduler: a ``DDIMScheduler`` (clip_sample off, set_alpha_to_one off; SD1.5's own config).
        guidance_scale: CFG weight w (1 = conditional only). Mutable attribute.
        cm_unet: a frozen UNet with the LCM-LoRA fused in (``cm_mode="fused"``), or None.
        cm_mode: None (no consistency model), "fused" or "toggle" (``"lcm"`` adapter already on ``unet``).
        cm_steps: size of the LCM timestep grid the DDIM timestep is mapped onto (official: 50).
        autocast: None, "fp16" or "bf16": run the networks under ``torch.autocast``; outputs are float32.
        gradient_checkpointing: recompute UNet blocks in backward (policy calls only).
        decode_batch: decode at most this many latents per VAE call (memory), 0 = all at once.
    """

    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler, guidance_scale: float = 7.5,
                 cm_unet=None, cm_mode: Optional[str] = None, cm_steps: int = 50,
                 autocast: Optional[str] = None, gradient_checkpointing: bool = False,
                 decode_batch: int = 0, max_cached_prompts: int = 4096):
        super().__init__()
        if cm_mode not in CM_MODES:
            raise ValueError(f"cm_mode must be one of {CM_MODES}, got {cm_mode!r}")
        if cm_mode == "fused" and cm_unet is None:
            raise ValueError("cm_mode='fused' needs cm_unet (the UNet with the LCM-LoRA fused in)")
        if cm_mode == "toggle" and CM_ADAPTER not in getattr(unet, "peft_config", {}):
            raise ValueError(f"cm_mode='toggle' needs an adapter named {CM_ADAPTER!r} on the UNet")
        if float(guidance_scale) < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
        self.unet, self.vae, self.text_encoder = unet, vae, text_encoder
        self.cm_unet = cm_unet
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.guidance_scale = float(guidance_scale)
        self.cm_mode = cm_mode
        self.autocast_dtype = _dtype(autocast, AUTOCAST_DTYPES, "autocast")
        self.decode_batch = int(decode_batch)
        self.max_cached_prompts = int(max_cached_prompts)
        self._emb_cache: dict[str, Tensor] = {}
        for m in (unet, vae, text_encoder, cm_unet):
            if m is not None:
                m.requires_grad_(False).eval()
        c = unet.config
        size = c.sample_size if isinstance(c.sample_size, int) else c.sample_size[0]
        self.latent_shape = (int(c.in_channels), int(size), int(size))
        f = 2 ** (len(vae.config.block_out_channels) - 1)
        self.design_shape = (int(vae.config.out_channels), int(size) * f, int(size) * f)
        self.scaling_factor = float(vae.config.scaling_factor)
        self.lcm_grid = lcm_timestep_grid(dict(scheduler.config), cm_steps) if cm_mode else None
        if cm_mode:
            self._lcm = make_lcm_scheduler(dict(scheduler.config))
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self._sync_adapter_state()

    # ---- loading ------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, sd_path: str, *, lcm_lora_path: Optional[str] = None,
                        lcm_lora_weight_name: Optional[str] = None, cm_mode: Optional[str] = "fused",
                        weights_dtype: Union[str, torch.dtype] = "fp32", variant: Optional[str] = None,
                        device: Union[str, torch.device, None] = None, **kw) -> "StableDiffusionBackbone":
        """Load SD1.5 from ``sd_path`` (local diffusers folder or a repo id already in the HF cache).

        ``lcm_lora_path``: folder/file/cached repo id with the LCM-LoRA weights
        (``pytorch_lora_weights.safetensors``); without it ``cm_mode`` is forced to None (no CM: agents fall
        back to Tweedie with the reference, the paper's "w/o CM" ablation). ``weights_dtype`` applies to the frozen
        networks; LoRA weights stay float32. Other keyword arguments go to the constructor.
        """
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        if cm_mode not in CM_MODES:
            raise ValueError(f"cm_mode must be one of {CM_MODES}, got {cm_mode!r}")
        dt = _dtype(weights_dtype, WEIGHT_DTYPES, "weights_dtype")
        if isinstance(sd_path, os.PathLike):
            sd_path = os.fspath(sd_path)
        if not isinstance(sd_path, str) or not sd_path:
            raise ValueError(f"sd_path must be a non-empty path or cached repo id, got {sd_path!r}. {HOW_TO_PROVIDE}")
        vkw = {"variant": variant} if variant else {}
        unet = _load(UNet2DConditionModel, sd_path, "unet", "SD UNet", torch_dtype=dt, **vkw)
        vae = _load(AutoencoderKL, sd_path, "vae", "SD VAE", torch_dtype=dt, **vkw)
        text_encoder = _load(CLIPTextModel, sd_path, "text_encoder", "SD text encoder", dtype=dt, **vkw)
        tokenizer = _load(CLIPTokenizer, sd_path, "tokenizer", "SD tokenizer")
        try:
            cfg = DDIMScheduler.load_config(sd_path, subfolder="scheduler", local_files_only=True)
        except (OSError, ValueError, EnvironmentError) as e:
            raise FileNotFoundError(f"could not load the scheduler config from {sd_path!r}/scheduler: {e}\n"
                                    f"{HOW_TO_PROVIDE}") from None
        scheduler = DDIMScheduler.from_config(cfg, clip_sample=False, set_alpha_to_one=False)
        cm_unet = None
        if lcm_lora_path is None:
            cm_mode = None
        elif cm_mode is not None:
            sd, alphas = load_lcm_lora_state_dict(lcm_lora_path, lcm_lora_weight_name)
            if cm_mode == "fused":
                cm_unet = copy.deepcopy(unet)
                fuse_lora_into_unet(cm_unet, sd, alphas)
            else:
                add_lora_adapter(unet, sd, alphas, CM_ADAPTER)
        bb = cls(unet, vae, text_encoder, tokenizer, scheduler, cm_unet=cm_unet, cm_mode=cm_mode, **kw)
        if device is not None:
            bb.to(device)
        # how to rebuild it: pickling/deep-copying stores this recipe + the LoRA, not the frozen weights
        bb._load_args = dict(sd_path=sd_path, lcm_lora_path=lcm_lora_path, lcm_lora_weight_name=lcm_lora_weight_name,
                             cm_mode=cm_mode if lcm_lora_path else "fused", weights_dtype=dt, variant=variant,
                             device=device, **kw)
        return bb

    def __getstate__(self):
        """Slim pickle (checkpoints, deepcopy) when loaded from disk: the load recipe, the policy LoRA and
        mutable settings; the frozen weights are re-read from ``sd_path`` on unpickling."""
        args = self.__dict__.get("_load_args")
        if args is None:
            return self.__dict__.copy()
        lora = self.lora_state_dict() if self.has_policy_adapter else None
        rank = None if lora is None else next(v.shape[0] for k, v in lora.items() if "lora_A" in k)
        return {"__sd_reload__": args, "lora": lora, "rank": rank, "guidance_scale": self.guidance_scale,
                "training": self.training}

    def __setstate__(self, state):
        if "__sd_reload__" not in state:
            return nn.Module.__setstate__(self, state)
        fresh = type(self).from_pretrained(**state["__sd_reload__"])
        if state["lora"] is not None:
            fresh.add_lora(state["rank"])
            fresh.load_lora_state_dict(state["lora"])
        fresh.guidance_scale = state["guidance_scale"]
        fresh.train(state["training"])
        self.__dict__.update(fresh.__dict__)

    # ---- checkpoints (sqdf_bbo/checkpoint.py) -----------------------------------------------------------
    def checkpoint_state_dict(self) -> dict[str, Tensor]:
        """What a run checkpoint stores of this module: the policy LoRA only (the frozen weights are
        rebuilt from ``sd_path`` when the agent is built)."""
        return self.lora_state_dict() if self.has_policy_adapter else {}

    def load_checkpoint_state_dict(self, sd: dict[str, Tensor]) -> None:
        if sd and not self.has_policy_adapter:
            self.add_lora(next(v.shape[0] for k, v in sd.items() if "lora_A" in k))
        if sd:
            self.load_lora_state_dict(sd)

    # ---- adapters -----------------------------------------------------------------------------------
    def _tuner_layers(self) -> list:
        from peft.tuners.tuners_utils import BaseTunerLayer

        return [m for m in self.unet.modules() if isinstance(m, BaseTunerLayer)]

    def _adapters(self) -> dict:
        return dict(getattr(self.unet, "peft_config", {}) or {})

    @property
    def has_policy_adapter(self) -> bool:
        return POLICY_ADAPTER in self._adapters()

    def _sync_adapter_state(self) -> None:
        """Persistent UNet state = the policy: only the ``policy`` adapter on (or none at all)."""
        layers = self._tuner_layers()
        if not layers:
            return
        grads = {id(p): p.requires_grad for p in self.unet.parameters()}
        for m in layers:
            if self.has_policy_adapter:
                m.enable_adapters(True)
                m.set_adapter([POLICY_ADAPTER])
            else:
                m.enable_adapters(False)
        for p in self.unet.parameters():
            p.requires_grad_(grads[id(p)])

    @contextlib.contextmanager
    def adapter_scope(self, active: Sequence[str]):
        """Temporarily run the shared UNet with only ``active`` adapters on ([] = base model) and with
        gradient checkpointing off (so a backward recompute can never see another adapter state).
        requires_grad flags are restored on exit."""
        layers = self._tuner_layers()
        ckpt = [(m, m.gradient_checkpointing) for m in self.unet.modules() if hasattr(m, "gradient_checkpointing")]
        if not layers and not any(c for _, c in ckpt):
            yield
            return
        grads = [(p, p.requires_grad) for p in self.unet.parameters()]
        saved = [(m, list(m.active_adapters), bool(m.disable_adapters)) for m in layers]
        try:
            for m, _ in ckpt:
                m.gradient_checkpointing = False
            for m in layers:
                if active:
                    m.enable_adapters(True)
                    m.set_adapter(list(active))
                else:
                    m.enable_adapters(False)
            for p, g in grads:  # peft's set_adapter makes the active adapter trainable: undo
                p.requires_grad_(g)
            yield
        finally:
            for m, names, disabled in saved:
                m.set_adapter(names)
                m.enable_adapters(not disabled)
            for p, g in grads:
                p.requires_grad_(g)
            for m, c in ckpt:
                m.gradient_checkpointing = c

    def lora_targets(self) -> Optional[list[str]]:
        return list(LORA_TARGETS)

    def add_lora(self, rank: int) -> None:
        """Add the trainable ``policy`` LoRA (rank r, alpha r, Gaussian A, zero B: output unchanged) to the
        UNet attention projections only; afterwards only its weights require grad (kept in float32)."""
        from peft import LoraConfig

        rank = int(rank)
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        if self.has_policy_adapter:
            raise ValueError(f"the UNet already has a {POLICY_ADAPTER!r} adapter")
        cfg = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=list(LORA_TARGETS))
        with warnings.catch_warnings():  # "multiple adapters" is intended (toggle-mode CM)
            warnings.simplefilter("ignore", UserWarning)
            self.unet.add_adapter(cfg, adapter_name=POLICY_ADAPTER)
        self.requires_grad_(False)
        for name, p in self.unet.named_parameters():
            if f".{POLICY_ADAPTER}." in name and "lora_" in name:
                p.data = p.data.float()
                p.requires_grad_(True)
        self._sync_adapter_state()

    def lora_state_dict(self) -> dict[str, Tensor]:
        """The policy LoRA weights only (what a checkpoint needs to store), CPU tensors."""
        return {k: v.detach().cpu() for k, v in self.unet.state_dict().items()
                if f".{POLICY_ADAPTER}." in k and "lora_" in k}

    def load_lora_state_dict(self, sd: dict[str, Tensor]) -> None:
        own = self.unet.state_dict()
        missing = sorted(set(self.lora_state_dict()) - set(sd))
        if missing or set(sd) - set(own):
            raise ValueError(f"LoRA state dict does not match the policy adapter (missing {missing[:3]}...)")
        with torch.no_grad():
            for k, v in sd.items():
                own[k].copy_(v)

    def make_policy_and_reference(self) -> tuple["StableDiffusionBackbone", "SDReferenceView"]:
        """(policy, reference) sharing this backbone's weights: the policy is ``self`` (add LoRA with
        :meth:`add_lora`), the reference runs the same UNet with all adapters off. Nothing is copied."""
        self.requires_grad_(False)
        return self, SDReferenceView(self)

    def requires_grad_(self, requires_grad: bool = True):
        """Freezing is allowed; unfreezing everything is not: the reference shares these weights, so only
        LoRA (:meth:`add_lora`) can be trained."""
        if requires_grad:
            raise ValueError("full-weight fine-tuning is not supported for Stable Diffusion (the frozen reference "
                             "shares the UNet): use LoRA, lora_rank >= 1")
        return nn.Module.requires_grad_(self, False)

    def train(self, mode: bool = True):
        """Only the UNet changes mode; VAE, text encoder and CM stay in eval (they are never trained)."""
        nn.Module.train(self, mode)
        for m in (self.vae, self.text_encoder, self.cm_unet):
            if m is not None:
                m.eval()
        return self

    # ---- conditioning -------------------------------------------------------------------------------
    @staticmethod
    def _prompts(cond: Any, batch: int) -> list[str]:
        if cond is None:
            return [""] * batch
        if isinstance(cond, str):
            return [cond] * batch
        prompts = [str(c) for c in list(cond)]
        if len(prompts) != batch:
            raise ValueError(f"cond must be None, a string or {batch} prompt strings, got {len(prompts)}")
        return prompts

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Tensor:
        """CLIP text embeddings (B, L, H) of the prompts (cached per string, no grad)."""
        todo = sorted({p for p in prompts if p not in self._emb_cache})
        if todo:
            if len(self._emb_cache) + len(todo) > self.max_cached_prompts:
                self._emb_cache.clear()
            dev = next(self.text_encoder.parameters()).device
            ids = self.tokenizer(todo, padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids.to(dev)
            with self._autocast(dev):
                emb = self.text_encoder(ids)[0]
            for p, e in zip(todo, emb):
                self._emb_cache[p] = e.detach()
        return torch.stack([self._emb_cache[p] for p in prompts])

    def _autocast(self, device):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(device).type, dtype=self.autocast_dtype)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def _unet_eps(self, unet, x: Tensor, t: Tensor, emb: Tensor) -> Tensor:
        with self._autocast(x.device):
            out = unet(x.to(self.dtype), t, encoder_hidden_states=emb.to(self.dtype)).sample
        return out

    @staticmethod
    def _t(t: Any, batch: int, device) -> Tensor:
        t = torch.as_tensor(t, device=device)
        return t.reshape(1).expand(batch).long() if t.ndim == 0 else t.long()

    # ---- Backbone interface -------------------------------------------------------------------------
    def guided_eps(self, x_t: Tensor, t: Any, cond: Any = None, guidance_scale: Optional[float] = None,
                   unet=None) -> Tensor:
        """CFG noise prediction eps_u + w (eps_c - eps_u) with one batched UNet call, (B,4,h,w) float32."""
        B = x_t.shape[0]
        w = self.guidance_scale if guidance_scale is None else float(guidance_scale)
        unet = self.unet if unet is None else unet
        t = self._t(t, B, x_t.device)
        prompts = self._prompts(cond, B)
        emb_c = self.encode_prompts(prompts)
        if cond is None or w == 1.0:
            return self._unet_eps(unet, x_t, t, emb_c).to(x_t.dtype)
        emb_u = self.encode_prompts([""]).expand(B, -1, -1)
        out = self._unet_eps(unet, torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([emb_u, emb_c]))
        eps_u, eps_c = out.to(x_t.dtype).chunk(2)
        return eps_u + w * (eps_c - eps_u)

    def forward(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        """Policy eps (current adapter state: the ``policy`` LoRA if added), CFG-guided, (B, 4, h, w)."""
        return self.guided_eps(x_t, t, cond)

    def reference_eps(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        """Pretrained eps (all adapters off), same CFG; differentiable in x_t."""
        with self.adapter_scope([]):
            return self.guided_eps(x_t, t, cond)

    def decode(self, z: Tensor) -> Tensor:
        """Latents (B, 4, h, w) -> images (B, 3, 8h, 8w) in [0, 1] (VAE.decode(z / 0.18215)), float32."""
        chunks = [z] if self.decode_batch <= 0 else list(z.split(self.decode_batch))
        out = []
        for c in chunks:
            with self._autocast(c.device):
                x = self.vae.decode(c.to(self.dtype) / self.scaling_factor).sample
            out.append((x.float() / 2 + 0.5).clamp(0, 1))
        return torch.cat(out)

    def encode(self, x: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [0, 1] -> latent means * scaling_factor (B, 4, H/8, W/8)."""
        with self._autocast(x.device):
            z = self.vae.encode((x * 2 - 1).to(self.dtype)).latent_dist.mean
        return z.float() * self.scaling_factor

    # ---- consistency model (SQDF's x̂₀ look-ahead) ------------------------------------------------------
    @property
    def has_consistency_model(self) -> bool:
        return self.cm_mode is not None

    def lcm_scalings(self, tau: Tensor) -> tuple[Tensor, Tensor]:
        """(c_skip, c_out) at LCM timesteps tau (B,), from diffusers' LCMScheduler."""
        cs, co = self._lcm.get_scalings_for_boundary_condition_discrete(tau.double())
        return cs, co

    def consistency_x0(self, z: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        """One-call clean-latent prediction f(z) of the frozen LCM-LoRA CM, differentiable in z.

        z: (B, 4, h, w) latent at DDIM timestep t (B,) (the *next* state's timestep tau_{k+1});
        t is mapped to the nearest LCM timestep tau', the CM runs conditional-only (guidance 1) and
        f = c_out * (z - sqrt(1 - abar[tau']) eps) / sqrt(abar[tau']) + c_skip * z.
        """
        if self.cm_mode is None:
            raise RuntimeError("this backbone has no consistency model (load it with lcm_lora_path=...)")
        B = z.shape[0]
        tau = map_to_lcm_timestep(self._t(t, B, z.device), self.lcm_grid)
        if self.cm_mode == "fused":
            eps = self.guided_eps(z, tau, cond, guidance_scale=1.0, unet=self.cm_unet)
        else:
            with self.adapter_scope([CM_ADAPTER]):
                eps = self.guided_eps(z, tau, cond, guidance_scale=1.0)
        abar = self._lcm.alphas_cumprod.to(z.device)[tau].double()
        c_skip, c_out = self.lcm_scalings(tau)
        shape = (B,) + (1,) * (z.ndim - 1)
        abar, c_skip, c_out = (v.to(z.dtype).reshape(shape) for v in (abar, c_skip, c_out))
        x0 = (z - torch.sqrt(1 - abar) * eps) / torch.sqrt(abar)
        return c_out * x0 + c_skip * z

    def consistency_model(self, z: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        """Alias of :meth:`consistency_x0` (``x0_hat = cm(x_t, t, cond)``)."""
        return self.consistency_x0(z, t, cond)


class SDReferenceView(Backbone):
    """The frozen pretrained model as a Backbone view of a :class:`StableDiffusionBackbone`: the same
    modules, run with every adapter disabled. Holds no parameters of its own; ``parameters()`` yields the
    base (non-LoRA) UNet weights so dtype/device queries work, and freezing it never touches the LoRA."""

    def __init__(self, sd: StableDiffusionBackbone):
        super().__init__()
        object.__setattr__(self, "_sd", sd)  # not a registered submodule
        self.latent_shape = sd.latent_shape
        self.design_shape = sd.design_shape
        self.scheduler = sd.scheduler

    @property
    def sd(self) -> StableDiffusionBackbone:
        return self._sd

    def parameters(self, recurse: bool = True) -> Iterable[nn.Parameter]:
        return (p for n, p in self._sd.unet.named_parameters() if "lora_" not in n)

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        return ((prefix + n, p) for n, p in self._sd.unet.named_parameters() if "lora_" not in n)

    def forward(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        return self._sd.reference_eps(x_t, t, cond)

    def decode(self, z: Tensor) -> Tensor:
        return self._sd.decode(z)

    def encode(self, x: Tensor) -> Tensor:
        return self._sd.encode(x)

    @property
    def guidance_scale(self) -> float:
        return self._sd.guidance_scale

    @property
    def has_consistency_model(self) -> bool:
        return self._sd.has_consistency_model

    def consistency_x0(self, z: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        return self._sd.consistency_x0(z, t, cond)

    def consistency_model(self, z: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        return self._sd.consistency_x0(z, t, cond)

    def lora_targets(self) -> Optional[list[str]]:
        return None

    def __deepcopy__(self, memo):
        raise TypeError("SDReferenceView shares the policy's weights and must not be deep-copied")


class SDConsistencyModel(nn.Module):
    """The backbone's frozen LCM-LoRA CM as a module ``f = cm(z, t, cond)`` (t: DDIM timesteps of z).
    Holds no registered parameters, so ``.eval()``/``.requires_grad_(False)`` never touch the shared UNet."""

    def __init__(self, sd: StableDiffusionBackbone):
        super().__init__()
        if not sd.has_consistency_model:
            raise RuntimeError("the SD backbone has no consistency model (no lcm_lora_path was given)")
        object.__setattr__(self, "_sd", sd)

    def forward(self, z: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        return self._sd.consistency_x0(z, t, cond)


# ---- LCM-LoRA helpers ------------------------------------------------------------------------------
def load_lcm_lora_state_dict(path: str, weight_name: Optional[str] = None) -> tuple[dict, Optional[dict]]:
    """(state_dict, network_alphas) of a LoRA file/folder/cached repo id, any format diffusers reads
    (diffusers, peft or kohya keys), via ``StableDiffusionPipeline.lora_state_dict`` (local files only)."""
    from diffusers import StableDiffusionPipeline

    kw = {"weight_name": weight_name} if weight_name else {}
    if os.path.isfile(str(path)) and not weight_name:
        path, kw = os.path.dirname(str(path)) or ".", {"weight_name": os.path.basename(str(path))}
    try:
        out = StableDiffusionPipeline.lora_state_dict(str(path), local_files_only=True, **kw)
    except (OSError, ValueError, EnvironmentError) as e:
        raise FileNotFoundError(
            f"could not load the LCM-LoRA weights from {path!r} (local files only): {e}\nProvide the folder "
            "holding pytorch_lora_weights.safetensors (e.g. `huggingface-cli download <LCM-LoRA SD1.5 repo id> "
            "--local-dir <folder>`), or the repo id if it is in your Hugging Face cache; or pass "
            "lcm_lora_path=None to run without a consistency model (Tweedie with the reference)."
        ) from None
    sd, alphas = out[0], out[1]
    if not any(k.startswith("unet.") for k in sd):
        raise ValueError(f"no UNet LoRA weights (keys 'unet.*') in {path!r}; found e.g. {list(sd)[:3]}")
    return sd, alphas


def add_lora_adapter(unet, state_dict: dict, network_alphas: Optional[dict], adapter_name: str) -> None:
    """Load a LoRA state dict onto ``unet`` as the frozen adapter ``adapter_name``."""
    from diffusers import StableDiffusionPipeline

    StableDiffusionPipeline.load_lora_into_unet(dict(state_dict), network_alphas, unet, adapter_name=adapter_name)
    for n, p in unet.named_parameters():
        if f".{adapter_name}." in n:
            p.requires_grad_(False)


def fuse_lora_into_unet(unet, state_dict: dict, network_alphas: Optional[dict]) -> None:
    """Merge the LoRA into ``unet``'s weights (W <- W + scale B A) and remove the adapter layers."""
    add_lora_adapter(unet, state_dict, network_alphas, CM_ADAPTER)
    unet.fuse_lora(lora_scale=1.0, adapter_names=[CM_ADAPTER])
    unet.unload_lora()
    unet.requires_grad_(False).eval()


__all__ = ["StableDiffusionBackbone", "SDReferenceView", "SDConsistencyModel", "lcm_timestep_grid", "map_to_lcm_timestep",
           "load_lcm_lora_state_dict", "fuse_lora_into_unet", "add_lora_adapter", "LORA_TARGETS"]
