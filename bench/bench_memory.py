#!/usr/bin/python3
"""Peak resident memory of the CIFAR-10 job: lunet's recipe against PyTorch.

Runs, alternating, for --rounds rounds:
  lunet            build/bin/lunet recipes/cifar_cnn.lua --data ARCHIVE --epochs E
  torch uint8      bench/torch_cifar_memory.py --data-as uint8   (the careful script)
  torch float32    bench/torch_cifar_memory.py --data-as float32 (the data set as float32)
each in its own process, and prints each one's peak resident set size (the
kernel's ru_maxrss for that child, from wait4) and wall time.

    python3 bench/bench_memory.py [--data cifar-10-binary.tar.gz] [--epochs 1]
        [--rounds 2] [--threads 2] [--lunet build/bin/lunet] [--json]

Without --data it writes a full-size archive (50,000 + 10,000 records, the
official layout, each image its class's colour plus noise) to a temporary
folder: memory does not depend on what the pixels are, and this machine
cannot download the real one.  Run it with /usr/bin/python3 (numpy, torch).
"""
import argparse
import hashlib
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import gzip

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TORCH_PY = "/usr/bin/python3"


def write_archive(path, per_file=10000, seed=1):
    """A full-size cifar-10-binary.tar.gz of learnable random records: each
    image is its class's colour plus noise (as tests/data/make_cifar_fixture.py
    makes them), so both frameworks train as on real data rather than on
    noise, where a network can die and run at another speed."""
    import numpy as np
    sys.path.insert(0, os.path.join(ROOT, "tests", "data"))
    from make_cifar_fixture import class_colour
    rng = np.random.default_rng(seed)
    base = np.array([class_colour(k) for k in range(10)], dtype=np.int16)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        names = ["data_batch_%d.bin" % i for i in range(1, 6)] + ["test_batch.bin"]
        for name in names:
            labels = rng.integers(0, 10, per_file)
            noise = rng.integers(-64, 65, (per_file, 3, 1024), dtype=np.int16)
            px = np.clip(base[labels][:, :, None] + noise, 0, 255).astype(np.uint8)
            rec = np.concatenate([labels.astype(np.uint8)[:, None], px.reshape(per_file, 3072)], 1)
            data = rec.tobytes()
            info = tarfile.TarInfo("cifar-10-batches-bin/" + name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    blob = gzip.compress(buf.getvalue(), 1, mtime=0)
    with open(path, "wb") as f:
        f.write(blob)


def run(cmd, env):
    """(peak RSS in MB, seconds) of cmd; exits with its output if it fails."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit("%s failed (exit %d):\n%s" % (" ".join(cmd), proc.returncode,
                                               out.decode(errors="replace")[-3000:]))
    return usage.ru_maxrss / 1024.0, seconds


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="cifar-10-binary.tar.gz (default: a random full-size one)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lunet", default=os.path.join(ROOT, "build", "bin", "lunet"))
    p.add_argument("--only", choices=["lunet", "torch"], help="measure one side only")
    p.add_argument("--json", action="store_true", help="print one JSON line of results")
    p.add_argument("--write-archive", metavar="PATH", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.write_archive:
        return write_archive(a.write_archive)
    if a.epochs < 1 or a.rounds < 1 or a.threads < 1:
        p.error("--epochs, --rounds and --threads must be positive")
    tmp = tempfile.TemporaryDirectory(prefix="lunet-bench-memory-")
    data, synthetic = a.data, a.data is None
    if synthetic:
        data = os.path.join(tmp.name, "cifar-10-binary.tar.gz")
        print("writing a full-size CIFAR-10 archive of synthetic images to %s" % data, flush=True)
        # In a child: a process's peak RSS starts from its parent's at fork,
        # so this one must stay small while it measures.
        subprocess.run([sys.executable, __file__, "--write-archive", data], check=True)
    with open(data, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    env = dict(os.environ, LUNET_THREADS=str(a.threads), OPENBLAS_NUM_THREADS="1",
               OMP_WAIT_POLICY="PASSIVE", LUNET_DATA_DIR=tmp.name)
    jobs = []
    if a.only != "torch":
        jobs.append(("lunet", [a.lunet, os.path.join(ROOT, "recipes", "cifar_cnn.lua"),
                               "--data", data, "--sha256", sha, "--epochs", str(a.epochs),
                               "--threads", str(a.threads), "--verbose", "0"]))
    if a.only != "lunet":
        for kind in ("uint8", "float32"):
            jobs.append(("torch " + kind, [TORCH_PY, os.path.join(HERE, "torch_cifar_memory.py"),
                                           "--data", data, "--epochs", str(a.epochs),
                                           "--threads", str(a.threads), "--data-as", kind]))
    results = {name: [] for name, _ in jobs}
    print("CIFAR-10 job, %d epoch(s), batch 64, %d threads, %d alternating rounds; CPU: %s"
          % (a.epochs, a.threads, a.rounds, cpu_name()), flush=True)
    for r in range(a.rounds):
        for name, cmd in jobs:
            mb, s = run(cmd, env)
            results[name].append((mb, s))
            print("  round %d  %-14s peak RSS %7.1f MB  %6.1f s" % (r + 1, name, mb, s), flush=True)
    print("\n| job | peak resident memory (MB, median of %d) | seconds |" % a.rounds)
    print("|---|---:|---:|")
    summary = {}
    for name, _ in jobs:
        mb = statistics.median(x[0] for x in results[name])
        s = statistics.median(x[1] for x in results[name])
        summary[name] = {"peak_rss_mb": mb, "seconds": s}
        print("| %s | %.0f | %.1f |" % (name, mb, s))
    if "lunet" in summary and "torch uint8" in summary:
        print("\nlunet / careful PyTorch (uint8): %.2f of its peak memory"
              % (summary["lunet"]["peak_rss_mb"] / summary["torch uint8"]["peak_rss_mb"]))
    if a.json:
        print(json.dumps({"epochs": a.epochs, "threads": a.threads, "synthetic_data": synthetic,
                          "results": summary}))


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
