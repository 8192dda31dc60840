#!/usr/bin/env python3
"""A loopback HTTP server for the download tests; misbehaves on purpose.

Usage: http_server.py DIR [--log FILE] [--timeout SECONDS] [--tls PEM]

Binds 127.0.0.1 on a free port, prints the port on the first stdout line,
serves files of DIR, honours Range, and exits by itself after --timeout
seconds (default 120) so a crashed test cannot leave it running.  With
--tls it speaks HTTPS with the certificate and key in PEM (selfsigned.pem:
a self-signed certificate for 127.0.0.1, made once with
`openssl req -x509 -newkey rsa:2048 -nodes -days 36500 -subj /CN=127.0.0.1
-addext subjectAltName=IP:127.0.0.1`), which no client should trust.

The first path component picks a behaviour, the last names the file in DIR;
components in between are free tags that give a test its own request
counters (counters are kept per full path):

  /ok/.../F          normal, with Range support
  /truncate/.../F    the first request sends a full Content-Length, then only
                     half the bytes, and closes; later requests are normal
  /truncnorange/.../F  first request truncated like /truncate; later ones
                     ignore Range and answer 200 with the whole file
  /trunc416/.../F    first request truncated; ranged requests then get 416,
                     plain ones the whole file
  /stall/.../F       headers and 1000 bytes, then silence (30 s at most)
  /stallonce/.../F   the first request stalls like /stall; later ones are
                     normal (a resume after the stall timeout)
  /slow/.../F        4 KiB every 100 ms
  /404/.../F         404 Not Found
  /500/.../F         500 Internal Server Error
  /wrong/.../F       the file with its first byte changed (same length)
  /flakyN/.../F      the first N requests get 500, then normal

  /_quit             answers 200, then the server exits

Each request is logged to --log as "PATH RANGE STATUS" (RANGE is "-" when
absent), one line, flushed at once.
"""
import argparse
import http.server
import os
import re
import sys
import threading
import time

counters = {}
counters_lock = threading.Lock()


def count(path):
    """How many requests this exact path had before this one."""
    with counters_lock:
        n = counters.get(path, 0)
        counters[path] = n + 1
        return n


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    root = "."
    log_file = None

    def log_message(self, fmt, *args):  # keep the test's stderr clean
        pass

    def log_request_line(self, status):
        if self.log_file:
            with open(self.log_file, "a") as f:
                f.write("%s %s %d\n" % (self.path, self.headers.get("Range", "-"), status))

    def do_GET(self):
        self.close_connection = True
        parts = [p for p in self.path.split("?")[0].split("/") if p]
        if parts == ["_quit"]:
            self.error(200)
            self.wfile.flush()
            threading.Timer(0.1, os._exit, [0]).start()
            return
        if len(parts) < 2:
            return self.error(404)
        mode, name = parts[0], parts[-1]
        file = os.path.join(self.root, os.path.basename(name))
        if not os.path.isfile(file):
            return self.error(404)
        with open(file, "rb") as f:
            data = f.read()
        n = count(self.path)
        if mode in ("404", "500"):
            return self.error(int(mode))
        if mode == "loop":  # a redirect to itself, for ever
            return self.redirect(self.path)
        if mode == "liar":  # a Content-Length 100 bytes short of the body sent
            return self.send(data, None, short_by=100)
        m = re.fullmatch(r"flaky(\d+)", mode)
        if m and n < int(m.group(1)):
            return self.error(500)
        if mode == "wrong":
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        start = self.range_start()
        if mode in ("truncate", "truncnorange", "trunc416") and n == 0:
            return self.send(data, start, cut=True)
        if mode == "truncnorange":
            start = None
        if mode == "trunc416" and start is not None:
            return self.error(416)
        if start is not None and start >= len(data):
            return self.error(416)
        if mode == "stall" or (mode == "stallonce" and n == 0):
            return self.send(data, start, stall=True)
        if mode == "slow":
            return self.send(data, start, slow=True)
        return self.send(data, start)

    def range_start(self):
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        return int(m.group(1)) if m else None

    def error(self, code):
        body = b"error\n"
        self.log_request_line(code)
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def redirect(self, to):
        self.log_request_line(302)
        self.send_response(302)
        self.send_header("Location", to)
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()

    def send(self, data, start, cut=False, stall=False, slow=False, short_by=0):
        status = 200 if start is None else 206
        body = data if start is None else data[start:]
        self.log_request_line(status)
        self.send_response(status)
        self.send_header("Content-Length", str(len(body) - short_by))
        self.send_header("Accept-Ranges", "bytes")
        if start is not None:
            self.send_header("Content-Range",
                             "bytes %d-%d/%d" % (start, len(data) - 1, len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            if cut:
                self.wfile.write(body[: len(body) // 2])
            elif stall:
                self.wfile.write(body[:1000])
                self.wfile.flush()
                time.sleep(30)
            elif slow:
                for i in range(0, len(body), 4096):
                    self.wfile.write(body[i:i + 4096])
                    self.wfile.flush()
                    time.sleep(0.1)
            else:
                self.wfile.write(body)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--log")
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--tls")
    args = ap.parse_args()
    Handler.root = args.dir
    Handler.log_file = args.log
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if args.tls:
        import ssl
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(args.tls)
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    server.daemon_threads = True
    timer = threading.Timer(args.timeout, os._exit, [0])
    timer.daemon = True
    timer.start()
    print(server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
