"""One optimisation step of AMI-Net on a batch of cached features: what training and the throughput
benchmark both run."""

from __future__ import annotations

from typing import Any

import torch

from aminet_edge.config import TrainConfig
from aminet_edge.model.aminet import AMINet
from aminet_edge.training.precision import autocast, grad_scaler


class TrainStep:
    """AdamW on the AMI-Net losses under the resolved `precision` ("bf16", "fp16" or "fp32").

    CUDA: fused AdamW (one kernel per step instead of one per tensor). fp16: GradScaler. compile: the
    losses (forward and backward) through torch.compile (default inductor backend); off by default, its
    gain is not yet measured on a GPU. On the CPU in fp32 this is exactly the plain loop
    `loss.backward(); opt.step()` of earlier versions (same numbers, bit for bit).
    """

    def __init__(self, aminet: AMINet, cfg: TrainConfig, device: torch.device, precision: str,
                 compile: bool = False) -> None:
        self.aminet, self.cfg, self.device, self.precision = aminet, cfg, device, precision
        fused = {"fused": True} if device.type == "cuda" else {}
        self.opt = torch.optim.AdamW(aminet.parameters(), lr=cfg.lr, betas=cfg.betas,
                                     weight_decay=cfg.weight_decay, **fused)
        self.scaler = grad_scaler(device, precision)
        self.losses = torch.compile(aminet.losses) if compile else aminet.losses

    def __call__(self, feat: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """feat: (B, C, h, w) float32 on the device -> the detached losses (scalars on the device)."""
        with autocast(self.device, self.precision):
            losses = self.losses(feat, self.cfg.loss, generator)
        self.opt.zero_grad(set_to_none=True)  # the authors' code never zeroes: gradients accumulated
        self.scaler.scale(losses["total"]).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        return {k: v.detach() for k, v in losses.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.opt.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
