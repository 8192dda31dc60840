#!/usr/bin/env python3
"""The lunet script runner: arguments, errors, -e, stdin, paths, Ctrl-C.

usage: test_script.py <lunet executable> <case>
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

TIMEOUT = 20  # seconds for any one run


def run(exe, home, args, stdin=""):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LUA_")}
    env.update(HOME=home, LUNET_HISTORY="")
    return subprocess.run([exe] + args, input=stdin, capture_output=True, text=True,
                          env=env, cwd=home, timeout=TIMEOUT)


def write(home, name, text):
    path = os.path.join(home, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def check(cond, what, p):
    assert cond, "%s\nrc=%d\nstdout:\n%s\nstderr:\n%s" % (what, p.returncode, p.stdout,
                                                          p.stderr)


def case_args(exe, home):
    script = write(home, "args.lua",
                   "print(#arg, arg[0], arg[1], arg[2], arg[-1])\n"
                   "print(select('#', ...), ...)\n")
    p = run(exe, home, [script, "a", "b c"])
    want = "2\t%s\ta\tb c\t%s\n2\ta\tb c\n" % (script, exe)
    check(p.returncode == 0 and p.stdout == want, "want %r" % want, p)


def case_error(exe, home):
    script = write(home, "fail.lua", "local x = 1\nerror('kaput ' .. x)\n")
    p = run(exe, home, [script])
    check(p.returncode == 1, "a failing script exits with status 1", p)
    check(p.stderr.startswith("lunet: %s:2: kaput 1\nstack traceback:\n" % script),
          "message and traceback on stderr", p)
    p = run(exe, home, [os.path.join(home, "missing.lua")])
    check(p.returncode == 1 and "cannot open" in p.stderr and "missing.lua" in p.stderr,
          "a missing script is reported", p)
    p = run(exe, home, ["-e", "x ="])
    check(p.returncode == 1 and
          p.stderr == "lunet: (command line):1: unexpected symbol near <eof>\n",
          "a syntax error in -e", p)


def case_e(exe, home):
    p = run(exe, home, ["-e", "print(6*7)", "-e", "io.write(arg[0] == nil and 'noscript' "
                        "or arg[0], '\\n')"])
    check(p.returncode == 0 and p.stdout.startswith("42\n"), "-e runs in order", p)
    script = write(home, "after.lua", "print(v + 1)\n")
    p = run(exe, home, ["-e", "v = 9", script])
    check(p.returncode == 0 and p.stdout == "10\n", "-e runs before the script", p)


def case_stdin(exe, home):
    p = run(exe, home, ["-", "p", "q"], stdin="print(...)\n")
    check(p.returncode == 0 and p.stdout == "p\tq\n", "'-' runs stdin with args", p)
    p = run(exe, home, [], stdin="print(1+1)\n")
    check(p.returncode == 0 and p.stdout == "2\n", "no arguments, stdin not a terminal", p)
    p = run(exe, home, [], stdin="error('from stdin')\n")
    check(p.returncode == 1 and p.stderr.startswith("lunet: stdin:1: from stdin\n"),
          "an error in stdin's program", p)


def case_version(exe, home):
    p = run(exe, home, ["-v"])
    check(p.returncode == 0 and re.fullmatch(r"lunet \d+\.\d+\.\d+\S* \(Lua 5\.4\.\d+\)\n",
                                             p.stdout), "-v prints both versions", p)
    p = run(exe, home, ["-h"])
    check(p.returncode == 0 and p.stdout.startswith("usage: lunet "), "-h", p)
    # the long forms people type (--help was "unrecognized")
    p = run(exe, home, ["--help"])
    check(p.returncode == 0 and p.stdout.startswith("usage: lunet ") and "lunet serve" in p.stdout
          and not p.stderr, "--help", p)
    p = run(exe, home, ["--version"])
    check(p.returncode == 0 and re.fullmatch(r"lunet \d+\.\d+\.\d+\S* \(Lua 5\.4\.\d+\)\n", p.stdout),
          "--version", p)
    p = run(exe, home, ["-Z"])
    check(p.returncode == 1 and "unrecognized option '-Z'" in p.stderr, "a bad option", p)


def case_paths(exe, home):
    bindir = os.path.dirname(os.path.realpath(exe))
    p = run(exe, home, ["-e", "print(package.path) print(package.cpath) "
                        "print(type(package.preload['lunet.core']))"])
    lines = p.stdout.split("\n")
    check(p.returncode == 0 and len(lines) >= 3, "three lines", p)
    check(lines[0].startswith("%s/../share/lua/5.4/?.lua;%s/../share/lua/5.4/?/init.lua;"
                              % (bindir, bindir)), "package.path", p)
    check(lines[1].startswith("%s/../lib/lua/5.4/?.so;" % bindir), "package.cpath", p)
    check(lines[2] == "function", "lunet.core is preloaded", p)


def case_interrupt(exe, home):
    script = write(home, "loop.lua", "while true do end\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LUA_")}
    env.update(HOME=home)
    proc = subprocess.Popen([exe, script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("the script did not stop on SIGINT")
    assert proc.returncode == 1 and "interrupted!" in err, \
        "rc=%d stderr=%r" % (proc.returncode, err)

    # Ctrl-C during a blocking read stops it at once, as stock lua (no
    # SA_RESTART): the pipe below is never written to
    script = write(home, "read.lua", "print(io.read())\n")
    proc = subprocess.Popen([exe, script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.stdin.close()  # the read returns, and the test fails
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 1 and "interrupted!" in err, \
        "a read went on after Ctrl-C: rc=%d stdout=%r stderr=%r" % (proc.returncode, out, err)

    # A Ctrl-C caught by pcall is spent: the script goes on to evaluate
    # (before, every later fit and evaluate failed "interrupted")
    script = write(home, "caught.lua", """local nn = require "lunet"
local x, y = nn.randn(64, 4), nn.randn(64, 1)
local m = nn.Sequential{nn.Dense{1, input_shape = {4}}}
m:compile{optimizer = "sgd", loss = "mse"}
local told = false
local cb = nn.callbacks.LambdaCallback{on_epoch_end = function()
  if not told then told = true; io.stdout:write("running\\n"); io.stdout:flush() end
end}
local ok, err = pcall(m.fit, m, x, y, {epochs = 10000000, batch_size = 8, verbose = 0, callbacks = {cb}})
print("fit", ok, tostring(err):match("interrupted") ~= nil)
print("evaluate", type(m:evaluate(x, y, {verbose = 0}).loss))
print("fit again", #m:fit(x, y, {epochs = 2, verbose = 0}).loss)
""")
    proc = subprocess.Popen([exe, script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    line = proc.stdout.readline()
    assert line == "running\n", line + proc.stderr.read()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0 and out == "fit\tfalse\ttrue\nevaluate\tnumber\nfit again\t2\n", \
        "rc=%d stdout=%r stderr=%r" % (proc.returncode, out, err)


def case_interrupt_download(exe, home):
    """Ctrl-C during a dataset download: the download's own message (the
    part kept, how to resume) reaches the user, not a bare "interrupted!"
    (the shell's hook replaced it at the next Lua step)."""
    srv = os.path.join(home, "srv")
    os.mkdir(srv)
    with open(os.path.join(srv, "cifar-10-binary.tar.gz"), "wb") as f:
        f.write(b"\0" * (1 << 20))  # 25 s at the server's 4 KiB per 100 ms
    server_py = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "http_server.py")
    server = subprocess.Popen([sys.executable, server_py, srv, "--timeout", "60"], stdout=subprocess.PIPE, text=True)
    try:
        port = server.stdout.readline().strip()
        script = write(home, "fetch.lua", """local nn = require "lunet"
io.stdout:write("fetching\\n"); io.stdout:flush()
nn.datasets.cifar10.load_data{url = "http://127.0.0.1:%s/slow/x/cifar-10-binary.tar.gz", dir = "%s/cache",
  sha256 = string.rep("0", 64), verbose = false}
""" % (port, home))
        env = {k: v for k, v in os.environ.items() if not k.startswith("LUA_")}
        env.update(HOME=home)
        proc = subprocess.Popen([exe, script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        line = proc.stdout.readline()
        assert line == "fetching\n", line + proc.stderr.read()
        time.sleep(1.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 1 and "interrupted; " in err and "run again to resume" in err \
            and "interrupted!" not in err, "rc=%d stderr=%r" % (proc.returncode, err)
        part = os.path.join(home, "cache", "cifar10", "cifar-10-binary.tar.gz.part")
        assert os.path.getsize(part) > 0, "the part is kept"
    finally:
        server.kill()
        server.communicate()


def main():
    exe, case = os.path.abspath(sys.argv[1]), sys.argv[2]
    home = tempfile.mkdtemp(prefix="lunet_script_")
    try:
        globals()["case_" + case](exe, home)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    print("ok", case)


if __name__ == "__main__":
    main()
