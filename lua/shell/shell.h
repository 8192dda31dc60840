/*
 * The `lunet` executable's own parts, shared by the files of lua/shell only:
 * main.c (command line, script runner), repl.c (the interactive loop),
 * complete.c (tab completion).
 */
#ifndef LUNET_SHELL_H
#define LUNET_SHELL_H

#include <histedit.h>
#include <lua.h>

/* The binding's C module, statically linked into the executable and put in
 * package.preload["lunet.core"]. */
int luaopen_lunet_core(lua_State *L);

/* Message handler for lua_pcall: the error (any value) as a string with a
 * traceback appended. */
int shell_msghandler(lua_State *L);

/* Runs the REPL on L until end of input; `load_lib` pre-loads the library
 * as the global `nn`. */
void shell_repl(lua_State *L, int load_lib);

/* What libedit's callbacks (prompt, completion) get as EL_CLIENTDATA. */
typedef struct shell_client {
  lua_State *L;
  const char *prompt;
} shell_client;

/* libedit function bound to Tab: completes the Lua name path before the
 * cursor.  Finds the lua_State in the editor's shell_client. */
unsigned char shell_complete(EditLine *el, int ch);

#endif
