#!/usr/bin/env python3
"""Writes a small cifar-10-binary.tar.gz in the official layout; prints its sha256.

Usage: make_cifar_fixture.py OUT.tar.gz [N] [--seed S]

N records per batch file (default 100) in cifar-10-batches-bin/data_batch_1..5.bin
and test_batch.bin, plus batches.meta.txt and readme.html.  Each record is a
label byte then the R, G, B planes (32x32, row-major).  Pixels look random
but are deterministic, and each class is learnable: its image is a
class-specific colour plus bounded noise, with a brighter band whose row
depends on the class.  The test batch holds the classes in turn (balanced);
training labels are drawn from the seeded generator.  The archive bytes are
reproducible (fixed mtimes, gzip header without a time stamp), so the
printed sha256 is stable for given N and seed.
"""
import argparse
import gzip
import hashlib
import io
import random
import tarfile

CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck"]


def class_colour(label):
    """A well-separated base colour per class."""
    return ((label * 97 + 40) % 256, (label * 53 + 90) % 256, (label * 181 + 20) % 256)


def record(label, rng):
    base = class_colour(label)
    band = 3 * label  # rows band..band+2 are brighter
    out = bytearray([label])
    for c in range(3):
        plane = bytearray(1024)
        for p in range(1024):
            v = base[c] + rng.randint(-24, 24)
            if band <= p // 32 < band + 3:
                v += 60
            plane[p] = max(0, min(255, v))
        out += plane
    return bytes(out)


def batch(n, rng, balanced):
    labels = [i % 10 for i in range(n)] if balanced else [rng.randrange(10) for _ in range(n)]
    return b"".join(record(y, rng) for y in labels)


def add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uname = info.gname = "root"
    tar.addfile(info, io.BytesIO(data))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("n", nargs="?", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        add(tar, "cifar-10-batches-bin/batches.meta.txt", ("\n".join(CLASSES) + "\n").encode())
        for i in range(1, 6):
            add(tar, "cifar-10-batches-bin/data_batch_%d.bin" % i, batch(args.n, rng, False))
        add(tar, "cifar-10-batches-bin/test_batch.bin", batch(args.n, rng, True))
        add(tar, "cifar-10-batches-bin/readme.html", b"<p>lunet test fixture</p>\n")
    with open(args.out, "wb") as f:
        with gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0) as gz:
            gz.write(buf.getvalue())
    with open(args.out, "rb") as f:
        print(hashlib.sha256(f.read()).hexdigest())


if __name__ == "__main__":
    main()
