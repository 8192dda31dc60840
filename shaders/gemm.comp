#version 450
// Matrix products, tiled through shared memory: C (M, N) = A (M, K) B (K, N),
// a TILE x TILE block of C per workgroup, one element per invocation.
// MODE 0 GEMM: c (batch, M, N) = alpha op(a) op(b) + beta c, a (M,K) or (K,M)
//        when ta, b (K,N) or (N,K) when tb, batch strides sa, sb, sc (0 reuses).
// Convolutions are the same product with A read through an implicit im2col:
// MODE 1 conv2d: y (N*OH*OW, F) = x patches (N*OH*OW, KH*KW*C) w (KH*KW*C, F)
//        + bias.
// MODE 2 backward data: dx (N*H*W, C) = dy taps (N*H*W, KH*KW*F) w^T.
// MODE 3 backward filter: dw (KH*KW*C, F) = x patches^T (KH*KW*C, N*OH*OW) dy.
// Split-K (MODE 3, and MODE 0 with one batch entry, alpha 1, beta 0): with
// splits > 1 (a small C over a long K would keep most of the device idle),
// workgroup z = s sums its own slice of K into cv[s][M][N]; a reduction
// then adds the slices.
// x (N,H,W,C), w (KH,KW,C,F), y and dy (N,OH,OW,F).
layout(local_size_x_id = 0, local_size_y_id = 1) in;
layout(constant_id = 2) const int MODE = 0;
layout(constant_id = 3) const uint TILE = 16;
layout(std430, binding = 0) buffer C { float cv[]; };
layout(std430, binding = 1) readonly buffer A { float av[]; };
layout(std430, binding = 2) readonly buffer B { float bv[]; };
layout(std430, binding = 3) readonly buffer BIAS { float bias[]; };
layout(push_constant, std430) uniform PC {
  uint M, N, K, ta, tb, batch;
  int sa, sb, sc;
  float alpha, beta;
  int n, h, w, c, f, kh, kw, sh, sw, pt, pl, oh, ow;
  uint has_bias;
  uint splits; // slices of K (1: none)
} pc;

shared float As[TILE][TILE + 1];
shared float Bs[TILE][TILE];

// x at (n, iy, ix, ch) or 0 in the padding.
float x_at(int n, int iy, int ix, int ch) {
  if (iy < 0 || iy >= pc.h || ix < 0 || ix >= pc.w) return 0.0;
  return av[((n * pc.h + iy) * pc.w + ix) * pc.c + ch];
}

// Patch element: output pixel `pix` (n, oy, ox), tap `tap` (ky, kx, ch).
float patch_at(uint pix, uint tap) {
  int p = int(pix), t = int(tap);
  int ox = p % pc.ow, oy = (p / pc.ow) % pc.oh, n = p / (pc.ow * pc.oh);
  int ch = t % pc.c, kx = (t / pc.c) % pc.kw, ky = t / (pc.c * pc.kw);
  return x_at(n, oy * pc.sh - pc.pt + ky, ox * pc.sw - pc.pl + kx, ch);
}

// dy at the output whose tap (ky, kx) reads input pixel `pix` (n, iy, ix).
float dy_tap(uint pix, uint k) {
  int p = int(pix), t = int(k);
  int ix = p % pc.w, iy = (p / pc.w) % pc.h, n = p / (pc.w * pc.h);
  int fi = t % pc.f, kx = (t / pc.f) % pc.kw, ky = t / (pc.f * pc.kw);
  int ty = iy + pc.pt - ky, tx = ix + pc.pl - kx;
  if (ty < 0 || tx < 0 || ty % pc.sh != 0 || tx % pc.sw != 0) return 0.0;
  int oy = ty / pc.sh, ox = tx / pc.sw;
  if (oy >= pc.oh || ox >= pc.ow) return 0.0;
  return av[((n * pc.oh + oy) * pc.ow + ox) * pc.f + fi];
}

float load_a(uint bi, uint r, uint k, uint kend) {
  if (r >= pc.M || k >= kend) return 0.0;
  if (MODE == 1) return patch_at(r, k);
  if (MODE == 2) return dy_tap(r, k);
  if (MODE == 3) return patch_at(k, r);
  int base = int(bi) * pc.sa;
  return pc.ta != 0u ? av[base + int(k * pc.M + r)] : av[base + int(r * pc.K + k)];
}

float load_b(uint bi, uint k, uint col, uint kend) {
  if (k >= kend || col >= pc.N) return 0.0;
  if (MODE == 2) {
    // w (KH, KW, C, F) read as (KH*KW*F, C): k = (ky, kx, f), col = ch.
    uint fi = k % uint(pc.f), tap = k / uint(pc.f);
    return bv[(tap * uint(pc.c) + col) * uint(pc.f) + fi];
  }
  if (MODE != 0) return bv[k * pc.N + col];
  int base = int(bi) * pc.sb;
  return pc.tb != 0u ? bv[base + int(col * pc.K + k)] : bv[base + int(k * pc.N + col)];
}

void store(uint bi, uint r, uint col, float acc) {
  if (r >= pc.M || col >= pc.N) return;
  if (MODE == 1) {
    cv[r * pc.N + col] = acc + (pc.has_bias != 0u ? bias[col] : 0.0);
  } else if (MODE != 0 || pc.splits > 1u) {
    cv[(bi * pc.M + r) * pc.N + col] = acc; // bi: the K slice (split), else 0
  } else {
    uint i = uint(int(bi) * pc.sc) + r * pc.N + col;
    cv[i] = pc.alpha * acc + (pc.beta == 0.0 ? 0.0 : pc.beta * cv[i]);
  }
}

void main() {
  uint lx = gl_LocalInvocationID.x, ly = gl_LocalInvocationID.y;
  uint splits = MODE == 0 || MODE == 3 ? max(pc.splits, 1u) : 1u;
  uint batch = MODE == 0 && splits == 1u ? pc.batch : splits;
  // each slice of K a whole number of tiles
  uint kslice = ((pc.K + splits - 1u) / splits + TILE - 1u) / TILE * TILE;
  for (uint bi = gl_WorkGroupID.z; bi < batch; bi += gl_NumWorkGroups.z)
    for (uint by = gl_WorkGroupID.y; by * TILE < pc.M; by += gl_NumWorkGroups.y)
      for (uint bx = gl_WorkGroupID.x; bx * TILE < pc.N; bx += gl_NumWorkGroups.x) {
        uint row = by * TILE + ly, col = bx * TILE + lx;
        uint kbegin = splits > 1u ? bi * kslice : 0u;
        uint kend = splits > 1u ? min(pc.K, kbegin + kslice) : pc.K;
        uint entry = splits > 1u ? 0u : bi; // the batch entry A and B are read from
        float acc = 0.0;
        for (uint k0 = kbegin; k0 < kend; k0 += TILE) {
          // As[row][k] and Bs[k][col] for this slice of K.
          As[ly][lx] = load_a(entry, row, k0 + lx, kend);
          Bs[ly][lx] = load_b(entry, k0 + ly, col, kend);
          barrier();
          for (uint k = 0u; k < TILE; k++) acc += As[ly][k] * Bs[k][lx];
          barrier();
        }
        store(bi, row, col, acc);
      }
}
