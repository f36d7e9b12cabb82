"""An independent, plain PyTorch GPT-2 (the loop a user would write), for parity tests.

Written without Koi's code: explicit masked attention instead of SDPA, its own parameter layout.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class PlainGPT2(nn.Module):
    def __init__(self, vocab: int, block: int, layers: int, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.tok = nn.Parameter(torch.zeros(vocab, width))
        self.pos = nn.Parameter(torch.zeros(block, width))
        self.layers = nn.ModuleList()
        for _ in range(layers):
            layer = nn.ParameterDict({
                "ln1_w": nn.Parameter(torch.ones(width)), "ln1_b": nn.Parameter(torch.zeros(width)),
                "qkv_w": nn.Parameter(torch.zeros(3 * width, width)), "qkv_b": nn.Parameter(torch.zeros(3 * width)),
                "proj_w": nn.Parameter(torch.zeros(width, width)), "proj_b": nn.Parameter(torch.zeros(width)),
                "ln2_w": nn.Parameter(torch.ones(width)), "ln2_b": nn.Parameter(torch.zeros(width)),
                "fc_w": nn.Parameter(torch.zeros(4 * width, width)), "fc_b": nn.Parameter(torch.zeros(4 * width)),
                "out_w": nn.Parameter(torch.zeros(width, 4 * width)), "out_b": nn.Parameter(torch.zeros(width)),
            })
            self.layers.append(layer)
        self.lnf_w = nn.Parameter(torch.ones(width))
        self.lnf_b = nn.Parameter(torch.zeros(width))

    def load_from_koi(self, koi_state: dict) -> None:
        names = {"ln1_w": "ln_1.weight", "ln1_b": "ln_1.bias", "qkv_w": "attn.c_attn.weight", "qkv_b": "attn.c_attn.bias",
                 "proj_w": "attn.c_proj.weight", "proj_b": "attn.c_proj.bias", "ln2_w": "ln_2.weight", "ln2_b": "ln_2.bias",
                 "fc_w": "mlp.c_fc.weight", "fc_b": "mlp.c_fc.bias", "out_w": "mlp.c_proj.weight", "out_b": "mlp.c_proj.bias"}
        with torch.no_grad():
            self.tok.copy_(koi_state["transformer.wte.weight"])
            self.pos.copy_(koi_state["transformer.wpe.weight"])
            for i, layer in enumerate(self.layers):
                for mine, theirs in names.items():
                    layer[mine].copy_(koi_state[f"transformer.h.{i}.{theirs}"])
            self.lnf_w.copy_(koi_state["transformer.ln_f.weight"])
            self.lnf_b.copy_(koi_state["transformer.ln_f.bias"])

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        x = self.tok[idx] + self.pos[:T]
        mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
        for p in self.layers:
            h = F.layer_norm(x, x.shape[-1:], p["ln1_w"], p["ln1_b"])
            q, k, v = (h @ p["qkv_w"].T + p["qkv_b"]).chunk(3, dim=-1)
            q, k, v = (t.view(B, T, self.heads, -1).transpose(1, 2) for t in (q, k, v))
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
            att = scores.masked_fill(mask, float("-inf")).softmax(-1) @ v
            x = x + att.transpose(1, 2).reshape(B, T, -1) @ p["proj_w"].T + p["proj_b"]
            h = F.layer_norm(x, x.shape[-1:], p["ln2_w"], p["ln2_b"])
            x = x + F.gelu(h @ p["fc_w"].T + p["fc_b"], approximate="tanh") @ p["out_w"].T + p["out_b"]
        x = F.layer_norm(x, x.shape[-1:], self.lnf_w, self.lnf_b)
        return x @ self.tok.T
