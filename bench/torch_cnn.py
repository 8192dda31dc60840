#!/usr/bin/python3
"""Training and inference throughput of the CIFAR-10 example CNN in PyTorch.

The reference for bench/bench_cnn.lua: the same model, loss, optimizer,
batch sizes and thread count.  Run with Debian's interpreter, which has
python3-torch (1.13):

    /usr/bin/python3 bench/torch_cnn.py [--threads N] [--batches 32,64,128]
        [--seconds S] [--repeats R] [--infer-batch B] [--channels-last] [--json]

Notes on what is being compared:
- OPENBLAS_CORETYPE (and the other OPENBLAS_* variables) must be in the
  environment before this process starts: torch loads OpenBLAS when it is
  imported, and OpenBLAS picks its kernel once, at load time.  Setting it
  in os.environ here would be too late for some import orders, so it is
  left to the caller (compare.sh passes the environment through).
- torch's convolutions (and their gradients) run in oneDNN (MKL-DNN), not
  in OpenBLAS; only the Linear layers go through BLAS.  lunet runs all of
  them through OpenBLAS GEMMs.
- The model ends in logits and uses CrossEntropyLoss, which is the same
  function as lunet's softmax + sparse categorical cross-entropy.
- Adam(lr=1e-3, eps=1e-7) matches Keras' (and lunet's) defaults.
- The allocator matters more than anything else here: torch allocates every
  activation and gradient with malloc each step, and glibc's malloc serves
  large blocks with fresh mmap()s (its dynamic threshold notwithstanding),
  so every step page-faults its working set in again.  On this project's
  machines page faults are slow and that made torch 3-4x slower.
  bench/compare.sh also runs torch with glibc tuned by environment
  (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_) and with tcmalloc, as
  PyTorch's performance guide advises, and compares with the best.
"""
import argparse
import json
import statistics
import time

import torch
from torch import nn


def build_model():
    """The lunet example CNN: input (N, 3, 32, 32), 'valid' 3x3 convolutions."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3), nn.ReLU(), nn.MaxPool2d(2),     # 30 -> 15
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),    # 13 -> 6
        nn.Conv2d(64, 128, 3), nn.ReLU(), nn.MaxPool2d(2),   # 4 -> 2
        nn.Flatten(), nn.Linear(128 * 2 * 2, 512), nn.ReLU(),
        nn.Linear(512, 10))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--batches", default="32,64,128",
                   help="training batch sizes, comma separated")
    p.add_argument("--seconds", type=float, default=3.0, help="seconds per timed run")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per figure (median)")
    p.add_argument("--infer-batch", type=int, default=256)
    p.add_argument("--channels-last", action="store_true",
                   help="use torch.channels_last for the model and the inputs (NHWC, like lunet)")
    p.add_argument("--autocast-bf16", action="store_true",
                   help="mixed precision: forward and loss under torch.autocast('cpu', torch.bfloat16)")
    p.add_argument("--json", action="store_true", help="print one JSON line of results")
    p.add_argument("--label", default="", help="a name for this configuration in the JSON line")
    a = p.parse_args()
    try:
        a.batches = [int(b) for b in a.batches.split(",") if b]
    except ValueError:
        p.error("--batches takes positive integers separated by commas, e.g. 32,64,128")
    if a.threads < 1 or a.seconds <= 0 or a.repeats < 1 or any(b < 1 for b in a.batches):
        p.error("--threads, --seconds, --repeats and --batches must be positive")
    return a


def timed(fn, batch, seconds):
    """Runs fn until `seconds` have passed (at least 2 calls); images/s."""
    t0, count = time.perf_counter(), 0
    while True:
        fn()
        count += 1
        if count >= 2 and time.perf_counter() - t0 >= seconds:
            break
    return count * batch / (time.perf_counter() - t0)


def measure(fn, batch, args):
    for _ in range(3):  # warm-up: oneDNN primitive creation, allocator caches
        fn()
    runs = [timed(fn, batch, args.seconds) for _ in range(args.repeats)]
    return statistics.median(runs), runs


def inputs(batch, args):
    x = torch.rand(batch, 3, 32, 32)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def train_fn(model, opt, loss_fn, batch, args):
    x = inputs(batch, args)
    y = torch.arange(batch) * 7 % 10

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.autocast_bf16):
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        if loss.item() != loss.item():
            raise RuntimeError("the loss became NaN")
    return step


def infer_fn(model, batch, args):
    x = inputs(batch, args)

    def run():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.autocast_bf16):
            model(x)
    return run


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    model = build_model()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    loss_fn = nn.CrossEntropyLoss()
    layout = "channels_last" if args.channels_last else "contiguous"
    if not args.json:
        print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
              f"layout {layout}, mkldnn {torch.backends.mkldnn.is_available()}, "
              f"autocast bf16 {args.autocast_bf16}")
        print(f"timing: 3 warm-up steps, then median of {args.repeats} runs "
              f"of {args.seconds:.1f} s each")
    train = {}
    for b in args.batches:
        model.train()
        med, runs = measure(train_fn(model, opt, loss_fn, b, args), b, args)
        train[str(b)] = round(med, 2)
        if not args.json:
            print(f"train  batch {b:4d}: {med:8.1f} images/s  "
                  f"(runs: {', '.join(f'{r:.0f}' for r in runs)})")
    model.eval()
    inf, _ = measure(infer_fn(model, args.infer_batch, args), args.infer_batch, args)
    if not args.json:
        print(f"infer  batch {args.infer_batch:4d}: {inf:8.1f} images/s")
        return
    print(json.dumps({"impl": "torch", "version": torch.__version__, "layout": layout,
                      "label": args.label or layout, "threads": torch.get_num_threads(), "train": train,
                      "infer": {str(args.infer_batch): round(inf, 2)}}))


if __name__ == "__main__":
    main()
