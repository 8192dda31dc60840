#!/usr/bin/python3
"""The CIFAR-10 recipe's job in PyTorch, for peak-memory comparison.

Trains the seed CNN (bench/torch_cnn.py's model, Adam, batch 64, 2 threads
unless --threads says otherwise) on cifar-10-binary.tar.gz for --epochs
epochs with validation on the test set after each, as recipes/cifar_cnn.lua
does.  How the data set is held is the point:

    --data-as uint8    the careful script: images kept as uint8 NHWC (as
                       torchvision's CIFAR10 keeps them), each batch turned
                       into float32 / 255 when it is drawn
    --data-as float32  the common script: the whole set converted to float32
                       once, up front

The archive is read member by member with tarfile (nothing extracted), each
batch file converted to NHWC uint8 as it is read.  Prints one JSON line;
bench/bench_memory.py measures this process's peak resident memory.

    /usr/bin/python3 bench/torch_cifar_memory.py --data cifar-10-binary.tar.gz
"""
import argparse
import json
import tarfile
import time

import numpy as np
import torch
from torch import nn

from torch_cnn import build_model

FILES = ["data_batch_%d.bin" % i for i in range(1, 6)] + ["test_batch.bin"]


def read_cifar(path):
    """x_train, y_train, x_test, y_test: uint8 NHWC images, int64 labels."""
    parts = {}
    with tarfile.open(path, "r:*") as tf:
        for m in tf:
            base = m.name.rsplit("/", 1)[-1]
            if m.isfile() and base in FILES:
                raw = np.frombuffer(tf.extractfile(m).read(), np.uint8).reshape(-1, 3073)
                x = raw[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()
                parts[base] = (x, raw[:, 0].astype(np.int64))
                del raw
    missing = [f for f in FILES if f not in parts]
    if missing:
        raise SystemExit("%s: missing %s" % (path, ", ".join(missing)))
    x_train = np.concatenate([parts[f][0] for f in FILES[:5]])
    y_train = np.concatenate([parts[f][1] for f in FILES[:5]])
    x_test, y_test = parts[FILES[5]]
    parts.clear()
    return x_train, y_train, x_test, y_test


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="cifar-10-binary.tar.gz")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-as", choices=["uint8", "float32"], default="uint8")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    t0 = time.perf_counter()
    x_train, y_train, x_test, y_test = read_cifar(a.data)
    if a.data_as == "float32":
        x_train = x_train.astype(np.float32) / 255
        x_test = x_test.astype(np.float32) / 255
    x_train, y_train = torch.from_numpy(x_train), torch.from_numpy(y_train)
    x_test, y_test = torch.from_numpy(x_test), torch.from_numpy(y_test)

    def batch(x, idx):
        b = x[idx]
        if b.dtype == torch.uint8:
            b = b.float().div_(255)
        return b.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)

    model = build_model().to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    loss_fn = nn.CrossEntropyLoss()
    t_read = time.perf_counter() - t0
    for _ in range(a.epochs):
        model.train()
        order = torch.randperm(len(x_train))
        for s in range(0, len(order), a.batch_size):
            idx = order[s:s + a.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(batch(x_train, idx)), y_train[idx])
            loss.backward()
            opt.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for s in range(0, len(x_test), 256):
                idx = torch.arange(s, min(s + 256, len(x_test)))
                correct += (model(batch(x_test, idx)).argmax(1) == y_test[idx]).sum().item()
    print(json.dumps({"seconds": time.perf_counter() - t0, "test_accuracy": correct / len(x_test),
                      "images": len(x_train), "read_seconds": t_read}))


if __name__ == "__main__":
    main()
