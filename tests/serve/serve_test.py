"""lunet serve end to end, on 127.0.0.1: predictions equal lunet's own,
TensorFlow Serving's request and response shapes, every bad request answered
with its status and a JSON error (and the next one still served), concurrent
clients, a slow and a vanishing client, and SIGTERM ending it with status 0.
    serve_test.py LUNET WORK_DIR   (WORK_DIR holds cnn.lunet, reference.json)
"""
import json, os, signal, socket, subprocess, sys, threading, time, urllib.request

lunet, work = sys.argv[1], sys.argv[2]
ref = json.load(open(os.path.join(work, "reference.json")))
server = subprocess.Popen([lunet, "serve", "--model", "cnn=" + os.path.join(work, "cnn.lunet"), "--port", "0",
                           "--threads", "4", "--max-body", "64KB"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
line = server.stdout.readline()
assert "listening on http://127.0.0.1:" in line, line + server.stderr.read()
port = int(line.split("127.0.0.1:")[1].split()[0])
base = "http://127.0.0.1:%d" % port


def req(method, path, body=None):
    r = urllib.request.Request(base + path, data=body, method=method)
    try:
        with urllib.request.urlopen(r, timeout=30) as f:
            return f.status, json.loads(f.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def close(a, b, what):
    flat_a, flat_b = json.dumps(a), json.dumps(b)
    def walk(x, y, path):
        if isinstance(x, list):
            assert isinstance(y, list) and len(x) == len(y), "%s: shapes differ at %s" % (what, path)
            for i, (p, q) in enumerate(zip(x, y)): walk(p, q, path + "[%d]" % i)
        else:
            assert abs(x - y) <= 1e-6 * max(1, abs(y)), "%s: %s is %r, lunet said %r" % (what, path, x, y)
    walk(a, b, "")


def good():
    status, body = req("POST", "/v1/models/cnn:predict", json.dumps({"instances": ref["inputs"]}).encode())
    assert status == 200, (status, body)
    close(body["predictions"], ref["outputs"], "predictions")


good()
status, body = req("POST", "/v1/models/cnn:predict", json.dumps({"inputs": ref["inputs"][:2]}).encode())
assert status == 200 and "outputs" in body, body
close(body["outputs"], ref["outputs"][:2], "outputs")

bad_shape = [[[1.0]] * 6] * 5  # (5, 1) rows instead of (6, 1)
cases = [
    ("POST", "/v1/models/cnn:predict", b'{"instances": [[', 400, "not a JSON object"),
    ("POST", "/v1/models/cnn:predict", json.dumps({"instances": [bad_shape]}).encode(), 400,
     "instances[0] should be a list of 6, got a list of 5"),
    ("POST", "/v1/models/cnn:predict", json.dumps({"instances": [[[["x"]] * 6] * 6]}).encode(), 400,
     "instances[0][0][0][0] is a string, not a number"),
    ("POST", "/v1/models/cnn:predict", b'{"rows": []}', 400, 'no \\"instances\\"'.replace("\\", "")),
    ("POST", "/v1/models/nope:predict", b'{}', 404, "no model 'nope' (served: cnn)"),
    ("GET", "/v2/elsewhere", None, 404, "no such path: /v2/elsewhere"),
    ("GET", "/v1/models/cnn:predict", None, 405, "use POST"),
    ("POST", "/v1/models/cnn:predict", b"[" + b"0," * 40000 + b"0]", 413, "over 65536 bytes"),
]
for method, path, data, want, text in cases:
    status, body = req(method, path, data)
    assert status == want, "%s %s: status %d, expected %d (%s)" % (method, path, status, want, body)
    assert text in body["error"], "%s %s: error %r lacks %r" % (method, path, body["error"], text)
    good()  # the next request is served as if nothing happened

status, body = req("GET", "/v1/models/cnn")
assert body["model_version_status"][0]["state"] == "AVAILABLE", body
status, body = req("GET", "/v1/models/cnn/metadata")
sig = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
dims = [d["size"] for d in list(sig["inputs"].values())[0]["tensor_shape"]["dim"]]
assert dims == ["-1", "6", "6", "1"], dims
assert req("GET", "/healthz") == (200, {"status": "ok"})

# a slow client (headers never finished) and one that leaves mid-body do not
# stop the others
slow = socket.create_connection(("127.0.0.1", port))
slow.sendall(b"POST /v1/models/cnn:predict HTTP/1.1\r\nHost: x\r\n")
gone = socket.create_connection(("127.0.0.1", port))
gone.sendall(b"POST /v1/models/cnn:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{\"instances\": [")
gone.close()
errors = []
def client():
    try:
        for _ in range(10): good()
    except Exception as e:  # noqa: BLE001 - reported below
        errors.append(repr(e))
threads = [threading.Thread(target=client) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
assert not errors, errors
slow.close()

server.send_signal(signal.SIGTERM)
try:
    code = server.wait(timeout=20)
except subprocess.TimeoutExpired:
    server.kill()
    raise SystemExit("SIGTERM did not stop the server within 20 s")
assert code == 0, "exit status %d after SIGTERM: %s" % (code, server.stderr.read())
print("serve: 80 concurrent predictions right, %d bad requests answered, SIGTERM exit 0" % len(cases))
print("serve: ok")
