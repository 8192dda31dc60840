/*
 * lunet.onnx: writes (and reads back, for checks) ONNX model files with
 * protobuf-c, from the message types that protoc-c generates at build time
 * from the schema of Debian's libonnx-dev (/usr/include/onnx/onnx.proto).
 * A module of its own, so that neither the core nor the main binding links
 * protobuf-c.  The graph itself is made in Lua (lunet/export.lua); this
 * file only turns its description into the wire format:
 *
 *   write(path, {opset =, producer_version =, name =, doc =,
 *     inputs = {{name =, dtype = "float"|"int64", shape = {"N", 32, 32, 3}}},
 *     outputs = {...},
 *     initializers = {{name =, dims = {...}, tensor = t} | {name =, dims =, int64 = {...}}
 *                     | {name =, dims =, float = {...}}},
 *     nodes = {{op =, name =, inputs = {...}, outputs = {...}, attrs = {k = v}}},
 *     metadata = {key = "value"}})
 *
 * An attribute's type follows its Lua value: integer -> INT, float ->
 * FLOAT, string -> STRING, a list of integers -> INTS, a list holding a
 * float -> FLOATS.  A shape entry that is a string is a symbolic
 * dimension (dim_param).  The file is written under a temporary name and
 * renamed, so a failed export never leaves half a file.
 *
 * Every allocation is a userdata anchored in one Lua table, so an error
 * anywhere (raised by luaL_error) leaks nothing.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "lunet/lunet.h"
#include "onnx.pb-c.h"

#define TENSOR_MT "lunet.Tensor"
#define IR_VERSION 8 /* the IR version of opsets 15 to 17 */

static lunet_ctx *octx; /* for tensor reads */

/* The anchor table sits at stack index 3 in write (path, model, anchor). */
#define ANCHOR 3

static void *alloc(lua_State *L, size_t n) {
  void *p = lua_newuserdatauv(L, n ? n : 1, 0);
  memset(p, 0, n ? n : 1);
  lua_rawseti(L, ANCHOR, (lua_Integer)lua_rawlen(L, ANCHOR) + 1);
  return p;
}

static char *str(lua_State *L, int idx, const char *what) {
  size_t n;
  const char *s = lua_tolstring(L, idx, &n);
  if (!s) luaL_error(L, "onnx: %s must be a string", what);
  char *c = alloc(L, n + 1);
  memcpy(c, s, n);
  return c;
}

/* Field `k` of the table at `idx` as a string (NULL when absent). */
static char *field_str(lua_State *L, int idx, const char *k, const char *what) {
  char *s = NULL;
  if (lua_getfield(L, idx, k) != LUA_TNIL) s = str(L, -1, what);
  lua_pop(L, 1);
  return s;
}

/* The list at the top of the stack as strings. */
static char **str_list(lua_State *L, size_t *n, const char *what) {
  if (!lua_istable(L, -1)) luaL_error(L, "onnx: %s must be a list of names", what);
  *n = lua_rawlen(L, -1);
  char **v = alloc(L, *n * sizeof *v);
  for (size_t i = 0; i < *n; i++) {
    lua_rawgeti(L, -1, (lua_Integer)i + 1);
    v[i] = str(L, -1, what);
    lua_pop(L, 1);
  }
  return v;
}

static int64_t *int_list(lua_State *L, int idx, size_t *n, const char *what) {
  idx = lua_absindex(L, idx);
  *n = lua_rawlen(L, idx);
  int64_t *v = alloc(L, *n * sizeof *v);
  for (size_t i = 0; i < *n; i++) {
    lua_rawgeti(L, idx, (lua_Integer)i + 1);
    int ok;
    v[i] = (int64_t)lua_tointegerx(L, -1, &ok);
    if (!ok) luaL_error(L, "onnx: %s[%d] must be an integer", what, (int)i + 1);
    lua_pop(L, 1);
  }
  return v;
}

static float *float_list(lua_State *L, int idx, size_t *n, const char *what) {
  idx = lua_absindex(L, idx);
  *n = lua_rawlen(L, idx);
  float *v = alloc(L, *n * sizeof *v);
  for (size_t i = 0; i < *n; i++) {
    lua_rawgeti(L, idx, (lua_Integer)i + 1);
    if (!lua_isnumber(L, -1)) luaL_error(L, "onnx: %s[%d] must be a number", what, (int)i + 1);
    v[i] = (float)lua_tonumber(L, -1);
    lua_pop(L, 1);
  }
  return v;
}

/* One attribute from the key at -2 and the value at -1. */
static Onnx__AttributeProto *attribute(lua_State *L, const char *node) {
  Onnx__AttributeProto *a = alloc(L, sizeof *a);
  onnx__attribute_proto__init(a);
  if (lua_type(L, -2) != LUA_TSTRING) luaL_error(L, "onnx: node %s: attribute names must be strings", node);
  a->name = str(L, -2, "an attribute name");
  a->has_type = 1;
  switch (lua_type(L, -1)) {
  case LUA_TNUMBER:
    if (lua_isinteger(L, -1)) {
      a->type = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT;
      a->has_i = 1;
      a->i = (int64_t)lua_tointeger(L, -1);
    } else {
      a->type = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT;
      a->has_f = 1;
      a->f = (float)lua_tonumber(L, -1);
    }
    break;
  case LUA_TSTRING: {
    size_t n;
    const char *s = lua_tolstring(L, -1, &n);
    a->type = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRING;
    a->has_s = 1;
    a->s.data = alloc(L, n);
    memcpy(a->s.data, s, n);
    a->s.len = n;
    break;
  }
  case LUA_TTABLE: {
    size_t n = lua_rawlen(L, -1);
    int floats = 0, strings = 0;
    for (size_t i = 1; i <= n; i++) {
      int t = lua_rawgeti(L, -1, (lua_Integer)i);
      if (t == LUA_TSTRING) strings = 1;
      else if (t == LUA_TNUMBER && !lua_isinteger(L, -1)) floats = 1;
      lua_pop(L, 1);
    }
    if (n == 0) luaL_error(L, "onnx: node %s: attribute %s is an empty list", node, a->name);
    if (strings) {
      a->type = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRINGS;
      a->n_strings = n;
      a->strings = alloc(L, n * sizeof *a->strings);
      for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, -1, (lua_Integer)i + 1);
        char *s = str(L, -1, "a string attribute");
        a->strings[i].data = (uint8_t *)s;
        a->strings[i].len = strlen(s);
        lua_pop(L, 1);
      }
    } else if (floats) {
      a->type = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOATS;
      a->floats = float_list(L, -1, &a->n_floats, a->name);
    } else {
      a->type = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS;
      a->ints = int_list(L, -1, &a->n_ints, a->name);
    }
    break;
  }
  default:
    luaL_error(L, "onnx: node %s: attribute %s has a %s value", node, a->name, luaL_typename(L, -1));
  }
  return a;
}

/* Attributes sorted by name, so that one model always gives the same bytes. */
static int by_name(const void *x, const void *y) {
  return strcmp((*(Onnx__AttributeProto *const *)x)->name, (*(Onnx__AttributeProto *const *)y)->name);
}

static Onnx__NodeProto *node(lua_State *L, int idx, size_t k) {
  idx = lua_absindex(L, idx);
  Onnx__NodeProto *n = alloc(L, sizeof *n);
  onnx__node_proto__init(n);
  n->op_type = field_str(L, idx, "op", "a node's op");
  if (!n->op_type) luaL_error(L, "onnx: node %d has no op", (int)k + 1);
  n->name = field_str(L, idx, "name", "a node's name");
  const char *label = n->name ? n->name : n->op_type;
  lua_getfield(L, idx, "inputs");
  n->input = str_list(L, &n->n_input, "a node's inputs");
  lua_pop(L, 1);
  lua_getfield(L, idx, "outputs");
  n->output = str_list(L, &n->n_output, "a node's outputs");
  lua_pop(L, 1);
  if (lua_getfield(L, idx, "attrs") == LUA_TTABLE) {
    size_t count = 0;
    lua_pushnil(L);
    while (lua_next(L, -2)) {
      count++;
      lua_pop(L, 1);
    }
    n->attribute = alloc(L, count * sizeof *n->attribute);
    lua_pushnil(L);
    while (lua_next(L, -2)) {
      n->attribute[n->n_attribute++] = attribute(L, label);
      lua_pop(L, 1);
    }
    qsort(n->attribute, n->n_attribute, sizeof *n->attribute, by_name);
  }
  lua_pop(L, 1);
  return n;
}

static Onnx__TensorProto *initializer(lua_State *L, int idx, size_t k) {
  idx = lua_absindex(L, idx);
  Onnx__TensorProto *t = alloc(L, sizeof *t);
  onnx__tensor_proto__init(t);
  t->name = field_str(L, idx, "name", "an initializer's name");
  if (!t->name) luaL_error(L, "onnx: initializer %d has no name", (int)k + 1);
  if (lua_getfield(L, idx, "dims") != LUA_TTABLE) luaL_error(L, "onnx: initializer %s has no dims", t->name);
  t->dims = int_list(L, -1, &t->n_dims, "dims");
  lua_pop(L, 1);
  int64_t count = 1;
  for (size_t i = 0; i < t->n_dims; i++) count *= t->dims[i];
  t->has_data_type = 1;
  if (lua_getfield(L, idx, "tensor") != LUA_TNIL) {
    lunet_tensor **p = luaL_testudata(L, -1, TENSOR_MT);
    if (!p || !*p) luaL_error(L, "onnx: initializer %s: tensor is not a live lunet tensor", t->name);
    if (lunet_tensor_dtype(*p) != LUNET_F32 || lunet_tensor_numel(*p) != count)
      luaL_error(L, "onnx: initializer %s: a float32 tensor of %lld values expected", t->name, (long long)count);
    size_t bytes = sizeof(float) * (size_t)count;
    t->data_type = ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT;
    t->has_raw_data = 1;
    t->raw_data.data = alloc(L, bytes);
    t->raw_data.len = bytes;
    if (!octx && !(octx = lunet_ctx_new())) luaL_error(L, "onnx: no lunet context");
    if (lunet_tensor_read(octx, *p, t->raw_data.data, bytes))
      luaL_error(L, "onnx: initializer %s: %s", t->name, lunet_ctx_error(octx));
  } else if (lua_getfield(L, idx, "int64") == LUA_TTABLE) {
    t->data_type = ONNX__TENSOR_PROTO__DATA_TYPE__INT64;
    t->int64_data = int_list(L, -1, &t->n_int64_data, t->name);
    if ((int64_t)t->n_int64_data != count) luaL_error(L, "onnx: initializer %s: %lld values expected", t->name, (long long)count);
    lua_pop(L, 1);
  } else if (lua_getfield(L, idx, "float") == LUA_TTABLE) {
    t->data_type = ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT;
    t->float_data = float_list(L, -1, &t->n_float_data, t->name);
    if ((int64_t)t->n_float_data != count) luaL_error(L, "onnx: initializer %s: %lld values expected", t->name, (long long)count);
    lua_pop(L, 2);
  } else {
    luaL_error(L, "onnx: initializer %s has no values (tensor, int64 or float)", t->name);
  }
  lua_pop(L, 1);
  return t;
}

static int elem_type(lua_State *L, const char *dtype, const char *name) {
  if (!dtype || strcmp(dtype, "float") == 0) return ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT;
  if (strcmp(dtype, "int64") == 0) return ONNX__TENSOR_PROTO__DATA_TYPE__INT64;
  return luaL_error(L, "onnx: value %s: dtype %s (float or int64 expected)", name, dtype);
}

static Onnx__ValueInfoProto *value_info(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  Onnx__ValueInfoProto *v = alloc(L, sizeof *v);
  onnx__value_info_proto__init(v);
  v->name = field_str(L, idx, "name", "a graph input's or output's name");
  if (!v->name) luaL_error(L, "onnx: a graph input or output has no name");
  Onnx__TypeProto *type = alloc(L, sizeof *type);
  onnx__type_proto__init(type);
  Onnx__TypeProto__Tensor *tt = alloc(L, sizeof *tt);
  onnx__type_proto__tensor__init(tt);
  tt->has_elem_type = 1;
  tt->elem_type = elem_type(L, field_str(L, idx, "dtype", "dtype"), v->name);
  Onnx__TensorShapeProto *shape = alloc(L, sizeof *shape);
  onnx__tensor_shape_proto__init(shape);
  if (lua_getfield(L, idx, "shape") != LUA_TTABLE) luaL_error(L, "onnx: value %s has no shape", v->name);
  shape->n_dim = lua_rawlen(L, -1);
  shape->dim = alloc(L, shape->n_dim * sizeof *shape->dim);
  for (size_t i = 0; i < shape->n_dim; i++) {
    Onnx__TensorShapeProto__Dimension *d = alloc(L, sizeof *d);
    onnx__tensor_shape_proto__dimension__init(d);
    lua_rawgeti(L, -1, (lua_Integer)i + 1);
    if (lua_type(L, -1) == LUA_TSTRING) {
      d->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM;
      d->dim_param = str(L, -1, "a dimension");
    } else if (lua_isinteger(L, -1)) {
      d->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE;
      d->dim_value = (int64_t)lua_tointeger(L, -1);
    } else {
      luaL_error(L, "onnx: value %s: dimension %d must be an integer or a name", v->name, (int)i + 1);
    }
    lua_pop(L, 1);
    shape->dim[i] = d;
  }
  lua_pop(L, 1);
  tt->shape = shape;
  type->value_case = ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE;
  type->tensor_type = tt;
  v->type = type;
  return v;
}

/* The list in field `k` of the model table (index 2), each entry made by f. */
#define LIST(k, type, f, out, nout)                                  \
  do {                                                               \
    if (lua_getfield(L, 2, k) != LUA_TTABLE) lua_newtable(L);        \
    nout = lua_rawlen(L, -1);                                        \
    out = alloc(L, nout * sizeof(type *));                           \
    for (size_t i_ = 0; i_ < nout; i_++) {                           \
      lua_rawgeti(L, -1, (lua_Integer)i_ + 1);                       \
      if (!lua_istable(L, -1)) luaL_error(L, "onnx: %s[%d] must be a table", k, (int)i_ + 1); \
      out[i_] = f;                                                   \
      lua_pop(L, 1);                                                 \
    }                                                                \
    lua_pop(L, 1);                                                   \
  } while (0)

/* write(path, model): see the top of the file. */
static int l_write(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  lua_newtable(L); /* ANCHOR */

  Onnx__GraphProto *g = alloc(L, sizeof *g);
  onnx__graph_proto__init(g);
  g->name = field_str(L, 2, "name", "the graph's name");
  if (!g->name) g->name = "lunet";
  LIST("nodes", Onnx__NodeProto, node(L, -1, i_), g->node, g->n_node);
  LIST("initializers", Onnx__TensorProto, initializer(L, -1, i_), g->initializer, g->n_initializer);
  LIST("inputs", Onnx__ValueInfoProto, value_info(L, -1), g->input, g->n_input);
  LIST("outputs", Onnx__ValueInfoProto, value_info(L, -1), g->output, g->n_output);

  Onnx__ModelProto *m = alloc(L, sizeof *m);
  onnx__model_proto__init(m);
  m->has_ir_version = 1;
  m->ir_version = IR_VERSION;
  m->producer_name = "lunet";
  m->producer_version = field_str(L, 2, "producer_version", "producer_version");
  m->doc_string = field_str(L, 2, "doc", "doc");
  m->graph = g;
  Onnx__OperatorSetIdProto *opset = alloc(L, sizeof *opset);
  onnx__operator_set_id_proto__init(opset);
  opset->domain = "";
  opset->has_version = 1;
  lua_getfield(L, 2, "opset");
  opset->version = lua_isinteger(L, -1) ? (int64_t)lua_tointeger(L, -1) : 17;
  lua_pop(L, 1);
  m->opset_import = alloc(L, sizeof *m->opset_import);
  m->opset_import[0] = opset;
  m->n_opset_import = 1;
  if (lua_getfield(L, 2, "metadata") == LUA_TTABLE) {
    size_t count = 0;
    lua_pushnil(L);
    while (lua_next(L, -2)) {
      count++;
      lua_pop(L, 1);
    }
    m->metadata_props = alloc(L, count * sizeof *m->metadata_props);
    lua_pushnil(L);
    while (lua_next(L, -2)) {
      Onnx__StringStringEntryProto *e = alloc(L, sizeof *e);
      onnx__string_string_entry_proto__init(e);
      e->key = str(L, -2, "a metadata key");
      e->value = str(L, -1, "a metadata value");
      m->metadata_props[m->n_metadata_props++] = e;
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);

  size_t size = onnx__model_proto__get_packed_size(m);
  uint8_t *buf = alloc(L, size);
  onnx__model_proto__pack(m, buf);
  luaL_Buffer tmp;
  luaL_buffinit(L, &tmp);
  luaL_addstring(&tmp, path);
  luaL_addstring(&tmp, ".part");
  luaL_pushresult(&tmp);
  const char *part = lua_tostring(L, -1);
  FILE *f = fopen(part, "wb");
  if (!f) return luaL_error(L, "cannot write %s: %s", part, strerror(errno));
  int bad = fwrite(buf, 1, size, f) != size;
  int err = errno;
  if (fclose(f) != 0 && !bad) {
    bad = 1;
    err = errno;
  }
  if (!bad && rename(part, path) != 0) {
    bad = 1;
    err = errno;
  }
  if (bad) {
    remove(part);
    return luaL_error(L, "cannot write %s: %s", path, strerror(err));
  }
  lua_pushinteger(L, (lua_Integer)size);
  return 1;
}

static void push_values(lua_State *L, Onnx__ValueInfoProto **v, size_t n) {
  lua_createtable(L, (int)n, 0);
  for (size_t i = 0; i < n; i++) {
    lua_createtable(L, 0, 2);
    lua_pushstring(L, v[i]->name);
    lua_setfield(L, -2, "name");
    lua_newtable(L);
    Onnx__TensorShapeProto *s =
        v[i]->type && v[i]->type->value_case == ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE ? v[i]->type->tensor_type->shape : NULL;
    for (size_t k = 0; s && k < s->n_dim; k++) {
      if (s->dim[k]->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE)
        lua_pushinteger(L, (lua_Integer)s->dim[k]->dim_value);
      else
        lua_pushstring(L, s->dim[k]->dim_param ? s->dim[k]->dim_param : "?");
      lua_rawseti(L, -2, (lua_Integer)k + 1);
    }
    lua_setfield(L, -2, "shape");
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
}

/* read(path) -> {ir_version, opset, producer, ops = {op types in order},
 * inputs, outputs, initializers (count), parameters (float values),
 * metadata}: a summary of a file, parsed by protobuf-c. */
static int l_read(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  FILE *f = fopen(path, "rb");
  if (!f) return luaL_error(L, "cannot open %s: %s", path, strerror(errno));
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  char chunk[65536];
  size_t n;
  while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) luaL_addlstring(&b, chunk, n);
  fclose(f);
  luaL_pushresult(&b);
  size_t len;
  const uint8_t *data = (const uint8_t *)lua_tolstring(L, -1, &len);
  Onnx__ModelProto *m = onnx__model_proto__unpack(NULL, len, data);
  if (!m || !m->graph) {
    if (m) onnx__model_proto__free_unpacked(m, NULL);
    return luaL_error(L, "%s is not an ONNX model", path);
  }
  lua_newtable(L);
  lua_pushinteger(L, (lua_Integer)m->ir_version);
  lua_setfield(L, -2, "ir_version");
  lua_pushinteger(L, m->n_opset_import ? (lua_Integer)m->opset_import[0]->version : 0);
  lua_setfield(L, -2, "opset");
  lua_pushstring(L, m->producer_name ? m->producer_name : "");
  lua_setfield(L, -2, "producer");
  lua_createtable(L, (int)m->graph->n_node, 0);
  for (size_t i = 0; i < m->graph->n_node; i++) {
    lua_pushstring(L, m->graph->node[i]->op_type);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  lua_setfield(L, -2, "ops");
  push_values(L, m->graph->input, m->graph->n_input);
  lua_setfield(L, -2, "inputs");
  push_values(L, m->graph->output, m->graph->n_output);
  lua_setfield(L, -2, "outputs");
  int64_t params = 0;
  for (size_t i = 0; i < m->graph->n_initializer; i++) {
    Onnx__TensorProto *t = m->graph->initializer[i];
    if (t->data_type != ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT) continue;
    int64_t c = 1;
    for (size_t k = 0; k < t->n_dims; k++) c *= t->dims[k];
    params += c;
  }
  lua_pushinteger(L, (lua_Integer)m->graph->n_initializer);
  lua_setfield(L, -2, "initializers");
  lua_pushinteger(L, (lua_Integer)params);
  lua_setfield(L, -2, "parameters");
  lua_newtable(L);
  for (size_t i = 0; i < m->n_metadata_props; i++) {
    lua_pushstring(L, m->metadata_props[i]->value);
    lua_setfield(L, -2, m->metadata_props[i]->key);
  }
  lua_setfield(L, -2, "metadata");
  onnx__model_proto__free_unpacked(m, NULL);
  return 1;
}

__attribute__((visibility("default"))) int luaopen_lunet_onnx(lua_State *L) {
  static const luaL_Reg fns[] = {{"write", l_write}, {"read", l_read}, {NULL, NULL}};
  luaL_newlib(L, fns);
  return 1;
}
