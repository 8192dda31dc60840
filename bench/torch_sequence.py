#!/usr/bin/python3
"""The sequence benchmarks of bench/bench_sequence.lua in PyTorch (Debian's
python3-torch): the same shapes, losses and Adam step.

    /usr/bin/python3 bench/torch_sequence.py [--threads N] [--steps S] [--json]
"""
import argparse
import json
import time

import torch

p = argparse.ArgumentParser()
p.add_argument("--threads", type=int, default=2)
p.add_argument("--steps", type=int, default=10)
p.add_argument("--json", action="store_true")
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(1)


class Last(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = torch.nn.LSTM(128, 256, batch_first=True)

    def forward(self, x):
        return self.lstm(x)[0][:, -1]


def run(model, x, y):
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, eps=1e-7)
    loss_fn = torch.nn.MSELoss()

    def step():
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(2):
        step()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    return (time.perf_counter() - t0) * 1000 / a.steps


lstm_ms = run(Last(), torch.randn(64, 100, 128), torch.randn(64, 256))
enc = torch.nn.TransformerEncoderLayer(256, 4, 1024, dropout=0.0, batch_first=True)
tr_ms = run(enc, torch.randn(32, 128, 256), torch.randn(32, 128, 256))
if a.json:
    print(json.dumps({"lstm_ms": round(lstm_ms, 2), "transformer_ms": round(tr_ms, 2)}))
else:
    print(f"torch {torch.__version__}, {a.threads} threads: LSTM step {lstm_ms:.1f} ms, "
          f"Transformer encoder step {tr_ms:.1f} ms")
