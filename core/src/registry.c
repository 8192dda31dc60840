/*
 * The registry: the one process-wide object.  It loads backends and layer
 * plugins (dlopen), checks their ABI before any other call, and keeps them
 * for the life of the process.  Loading and scanning hold `lock`; an entry,
 * once added, never changes or moves, so readers of a found entry need no
 * lock.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <sys/stat.h>
#include <dlfcn.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "lunet/layer.h"

#define MAX_BACKENDS 8
#define MAX_PLUGINS 32
#define MAX_TYPES 256

typedef struct plugin_entry {
  const lunet_plugin_desc *desc;
  char path[512];
} plugin_entry;

static struct {
  pthread_mutex_t lock;
  bool backends_scanned, plugins_scanned;
  lunet_be backends[MAX_BACKENDS];
  int nbackends;
  plugin_entry plugins[MAX_PLUGINS];
  int nplugins;
  const lunet_layer_type *types[MAX_TYPES];
  int type_plugin[MAX_TYPES];
  int ntypes;
  char searched[2048]; /* the folders looked in, for "nothing found" errors */
  int threads;         /* lunet_set_threads() before a backend started; 0: default */
} reg = {.lock = PTHREAD_MUTEX_INITIALIZER};

#ifndef LUNET_BUILTIN_MODULES
/* The folder of liblunet.so itself: backends and plugins sit under it. */
static void libdir(char *out, size_t n) {
  Dl_info info;
  out[0] = '\0';
  if (dladdr((void *)libdir, &info) && info.dli_fname) {
    char tmp[512];
    snprintf(tmp, sizeof tmp, "%s", info.dli_fname);
    snprintf(out, n, "%s", dirname(tmp));
  }
}

static void add_searched(const char *dir) {
  size_t len = strlen(reg.searched);
  snprintf(reg.searched + len, sizeof reg.searched - len, "%s%s", len ? ", " : "", dir);
}

/* Calls fn(path) for every *.so in folder `dir`; an entry of the
 * environment variable `env` may also be a .so file itself, and one that
 * is neither is named on stderr (it was skipped without a word). */
static void scan_one(const char *env, const char *dir, bool from_env, void (*fn)(const char *)) {
  add_searched(dir);
  struct stat st;
  if (from_env && stat(dir, &st) == 0 && S_ISREG(st.st_mode)) {
    fn(dir);
    return;
  }
  struct dirent **names;
  int n = scandir(dir, &names, NULL, alphasort); /* a stable order: cpu before vulkan */
  if (n < 0 && from_env)
    fprintf(stderr, "lunet: %s names '%s': %s (a folder of .so files, or a .so file, is expected); skipped\n", env,
            dir, errno == ENOTDIR ? "not a folder or a .so file" : strerror(errno));
  for (int k = 0; k < n; k++) {
    const char *f = names[k]->d_name;
    size_t len = strlen(f);
    if (len >= 4 && strcmp(f + len - 3, ".so") == 0) {
      char path[1024];
      snprintf(path, sizeof path, "%s/%s", dir, f);
      fn(path);
    }
    free(names[k]);
  }
  if (n >= 0) free(names);
}

/* Calls fn(path) for every *.so in the folders (or files) of the
 * colon-separated `env` variable, then in <libdir>/<sub> (with own_first,
 * <libdir>/<sub> first). */
static void scan(const char *env, const char *sub, bool own_first, void (*fn)(const char *)) {
  char dirs[4096], own[512], mine[1024];
  const char *e = getenv(env);
  libdir(own, sizeof own);
  snprintf(mine, sizeof mine, "%s/%s", own, sub);
  snprintf(dirs, sizeof dirs, "%s", e ? e : "");
  if (own_first) scan_one(env, mine, false, fn);
  for (char *save = NULL, *dir = strtok_r(dirs, ":", &save); dir; dir = strtok_r(NULL, ":", &save))
    scan_one(env, dir, true, fn);
  if (!own_first) scan_one(env, mine, false, fn);
}

#endif

/* A backend that could not be loaded: listed as unavailable, with why. */
static void refuse_backend(const char *path, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void refuse_backend(const char *path, const char *name, const char *fmt, ...) {
  if (reg.nbackends == MAX_BACKENDS) return;
  lunet_be *be = &reg.backends[reg.nbackends++];
  memset(be, 0, sizeof *be);
  snprintf(be->name, sizeof be->name, "%s", name);
  snprintf(be->path, sizeof be->path, "%s", path);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(be->why, sizeof be->why, fmt, ap);
  va_end(ap);
}

/* Adds the backend of descriptor d (from `path`) after checking its ABI;
 * `dl` (may be NULL) is closed when it is refused. */
static void register_backend(const lunet_backend_desc *d, const char *path, void *dl) {
  /* the name is read only after the version check: its place may differ */
  if (d->abi_major != LUNET_BACKEND_ABI_MAJOR || d->abi_minor > LUNET_BACKEND_ABI_MINOR ||
      d->struct_size < sizeof *d ||
      d->iface_size < (d->abi_minor >= 6   ? sizeof(lunet_backend_i)
                       : d->abi_minor == 5 ? LUNET_BACKEND_I_SIZE_2_5
                       : d->abi_minor == 4 ? LUNET_BACKEND_I_SIZE_2_4
                       : d->abi_minor == 3 ? LUNET_BACKEND_I_SIZE_2_3
                       : d->abi_minor == 2 ? LUNET_BACKEND_I_SIZE_2_2
                       : d->abi_minor == 1 ? LUNET_BACKEND_I_SIZE_2_1
                                           : LUNET_BACKEND_I_SIZE_2_0)) {
    char base[64];
    snprintf(base, sizeof base, "%s", strrchr(path, '/') ? strrchr(path, '/') + 1 : path);
    base[strcspn(base, ".")] = '\0';
    refuse_backend(path, base,
                   "%s was built for backend ABI %u.%u (descriptor %u bytes); this lunet has "
                   "backend ABI %d.%d (%zu bytes): rebuild it against this lunet's headers",
                   path, d->abi_major, d->abi_minor, d->struct_size, LUNET_BACKEND_ABI_MAJOR,
                   LUNET_BACKEND_ABI_MINOR, sizeof *d);
    if (dl) dlclose(dl);
    return;
  }
  for (int i = 0; i < reg.nbackends; i++)
    if (strcmp(reg.backends[i].name, d->name) == 0) return; /* first found wins */
  lunet_be *be = &reg.backends[reg.nbackends++];
  memset(be, 0, sizeof *be);
  be->desc = d;
  be->i = d->iface;
  snprintf(be->name, sizeof be->name, "%s", d->name);
  snprintf(be->path, sizeof be->path, "%s", path);
  be->device = -1;
  be->score = d->probe(be->why, sizeof be->why);
}

#ifndef LUNET_BUILTIN_MODULES
static void load_backend(const char *path) {
  if (reg.nbackends == MAX_BACKENDS) return;
  void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    fprintf(stderr, "lunet: skipping backend %s: %s\n", path, dlerror());
    return;
  }
  lunet_backend_entry_fn entry = (lunet_backend_entry_fn)dlsym(h, LUNET_BACKEND_ENTRY_NAME);
  const lunet_backend_desc *d = entry ? entry() : NULL;
  if (!d) {
    fprintf(stderr, "lunet: skipping %s: no %s symbol (not a lunet backend)\n", path,
            LUNET_BACKEND_ENTRY_NAME);
    dlclose(h);
    return;
  }
  register_backend(d, path, h);
}
#endif

/* A backend starts (init) on first use, on the device the user picked (-1:
 * its own choice); a failed start leaves the reason in `why` and is tried
 * again on the next use (after the user picked another device, say). */
static void start(lunet_be *be) {
  if (be->state || be->score <= 0 || !be->desc) return;
  be->state = be->desc->init(reg.threads, be->device, be->why, sizeof be->why);
}

static lunet_be *find(const char *name) {
  for (int i = 0; i < reg.nbackends; i++)
    if (strcmp(reg.backends[i].name, name) == 0) return &reg.backends[i];
  return NULL;
}

/* The minimal inference build (LUNET_BUILTIN_MODULES) links the CPU
 * backend and the built-in layers into the library and loads nothing. */
#ifdef LUNET_BUILTIN_MODULES
const lunet_backend_desc *lunet_backend_entry(void);
const lunet_plugin_desc *lunet_plugin_entry(void);
#endif

static void scan_backends(void) {
  if (reg.backends_scanned) return;
  reg.backends_scanned = true;
#ifdef LUNET_BUILTIN_MODULES
  snprintf(reg.searched, sizeof reg.searched, "(none: the backends are built in)");
  register_backend(lunet_backend_entry(), "(built in)", NULL);
#else
  scan("LUNET_BACKEND_PATH", "lunet/backends", false, load_backend); /* first found wins: yours first */
#endif
}

lunet_be *lunet_registry_backend(lunet_ctx *ctx, const char *name) {
  if (!name) {
    lunet_error(ctx, LUNET_ERR_ARG, "no backend name (NULL): give one, e.g. \"cpu\"");
    return NULL;
  }
  pthread_mutex_lock(&reg.lock);
  scan_backends();
  lunet_be *found = find(name);
  if (found) start(found);
  pthread_mutex_unlock(&reg.lock);
  if (!found) {
    char names[256] = "";
    for (int i = 0; i < reg.nbackends; i++)
      snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", i ? ", " : "",
               reg.backends[i].name);
    lunet_error(ctx, LUNET_ERR_NOTFOUND,
                "no backend named '%s' (available: %s; searched %s; set "
                "LUNET_BACKEND_PATH to add folders)",
                name, reg.nbackends ? names : "none", reg.searched);
    return NULL;
  }
  if (!found->state) {
    lunet_error(ctx, LUNET_ERR_DEVICE, "backend '%s' is unavailable: %s", name, found->why);
    return NULL;
  }
  return found;
}

lunet_be *lunet_registry_default(lunet_ctx *ctx) {
  if (ctx->backend >= 0) return &reg.backends[ctx->backend];
  /* The CPU is always there; LUNET_BACKEND or lunet.use() picks another. */
  const char *name = getenv("LUNET_BACKEND");
  lunet_be *be = lunet_registry_backend(ctx, name && *name ? name : "cpu");
  if (be) ctx->backend = (int)(be - reg.backends);
  else if (name && *name) { /* the variable named: the user never typed the name into this program */
    char why[sizeof ctx->msg];
    snprintf(why, sizeof why, "%s", ctx->msg);
    lunet_error(ctx, ctx->status, "LUNET_BACKEND=%.40s: %s (unset it for the cpu)", name, why);
  }
  return be;
}

lunet_status lunet_use(lunet_ctx *ctx, const char *name) {
  lunet_be *be = lunet_registry_backend(ctx, name);
  if (!be) return ctx->status;
  ctx->backend = (int)(be - reg.backends);
  return LUNET_OK;
}

/* Picks the device of backend `name`: before the backend starts, or while
 * no tensor lives on it, it (re)starts on that device. */
lunet_status lunet_use_device(lunet_ctx *ctx, const char *name, int device) {
  if (device < -1)
    return lunet_error(ctx, LUNET_ERR_ARG, "backend '%s': device %d (an index from 0, or -1 for the backend's choice)",
                       name ? name : "(NULL)", device);
  if (device < 0 || !name) return lunet_use(ctx, name);
  pthread_mutex_lock(&reg.lock);
  scan_backends();
  lunet_be *be = find(name);
  lunet_backend_info info;
  memset(&info, 0, sizeof info);
  if (be && be->state) be->i->describe(be->state, &info);
  long live = be ? __atomic_load_n(&be->live, __ATOMIC_RELAXED) : 0;
  lunet_status s = LUNET_OK;
  if (be && be->state && info.device_index != device && live > 0) {
    s = lunet_error(ctx, LUNET_ERR_ARG,
                    "backend '%s' runs on device %d (%s) and %ld tensor buffer%s live there; "
                    "pick the device before creating %s tensors",
                    name, info.device_index, info.device, live, live == 1 ? "" : "s", name);
  } else if (be && be->desc && (!be->state || info.device_index != device)) {
    /* a device that does not start leaves the backend as it was (a typo
     * of the index shut down a working backend, the CPU's too) */
    bool running = be->state != NULL;
    int was = running ? info.device_index : be->device;
    if (be->state) be->desc->shutdown(be->state);
    be->state = NULL;
    be->device = device;
    start(be);
    if (!be->state) {
      s = lunet_error(ctx, LUNET_ERR_ARG, "backend '%s' cannot use device %d: %s (it stays on %s)", name, device,
                      be->why, running ? "its device" : "its default device");
      be->device = was;
      if (running) start(be);
    }
  }
  pthread_mutex_unlock(&reg.lock);
  return s ? s : lunet_use(ctx, name);
}

const char *lunet_default_backend(lunet_ctx *ctx) {
  lunet_be *be = lunet_registry_default(ctx);
  return be ? be->name : "none";
}

int lunet_backends(lunet_ctx *ctx, lunet_backend_info *out, int max) {
  lunet_be *def = lunet_registry_default(ctx);
  pthread_mutex_lock(&reg.lock);
  scan_backends();
  for (int i = 0; i < reg.nbackends && i < max; i++) {
    lunet_be *be = &reg.backends[i];
    start(be);
    memset(&out[i], 0, sizeof out[i]);
    snprintf(out[i].name, sizeof out[i].name, "%s", be->name);
    if (be->state) {
      be->i->describe(be->state, &out[i]);
      out[i].available = true;
    } else {
      snprintf(out[i].detail, sizeof out[i].detail, "%s", be->why);
    }
    out[i].is_default = be == def;
  }
  int n = reg.nbackends;
  pthread_mutex_unlock(&reg.lock);
  return n;
}

lunet_status lunet_get_backend_stats(lunet_ctx *ctx, const char *name, lunet_backend_stats *out) {
  lunet_be *be = lunet_registry_backend(ctx, name);
  if (!be) return ctx->status;
  memset(out, 0, sizeof *out);
  if (be->desc->abi_minor < 2 || !be->i->stats)
    return lunet_error(ctx, LUNET_ERR_UNSUPPORTED, "backend '%s' (ABI %u.%u) keeps no counters (ABI 2.2 added them)",
                       be->name, be->desc->abi_major, be->desc->abi_minor);
  be->i->stats(be->state, out);
  return LUNET_OK;
}

int lunet_backend_bf16(lunet_ctx *ctx, const char *name) {
  lunet_be *be = lunet_registry_backend(ctx, name);
  if (!be) return -1;
  if (be->desc->abi_minor < 3 || !be->i->bf16_native || !be->i->gemm_bf16 || !be->i->conv2d_bf16 ||
      !be->i->conv2d_backward_data_bf16 || !be->i->conv2d_backward_filter_bf16)
    return -1;
  return be->i->bf16_native(be->state) ? 1 : 0;
}

lunet_status lunet_set_threads(lunet_ctx *ctx, int n) {
  if (n < 1 || n > LUNET_MAX_THREADS)
    return lunet_error(ctx, LUNET_ERR_ARG, "threads must be from 1 to %d, got %d", LUNET_MAX_THREADS, n);
  pthread_mutex_lock(&reg.lock);
  scan_backends();
  lunet_status s = LUNET_OK;
  for (int i = 0; !s && i < reg.nbackends; i++) {
    lunet_be *be = &reg.backends[i];
    int r = be->state ? be->i->set_threads(be->state, n) : 0;
    if (r) { /* its own words: the pool could not start (it runs on 1 thread then) */
      const char *why = be->i->last_error ? be->i->last_error(be->state) : NULL;
      s = lunet_error(ctx, (lunet_status)r, "%s", why && *why ? why : "the backend refused the thread count");
    }
  }
  if (!s) reg.threads = n; /* for backends that start later */
  pthread_mutex_unlock(&reg.lock);
  return s;
}

/* The CPU's threads (a GPU backend's count is 1): the figure nn.threads(n)
 * sets, whatever the default backend. */
int lunet_get_threads(lunet_ctx *ctx) {
  lunet_be *be = lunet_registry_default(ctx);
  pthread_mutex_lock(&reg.lock);
  lunet_be *cpu = find("cpu");
  pthread_mutex_unlock(&reg.lock);
  if (cpu && cpu->state) be = cpu;
  if (!be || !be->state) return 0;
  lunet_backend_info info;
  memset(&info, 0, sizeof info);
  be->i->describe(be->state, &info);
  return info.threads;
}

uint64_t lunet_fallback_count(lunet_ctx *ctx) { return ctx->fallbacks; }

/* ---- layer plugins ---- */

/* What is wrong with type t's declared inputs and arguments, written into
 * why; false when nothing (the core would otherwise refuse the user's
 * every call, blaming the user: "takes 3 to 2 inputs", "factor is
 * required" for an argument declared twice, a default outside its choices). */
static bool schema_fault(const lunet_layer_type *t, char *why, size_t n) {
  int lo = t->min_inputs > 0 ? t->min_inputs : 1, hi = t->max_inputs > 0 ? t->max_inputs : lo;
  if (t->min_inputs < 0 || t->max_inputs < 0 || hi < lo)
    return snprintf(why, n, "min_inputs %d and max_inputs %d (0 means 1; max_inputs must be at least min_inputs)",
                    t->min_inputs, t->max_inputs), true;
  if (t->nargs < 0 || (t->nargs > 0 && !t->args))
    return snprintf(why, n, "nargs %d with %s", t->nargs, t->args ? "a list" : "no list of arguments"), true;
  if (t->positional < 0 || t->positional > t->nargs)
    return snprintf(why, n, "positional %d with %d arguments", t->positional, t->nargs), true;
  for (int i = 0; i < t->nargs; i++) {
    const lunet_arg_schema *a = &t->args[i];
    if (!a->name || !a->name[0]) return snprintf(why, n, "argument %d without a name", i + 1), true;
    if ((unsigned)a->type > LUNET_ARG_SIDES || (unsigned)a->presence > LUNET_ARG_DEFAULT)
      return snprintf(why, n, "argument '%s' of unknown type %d or presence %d", a->name, (int)a->type,
                      (int)a->presence), true;
    for (int j = 0; j < i; j++)
      if (!strcmp(t->args[j].name, a->name)) return snprintf(why, n, "argument '%s' declared twice", a->name), true;
    if (a->type == LUNET_ARG_STRING && a->choices && a->presence == LUNET_ARG_DEFAULT && a->def.s &&
        !lunet_arg_choice_ok(a->choices, a->def.s))
      return snprintf(why, n, "argument '%s' defaulting to '%s', not one of its choices %s", a->name, a->def.s,
                      a->choices), true;
  }
  return false;
}

/* Whether plugin d's types can all be registered: each complete (a name
 * and build, forward and backward, of ABI 2.0 or later), none named as
 * another of d's or as a type already registered (a plugin cannot replace
 * a layer type: nn.Dense from another plugin would change every model that
 * names it), and room for them all.  Checked before any is registered, so
 * a refused plugin leaves nothing behind. */
static lunet_status check_types(lunet_ctx *ctx, const lunet_plugin_desc *d, const char *path) {
  if (d->ntypes < 0)
    return lunet_error(ctx, LUNET_ERR_ABI, "plugin %s declares %d layer types (a count from 0)", path, d->ntypes);
  if (d->ntypes > 0 && !d->types)
    return lunet_error(ctx, LUNET_ERR_ABI, "plugin %s declares %d layer types but no list of them", path,
                       d->ntypes);
  if (reg.ntypes + d->ntypes > MAX_TYPES)
    return lunet_error(ctx, LUNET_ERR_ARG, "plugin %s: too many layer types (%d more than the %d lunet holds)",
                       path, reg.ntypes + d->ntypes - MAX_TYPES, MAX_TYPES);
  for (int i = 0; i < d->ntypes; i++) {
    const lunet_layer_type *t = d->types[i];
    if (!t || t->struct_size < LUNET_LAYER_TYPE_SIZE_2_0)
      return lunet_error(ctx, LUNET_ERR_ABI,
                         "plugin %s: layer type %d is %s; rebuild the plugin against this lunet's headers", path,
                         i + 1, t ? "smaller than plugin ABI 2.0's lunet_layer_type" : "NULL (is ntypes the list's length?)");
    const char *missing = !t->name || !t->name[0] ? "name"
                          : !t->build             ? "build function"
                          : !t->forward           ? "forward function"
                          : !t->backward          ? "backward function"
                                                  : NULL;
    if (missing)
      return lunet_error(ctx, LUNET_ERR_ABI, "plugin %s: layer type %d%s%s%s has no %s", path, i + 1,
                         t->name ? " ('" : "", t->name ? t->name : "", t->name ? "')" : "", missing);
    char why[256];
    if (schema_fault(t, why, sizeof why))
      return lunet_error(ctx, LUNET_ERR_ABI, "plugin %s: layer type '%s' has a bad schema: %s", path, t->name, why);
    for (int j = 0; j < i; j++)
      if (strcmp(d->types[j]->name, t->name) == 0)
        return lunet_error(ctx, LUNET_ERR_ABI, "plugin %s defines layer type '%s' twice", path, t->name);
    for (int j = 0; j < reg.ntypes; j++)
      if (strcmp(reg.types[j]->name, t->name) == 0) {
        const plugin_entry *e = &reg.plugins[reg.type_plugin[j]];
        return lunet_error(ctx, LUNET_ERR_ARG,
                           "plugin %s: layer type '%s' is already defined by plugin '%s' (%s); a plugin cannot "
                           "replace a layer type: give yours another name",
                           path, t->name, e->desc->name ? e->desc->name : "?", e->path);
      }
  }
  return LUNET_OK;
}

/* Adds the plugin of descriptor d (from `path`) after checking its ABI and
 * its types; `dl` (may be NULL) is closed when it is refused. */
static lunet_status register_plugin(lunet_ctx *ctx, const lunet_plugin_desc *d, const char *path, void *dl) {
  if (d->abi_major != LUNET_PLUGIN_ABI_MAJOR || d->abi_minor > LUNET_PLUGIN_ABI_MINOR ||
      d->struct_size < sizeof *d) {
    lunet_status s =
        lunet_error(ctx, LUNET_ERR_ABI,
                    "plugin %s was built for plugin ABI %u.%u (descriptor %u bytes); this lunet "
                    "has plugin ABI %d.%d (%zu bytes): rebuild the plugin against this lunet's "
                    "headers (pkg-config lunet)",
                    path, d->abi_major, d->abi_minor, d->struct_size, LUNET_PLUGIN_ABI_MAJOR,
                    LUNET_PLUGIN_ABI_MINOR, sizeof *d);
    if (dl) dlclose(dl);
    return s;
  }
  lunet_status s = check_types(ctx, d, path);
  if (s) {
    if (dl) dlclose(dl);
    return s;
  }
  int p = reg.nplugins++;
  reg.plugins[p].desc = d;
  snprintf(reg.plugins[p].path, sizeof reg.plugins[p].path, "%s", path);
  for (int i = 0; i < d->ntypes; i++) {
    reg.types[reg.ntypes] = d->types[i];
    reg.type_plugin[reg.ntypes++] = p;
  }
  return LUNET_OK;
}

static lunet_status add_plugin(lunet_ctx *ctx, const char *path) {
  for (int i = 0; i < reg.nplugins; i++)
    if (strcmp(reg.plugins[i].path, path) == 0) return LUNET_OK;
  if (reg.nplugins == MAX_PLUGINS)
    return lunet_error(ctx, LUNET_ERR_ARG, "too many plugins (at most %d)", MAX_PLUGINS);
#ifdef LUNET_BUILTIN_MODULES
  return lunet_error(ctx, LUNET_ERR_ARG,
                     "cannot load plugin %s: this is lunet's minimal inference build, which loads no "
                     "plugins (its layers are built in); use the full library for plugins",
                     path);
#else
  void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!h) return lunet_error(ctx, LUNET_ERR_NOTFOUND, "cannot load plugin %s: %s", path, dlerror());
  lunet_plugin_entry_fn entry = (lunet_plugin_entry_fn)dlsym(h, LUNET_PLUGIN_ENTRY_NAME);
  const lunet_plugin_desc *d = entry ? entry() : NULL;
  if (!d) {
    dlclose(h);
    if (entry)
      return lunet_error(ctx, LUNET_ERR_ABI, "plugin %s: its %s() returned NULL (it must return its descriptor)",
                         path, LUNET_PLUGIN_ENTRY_NAME);
    return lunet_error(ctx, LUNET_ERR_ABI,
                       "%s is not a lunet plugin: it exports no %s() (build it against "
                       "lunet/plugin.h; see plugins/example)",
                       path, LUNET_PLUGIN_ENTRY_NAME);
  }
  return register_plugin(ctx, d, path, h);
#endif
}

static lunet_ctx *scan_ctx;
static void scan_plugin(const char *path) {
  char real[4096]; /* one file reached by two paths loads once */
  if (add_plugin(scan_ctx, realpath(path, real) ? real : path) != LUNET_OK) {
    fprintf(stderr, "lunet: skipping plugin: %s\n", lunet_ctx_error(scan_ctx));
    lunet_clear_error(scan_ctx);
  }
}

static void scan_plugins(lunet_ctx *ctx) {
  if (reg.plugins_scanned) return;
  reg.plugins_scanned = true;
  scan_ctx = ctx;
#ifdef LUNET_BUILTIN_MODULES
  (void)scan_plugin;
  if (register_plugin(ctx, lunet_plugin_entry(), "(built in)", NULL)) lunet_clear_error(ctx);
#else
  scan("LUNET_PLUGIN_PATH", "lunet/plugins", true, scan_plugin); /* the built-in layers first: they keep their names */
#endif
}

lunet_status lunet_load_plugin(lunet_ctx *ctx, const char *path) {
  char real[4096];
  if (!realpath(path, real))
    return lunet_error(ctx, LUNET_ERR_NOTFOUND, "plugin %s: no such file", path);
  pthread_mutex_lock(&reg.lock);
  scan_plugins(ctx);
  lunet_status s = add_plugin(ctx, real);
  pthread_mutex_unlock(&reg.lock);
  return s;
}

/* In-process types (nn.Lambda) belong to a descriptor of their own. */
lunet_status lunet_register_layer_type(lunet_ctx *ctx, const lunet_layer_type *t,
                                       const char *origin) {
  static lunet_plugin_desc host = {.abi_major = LUNET_PLUGIN_ABI_MAJOR,
                                   .abi_minor = LUNET_PLUGIN_ABI_MINOR,
                                   .struct_size = sizeof(lunet_plugin_desc),
                                   .version = LUNET_VERSION_STRING};
  if (!t || t->struct_size < LUNET_LAYER_TYPE_SIZE_2_0 || !t->name || !t->build || !t->forward || !t->backward)
    return lunet_error(ctx, LUNET_ERR_ARG, "register_layer_type: an incomplete layer type");
  pthread_mutex_lock(&reg.lock);
  scan_plugins(ctx);
  lunet_status s = LUNET_OK;
  int p = -1;
  for (int i = 0; i < reg.nplugins; i++)
    if (reg.plugins[i].desc == &host) p = i;
  if (p < 0 && reg.nplugins == MAX_PLUGINS)
    s = lunet_error(ctx, LUNET_ERR_ARG, "too many plugins (at most %d)", MAX_PLUGINS);
  if (!s && p < 0) {
    host.name = origin ? origin : "host";
    p = reg.nplugins++;
    reg.plugins[p].desc = &host;
    snprintf(reg.plugins[p].path, sizeof reg.plugins[p].path, "(in process)");
  }
  int slot = reg.ntypes;
  for (int j = 0; !s && j < reg.ntypes; j++)
    if (strcmp(reg.types[j]->name, t->name) == 0) slot = j;
  if (!s && slot == MAX_TYPES) s = lunet_error(ctx, LUNET_ERR_ARG, "too many layer types (at most %d)", MAX_TYPES);
  if (!s) {
    if (slot == reg.ntypes) reg.ntypes++;
    reg.types[slot] = t;
    reg.type_plugin[slot] = p;
  }
  pthread_mutex_unlock(&reg.lock);
  return s;
}

const lunet_layer_type *lunet_layer_type_at(lunet_ctx *ctx, int i, const char **plugin) {
  pthread_mutex_lock(&reg.lock);
  scan_plugins(ctx);
  const lunet_layer_type *t = NULL;
  if (i >= 0 && i < reg.ntypes) {
    t = reg.types[i];
    if (plugin) *plugin = reg.plugins[reg.type_plugin[i]].desc->name;
  }
  pthread_mutex_unlock(&reg.lock);
  return t;
}

/* The plugin that registered t, or NULL; the caller holds reg.lock. */
static const plugin_entry *plugin_of_type(const lunet_layer_type *t) {
  for (int i = 0; i < reg.ntypes; i++)
    if (reg.types[i] == t) return &reg.plugins[reg.type_plugin[i]];
  return NULL;
}

const char *lunet_registry_plugin_of(const lunet_layer_type *t, char *buf, size_t n) {
  pthread_mutex_lock(&reg.lock);
  const plugin_entry *e = plugin_of_type(t);
  if (e)
    snprintf(buf, n, "plugin '%s' (%s)", e->desc->name, e->path);
  else
    snprintf(buf, n, "an unregistered layer type");
  pthread_mutex_unlock(&reg.lock);
  return buf;
}

const char *lunet_registry_plugin_name(const lunet_layer_type *t) {
  pthread_mutex_lock(&reg.lock);
  const plugin_entry *e = plugin_of_type(t);
  const char *name = e ? e->desc->name : NULL;
  pthread_mutex_unlock(&reg.lock);
  return name;
}

const lunet_layer_type *lunet_layer_type_find(lunet_ctx *ctx, const char *name) {
  const lunet_layer_type *t;
  for (int i = 0; (t = lunet_layer_type_at(ctx, i, NULL)); i++)
    if (strcmp(t->name, name) == 0) return t;
  lunet_error(ctx, LUNET_ERR_NOTFOUND, "no layer type named '%s'", name);
  return NULL;
}
