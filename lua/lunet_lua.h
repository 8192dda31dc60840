/*
 * Shared pieces of the Lua binding (the lua/ C files): the tensor userdata and the
 * per-state context.  Internal to the binding: hidden visibility.
 */
#ifndef LUNET_LUA_H
#define LUNET_LUA_H

#include <lua.h>
#include <lauxlib.h>
#include "lunet/lunet.h"

#define LUNETL_HIDDEN __attribute__((visibility("hidden")))
#define LUNETL_TENSOR "lunet.Tensor"

/* The lunet_ctx of this Lua state (created on first use, freed with it). */
LUNETL_HIDDEN lunet_ctx *lunetL_ctx(lua_State *L);
/* Raises a Lua error with the context's message; `what` (may be NULL) is
 * put in front, e.g. "Conv2D". */
LUNETL_HIDDEN int lunetL_error(lua_State *L, const char *what);
/* Checks argument `arg` is a tensor; borrowed. */
LUNETL_HIDDEN lunet_tensor *lunetL_checktensor(lua_State *L, int arg);
LUNETL_HIDDEN lunet_tensor *lunetL_totensor(lua_State *L, int arg); /* NULL if not one */
/* Pushes t as a Lua tensor, taking over the caller's reference; t == NULL
 * raises the context's error instead. */
LUNETL_HIDDEN void lunetL_pushtensor(lua_State *L, lunet_tensor *t);

/* Checks argument `arg` is a layer (lunet.Layer); borrowed. */
LUNETL_HIDDEN struct lunet_layer *lunetL_checklayer(lua_State *L, int arg);
/* Pushes a layer userdata holding a new reference to l. */
LUNETL_HIDDEN void lunetL_pushlayer(lua_State *L, struct lunet_layer *l);

/* Checks argument `arg` is an augmentation pipeline (lunet.augment). */
typedef struct lunet_augment lunet_augment;
LUNETL_HIDDEN lunet_augment *lunetL_checkaugment(lua_State *L, int arg);

/* Registration of the binding's parts into the module table on the top of
 * the stack. */
LUNETL_HIDDEN void lunetL_open_tensor(lua_State *L);
LUNETL_HIDDEN void lunetL_open_model(lua_State *L);
LUNETL_HIDDEN void lunetL_open_data(lua_State *L);
LUNETL_HIDDEN void lunetL_open_augment(lua_State *L);
LUNETL_HIDDEN void lunetL_open_batches(lua_State *L);
LUNETL_HIDDEN void lunetL_open_train(lua_State *L);
LUNETL_HIDDEN void lunetL_open_json(lua_State *L);
LUNETL_HIDDEN void lunetL_open_lambda(lua_State *L);
LUNETL_HIDDEN void lunetL_open_text(lua_State *L);
LUNETL_HIDDEN void lunetL_open_image(lua_State *L);
LUNETL_HIDDEN void lunetL_open_csv(lua_State *L);
LUNETL_HIDDEN void lunetL_open_select(lua_State *L);
LUNETL_HIDDEN void lunetL_open_metric(lua_State *L);
LUNETL_HIDDEN void lunetL_open_plot(lua_State *L);
LUNETL_HIDDEN void lunetL_open_profile(lua_State *L);

#endif
