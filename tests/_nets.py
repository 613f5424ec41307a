"""Tiny backbones shared by the tests."""

import torch
from torch import nn


class TinyNet(nn.Module):
    """A tiny backbone: (B, 3, H, W) -> (B, channels, H, W) maps (pooled by build_backbone)."""

    def __init__(self, channels=8, leak=0.0):
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, padding=1)
        self.leak = leak  # > 0: a share of the input's mean, so no map is all zeros

    def forward(self, x):
        out = torch.relu(self.conv(x))
        return out + self.leak * x.mean(dim=1, keepdim=True) if self.leak else out
