"""Where and in which precision a command runs: the device and autocast / gradient-scaling choice."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from transformer_cli.errors import TformerError


@dataclass
class Precision:
    """Autocast dtype and gradient scaling for one device."""

    name: str  # fp32 | bf16 | fp16
    device: torch.device

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward-pass context: autocast for bf16/fp16, nothing for fp32."""
        if self.name == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.name == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def scaler(self) -> torch.amp.GradScaler:
        """A gradient scaler, active only for fp16."""
        return torch.amp.GradScaler(self.device.type, enabled=self.name == "fp16")


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda when available, else cpu; an unavailable cuda is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TformerError(f"trainer.device={name} but CUDA is not available here", hint="use trainer.device=cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise TformerError(f"trainer.device='{name}' is not a device", hint="use auto, cpu, cuda or cuda:N") from err


def resolve_precision(name: str, device: torch.device) -> Precision:
    """`auto` -> bf16 on CUDA that supports it, fp32 elsewhere (CPU autocast without native bf16 is slow)."""
    if name == "auto":
        name = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise TformerError("precision fp16 needs a CUDA device", hint="use precision=fp32 or bf16 on CPU")
    return Precision(name, device)
