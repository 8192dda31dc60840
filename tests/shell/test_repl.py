#!/usr/bin/env python3
"""Drives the lunet REPL in a pseudo-terminal.

usage: test_repl.py <lunet executable> <case>

Every wait is bounded: a case fails with the output seen so far, never hangs.
"""
import fcntl
import os
import pty
import re
import select
import shutil
import signal
import struct
import sys
import tempfile
import termios
import time

TIMEOUT = 10.0  # seconds for any one expected output
ANSI = re.compile(rb"\x1b(\[[0-9;?]*[A-Za-z]|[()][0-9A-Za-z]|[=>])")


class Session:
    def __init__(self, exe, home, history=""):
        env = {k: v for k, v in os.environ.items() if not k.startswith("LUA_")}
        env.update(HOME=home, TERM="xterm", LANG="C.UTF-8", LC_ALL="C.UTF-8")
        if history is not None:  # None: the default, ~/.lunet_history
            env["LUNET_HISTORY"] = history
        else:
            env.pop("LUNET_HISTORY", None)
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            try:
                os.execve(exe, [exe], env)
            finally:
                os._exit(127)
        # A wide window, so that no line wraps.
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))
        self.raw = b""
        self.pos = 0  # expect() looks only at output after the last match

    def text(self):
        return ANSI.sub(b"", self.raw).replace(b"\r", b"").decode("utf-8", "replace")

    def read_some(self, timeout):
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return False
        try:
            data = os.read(self.fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            return False
        if not data:
            return False
        self.raw += data
        return True

    def expect(self, pattern, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while True:
            m = rx.search(self.text(), self.pos)
            if m:
                self.pos = m.end()
                return m
            left = deadline - time.monotonic()
            if left <= 0 or not self.read_some(left):
                if rx.search(self.text(), self.pos):
                    continue
                raise AssertionError("expected %r within %.0f s; output after the last "
                                     "match:\n%s" % (pattern, timeout, self.text()[self.pos:]))

    def send(self, s):
        os.write(self.fd, s.encode())

    def prompt(self):
        self.expect(r"(?<!>)> $")

    def close(self):
        """Ends the session with Ctrl-D; returns the exit status."""
        # Keys sent before the prompt would meet the terminal in its normal
        # mode, where Ctrl-D is no key but an end-of-line marker.
        if not re.search(r"(?<!>)> $", self.text()):
            self.prompt()
        self.send("\x04")
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            self.read_some(0.1)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        os.close(self.fd)
        raise AssertionError("lunet did not exit on Ctrl-D; output:\n" + self.text())


def start(exe, home, **kw):
    s = Session(exe, home, **kw)
    s.expect(r"lunet \S+ \(Lua 5\.4\) \u2014 help: nn\.help\(\), exit: Ctrl-D")
    s.prompt()
    return s


def case_expression(exe, home):
    s = start(exe, home)
    s.send("1+2\r")
    s.expect(r"\n3\n")
    s.prompt()
    s.send("=2*4\r")
    s.expect(r"\n8\n")
    s.prompt()
    s.send("1, 'two', nil\r")
    s.expect(r"\n1\ttwo\tnil\n")
    s.prompt()
    s.send("setmetatable({}, {__tostring = function() return 'custom!' end})\r")
    s.expect(r"\ncustom!\n")
    s.prompt()
    s.send("x = 5\r")
    m = s.expect(r"x = 5\n((?:.|\n)*?)(?<!>)> $")
    assert m.group(1) == "", "a statement printed %r" % m.group(1)
    s.send("x\r")
    s.expect(r"\n5\n")
    s.prompt()
    # "=expr" over two lines, as stock lua ("return 1 +" continues)
    s.send("=1 +\r")
    s.expect(r"\n>> $")
    s.send("2\r")
    s.expect(r"\n3\n")
    s.prompt()
    # results go through the global print, a user's own included
    s.send("print = function(...) io.write('P:', table.concat({...}, ','), '\\n') end\r")
    s.prompt()
    s.send("1, 2\r")
    s.expect(r"\nP:1,2\n")
    assert s.close() == 0


def case_syntax_error(exe, home):
    s = start(exe, home)
    s.send("x = = 1\r")
    s.expect(r"stdin:1: unexpected symbol near '='")
    s.prompt()
    s.send("10*3\r")
    s.expect(r"\n30\n")
    assert s.close() == 0


def case_runtime_error(exe, home):
    s = start(exe, home)
    s.send('error("boom")\r')
    s.expect(r"stdin:1: boom\nstack traceback:")
    s.prompt()
    s.send("40+2\r")
    s.expect(r"\n42\n")
    assert s.close() == 0


def case_multiline(exe, home):
    s = start(exe, home)
    s.send("function twice(a)\r")
    s.expect(r"\n>> $")
    s.send("  return a * 2\r")
    s.expect(r"\n>> $")
    s.send("end\r")
    s.prompt()
    s.send("twice(21)\r")
    s.expect(r"\n42\n")
    s.prompt()
    # Ctrl-C in a continuation line drops the whole statement.
    s.send("for i = 1, 3 do\r")
    s.expect(r"\n>> $")
    s.send("\x03")
    s.prompt()
    s.send("'after'\r")
    s.expect(r"\nafter\n")
    assert s.close() == 0


def case_complete(exe, home):
    s = start(exe, home)
    s.send("string.fo\t")
    s.expect(r"string\.format$")
    s.send("('%d-%s', 7, 'x')\r")
    s.expect(r"\n7-x\n")
    s.prompt()
    # A table whose methods come from its metatable's __index chain.
    s.send("base = {reshape = function(self, n) return n * 3 end}\r")
    s.prompt()
    s.send("obj = setmetatable({}, {__index = setmetatable({}, {__index = base})})\r")
    s.prompt()
    s.send("obj:resh\t")
    s.expect(r"obj:reshape$")
    s.send("(5)\r")
    s.expect(r"\n15\n")
    s.prompt()
    # A userdata: the file's methods sit in its metatable's __index.
    s.send("io.stdout:wri\t")
    s.expect(r"io\.stdout:write$")
    s.send("('hi', '\\n')\r")
    s.expect(r"\nhi\nfile \(0x")
    s.prompt()
    # __index is a function: the methods are found in __methods.
    s.send("mt = {__methods = {resize = function(self, n) return n + 1 end}}; "
           "mt.__index = function(t, k) return mt.__methods[k] end; "
           "proxy = setmetatable({}, mt)\r")
    s.prompt()
    s.send("proxy:resi\t")
    s.expect(r"proxy:resize$")
    s.send("(8)\r")
    s.expect(r"\n9\n")
    s.prompt()
    # Completion calls no function: an __index function must not run.
    s.send("calls = 0; trap = setmetatable({}, {__index = function() calls = calls + 1 end})\r")
    s.prompt()
    s.send("trap.a.b\t\x05\x15calls\r")
    s.expect(r"\n0\n")
    s.prompt()
    # after a call, a string or an index there is no name path: a Tab there
    # offers nothing (it had completed globals: ('abc'):pr -> ('abc'):print)
    s.send("('abc'):pri\t()\r")
    s.expect(r"method 'pri'")
    s.prompt()
    s.send("tt = {{pa = 7}}\r")
    s.prompt()
    s.send("tt[1].pa\t\r")
    s.expect(r"\n7\n")
    assert s.close() == 0


def case_interrupt(exe, home):
    s = start(exe, home)
    s.send("while true do end\r")
    s.expect(r"while true do end\n")
    time.sleep(0.5)
    s.send("\x03")
    s.expect(r"\ninterrupted\n")
    s.prompt()
    s.send("1+1\r")
    s.expect(r"\n2\n")
    s.prompt()
    # A Ctrl-C caught by pcall is spent: the rest of the line runs, and the
    # core's flag (which fit and evaluate poll) is clear.
    s.send("ok = pcall(function() while true do end end) print('went on', ok, require('lunet.core').interrupted())\r")
    time.sleep(0.5)
    s.send("\x03")
    s.expect(r"went on\tfalse\tfalse\n")
    s.prompt()
    # Ctrl-C cuts a blocking read short, as stock lua
    s.send("print('got', io.read())\r")
    time.sleep(0.5)
    s.send("\x03")
    s.expect(r"\ninterrupted\n")
    s.prompt()
    # At the prompt, Ctrl-C drops the line typed so far.
    s.send("abc")
    time.sleep(0.2)
    s.send("\x03")
    s.prompt()
    s.send("5+5\r")
    m = s.expect(r"\n(.*)\n")
    assert m.group(1) == "10", "line was not dropped: %r" % m.group(1)
    assert s.close() == 0


def case_history(exe, home):
    hist = os.path.join(home, "hist")
    s = start(exe, home, history=hist)
    s.send("7*6\r")
    s.expect(r"\n42\n")
    s.prompt()
    s.send("7*6\r")  # a duplicate: not kept twice
    s.expect(r"\n42\n")
    s.prompt()
    s.send("'last'\r")
    s.expect(r"\nlast\n")
    assert s.close() == 0
    with open(hist, encoding="utf-8", errors="replace") as f:
        saved = f.read()
    assert saved.count("7*6") == 1, "history file:\n" + saved
    s = start(exe, home, history=hist)
    s.send("\x10\x10\r")  # Ctrl-P twice: two entries back
    s.expect(r"\n42\n")
    assert s.close() == 0
    # Without LUNET_HISTORY the file is ~/.lunet_history.
    s = start(exe, home, history=None)
    s.send("'fromhome'\r")
    s.expect(r"\nfromhome\n")
    assert s.close() == 0
    with open(os.path.join(home, ".lunet_history"), encoding="utf-8", errors="replace") as f:
        assert "fromhome" in f.read()


def case_library(exe, home):
    s = start(exe, home)
    s.send("type(nn), nn == require 'lunet'\r")
    s.expect(r"\ntable\ttrue\n")
    s.prompt()
    s.send("nn.zer\t")
    s.expect(r"nn\.zeros$")
    s.send("({2, 3})\r")
    s.prompt()
    s.send("x = nn.zeros({2, 3})\r")
    s.prompt()
    s.send("x:resh\t")  # a tensor's methods
    s.expect(r"x:reshape$")
    s.send("({3, 2}):numel()\r")
    s.expect(r"\n6(\.0)?\n")
    assert s.close() == 0


def case_leaks(exe, home):
    """An interactive session through the line editor for LeakSanitizer
    (registered in sanitizer builds, with detect_leaks=1 and a leak exit
    code): the whole tests/leak/session.lua (train, save, load, datasets,
    caught errors) run from the prompt, then editing, completion, history,
    Ctrl-C at the prompt and in a continuation line, an uncaught error, a
    model built and trained line by line; Ctrl-D must end it with status 0."""
    session = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "leak", "session.lua")
    s = start(exe, home)
    s.send("dofile(%r)\r" % session)
    s.expect(r"session: ok", timeout=240)
    s.prompt()
    s.send("m = nn.Sequential{nn.Dense{4, activation = 'relu', input_shape = {3}}, nn.Dense{2}}\r")
    s.prompt()
    s.send("m:comp\t")  # completion through the metatable
    s.expect(r"m:compile$")
    s.send("{optimizer = 'sgd', loss = 'mse'}\r")
    s.prompt()
    s.send("h = m:fit(nn.rand(8, 3), nn.rand(8, 2), {epochs = 2, verbose = 0})\r")
    s.prompt()
    s.send("#h.loss\r")
    s.expect(r"\n2\n")
    s.prompt()
    s.send("m:predict(nn.rand(2, 4))\r")  # an uncaught error, printed
    s.expect(r"expected input")
    s.prompt()
    s.send("for i = 1, 3 do\r")
    s.expect(r"\n>> $")
    s.send("\x03")
    s.prompt()
    s.send("unfinished(\x03")
    s.prompt()
    s.send("\x10\x10\x03")  # Ctrl-P twice through the history, then dropped
    s.prompt()
    s.send("#h.loss\r")
    s.expect(r"\n2\n")
    code = s.close()
    assert code == 0, "exit status %d (23: LeakSanitizer found leaks); output:\n%s" % (code, s.text()[-6000:])


def main():
    exe, case = os.path.abspath(sys.argv[1]), sys.argv[2]
    home = tempfile.mkdtemp(prefix="lunet_shell_")
    try:
        globals()["case_" + case](exe, home)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    print("ok", case)


if __name__ == "__main__":
    main()
