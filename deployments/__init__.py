"""The Ray Serve shell around fair_lora: ingress, popularity tracker, router and LoRA workers."""
from deployments.app_args import AppArgs
from deployments.app_builder import AppArgsError, build_app

__all__ = ["AppArgs", "AppArgsError", "build_app"]
