"""Diffusion backbones behind one interface (see base.py)."""
from sqdf_bbo.backbones.base import Backbone, default_scheduler

__all__ = ["Backbone", "default_scheduler"]
