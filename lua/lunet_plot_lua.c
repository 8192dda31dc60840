/*
 * A drawing canvas for nn.plot, on cairo: rectangles, lines, circles,
 * text (DejaVu Sans through fontconfig) and image tensors, written as PNG
 * or SVG by the file name's extension.  The charts themselves (axes, ticks,
 * legends, grids) are laid out in Lua (lua/lunet/plot.lua).
 *
 * Coordinates are in pixels from the top left.  A colour is "#rrggbb",
 * "#rrggbbaa" or {r, g, b[, a]} in 0..1.  The file is written to a
 * temporary name and renamed, so a viewer that keeps it open (LivePlot)
 * never reads half a picture.
 */
#include <cairo-svg.h>
#include <cairo.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lunet/ops.h"
#include "lunet_lua.h"

#define CANVAS_MT "lunet.Canvas"
#define FONT "DejaVu Sans"

typedef struct canvas {
  cairo_surface_t *surface;
  cairo_t *cr;
  bool svg;
  char *path, *tmp;
} canvas;

static canvas *check_canvas(lua_State *L, int arg) {
  canvas *c = luaL_checkudata(L, arg, CANVAS_MT);
  if (!c->cr) luaL_argerror(L, arg, "the canvas is finished");
  return c;
}

static void close_canvas(canvas *c) {
  if (c->cr) cairo_destroy(c->cr);
  if (c->surface) cairo_surface_destroy(c->surface);
  c->cr = NULL;
  c->surface = NULL;
  if (c->tmp) unlink(c->tmp); /* an unfinished SVG's partial file */
  free(c->path);
  free(c->tmp);
  c->path = c->tmp = NULL;
}

static int canvas_gc(lua_State *L) {
  close_canvas(luaL_checkudata(L, 1, CANVAS_MT));
  return 0;
}

static int hex(char ch) {
  if (ch >= '0' && ch <= '9') return ch - '0';
  if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
  return -1;
}

/* Sets the source colour from argument arg; false when it is nil. */
static bool set_color(lua_State *L, cairo_t *cr, int arg) {
  double rgba[4] = {0, 0, 0, 1};
  if (lua_isnoneornil(L, arg)) return false;
  if (lua_type(L, arg) == LUA_TSTRING) {
    size_t n;
    const char *s = lua_tolstring(L, arg, &n);
    bool ok = s[0] == '#' && (n == 7 || n == 9);
    for (size_t i = 0; ok && i + 1 < n; i += 2) {
      int hi = hex(s[i + 1]), lo = hex(s[i + 2]);
      ok = hi >= 0 && lo >= 0;
      if (ok) rgba[i / 2] = (hi * 16 + lo) / 255.0;
    }
    if (!ok) luaL_argerror(L, arg, "a colour is \"#rrggbb\", \"#rrggbbaa\" or {r, g, b[, a]}");
  } else {
    luaL_checktype(L, arg, LUA_TTABLE);
    for (int i = 0; i < 4; i++) {
      lua_rawgeti(L, arg, i + 1);
      if (!lua_isnil(L, -1)) rgba[i] = luaL_checknumber(L, -1);
      lua_pop(L, 1);
    }
  }
  cairo_set_source_rgba(cr, rgba[0], rgba[1], rgba[2], rgba[3]);
  return true;
}

/* C.canvas_new(path, width, height[, background]) */
static int l_canvas_new(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  lua_Integer w = luaL_checkinteger(L, 2), h = luaL_checkinteger(L, 3);
  lua_settop(L, 4); /* the canvas goes above the background colour */
  size_t n = strlen(path);
  bool svg = n > 4 && !strcmp(path + n - 4, ".svg"), png = n > 4 && !strcmp(path + n - 4, ".png");
  if (!svg && !png) return luaL_error(L, "%s: a picture is written as .png or .svg (give one of those names)", path);
  if (w < 1 || h < 1 || w > 16384 || h > 16384)
    return luaL_error(L, "%s: a picture of %dx%d pixels (1 to 16384 each way)", path, (int)w, (int)h);
  canvas *c = lua_newuserdatauv(L, sizeof *c, 0);
  memset(c, 0, sizeof *c);
  luaL_setmetatable(L, CANVAS_MT);
  c->svg = svg;
  c->path = strdup(path);
  c->tmp = malloc(n + 48);
  if (!c->path || !c->tmp) return luaL_error(L, "out of memory");
  static _Atomic unsigned long made; /* two canvases for one path never share a temporary */
  snprintf(c->tmp, n + 48, "%s.tmp.%ld.%lu", path, (long)getpid(), ++made);
  c->surface = svg ? cairo_svg_surface_create(c->tmp, (double)w, (double)h)
                   : cairo_image_surface_create(CAIRO_FORMAT_ARGB32, (int)w, (int)h);
  if (cairo_surface_status(c->surface) != CAIRO_STATUS_SUCCESS) {
    const char *why = cairo_status_to_string(cairo_surface_status(c->surface));
    close_canvas(c);
    return luaL_error(L, "%s: cannot start the picture (%s)", path, why);
  }
  c->cr = cairo_create(c->surface);
  cairo_set_source_rgb(c->cr, 1, 1, 1);
  if (!lua_isnoneornil(L, 4)) set_color(L, c->cr, 4);
  cairo_paint(c->cr);
  return 1;
}

/* cv:rect(x, y, w, h, fill, stroke, line_width) */
static int c_rect(lua_State *L) {
  canvas *c = check_canvas(L, 1);
  double x = luaL_checknumber(L, 2), y = luaL_checknumber(L, 3);
  double w = luaL_checknumber(L, 4), h = luaL_checknumber(L, 5);
  cairo_rectangle(c->cr, x, y, w, h);
  if (set_color(L, c->cr, 6)) cairo_fill_preserve(c->cr);
  if (set_color(L, c->cr, 7)) {
    cairo_set_line_width(c->cr, luaL_optnumber(L, 8, 1));
    cairo_stroke_preserve(c->cr);
  }
  cairo_new_path(c->cr);
  return 0;
}

/* cv:line({x1, y1, x2, y2, ...}, colour, width, dashed): a NaN coordinate
 * breaks the line (a missing value). */
static int c_line(lua_State *L) {
  canvas *c = check_canvas(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_Integer n = luaL_len(L, 2);
  bool pen_down = false;
  for (lua_Integer i = 1; i + 1 <= n; i += 2) {
    lua_rawgeti(L, 2, i);
    lua_rawgeti(L, 2, i + 1);
    double x = luaL_checknumber(L, -2), y = luaL_checknumber(L, -1);
    lua_pop(L, 2);
    if (!isfinite(x) || !isfinite(y)) {
      pen_down = false;
      continue;
    }
    if (pen_down) cairo_line_to(c->cr, x, y);
    else cairo_move_to(c->cr, x, y);
    pen_down = true;
  }
  set_color(L, c->cr, 3);
  cairo_set_line_width(c->cr, luaL_optnumber(L, 4, 1.5));
  double dash[2] = {6, 4};
  cairo_set_dash(c->cr, dash, lua_toboolean(L, 5) ? 2 : 0, 0);
  cairo_set_line_join(c->cr, CAIRO_LINE_JOIN_ROUND);
  cairo_stroke(c->cr);
  cairo_set_dash(c->cr, NULL, 0, 0);
  return 0;
}

/* cv:circle(x, y, r, fill, stroke) */
static int c_circle(lua_State *L) {
  canvas *c = check_canvas(L, 1);
  cairo_arc(c->cr, luaL_checknumber(L, 2), luaL_checknumber(L, 3), luaL_checknumber(L, 4), 0, 2 * M_PI);
  if (set_color(L, c->cr, 5)) cairo_fill_preserve(c->cr);
  if (set_color(L, c->cr, 6)) cairo_stroke_preserve(c->cr);
  cairo_new_path(c->cr);
  return 0;
}

static void set_font(cairo_t *cr, double size, bool bold) {
  cairo_select_font_face(cr, FONT, CAIRO_FONT_SLANT_NORMAL, bold ? CAIRO_FONT_WEIGHT_BOLD : CAIRO_FONT_WEIGHT_NORMAL);
  cairo_set_font_size(cr, size);
}

/* cv:text(x, y, s, size, colour, halign, valign, bold, angle): halign 0
 * left .. 1 right of x, valign 0 top .. 1 bottom of y (0.5: centred);
 * angle in degrees, counter-clockwise. */
static int c_text(lua_State *L) {
  canvas *c = check_canvas(L, 1);
  double x = luaL_checknumber(L, 2), y = luaL_checknumber(L, 3);
  const char *s = luaL_checkstring(L, 4);
  double size = luaL_optnumber(L, 5, 12);
  set_font(c->cr, size, lua_toboolean(L, 9));
  cairo_text_extents_t e;
  cairo_font_extents_t fe;
  cairo_text_extents(c->cr, s, &e);
  cairo_font_extents(c->cr, &fe);
  double ha = luaL_optnumber(L, 7, 0), va = luaL_optnumber(L, 8, 0);
  cairo_save(c->cr);
  cairo_translate(c->cr, x, y);
  cairo_rotate(c->cr, -luaL_optnumber(L, 10, 0) * M_PI / 180);
  /* the line box (ascent + descent), so that labels of one row align */
  cairo_move_to(c->cr, -ha * e.x_advance, fe.ascent - va * (fe.ascent + fe.descent));
  if (!set_color(L, c->cr, 6)) cairo_set_source_rgb(c->cr, 0, 0, 0);
  cairo_show_text(c->cr, s);
  cairo_restore(c->cr);
  return 0;
}

/* cv:text_width(s, size, bold) -> pixels */
static int c_text_width(lua_State *L) {
  canvas *c = check_canvas(L, 1);
  set_font(c->cr, luaL_optnumber(L, 3, 12), lua_toboolean(L, 4));
  cairo_text_extents_t e;
  cairo_text_extents(c->cr, luaL_checkstring(L, 2), &e);
  lua_pushnumber(L, e.x_advance);
  return 1;
}

/* cv:image(t, x, y, w, h, smooth): t (H, W) or (H, W, C), C 1, 3 or 4,
 * values 0..1 (clamped), drawn scaled into the box. */
static int c_image(lua_State *L) {
  canvas *c = check_canvas(L, 1);
  lunet_tensor *t = lunetL_checktensor(L, 2);
  double x = luaL_checknumber(L, 3), y = luaL_checknumber(L, 4);
  double bw = luaL_checknumber(L, 5), bh = luaL_checknumber(L, 6);
  int nd = lunet_tensor_ndim(t);
  int64_t h = nd >= 2 ? lunet_tensor_dim(t, 0) : 0, w = nd >= 2 ? lunet_tensor_dim(t, 1) : 0;
  int64_t ch = nd == 3 ? lunet_tensor_dim(t, 2) : 1;
  if ((nd != 2 && nd != 3) || (ch != 1 && ch != 3 && ch != 4) || h < 1 || w < 1 || h > 16384 || w > 16384)
    return luaL_argerror(L, 2, "an image (H, W) or (H, W, C) with C 1, 3 or 4");
  lunet_ctx *ctx = lunetL_ctx(L);
  lunet_tensor *f = lunet_tensor_dtype(t) == LUNET_F32 ? lunet_tensor_retain(t) : lunet_op_cast(ctx, t, LUNET_F32);
  float *px = f ? malloc(sizeof *px * (size_t)(h * w * ch)) : NULL;
  lunet_status s = !f ? lunet_ctx_status(ctx)
                   : !px ? LUNET_ERR_NOMEM
                         : lunet_tensor_read(ctx, f, px, sizeof *px * (size_t)(h * w * ch));
  lunet_tensor_release(f);
  if (s) {
    free(px);
    return lunetL_error(L, "image");
  }
  cairo_surface_t *img = cairo_image_surface_create(CAIRO_FORMAT_ARGB32, (int)w, (int)h);
  unsigned char *data = cairo_image_surface_get_data(img);
  int stride = cairo_image_surface_get_stride(img);
  if (cairo_surface_status(img) != CAIRO_STATUS_SUCCESS || !data) {
    free(px);
    cairo_surface_destroy(img);
    return luaL_error(L, "image: out of memory");
  }
  cairo_surface_flush(img);
  for (int64_t i = 0; i < h; i++)
    for (int64_t j = 0; j < w; j++) {
      const float *p = px + (i * w + j) * ch;
      double v[4];
      for (int k = 0; k < 3; k++) v[k] = ch >= 3 ? p[k] : p[0];
      v[3] = ch == 4 ? p[3] : 1;
      uint32_t out = 0;
      for (int k = 0; k < 4; k++) {
        double q = isfinite(v[k]) ? fmin(1, fmax(0, v[k])) : 0;
        v[k] = q;
      }
      /* premultiplied ARGB, as cairo stores it */
      out = (uint32_t)lround(v[3] * 255) << 24 | (uint32_t)lround(v[0] * v[3] * 255) << 16 |
            (uint32_t)lround(v[1] * v[3] * 255) << 8 | (uint32_t)lround(v[2] * v[3] * 255);
      memcpy(data + i * stride + j * 4, &out, 4);
    }
  free(px);
  cairo_surface_mark_dirty(img);
  cairo_save(c->cr);
  cairo_translate(c->cr, x, y);
  cairo_scale(c->cr, bw / (double)w, bh / (double)h);
  cairo_set_source_surface(c->cr, img, 0, 0);
  cairo_pattern_set_filter(cairo_get_source(c->cr), lua_toboolean(L, 7) ? CAIRO_FILTER_BILINEAR : CAIRO_FILTER_NEAREST);
  cairo_rectangle(c->cr, 0, 0, (double)w, (double)h);
  cairo_fill(c->cr);
  cairo_restore(c->cr);
  cairo_surface_destroy(img);
  return 0;
}

/* cv:finish() -> path: writes the file (to a temporary name, renamed). */
static int c_finish(lua_State *L) {
  canvas *c = check_canvas(L, 1);
  cairo_status_t st = cairo_status(c->cr);
  if (st == CAIRO_STATUS_SUCCESS && !c->svg) st = cairo_surface_write_to_png(c->surface, c->tmp);
  cairo_destroy(c->cr);
  c->cr = NULL;
  cairo_surface_finish(c->surface);
  if (st == CAIRO_STATUS_SUCCESS) st = cairo_surface_status(c->surface);
  cairo_surface_destroy(c->surface);
  c->surface = NULL;
  int err = 0;
  if (st == CAIRO_STATUS_SUCCESS && rename(c->tmp, c->path) != 0) err = errno;
  lua_pushstring(L, c->path);
  if (st != CAIRO_STATUS_SUCCESS || err) {
    lua_pushfstring(L, "%s: cannot write the picture (%s)", c->path,
                    err ? strerror(err) : st == CAIRO_STATUS_WRITE_ERROR ? "a write error: is the folder there, and writable?"
                                                                          : cairo_status_to_string(st));
    close_canvas(c);
    return lua_error(L);
  }
  free(c->tmp);
  c->tmp = NULL; /* renamed: nothing to remove */
  close_canvas(c);
  return 1;
}

static const luaL_Reg methods[] = {{"rect", c_rect},   {"line", c_line},         {"circle", c_circle},
                                   {"text", c_text},   {"text_width", c_text_width}, {"image", c_image},
                                   {"finish", c_finish}, {NULL, NULL}};

void lunetL_open_plot(lua_State *L) {
  if (luaL_newmetatable(L, CANVAS_MT)) {
    lua_pushcfunction(L, canvas_gc);
    lua_setfield(L, -2, "__gc");
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  lua_pushcfunction(L, l_canvas_new);
  lua_setfield(L, -2, "canvas_new");
}
