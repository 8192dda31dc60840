"""Load on `lunet serve` (127.0.0.1 only, bounded in requests and time): the
seed CIFAR CNN, one 32x32x3 image per request (pre-built JSON bodies), at 1,
8 and 64 concurrent clients, with dynamic batching (--max-batch 64
--batch-timeout-ms 2) and without (--max-batch 1); throughput, p50 and p99
latency, and the clients' share of the CPU (they share the machine).
Against in-process model:predict on the same bodies decoded in-process
(bench/serve_inprocess.lua).
    /usr/bin/python3 bench/serve_load.py build/bin/lunet [SECONDS_PER_POINT]
"""
import http.client, json, multiprocessing as mp, os, random, subprocess, sys, tempfile, threading, time

lunet = sys.argv[1]
seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 4.0
here = os.path.dirname(os.path.abspath(__file__))
work = tempfile.mkdtemp(prefix="lunet_serve_load_")
model = os.path.join(work, "cnn.lunet")
bodies_path = os.path.join(work, "bodies.json")

random.seed(1)
bodies = [json.dumps({"instances": [[[[random.randrange(256) for _ in range(3)] for _ in range(32)] for _ in range(32)]]})
          for _ in range(64)]
with open(bodies_path, "w") as f:
    json.dump(bodies, f)
out = subprocess.run([lunet, os.path.join(here, "serve_inprocess.lua"), model, bodies_path], check=True,
                     capture_output=True, text=True).stdout
inproc = float(out.split("in-process:")[1].split()[0])


def client(port, deadline, seed, out):
    rnd = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    while time.time() < deadline:
        body = bodies[rnd.randrange(len(bodies))]
        t = time.perf_counter()
        conn.request("POST", "/v1/models/cnn:predict", body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        r.read()
        if r.status != 200:
            raise SystemExit("status %d" % r.status)
        out.append(time.perf_counter() - t)


def process(args):
    """A client process: `threads` clients on keep-alive connections (the
    threads wait on sockets, so Python's lock is not the limit)."""
    port, deadline, first, threads = args
    lat, t0c = [], time.process_time()
    ts = [threading.Thread(target=client, args=(port, deadline, first + k, lat)) for k in range(threads)]
    for t in ts: t.start()
    for t in ts: t.join()
    return lat, time.process_time() - t0c


def point(port, clients):
    procs = min(clients, 4)
    deadline = time.time() + seconds
    start = time.time()
    with mp.Pool(procs) as pool:
        results = pool.map(process, [(port, deadline, k * 1000, clients // procs) for k in range(procs)])
    wall = time.time() - start
    lat = sorted(l for r in results for l in r[0])
    cpu = sum(r[1] for r in results)
    return len(lat) / wall, lat[len(lat) // 2] * 1e3, lat[int(len(lat) * 0.99)] * 1e3, cpu / wall / os.cpu_count()


print("in-process model:predict on the same bodies (decoded in-process, batches of 64): %.0f images/s" % inproc)
print("| batching | clients | images/s | p50 ms | p99 ms | clients' CPU share | vs in-process |")
print("|---|--:|--:|--:|--:|--:|--:|")
for batching in (True, False):
    flags = ["--max-batch", "64", "--batch-timeout-ms", "2"] if batching else ["--max-batch", "1"]
    server = subprocess.Popen([lunet, "serve", "--model", "cnn=" + model, "--port", "0", *flags],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    port = int(server.stdout.readline().split("127.0.0.1:")[1].split()[0])
    for clients in (1, 8, 64):
        rate, p50, p99, share = point(port, clients)
        print("| %s | %d | %.0f | %.1f | %.1f | %.0f%% | %.2f |" % ("on" if batching else "off", clients, rate, p50, p99,
                                                                  100 * share, rate / inproc))
    server.terminate()
    server.wait()
