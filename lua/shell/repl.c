/*
 * The interactive loop: read a line (libedit on a terminal: editing,
 * history kept across sessions, Tab completion), run it, print the results.
 *
 * Each line is tried as `return <line>` first, then as a statement; a
 * statement whose only fault is ending too early (syntax error at <eof>)
 * continues on the next line.
 *
 * Ctrl-C: at the prompt it drops the line.  While code runs it sets the
 * core's interrupt flag (C loops poll lunet_interrupted()) and a Lua hook
 * that raises "interrupted" at the next Lua step; both are cleared before
 * the next prompt.  A third Ctrl-C before the code stops (a C call that
 * neither polls nor returns) ends the process with the default action; the
 * terminal is in its normal mode at that time, as it is whenever code runs.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <wchar.h>

#include <histedit.h>
#include <lauxlib.h>
#include <lua.h>

#include "lunet/lunet.h"
#include "shell.h"

#define HISTORY_SIZE 1000
#define PROMPT1 "> "
#define PROMPT2 ">> "
#define BANNER "lunet " LUNET_VERSION_STRING " (Lua 5.4) \u2014 help: nn.help(), exit: Ctrl-D"

/* Where a line came from. */
enum { LINE_OK, LINE_EOF, LINE_CANCELLED };

typedef struct reader {
  EditLine *el; /* NULL when stdin is not a terminal */
  History *hist;
  char *hist_path;     /* NULL: history is not saved */
  int hist_warned;     /* the "cannot save" warning was shown */
  shell_client client; /* the editor's EL_CLIENTDATA */
} reader;

/* Signal state, shared with the handler. */
static lua_State *repl_state;
static volatile sig_atomic_t at_prompt;
static volatile sig_atomic_t line_cancelled;
static volatile sig_atomic_t presses; /* Ctrl-C presses since the code started */
/* Written by the handler at the prompt, so that the reader wakes up whatever
 * thread the signal was delivered to: libedit's own handler re-raises the
 * signal with kill(), and the kernel gives a signal the main thread blocks
 * to any other thread (OpenBLAS's workers, the image decoders), where
 * setting line_cancelled alone would leave the main thread in read(). */
static int cancel_pipe[2] = {-1, -1};

/* The Ctrl-C as an error, once: the core's flag is cleared with it (as in
 * main.c's stop_hook). */
static void interrupt_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  if (!lunet_interrupted()) return; /* taken by a C function's own error, as in main.c */
  lunet_interrupt_clear();
  lua_pushliteral(L, "interrupted");
  lua_error(L);
}

static void on_sigint(int sig) {
  if (at_prompt) {
    line_cancelled = 1;
    if (cancel_pipe[1] >= 0) {
      int saved = errno;
      ssize_t w = write(cancel_pipe[1], "c", 1); /* full pipe: a wake-up is pending anyway */
      (void)w;
      errno = saved;
    }
    return;
  }
  lunet_interrupt();
  lua_sethook(repl_state, interrupt_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
  if (++presses == 2) {
    static const char warn[] = "\n(still running; press Ctrl-C again to quit lunet)\n";
    ssize_t w = write(STDERR_FILENO, warn, sizeof warn - 1);
    (void)w;
  } else if (presses >= 3) {
    signal(sig, SIG_DFL);
    raise(sig);
  }
}

static void install_sigint(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sigint;
  sa.sa_flags = 0; /* as stock lua: a blocking read of running code (io.read) is cut short */
  sigemptyset(&sa.sa_mask);
  if (cancel_pipe[0] < 0 && pipe(cancel_pipe) == 0) {
    for (int i = 0; i < 2; i++) {
      fcntl(cancel_pipe[i], F_SETFL, O_NONBLOCK);
      fcntl(cancel_pipe[i], F_SETFD, FD_CLOEXEC);
    }
  }
  sigaction(SIGINT, &sa, NULL);
}

/* Empties the wake-up pipe; true when it held a Ctrl-C. */
static int drain_cancel(void) {
  char buf[64];
  int any = 0;
  if (cancel_pipe[0] < 0) return 0;
  while (read(cancel_pipe[0], buf, sizeof buf) > 0) any = 1;
  return any;
}

/* ---- reading lines ---- */

static char *prompt_fn(EditLine *el) {
  shell_client *c;
  el_get(el, EL_CLIENTDATA, &c);
  return (char *)c->prompt;
}

/* libedit's character source.  Its own reader retries a read cut short by
 * a signal, so Ctrl-C would only act on the next key; this one gives up
 * the line at once.  Bytes are decoded as the locale says (UTF-8). */
static int read_char(EditLine *el, wchar_t *wc) {
  (void)el;
  mbstate_t st;
  memset(&st, 0, sizeof st);
  for (;;) {
    struct pollfd fds[2] = {{.fd = STDIN_FILENO, .events = POLLIN}, {.fd = cancel_pipe[0], .events = POLLIN}};
    if (poll(fds, cancel_pipe[0] >= 0 ? 2 : 1, -1) < 0 && errno != EINTR) return -1;
    if (line_cancelled || drain_cancel()) {
      line_cancelled = 1;
      errno = EINTR; /* libedit drops the line it was editing */
      return -1;
    }
    if (!(fds[0].revents & (POLLIN | POLLHUP | POLLERR))) continue;
    char c;
    ssize_t n = read(STDIN_FILENO, &c, 1);
    if (n == 1) {
      size_t k = mbrtowc(wc, &c, 1, &st);
      if (k == (size_t)-2) continue;               /* inside a multibyte character */
      if (k == (size_t)-1) *wc = (unsigned char)c; /* not valid: take the byte */
      return 1;
    }
    if (n == 0) return 0;
    if (errno != EINTR || line_cancelled) return -1;
  }
}

/* $LUNET_HISTORY (empty: no file), else ~/.lunet_history, into buf;
 * NULL when there is none. */
static const char *history_file(char *buf, size_t size) {
  const char *path = getenv("LUNET_HISTORY");
  if (path) return path[0] ? path : NULL;
  const char *home = getenv("HOME");
  if (home == NULL || home[0] == '\0') return NULL;
  snprintf(buf, size, "%s/.lunet_history", home);
  return buf;
}

static void reader_open(reader *r, lua_State *L) {
  memset(r, 0, sizeof *r);
  r->client.L = L;
  r->client.prompt = PROMPT1;
  if (!isatty(STDIN_FILENO)) return;
  HistEvent ev;
  r->hist = history_init();
  r->el = el_init("lunet", stdin, stdout, stderr);
  if (r->hist == NULL || r->el == NULL) {
    fprintf(stderr, "lunet: line editing unavailable (libedit failed to start)\n");
    if (r->el) el_end(r->el);
    if (r->hist) history_end(r->hist);
    r->el = NULL;
    r->hist = NULL;
    return;
  }
  history(r->hist, &ev, H_SETSIZE, HISTORY_SIZE);
  history(r->hist, &ev, H_SETUNIQUE, 1); /* skip a line equal to the last one */
  char buf[4096];
  const char *path = history_file(buf, sizeof buf);
  if (path) {
    r->hist_path = strdup(path);
    history(r->hist, &ev, H_LOAD, path); /* a missing file is a fresh start */
  }
  el_set(r->el, EL_CLIENTDATA, &r->client);
  el_set(r->el, EL_EDITOR, "emacs");
  el_set(r->el, EL_SIGNAL, 1); /* terminal restored on signals, resized on SIGWINCH */
  el_set(r->el, EL_PROMPT, prompt_fn);
  el_set(r->el, EL_HIST, history, r->hist);
  el_set(r->el, EL_GETCFN, read_char);
  /* The wide call: libedit's narrow EL_ADDFN duplicates the two strings and
   * never frees them (its source says so), which LeakSanitizer reports. */
  el_wset(r->el, EL_ADDFN, L"lunet-complete", L"complete a Lua name", shell_complete);
  el_set(r->el, EL_BIND, "^I", "lunet-complete", NULL);
  el_source(r->el, NULL); /* the user's ~/.editrc, if any */
}

static void reader_close(reader *r) {
  if (r->el) el_end(r->el);
  if (r->hist) history_end(r->hist);
  free(r->hist_path);
}

static void history_add(reader *r, const char *entry) {
  if (r->hist == NULL || entry[0] == '\0') return;
  HistEvent ev;
  history(r->hist, &ev, H_ENTER, entry);
  /* Saved at once, so that a session that ends badly keeps its lines. */
  if (r->hist_path && history(r->hist, &ev, H_SAVE, r->hist_path) < 0 && !r->hist_warned) {
    fprintf(stderr,
            "lunet: cannot save the history in %s (set LUNET_HISTORY to "
            "another file, or to \"\" for none)\n",
            r->hist_path);
    r->hist_warned = 1;
  }
}

/* Reads a line without its newline into a new Lua string on the stack.
 * Returns LINE_OK, or LINE_EOF / LINE_CANCELLED with nothing pushed. */
static int read_line_plain(lua_State *L, const char *prompt) {
  fputs(prompt, stdout);
  fflush(stdout);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  int c, any = 0;
  while ((c = getchar()) != EOF && c != '\n') {
    luaL_addchar(&b, (char)c);
    any = 1;
  }
  if (c == EOF && !any) {
    luaL_pushresult(&b);
    lua_pop(L, 1);
    return LINE_EOF;
  }
  luaL_pushresult(&b);
  return LINE_OK;
}

static int read_line(lua_State *L, reader *r, const char *prompt) {
  if (r->el == NULL) return read_line_plain(L, prompt);
  r->client.prompt = prompt;
  line_cancelled = 0;
  drain_cancel();
  /* Raw mode before libedit prints the prompt (it would switch only when
   * it reads), so a key typed right after the prompt, Ctrl-D included, is
   * never taken by the terminal's line discipline. */
  el_set(r->el, EL_PREP_TERM, 1);
  int count = 0;
  const char *line = el_gets(r->el, &count);
  if (line_cancelled) {
    fputc('\n', stdout);
    fflush(stdout);
    return LINE_CANCELLED;
  }
  if (line == NULL || count <= 0) return LINE_EOF;
  size_t len = strlen(line);
  if (len > 0 && line[len - 1] == '\n') len--;
  lua_pushlstring(L, line, len);
  return LINE_OK;
}

/* ---- compiling ---- */

static int incomplete(lua_State *L, int status) {
  if (status != LUA_ERRSYNTAX) return 0;
  size_t len;
  const char *msg = lua_tolstring(L, -1, &len);
  return len >= 5 && strcmp(msg + len - 5, "<eof>") == 0;
}

/* The line on top as `return <line>` (or `=expr`): on success pushes the
 * chunk above the line, else leaves the stack as it was. */
static int try_expression(lua_State *L) {
  const char *line = lua_tostring(L, -1);
  const char *expr = line[0] == '=' ? line + 1 : line;
  const char *code = lua_pushfstring(L, "return %s;", expr);
  int status = luaL_loadbuffer(L, code, strlen(code), "=stdin");
  lua_remove(L, -2); /* the "return" text */
  if (status != LUA_OK) lua_pop(L, 1);
  return status;
}

/* Reads one complete statement and pushes its compiled chunk (or the
 * syntax error message).  Returns the load status, or -LINE_EOF /
 * -LINE_CANCELLED with nothing pushed. */
static int read_chunk(lua_State *L, reader *r) {
  int got = read_line(L, r, PROMPT1);
  if (got != LINE_OK) return -got;
  if (lua_rawlen(L, -1) == 0) {
    lua_pop(L, 1);
    return -LINE_CANCELLED; /* an empty line: just a new prompt */
  }
  if (lua_tostring(L, -1)[0] == '=') { /* "=expr" is "return expr", also over several lines */
    lua_pushfstring(L, "return %s", lua_tostring(L, -1) + 1);
    lua_remove(L, -2);
  }
  int status = try_expression(L);
  while (status != LUA_OK) {
    size_t len;
    const char *code = lua_tolstring(L, -1, &len);
    status = luaL_loadbuffer(L, code, len, "=stdin");
    if (!incomplete(L, status)) break;
    lua_pop(L, 1); /* the "<eof>" message */
    got = read_line(L, r, PROMPT2);
    if (got == LINE_CANCELLED) {
      lua_pop(L, 1);
      return -LINE_CANCELLED;
    }
    if (got == LINE_EOF) { /* report the unfinished statement */
      status = luaL_loadbuffer(L, code, len, "=stdin");
      break;
    }
    lua_pushliteral(L, "\n");
    lua_insert(L, -2);
    lua_concat(L, 3);
  }
  /* The history keeps a statement of several lines as one entry. */
  history_add(r, lua_tostring(L, -2));
  lua_remove(L, -2);
  return status;
}

/* ---- running ---- */

/* Drops the frames of the REPL itself from the end of a traceback. */
static void print_error(const char *msg) {
  size_t len = strlen(msg);
  static const char tail[] = "\n\t[C]: in ?";
  while (len >= sizeof tail - 1 &&
         memcmp(msg + len - (sizeof tail - 1), tail, sizeof tail - 1) == 0)
    len -= sizeof tail - 1;
  fflush(stdout);
  fwrite(msg, 1, len, stderr);
  fputc('\n', stderr);
  fflush(stderr);
}

/* After a Ctrl-C the first line of the message says enough. */
static void print_interrupted(const char *msg) {
  const char *nl = strchr(msg, '\n');
  int len = nl ? (int)(nl - msg) : (int)strlen(msg);
  fflush(stdout);
  if (isatty(STDERR_FILENO)) fputc('\n', stderr); /* past the "^C" the terminal echoed */
  fprintf(stderr, "%.*s\n", len, msg);
  const char *hit = strstr(msg, "interrupted");
  if (hit == NULL || hit >= msg + len) fputs("interrupted\n", stderr);
  fflush(stderr);
}

/* The results through the global print, as stock lua (a user's own print
 * included); without one, all through tostring(), tab-separated. */
static int print_values(lua_State *L) {
  int n = lua_gettop(L);
  if (lua_getglobal(L, "print") == LUA_TFUNCTION) {
    lua_insert(L, 1);
    lua_call(L, n, 0);
    return 0;
  }
  lua_pop(L, 1);
  for (int i = 1; i <= n; i++) {
    size_t len;
    const char *s = luaL_tolstring(L, i, &len);
    if (i > 1) fputc('\t', stdout);
    fwrite(s, 1, len, stdout);
    lua_pop(L, 1);
  }
  fputc('\n', stdout);
  fflush(stdout);
  return 0;
}

/* Runs the chunk on top and prints its results or its error. */
static void run_chunk(lua_State *L) {
  int base = lua_gettop(L);
  lua_pushcfunction(L, shell_msghandler);
  lua_insert(L, base);
  presses = 0;
  at_prompt = 0;
  int status = lua_pcall(L, 0, LUA_MULTRET, base);
  int nres = lua_gettop(L) - base;
  if (status == LUA_OK && nres > 0) {
    lua_pushcfunction(L, print_values);
    lua_insert(L, base + 1);
    status = lua_pcall(L, nres, 0, base);
  }
  if (status != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    if (msg == NULL) msg = "(error object is not a string)";
    if (presses > 0) /* a Ctrl-C while it ran */
      print_interrupted(msg);
    else
      print_error(msg);
  }
  lua_settop(L, base - 1);
}

/* Before each prompt: no Ctrl-C left over from the code that ran.  From
 * here until the code of the next line runs, Ctrl-C only drops the line. */
static void clear_interrupt(lua_State *L) {
  at_prompt = 1;
  if (lua_gethook(L) == interrupt_hook) lua_sethook(L, NULL, 0, 0); /* a user's hook stays */
  lunet_interrupt_clear();
  presses = 0;
}

/* nn = require "lunet", unless the program already set nn. */
static void load_library(lua_State *L) {
  if (lua_getglobal(L, "nn") != LUA_TNIL) {
    lua_pop(L, 1);
    return;
  }
  lua_pop(L, 1);
  lua_pushcfunction(L, shell_msghandler);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "lunet");
  if (lua_pcall(L, 1, 1, -3) == LUA_OK) {
    lua_setglobal(L, "nn");
  } else {
    fprintf(stderr, "lunet: could not load the lunet library; plain Lua goes on:\n");
    print_error(lua_tostring(L, -1) ? lua_tostring(L, -1) : "(no message)");
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

void shell_repl(lua_State *L, int load_lib) {
  reader r;
  repl_state = L;
  install_sigint();
  reader_open(&r, L);
  puts(BANNER);
  fflush(stdout);
  if (load_lib) load_library(L);
  for (;;) {
    clear_interrupt(L);
    int status = read_chunk(L, &r);
    if (status == -LINE_EOF) break;
    if (status == -LINE_CANCELLED) continue;
    if (status == LUA_OK)
      run_chunk(L);
    else {
      print_error(lua_tostring(L, -1));
      lua_pop(L, 1);
    }
  }
  fputc('\n', stdout);
  fflush(stdout);
  reader_close(&r);
  signal(SIGINT, SIG_DFL);
  lunet_interrupt_clear();
}
