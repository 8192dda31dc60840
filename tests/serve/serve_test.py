"""lunet serve end to end, on 127.0.0.1: predictions equal lunet's own,
TensorFlow Serving's request and response shapes, every bad request answered
with its status and a JSON error (and the next one still served), concurrent
clients merged into batches and split back right, /metrics, a slow and a
vanishing client, a full queue, the model file replaced and reloaded on
SIGHUP (a broken file keeps the old model, a renamed lone input is taken),
SIGTERM ending it with 0 after answering a request still arriving, numbers
float32 cannot hold, non-finite answers, and one client's bad token id failing
that request alone.
    serve_test.py LUNET WORK_DIR   (WORK_DIR holds cnn.lunet, reference.json)
"""
import json, os, shutil, signal, socket, subprocess, sys, threading, time, urllib.request

lunet, work = sys.argv[1], sys.argv[2]
ref = json.load(open(os.path.join(work, "reference.json")))
served = os.path.join(work, "served.lunet")
shutil.copy(os.path.join(work, "cnn.lunet"), served)


def start(*extra, model=None):
    p = subprocess.Popen([lunet, "serve", "--model", model or "cnn=" + served, "--port", "0", "--threads", "32",
                          "--max-body", "64KB", "--batch-timeout-ms", "20", *extra],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    assert "listening on http://127.0.0.1:" in line, line + p.stderr.read()
    return p, "http://127.0.0.1:%d" % int(line.split("127.0.0.1:")[1].split()[0])


server, base = start()
port = int(base.rsplit(":", 1)[1])


def req(method, path, body=None, url=None, headers=False):
    r = urllib.request.Request((url or base) + path, data=body, method=method)
    try:
        with urllib.request.urlopen(r, timeout=30) as f:
            out = f.status, json.loads(f.read()) if "json" in f.headers.get("Content-Type", "") else None
            return out + (f.headers,) if headers else out
    except urllib.error.HTTPError as e:
        out = e.code, json.loads(e.read())
        return out + (e.headers,) if headers else out


def close(a, b, what):
    flat_a, flat_b = json.dumps(a), json.dumps(b)
    def walk(x, y, path):
        if isinstance(x, list):
            assert isinstance(y, list) and len(x) == len(y), "%s: shapes differ at %s" % (what, path)
            for i, (p, q) in enumerate(zip(x, y)): walk(p, q, path + "[%d]" % i)
        else:
            assert abs(x - y) <= 1e-6 * max(1, abs(y)), "%s: %s is %r, lunet said %r" % (what, path, x, y)
    walk(a, b, "")


def good(rows=None, key="outputs"):
    rows = rows or list(range(len(ref["inputs"])))
    status, body = req("POST", "/v1/models/cnn:predict",
                       json.dumps({"instances": [ref["inputs"][i] for i in rows]}).encode())
    assert status == 200, (status, body)
    close(body["predictions"], [ref[key][i] for i in rows], "predictions")


good()
status, body = req("POST", "/v1/models/cnn:predict", json.dumps({"inputs": ref["inputs"][:2]}).encode())
assert status == 200 and "outputs" in body, body
close(body["outputs"], ref["outputs"][:2], "outputs")

bad_shape = [[[1.0]] * 6] * 5  # (5, 1) rows instead of (6, 1)
cases = [
    ("POST", "/v1/models/cnn:predict", b'{"instances": [[', 400, "not valid JSON (at byte 15 of 16"),
    ("POST", "/v1/models/cnn:predict", json.dumps({"instances": [ref["inputs"][0]]}).encode() + b" x", 400,
     "not one JSON value: more follows it"),
    ("POST", "/v1/models/cnn:predict", b'[1, 2]', 400, "JSON but not an object"),
    ("POST", "/v1/models/cnn:predict", json.dumps({"instances": ref["inputs"][:1], "signature_name": "other"}).encode(),
     400, 'one signature, "serving_default"; "signature_name" is "other"'),
    ("POST", "/v1/models/cnn:predict", json.dumps({"instances": ref["inputs"][:1], "inputs": ref["inputs"]}).encode(),
     400, 'one of "instances" (rows) and "inputs" (columns), not both'),
    # a key twice: readers differ on which counts (the first was served)
    ("POST", "/v1/models/cnn:predict", ('{"instances": %s, "instances": %s}' % (json.dumps(ref["inputs"][:1]),
     json.dumps(ref["inputs"][1:2]))).encode(), 400, 'the body names "instances" twice; give it once'),
    ("POST", "/v1/models/cnn:predict", json.dumps({"instances": [[[[True]] * 6] * 6]}).encode(), 400,
     "instances[0][0][0][0] is true, not a number"),
    ("POST", "/v1/models/cnn:predict", json.dumps({"instances": [[7] * 6]}).encode(), 400,
     "instances[0][0] should be a list of 6, got a number"),
    ("POST", "/v1/models/cnn:predict", json.dumps({"instances": [[[[1e39]] * 6] * 6]}).encode(), 400,
     "instances[0][0][0][0] is 1e+39, beyond float32's range"),
    ("POST", "/v1/models/cnn:predict", json.dumps({"instances": [[[[16777217]] * 6] * 6]}).encode(), 400,
     "is 16777217, a whole number float32 cannot hold exactly"),
    ("POST", "/v1/models/cnn/versions/2:predict", b'{}', 404, "model 'cnn' has no version '2'"),
    ("POST", "/v1/models/cnn/labels/stable:predict", b'{}', 404, "model 'cnn' has no label 'stable'"),
    ("POST", "/v1/models/cnn:classify", b'{}', 501, "answers :predict only"),
    ("POST", "/v1/models/cnn:what", b'{}', 404, "no such path: /v1/models/cnn:what"),
    ("POST", "/v1/models/cnn:predict", json.dumps({"instances": [bad_shape]}).encode(), 400,
     "instances[0] should be a list of 6, got a list of 5"),
    ("POST", "/v1/models/cnn:predict", json.dumps({"instances": [[[["x"]] * 6] * 6]}).encode(), 400,
     "instances[0][0][0][0] is a string, not a number"),
    ("POST", "/v1/models/cnn:predict", b'{"rows": []}', 400, 'no \\"instances\\"'.replace("\\", "")),
    ("POST", "/v1/models/nope:predict", b'{}', 404, "no model 'nope' (served: cnn)"),
    ("GET", "/v2/elsewhere", None, 404, "no such path: /v2/elsewhere"),
    ("GET", "/v1/models/cnn:predict", None, 405, "use POST"),
    ("POST", "/v1/models/cnn:predict", b"[" + b"0," * 40000 + b"0]", 413, "over 65536 bytes"),
    # bytes that are not UTF-8 are written \xNN in the error (they made it invalid JSON)
    ("POST", "/v1/models/cnn:predict", b"\xff\xfe{", 400, "near '\\xff\\xfe{'"),
]
for method, path, data, want, text in cases:
    status, body = req(method, path, data)
    assert status == want, "%s %s: status %d, expected %d (%s)" % (method, path, status, want, body)
    assert text in body["error"], "%s %s: error %r lacks %r" % (method, path, body["error"], text)
    good()  # the next request is served as if nothing happened

status, body = req("GET", "/v1/models/cnn")
assert body["model_version_status"][0]["state"] == "AVAILABLE", body
assert req("GET", "/v1/models/cnn/versions/1") == (status, body)
# TF Serving's versioned path, and "signature_name" as it names the one signature
status, body = req("POST", "/v1/models/cnn/versions/1:predict",
                   json.dumps({"signature_name": "serving_default", "instances": ref["inputs"][:2]}).encode())
assert status == 200, (status, body)
close(body["predictions"], ref["outputs"][:2], "versioned predictions")
status, body = req("GET", "/v1/models/cnn/metadata")
sig = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
dims = [d["size"] for d in list(sig["inputs"].values())[0]["tensor_shape"]["dim"]]
assert dims == ["-1", "6", "6", "1"], dims
assert body["metadata"]["class_names"] == ["circle", "square", "triangle"], body["metadata"]
assert req("GET", "/healthz") == (200, {"status": "ok"})

# a slow client (headers never finished) and one that leaves mid-body do not
# stop the others
slow = socket.create_connection(("127.0.0.1", port))
slow.sendall(b"POST /v1/models/cnn:predict HTTP/1.1\r\nHost: x\r\n")
gone = socket.create_connection(("127.0.0.1", port))
gone.sendall(b"POST /v1/models/cnn:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{\"instances\": [")
gone.close()
errors = []
def client(k):
    try:  # each client its own rows, so that a batch split back wrong shows
        for i in range(10): good([(k + i) % 5, (k + 2 * i + 1) % 5])
    except Exception as e:  # noqa: BLE001 - reported below
        errors.append(repr(e))
threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
for t in threads: t.start()
for t in threads: t.join()
assert not errors, errors
slow.close()

with urllib.request.urlopen(base + "/metrics", timeout=30) as f:
    metrics = f.read().decode()
def metric(name):
    for line in metrics.splitlines():
        if line.startswith(name + " "): return float(line.split()[-1])
    raise AssertionError("no %s in /metrics:\n%s" % (name, metrics))
answered = metric('lunet_requests_total{model="cnn",code="200"}')
assert answered >= 82, answered
bad_predicts = sum(1 for c in cases if c[3] == 400 and c[1] == "/v1/models/cnn:predict")
assert metric('lunet_requests_total{model="cnn",code="400"}') == bad_predicts, metrics
assert metric('lunet_requests_total{model="cnn",code="413"}') == 1, metrics
calls = metric('lunet_batch_size_count{model="cnn"}')
assert calls < answered, "no two requests were merged into one model call (%d calls, %d answers)" % (calls, answered)
assert metric('lunet_request_seconds_count{model="cnn"}') == metric('lunet_request_seconds_bucket{model="cnn",le="+Inf"}')
assert metric('lunet_queue_depth{model="cnn"}') == 0
assert metric('lunet_batch_size_sum{model="cnn"}') >= 2 * answered, metrics  # every 200 had 2 rows or more

# the model file replaced, then SIGHUP: the new weights answer; a broken
# file keeps them
shutil.copy(os.path.join(work, "cnn_v2.lunet"), served + ".tmp")
os.replace(served + ".tmp", served)
server.send_signal(signal.SIGHUP)
for _ in range(100):
    if "reloaded" in server.stderr.readline(): break
good(key="outputs_v2")
with open(served + ".tmp", "wb") as f: f.write(b"not a model")
os.replace(served + ".tmp", served)
server.send_signal(signal.SIGHUP)
for _ in range(100):
    if "not reloaded" in server.stderr.readline(): break
good(key="outputs_v2")
# a lone input and output renamed in the new file: the new names answer
shutil.copy(os.path.join(work, "cnn_renamed.lunet"), served + ".tmp")
os.replace(served + ".tmp", served)
server.send_signal(signal.SIGHUP)
for _ in range(100):
    if "reloaded" in server.stderr.readline(): break
sig = req("GET", "/v1/models/cnn/metadata")[1]["metadata"]["signature_def"]["signature_def"]["serving_default"]
assert list(sig["inputs"]) == ["pixels"] and list(sig["outputs"]) == ["scores"], sig
status, body = req("POST", "/v1/models/cnn:predict", json.dumps({"instances": [{"pixels": ref["inputs"][0]}]}).encode())
assert status == 200 and len(body["predictions"][0]) == 3, (status, body)

# SIGTERM while a request is still arriving: it is answered (right), then
# the server exits 0; a keep-alive connection's next request, sent after
# SIGTERM, is refused with 503 and the connection closed
raw = json.dumps({"instances": ref["inputs"]}).encode()
idle = socket.create_connection(("127.0.0.1", port))
idle.settimeout(20)
idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
first = b""
while b"\r\n\r\n" not in first or len(first.split(b"\r\n\r\n", 1)[1]) < int(
        first.lower().split(b"content-length:")[1].split(b"\r\n")[0]):
    first += idle.recv(65536)
assert first.startswith(b"HTTP/1.1 200"), first[:200]
late = socket.create_connection(("127.0.0.1", port))
late.sendall(b"POST /v1/models/cnn:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             b"Content-Length: %d\r\n\r\n" % len(raw) + raw[:100])
time.sleep(0.3)
server.send_signal(signal.SIGTERM)
time.sleep(0.3)
idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
refused = b""
while True:  # all of it: the server closes the connection after
    chunk = idle.recv(65536)
    if not chunk:
        break
    refused += chunk
head, _, text = refused.partition(b"\r\n\r\n")
assert head.startswith(b"HTTP/1.1 503") and b"connection: close" in head.lower(), refused[:300]
assert json.loads(text) == {"error": "the server is stopping"}, text
idle.close()
late.sendall(raw[100:])
late.settimeout(20)
answer = b""
while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < int(
        answer.lower().split(b"content-length:")[1].split(b"\r\n")[0] if b"content-length:" in answer.lower() else 1 << 30):
    chunk = late.recv(65536)
    assert chunk, "the connection closed after SIGTERM before its answer: %r" % answer[:200]
    answer += chunk
assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
renamed_out = json.loads(answer.split(b"\r\n\r\n", 1)[1])["predictions"]
assert len(renamed_out) == len(ref["inputs"]), renamed_out
late.close()
try:
    code = server.wait(timeout=20)
except subprocess.TimeoutExpired:
    server.kill()
    raise SystemExit("SIGTERM did not stop the server within 20 s")
assert code == 0, "exit status %d after SIGTERM: %s" % (code, server.stderr.read())

# options: --backend applies wherever it stands (here after --model, and
# refused); a name a URL cannot reach is refused; a body declared over the
# limit is refused before it is sent (no 100 Continue)
for extra, text in ((["--model", "cnn=" + served, "--backend", "nosuch"], "nosuch"),
                    (["--model", "a:b=" + served], "may not hold ':'"),
                    # a Normalization never adapted: refused at load (every request was a 400)
                    (["--model", "raw=" + os.path.join(work, "unadapted.lunet")],
                     "the model cannot predict (tried on one sample of zeros)")):
    p = subprocess.run([lunet, "serve", "--port", "0", *extra], capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and text in p.stderr, (extra, p.returncode, p.stderr)
# numbers are whole values in range ("8x01" listened on port 8, "abc" on a
# random port), options are named, the host is checked before any model loads
for args, text in ((["--port", "8x01"], "--port takes a whole number from 0 to 65535, got '8x01'"),
                   (["--port", ""], "--port takes a whole number from 0 to 65535, got ''"),
                   (["--threads", "2.5"], "--threads takes a whole number from 1 to 1024, got '2.5'"),
                   (["--max-batch", "4abc"], "--max-batch takes a whole number from 1 (no merging)"),
                   (["--batch-timeout-ms", "abc"], "--batch-timeout-ms takes a whole number from 0 to 60000"),
                   (["--bogus", "x"], "unknown option '--bogus'"),
                   (["--port=0"], "write '--port 0' (the value after a space), not '--port=0'"),
                   (["--max-queue"], "--max-queue needs a value"),
                   (["--host", "nowhere"], "--host takes an IPv4 address (127.0.0.1, 0.0.0.0) or localhost, got 'nowhere'")):
    p = subprocess.run([lunet, "serve", "--model", "cnn=" + served, *args], capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and text in p.stderr and "model 'cnn'" not in p.stderr, (args, p.returncode, p.stderr)
token, token_base = start(model="emb=" + os.path.join(work, "emb.lunet"))
token_port = int(token_base.rsplit(":", 1)[1])
big = socket.create_connection(("127.0.0.1", token_port))
big.sendall(b"POST /v1/models/emb:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n"
            b"Expect: 100-continue\r\n\r\n")
big.settimeout(5)
head = big.recv(4096)
assert head.startswith(b"HTTP/1.1 413") and b"over 65536 bytes" in head, head
big.close()

# token ids: one client's id outside the Embedding's table fails that
# request alone (400, its own error), never the others merged with it;
# ids above 2^24 would be rounded by float32 and are refused
eref = json.load(open(os.path.join(work, "emb.json")))
results = {}
def token_client(k):
    ids = [[0, 1, 99]] if k == 3 else [eref["ids"][k % 3]]
    results[k] = req("POST", "/v1/models/emb:predict", json.dumps({"instances": ids}).encode(), url=token_base)
threads = [threading.Thread(target=token_client, args=(k,)) for k in range(8)]
for t in threads: t.start()
for t in threads: t.join()
for k, (status, body) in results.items():
    if k == 3:
        assert status == 400 and "id 99" in body["error"], body
    else:
        assert status == 200, (k, status, body)
        close(body["predictions"], [eref["outputs"][k % 3]], "embedding client %d" % k)
token.send_signal(signal.SIGTERM)
assert token.wait(timeout=20) == 0

# outputs that are not finite: TF Serving's NaN, Infinity, -Infinity (not null)
over, over_base = start(model="over=" + os.path.join(work, "overflow.lunet"))
r = urllib.request.Request(over_base + "/v1/models/over:predict", data=b'{"instances": [[1e30]]}', method="POST")
with urllib.request.urlopen(r, timeout=30) as f:
    text = f.read().decode()
assert text == '{"predictions":[[Infinity,-Infinity,NaN]]}', text
over.send_signal(signal.SIGTERM)
assert over.wait(timeout=20) == 0
# a full queue: 503 with Retry-After, never a wrong answer
shutil.copy(os.path.join(work, "cnn.lunet"), served)
small, small_base = start("--max-queue", "1", "--max-batch", "1", "--max-body", "16MB")
answers = []
def flood():
    for _ in range(5):
        answers.append(req("POST", "/v1/models/cnn:predict", json.dumps({"instances": ref["inputs"] * 40}).encode(),
                           url=small_base, headers=True))
threads = [threading.Thread(target=flood) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
busy = [a for a in answers if a[0] == 503]
for status, body, headers in answers:
    assert status in (200, 503), (status, body)
    if status == 503:
        assert headers.get("Retry-After") == "1" and "requests waiting (--max-queue)" in body["error"], body
    else:
        close(body["predictions"], ref["outputs"] * 40, "predictions under load")
small.send_signal(signal.SIGTERM)
assert small.wait(timeout=20) == 0

# a model of two inputs and two outputs: named rows and named columns
pref = json.load(open(os.path.join(work, "pair.json")))
pair, pair_base = start(model="pair=" + os.path.join(work, "pair.lunet"))
def pair_rows(rows):
    status, body = req("POST", "/v1/models/pair:predict", json.dumps(
        {"instances": [{"image": pref["image"][i], "extra": pref["extra"][i]} for i in rows]}).encode(), url=pair_base)
    assert status == 200, (status, body)
    assert all(set(p) == {"probs", "aux"} for p in body["predictions"]), body
    close([p["probs"] for p in body["predictions"]], [pref["probs"][i] for i in rows], "probs")
    close([p["aux"] for p in body["predictions"]], [pref["aux"][i] for i in rows], "aux")
pair_rows(range(5))
status, body = req("POST", "/v1/models/pair:predict", json.dumps(
    {"inputs": {"extra": pref["extra"][1:4], "image": pref["image"][1:4]}}).encode(), url=pair_base)
assert status == 200 and set(body["outputs"]) == {"probs", "aux"}, body
close(body["outputs"]["probs"], pref["probs"][1:4], "columnar probs")
close(body["outputs"]["aux"], pref["aux"][1:4], "columnar aux")
pair_cases = [
    ({"instances": [pref["image"][0]]}, "has 2 inputs: give each instance as {"),
    ({"instances": [{"image": pref["image"][0]}]}, "instances[0] has no input 'extra'"),
    ({"instances": [{"image": pref["image"][0], "extra": pref["extra"][0], "label": 1}]},
     "'label', which is not an input of model 'pair'"),
    ({"instances": [{"image": pref["image"][0], "extra": [1, 2]}]}, "instances[0].extra should be a list of 3"),
    ({"inputs": {"image": pref["image"][:2], "extra": pref["extra"][:3]}}, "every input needs one per sample"),
    ({"inputs": pref["image"][:2]}, 'give "inputs" as an object'),
]
for data, text in pair_cases:
    status, body = req("POST", "/v1/models/pair:predict", json.dumps(data).encode(), url=pair_base)
    assert status == 400 and text in body["error"], (data.keys(), status, body)
    assert "'image' (6, 6, 1), 'extra' (3,)" in body["error"], body["error"]
    pair_rows([2, 0])
sig = req("GET", "/v1/models/pair/metadata", url=pair_base)[1]["metadata"]["signature_def"]["signature_def"]
assert set(sig["serving_default"]["inputs"]) == {"image", "extra"}, sig
assert set(sig["serving_default"]["outputs"]) == {"probs", "aux"}, sig
errors = []
def pair_client(k):
    try:
        for i in range(6): pair_rows([(k + i) % 5, (k + 3 * i + 2) % 5, k % 5][: 1 + (k + i) % 3])
    except Exception as e:  # noqa: BLE001 - reported below
        errors.append(repr(e))
threads = [threading.Thread(target=pair_client, args=(k,)) for k in range(8)]
for t in threads: t.start()
for t in threads: t.join()
assert not errors, errors
pair.send_signal(signal.SIGTERM)
assert pair.wait(timeout=20) == 0

# the same model on the Vulkan backend (lavapipe where there is no GPU)
vk = subprocess.Popen([lunet, "serve", "--backend", "vulkan", "--model", "pair=" + os.path.join(work, "pair.lunet"),
                       "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
line = vk.stdout.readline()
if "listening on http://127.0.0.1:" in line:
    vk_base = "http://127.0.0.1:%d" % int(line.split("127.0.0.1:")[1].split()[0])
    status, body = req("POST", "/v1/models/pair:predict", json.dumps(
        {"inputs": {"image": pref["image"], "extra": pref["extra"]}}).encode(), url=vk_base)
    assert status == 200, (status, body)
    for name in ("probs", "aux"):
        for got, want in zip(sum(body["outputs"][name], []), sum(pref[name], [])):
            assert abs(got - want) <= 1e-4 * max(1, abs(want)), ("vulkan", name, got, want)
    vk.send_signal(signal.SIGTERM)
    assert vk.wait(timeout=20) == 0
    on_vulkan = "on Vulkan too"
else:
    vk.wait(timeout=20)
    err = vk.stderr.read()
    assert "vulkan" in err and "unavailable" in err, err  # no device: said so, and nothing else went wrong
    on_vulkan = "no Vulkan device here"

print("serve: %d concurrent predictions right in %d model calls, %d bad requests answered, reload on SIGHUP, "
      "%d of %d answered 503 on a queue of 1, SIGTERM exit 0; a model of 2 inputs and 2 outputs in rows, "
      "columns and %d bad requests; %s" % (int(answered), int(calls), len(cases), len(busy), len(answers),
                                           len(pair_cases), on_vulkan))
print("serve: ok")
