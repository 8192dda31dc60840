/*
 * lunet: the command line.  Runs scripts the way stock `lua` does
 * (`lunet [options] [script [args]]`, the same `arg` table, `...`, exit
 * status and SIGINT behaviour) and opens the REPL (repl.c) when asked or
 * when nothing else is to be done on a terminal.  Before any code runs, the
 * module paths of the tree this executable sits in are put in front of
 * package.path/cpath and the statically linked binding is preloaded as
 * "lunet.core", so `require "lunet"` works from the build tree and from an
 * installed tree alike.
 */
#include <errno.h>
#include <limits.h>
#include <locale.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "lunet/lunet.h"
#include "shell.h"

#define PROGNAME "lunet"

/* What the command line asked for. */
typedef struct options {
  int script;     /* index in argv of the script (or "-"), 0: none */
  int has_e;      /* -e given */
  int has_i;      /* -i given */
  int has_v;      /* -v given */
  int has_E;      /* -E: ignore environment variables */
  int first_free; /* argv index after the options */
} options;

static void print_usage(FILE *f) {
  fprintf(f, "usage: " PROGNAME " [options] [script [args]]\n"
             "       " PROGNAME " serve --model NAME=PATH ...  (the HTTP server: " PROGNAME " serve --help)\n"
             "Available options are:\n"
             "  -e stat   execute string 'stat'\n"
             "  -i        enter interactive mode after executing 'script'\n"
             "  -l mod    require library 'mod' into global 'mod'\n"
             "  -l g=mod  require library 'mod' into global 'g'\n"
             "  -v        show version information\n"
             "  -E        ignore environment variables\n"
             "  -W        turn warnings on\n"
             "  -h        show this help (also --help; --version is -v)\n"
             "  --        stop handling options\n"
             "  -         stop handling options and execute stdin\n"
             "With no arguments: the REPL on a terminal, else the program on stdin.\n"
             "Environment: LUNET_HISTORY (REPL history file, default ~/.lunet_history),\n"
             "LUA_INIT, LUA_PATH, LUA_CPATH (as for lua).\n");
}

static void print_version(void) {
  printf(PROGNAME " %s (%s)\n", LUNET_VERSION_STRING, LUA_RELEASE);
  fflush(stdout);
}

static void message(const char *msg) {
  fflush(stdout);
  fprintf(stderr, PROGNAME ": %s\n", msg);
  fflush(stderr);
}

/* Prints the error on top of the stack (if status says there is one). */
static int report(lua_State *L, int status) {
  if (status != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    message(msg ? msg : "(error object is not a string)");
    lua_pop(L, 1);
  }
  return status;
}

int shell_msghandler(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
      return 1; /* an error object that knows how to print itself */
    msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

/* ---- SIGINT while a script runs: stock lua's behaviour ---- */

static lua_State *running_state;

/* The Ctrl-C delivered as an error, once: the core's flag is cleared with
 * it, so what runs after a pcall that caught it (an evaluate after an
 * interrupted fit) is not stopped again.  The hook runs at the first Lua
 * step (a C function's return included), so C loops polling the flag have
 * seen it by then. */
static void stop_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  /* a C function that stopped for it raised its own error and took the
   * flag (a download's "interrupted; kept N bytes, run again to resume"):
   * that error is the one to show */
  if (!lunet_interrupted()) return;
  lunet_interrupt_clear();
  luaL_error(L, "interrupted!");
}

/* Sets a hook that raises at the next Lua step, and the core's flag that
 * its C loops poll; a second Ctrl-C kills the process (SIG_DFL). */
static void on_sigint(int sig) {
  signal(sig, SIG_DFL);
  lunet_interrupt();
  lua_sethook(running_state, stop_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
}

/* Calls the function below its `narg` arguments with the traceback handler
 * and the script SIGINT handler. */
static int docall(lua_State *L, int narg, int nres) {
  int base = lua_gettop(L) - narg;
  lua_pushcfunction(L, shell_msghandler);
  lua_insert(L, base);
  running_state = L;
  /* as stock lua: no SA_RESTART, so a blocking read (io.read) is cut short */
  struct sigaction sa = {.sa_handler = on_sigint};
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  int status = lua_pcall(L, narg, nres, base);
  signal(SIGINT, SIG_DFL);
  lua_remove(L, base);
  return status;
}

static int dochunk(lua_State *L, int status) {
  if (status == LUA_OK) status = docall(L, 0, 0);
  return report(L, status);
}

static int dofile(lua_State *L, const char *name) { return dochunk(L, luaL_loadfile(L, name)); }

static int dostring(lua_State *L, const char *s, const char *name) {
  return dochunk(L, luaL_loadbuffer(L, s, strlen(s), name));
}

/* -l mod or -l g=mod: global g (default mod) = require(mod). */
static int dolibrary(lua_State *L, const char *spec) {
  const char *eq = strchr(spec, '=');
  const char *mod = eq ? eq + 1 : spec;
  lua_getglobal(L, "require");
  lua_pushstring(L, mod);
  int status = docall(L, 1, 1);
  if (status == LUA_OK) {
    if (eq)
      lua_pushlstring(L, spec, (size_t)(eq - spec));
    else
      lua_pushstring(L, mod);
    lua_insert(L, -2);
    lua_setglobal(L, lua_tostring(L, -2));
    lua_pop(L, 1);
  }
  return report(L, status);
}

/* ---- command line ---- */

/* Fills `o`; returns 0, or -1 after printing what is wrong. */
static int collect_options(int argc, char **argv, options *o) {
  memset(o, 0, sizeof *o);
  int i;
  for (i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (a[0] != '-') break;  /* the script */
    if (a[1] == '\0') break; /* "-": stdin is the script */
    if (strcmp(a, "--") == 0) {
      i++;
      break;
    }
    if (strcmp(a, "--help") == 0) { /* GNU's long forms, as people type them */
      print_usage(stdout);
      exit(EXIT_SUCCESS);
    }
    if (strcmp(a, "--version") == 0) {
      o->has_v = 1;
      continue;
    }
    switch (a[1]) {
    case 'i':
      o->has_i = 1;
      if (a[2]) goto bad;
      break;
    case 'v':
      o->has_v = 1;
      if (a[2]) goto bad;
      break;
    case 'E':
      o->has_E = 1;
      if (a[2]) goto bad;
      break;
    case 'W':
      if (a[2]) goto bad;
      break;
    case 'h':
      if (a[2]) goto bad;
      print_usage(stdout);
      exit(EXIT_SUCCESS);
    case 'e':
    case 'l':
      if (a[1] == 'e') o->has_e = 1;
      if (a[2] == '\0') {
        if (++i >= argc || argv[i][0] == '-') {
          fprintf(stderr, PROGNAME ": '%s' needs an argument\n", a);
          print_usage(stderr);
          return -1;
        }
      }
      break;
    default:
      goto bad;
    }
  }
  o->first_free = i;
  o->script = i < argc ? i : 0;
  return 0;
bad:
  fprintf(stderr, PROGNAME ": unrecognized option '%s'\n", argv[i]);
  print_usage(stderr);
  return -1;
}

/* Runs -e, -l and -W in command-line order; 0 if all went well. */
static int run_options(lua_State *L, int argc, char **argv, int end) {
  (void)argc;
  for (int i = 1; i < end; i++) {
    const char *a = argv[i];
    if (a[0] != '-' || (a[1] != 'e' && a[1] != 'l' && a[1] != 'W')) continue;
    if (a[1] == 'W') {
      lua_warning(L, "@on", 0);
      continue;
    }
    const char *extra = a[2] ? a + 2 : argv[++i];
    int status = a[1] == 'e' ? dostring(L, extra, "=(command line)") : dolibrary(L, extra);
    if (status != LUA_OK) return -1;
  }
  return 0;
}

/* Global `arg`: arg[0] = script, arg[1..] = its arguments, negative
 * indices = the program and options before the script. */
static void create_arg_table(lua_State *L, int argc, char **argv, int script) {
  lua_createtable(L, argc - script, script + 1);
  for (int i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - script);
  }
  lua_setglobal(L, "arg");
}

/* The script's arguments (arg[1..#arg]) onto the stack; returns how many. */
static int push_script_args(lua_State *L) {
  if (lua_getglobal(L, "arg") != LUA_TTABLE) luaL_error(L, "'arg' is not a table");
  int n = (int)luaL_len(L, -1);
  luaL_checkstack(L, n + 3, "too many arguments to script");
  for (int i = 1; i <= n; i++) lua_rawgeti(L, -i, i);
  lua_remove(L, -n - 1);
  return n;
}

static int run_script(lua_State *L, char **argv, int script) {
  const char *fname = argv[script];
  if (strcmp(fname, "-") == 0 && strcmp(argv[script - 1], "--") != 0) fname = NULL; /* stdin */
  int status = luaL_loadfile(L, fname);
  if (status == LUA_OK) {
    int n = push_script_args(L);
    status = docall(L, n, LUA_MULTRET);
  }
  return report(L, status);
}

static int run_lua_init(lua_State *L) {
  const char *name = "=LUA_INIT_5_4";
  const char *init = getenv(name + 1);
  if (init == NULL) {
    name = "=LUA_INIT";
    init = getenv(name + 1);
  }
  if (init == NULL) return LUA_OK;
  if (init[0] == '@') return dofile(L, init + 1);
  return dostring(L, init, name);
}

/* ---- module paths ---- */

/* package[field] = prefix .. package[field]; package table on top. */
static void prepend_field(lua_State *L, const char *field, const char *prefix) {
  lua_pushstring(L, prefix);
  lua_getfield(L, -2, field);
  if (lua_type(L, -1) != LUA_TSTRING) {
    lua_pop(L, 1);
    lua_pushliteral(L, "");
  }
  lua_concat(L, 2);
  lua_setfield(L, -2, field);
}

/* The tree this executable lives in (<prefix>/bin/lunet) holds the Lua
 * files in <prefix>/share/lua/5.4 and C modules in <prefix>/lib/lua/5.4,
 * both in the build tree and once installed. */
static void setup_paths(lua_State *L) {
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  lua_getglobal(L, "package");
  if (n > 0) {
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (slash) *slash = '\0'; /* exe is now the bin directory */
    char prefix[2 * PATH_MAX + 64];
    snprintf(prefix, sizeof prefix, "%s/../share/lua/5.4/?.lua;%s/../share/lua/5.4/?/init.lua;",
             exe, exe);
    prepend_field(L, "path", prefix);
    snprintf(prefix, sizeof prefix, "%s/../lib/lua/5.4/?.so;", exe);
    prepend_field(L, "cpath", prefix);
  }
  lua_getfield(L, -1, "preload");
  lua_pushcfunction(L, luaopen_lunet_core);
  lua_setfield(L, -2, "lunet.core");
  lua_pop(L, 2);
}

/* ---- main ---- */

/* Runs inside lua_pcall so that memory errors while setting up are
 * reported, not fatal.  Pushes true on success. */
static int pmain(lua_State *L) {
  int argc = (int)lua_tointeger(L, 1);
  char **argv = lua_touserdata(L, 2);
  options o;
  if (collect_options(argc, argv, &o) != 0) return 0; /* nothing pushed: failure */
  luaL_checkversion(L);
  if (o.has_v) print_version();
  if (o.has_E) {
    lua_pushboolean(L, 1); /* makes package ignore LUA_PATH and LUA_CPATH */
    lua_setfield(L, LUA_REGISTRYINDEX, "LUA_NOENV");
  }
  luaL_openlibs(L);
  setup_paths(L);
  create_arg_table(L, argc, argv, o.script);
  lua_gc(L, LUA_GCGEN, 0, 0);
  if (!o.has_E && run_lua_init(L) != LUA_OK) return 0;
  if (run_options(L, argc, argv, o.first_free) != 0) return 0;
  if (o.script && run_script(L, argv, o.script) != LUA_OK) return 0;
  if (o.has_i) {
    shell_repl(L, 1);
  } else if (!o.script && !o.has_e && !o.has_v) {
    if (isatty(STDIN_FILENO))
      shell_repl(L, 1);
    else if (dofile(L, NULL) != LUA_OK)
      return 0;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* `lunet serve ...` runs the HTTP server, lunet-serve, installed beside
 * this program (serve/serve.c). */
static int exec_serve(char **argv) {
  char self[4096];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 32);
  if (n <= 0) {
    message("serve: cannot find this program's folder");
    return EXIT_FAILURE;
  }
  self[n] = '\0';
  char *slash = strrchr(self, '/');
  strcpy(slash + 1, "lunet-serve");
  argv[1] = self;
  execv(self, argv + 1);
  fprintf(stderr, "lunet: serve: cannot run %s: %s (was lunet built with libmicrohttpd-dev?)\n", self,
          strerror(errno));
  return EXIT_FAILURE;
}

/* Sanitizer builds: Lua's C modules (lunet.core ...) stay loaded through
 * lua_close, which would dlclose them, so that a leak report names their
 * frames instead of "<unknown module>". */
static void keep_c_modules(lua_State *L) {
#if defined(__SANITIZE_ADDRESS__)
  lua_getfield(L, LUA_REGISTRYINDEX, "_CLIBS");
  if (lua_getmetatable(L, -1)) {
    lua_pushnil(L);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
#else
  (void)L;
#endif
}

int main(int argc, char **argv) {
  if (argc > 1 && !strcmp(argv[1], "serve")) return exec_serve(argv);
  setlocale(LC_CTYPE, ""); /* libedit edits multibyte (UTF-8) lines */
  lua_State *L = luaL_newstate();
  if (L == NULL) {
    message("cannot create state: not enough memory");
    return EXIT_FAILURE;
  }
  lua_pushcfunction(L, pmain);
  lua_pushinteger(L, argc);
  lua_pushlightuserdata(L, argv);
  int status = lua_pcall(L, 2, 1, 0);
  int ok = lua_toboolean(L, -1);
  report(L, status);
  keep_c_modules(L);
  lua_close(L);
  return (ok && status == LUA_OK) ? EXIT_SUCCESS : EXIT_FAILURE;
}
