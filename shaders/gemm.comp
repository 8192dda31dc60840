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

float load_a(uint bi, uint r, uint k) {
  if (r >= pc.M || k >= pc.K) return 0.0;
  if (MODE == 1) return patch_at(r, k);
  if (MODE == 2) return dy_tap(r, k);
  if (MODE == 3) return patch_at(k, r);
  int base = int(bi) * pc.sa;
  return pc.ta != 0u ? av[base + int(k * pc.M + r)] : av[base + int(r * pc.K + k)];
}

float load_b(uint bi, uint k, uint col) {
  if (k >= pc.K || col >= pc.N) return 0.0;
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
  } else if (MODE != 0) {
    cv[r * pc.N + col] = acc;
  } else {
    uint i = uint(int(bi) * pc.sc) + r * pc.N + col;
    cv[i] = pc.alpha * acc + (pc.beta == 0.0 ? 0.0 : pc.beta * cv[i]);
  }
}

void main() {
  uint lx = gl_LocalInvocationID.x, ly = gl_LocalInvocationID.y;
  uint batch = MODE == 0 ? pc.batch : 1u;
  for (uint bi = gl_WorkGroupID.z; bi < batch; bi += gl_NumWorkGroups.z)
    for (uint by = gl_WorkGroupID.y; by * TILE < pc.M; by += gl_NumWorkGroups.y)
      for (uint bx = gl_WorkGroupID.x; bx * TILE < pc.N; bx += gl_NumWorkGroups.x) {
        uint row = by * TILE + ly, col = bx * TILE + lx;
        float acc = 0.0;
        for (uint k0 = 0u; k0 < pc.K; k0 += TILE) {
          // As[row][k] and Bs[k][col] for this slice of K.
          As[ly][lx] = load_a(bi, row, k0 + lx);
          Bs[ly][lx] = load_b(bi, k0 + ly, col);
          barrier();
          for (uint k = 0u; k < TILE; k++) acc += As[ly][k] * Bs[k][lx];
          barrier();
        }
        store(bi, row, col, acc);
      }
}
