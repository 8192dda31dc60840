#version 450
// Matrix products, tiled through shared memory: C (M, N) = A (M, K) B (K, N).
// A workgroup of TILE x TILE invocations computes a BS x BS block of C,
// BS = TILE * R, each invocation an R x R set of outputs held in registers
// (rows ly + TILE i, columns lx + TILE j: the block's shared reads stay
// contiguous across a row of invocations), so a step over TILE values of K
// reads 2 R values from shared memory per R^2 multiply-adds.  The slices of
// K are double-buffered: while the block multiplies one slice out of shared
// memory, each invocation holds its part of the next in registers and
// stores it into the other buffer after, one barrier per slice.  A's
// slice is kept k-major, each row rotated by k so that the invocations'
// stores (k varies fastest) fall in distinct banks: As[k][(m + k) % BS].
// The MODE constant carries the op (MODE % 4) and R = 1 << (MODE / 4)
// (1, 2 or 4): the host picks the largest R whose blocks still fill the
// device, see backends/vulkan/ops.c.
// MODE 0 GEMM: c (batch, M, N) = alpha op(a) op(b) + beta c, a (M,K) or (K,M)
//        when ta, b (K,N) or (N,K) when tb, batch strides sa, sb, sc (0 reuses);
//        then + bias (has_bias) and the ReLU (relu): the linear op; or
//        zeroed where mask <= 0 (relu_mask): gemm_relu_mask, a data
//        gradient through the ReLU that made the layer's input.
// Convolutions are the same product with A read through an implicit im2col:
// MODE 1 conv2d: y (N*OH*OW, F) = x patches (N*OH*OW, KH*KW*C) w (KH*KW*C, F)
//        + bias.
// MODE 2 backward data: dx (N*H*W, C) = dy taps (N*H*W, KH*KW*F) w^T.
// MODE 3 backward filter: dw (KH*KW*C, F) = x patches^T (KH*KW*C, N*OH*OW) dy.
// Split-K (MODE 3, and MODE 0 with one batch entry, alpha 1, beta 0): with
// splits > 1 (a small C over a long K would keep most of the device idle),
// workgroup z = s sums its own slice of K into cv[s][M][N]; a reduction
// then adds the slices.
// With bf16 set (mixed precision), every element of A and B is rounded to
// bfloat16 as it is fetched (bf16_round: lunet_bf16_round in
// lunet/backend.h, bit for bit) and the products summed in float32.
// x (N,H,W,C), w (KH,KW,C,F), y and dy (N,OH,OW,F).
layout(local_size_x_id = 0, local_size_y_id = 1) in;
layout(constant_id = 2) const int MODE = 0;
layout(constant_id = 3) const uint TILE = 16;
const int OP = MODE % 4;
const uint R = 1u << uint(MODE / 4);
const uint BS = TILE * R;
const uint RMAX = 4u;
layout(std430, binding = 0) buffer C { float cv[]; };
layout(std430, binding = 1) readonly buffer A { float av[]; };
layout(std430, binding = 2) readonly buffer B { float bv[]; };
layout(std430, binding = 3) readonly buffer BIAS { float bias[]; };
layout(std430, binding = 4) readonly buffer MASK { float mask[]; };
layout(push_constant, std430) uniform PC {
  uint M, N, K, ta, tb, batch;
  int sa, sb, sc;
  float alpha, beta;
  int n, h, w, c, f, kh, kw, sh, sw, pt, pl, oh, ow;
  uint has_bias;
  uint splits; // slices of K (1: none)
  uint bf16;   // operands rounded to bfloat16
  uint relu;   // MODE 0 (linear): the ReLU after the bias
  uint relu_mask; // MODE 0 (gemm_relu_mask): then mask > 0 ? v : 0
} pc;

shared float As[2][TILE * RMAX * TILE];
shared float Bs[2][TILE * RMAX * TILE];

// x at (n, iy, ix, ch) or 0 in the padding.
float x_at(int n, int iy, int ix, int ch) {
  if (iy < 0 || iy >= pc.h || ix < 0 || ix >= pc.w) return 0.0;
  return av[((n * pc.h + iy) * pc.w + ix) * pc.c + ch];
}

// OP 0's operands (the convolutions read theirs through the im2col walk below).
float load_a(uint bi, uint r, uint k, uint kend) {
  if (r >= pc.M || k >= kend) return 0.0;
  int base = int(bi) * pc.sa;
  return pc.ta != 0u ? av[base + int(k * pc.M + r)] : av[base + int(r * pc.K + k)];
}

float load_b(uint bi, uint k, uint col, uint kend) {
  if (k >= kend || col >= pc.N) return 0.0;
  int base = int(bi) * pc.sb;
  return pc.tb != 0u ? bv[base + int(col * pc.K + k)] : bv[base + int(k * pc.N + col)];
}

void store(uint bi, uint r, uint col, float acc) {
  if (r >= pc.M || col >= pc.N) return;
  if (OP == 1) {
    cv[r * pc.N + col] = acc + (pc.has_bias != 0u ? bias[col] : 0.0);
  } else if (OP != 0 || pc.splits > 1u) {
    cv[(bi * pc.M + r) * pc.N + col] = acc; // bi: the K slice (split), else 0
  } else {
    // linear's epilogue: the bias, then the ReLU, as the add and the ReLU ops would
    uint i = uint(int(bi) * pc.sc) + r * pc.N + col;
    float v = pc.alpha * acc + (pc.beta == 0.0 ? 0.0 : pc.beta * cv[i]);
    if (pc.has_bias != 0u) v = v + bias[col];
    if (pc.relu != 0u) v = v > 0.0 ? v : 0.0;
    if (pc.relu_mask != 0u) v = mask[i] > 0.0 ? v : 0.0; // as the ReLU's gradient
    cv[i] = v;
  }
}

// v rounded to the nearest bfloat16 (ties to even), kept as a float: NaN
// stays NaN, a subnormal becomes a zero of its sign.
float bf16_round(float v) {
  uint u = floatBitsToUint(v);
  if ((u & 0x7fffffffu) > 0x7f800000u) u |= 0x00400000u;
  else if ((u & 0x7f800000u) == 0u) u &= 0x80000000u;
  else u += 0x7fffu + ((u >> 16) & 1u);
  return uintBitsToFloat(u & 0xffff0000u);
}

// ---- the im2col walk (convolutions, OP 1 to 3) ----
// An invocation's A elements in a slice share one k (k0 + t % TILE) and lie
// on R rows that stay the same through the K loop (row0 + t / TILE + TILE i);
// OP 2's B elements each have their own k (k0 + (t + TILE^2 i) / BS) in one
// column.  What those rows and ks decompose into (pixel and tap
// coordinates) is worked out once per block (walk_start) and moved TILE
// along K per slice (walk_next), with a division only where a coordinate
// wraps: the K loop reads x and dy with multiplies and adds, not six
// divisions per element.
ivec3 wrow[RMAX]; // OP 1: the output pixel's (n, oy sh - pt, ox sw - pl); OP 2: the input
                  // pixel's (n, iy + pt, ix + pl); OP 3: the tap (ky, kx, ch)
bool wrok[RMAX];  // the row is inside M
ivec3 wk;         // the k lane's: OP 1 tap (ky, kx, ch), OP 2 tap (ky, kx, fi), OP 3 pixel (n, oy, ox)
ivec2 wb[RMAX];   // OP 2's B: element i's k as (tap, fi)

// v as (hi, mid, lo) in radices (mid_r, lo_r).
ivec3 split3(int v, int mid_r, int lo_r) { return ivec3(v / (mid_r * lo_r), (v / lo_r) % mid_r, v % lo_r); }

// c moved `step` along, carrying into the higher places.
ivec3 carry3(ivec3 c, int step, int mid_r, int lo_r) {
  c.z += step;
  if (c.z >= lo_r) {
    int q = c.z / lo_r;
    c.z -= q * lo_r;
    c.y += q;
    if (c.y >= mid_r) {
      int q2 = c.y / mid_r;
      c.y -= q2 * mid_r;
      c.x += q2;
    }
  }
  return c;
}

void walk_start(uint row0, uint k0, uint t) {
  for (uint i = 0u; i < R; i++) {
    uint r = row0 + t / TILE + TILE * i;
    wrok[i] = r < pc.M;
    int v = int(min(r, pc.M - 1u));
    if (OP == 1) {
      ivec3 p = split3(v, pc.oh, pc.ow);
      wrow[i] = ivec3(p.x, p.y * pc.sh - pc.pt, p.z * pc.sw - pc.pl);
    } else if (OP == 2) {
      ivec3 p = split3(v, pc.h, pc.w);
      wrow[i] = ivec3(p.x, p.y + pc.pt, p.z + pc.pl);
    } else {
      wrow[i] = split3(v, pc.kw, pc.c);
    }
    if (OP == 2) {
      int kb = int(k0 + (t + TILE * TILE * i) / BS);
      wb[i] = ivec2(kb / pc.f, kb % pc.f);
    }
  }
  int k = int(k0 + t % TILE);
  wk = OP == 1 ? split3(k, pc.kw, pc.c) : OP == 2 ? split3(k, pc.kw, pc.f) : split3(k, pc.oh, pc.ow);
}

void walk_next() {
  int step = int(TILE);
  wk = OP == 1 ? carry3(wk, step, pc.kw, pc.c) : OP == 2 ? carry3(wk, step, pc.kw, pc.f)
                                                          : carry3(wk, step, pc.oh, pc.ow);
  if (OP == 2)
    for (uint i = 0u; i < R; i++) {
      ivec3 c = carry3(ivec3(0, wb[i].x, wb[i].y), step, 0x7fffffff, pc.f);
      wb[i] = c.yz;
    }
}

// Row i's A element at the k lane (k < kend checked by the caller).
float walk_a(uint i) {
  if (!wrok[i]) return 0.0;
  ivec3 r = wrow[i];
  if (OP == 1) return x_at(r.x, r.y + wk.x, r.z + wk.y, wk.z);
  if (OP == 3) return x_at(wk.x, wk.y * pc.sh - pc.pt + r.x, wk.z * pc.sw - pc.pl + r.y, r.z);
  // OP 2: dy at the output whose tap (ky, kx) reads this input pixel
  int ty = r.y - wk.x, tx = r.z - wk.y;
  if (ty < 0 || tx < 0) return 0.0;
  int oy = ty, ox = tx;
  if (pc.sh != 1) {
    if (ty % pc.sh != 0) return 0.0;
    oy = ty / pc.sh;
  }
  if (pc.sw != 1) {
    if (tx % pc.sw != 0) return 0.0;
    ox = tx / pc.sw;
  }
  if (oy >= pc.oh || ox >= pc.ow) return 0.0;
  return av[((r.x * pc.oh + oy) * pc.ow + ox) * pc.f + wk.z];
}

// Element e (0 .. BS*TILE - 1) of a slice: A's (m = e / TILE, k = e % TILE),
// B's (k = e / BS, n = e % BS); invocation t takes e = t + TILE^2 i, i < R.
// first: the block's first slice (k0 its first k; each later call is TILE on).
void fetch(uint entry, uint row0, uint col0, uint k0, uint kend, uint t, bool first, out float ra[RMAX],
           out float rb[RMAX]) {
  if (OP != 0) {
    if (first) walk_start(row0, k0, t);
    else walk_next();
  }
  bool kin = k0 + t % TILE < kend;
  for (uint i = 0u; i < R; i++) {
    uint e = t + TILE * TILE * i;
    if (OP == 0) {
      ra[i] = load_a(entry, row0 + e / TILE, k0 + e % TILE, kend);
      rb[i] = load_b(entry, k0 + e / BS, col0 + e % BS, kend);
    } else {
      ra[i] = kin ? walk_a(i) : 0.0;
      uint kb = k0 + e / BS, col = col0 + e % BS;
      rb[i] = kb >= kend || col >= pc.N ? 0.0
            : OP == 2 ? bv[(wb[i].x * pc.c + int(col)) * pc.f + wb[i].y]
                      : bv[kb * pc.N + col];
    }
    if (pc.bf16 != 0u) {
      ra[i] = bf16_round(ra[i]);
      rb[i] = bf16_round(rb[i]);
    }
  }
}

void put(uint buf, uint t, float ra[RMAX], float rb[RMAX]) {
  for (uint i = 0u; i < R; i++) {
    uint e = t + TILE * TILE * i, m = e / TILE, k = e % TILE;
    As[buf][k * BS + ((m + k) & (BS - 1u))] = ra[i];
    Bs[buf][e] = rb[i];
  }
}

void main() {
  uint lx = gl_LocalInvocationID.x, ly = gl_LocalInvocationID.y, t = ly * TILE + lx;
  uint splits = OP == 0 || OP == 3 ? max(pc.splits, 1u) : 1u;
  uint batch = OP == 0 && splits == 1u ? pc.batch : splits;
  // each slice of K a whole number of tiles
  uint kslice = ((pc.K + splits - 1u) / splits + TILE - 1u) / TILE * TILE;
  for (uint bi = gl_WorkGroupID.z; bi < batch; bi += gl_NumWorkGroups.z)
    for (uint by = gl_WorkGroupID.y; by * BS < pc.M; by += gl_NumWorkGroups.y)
      for (uint bx = gl_WorkGroupID.x; bx * BS < pc.N; bx += gl_NumWorkGroups.x) {
        uint row0 = by * BS, col0 = bx * BS;
        uint kbegin = splits > 1u ? bi * kslice : 0u;
        uint kend = splits > 1u ? min(pc.K, kbegin + kslice) : pc.K;
        uint entry = splits > 1u ? 0u : bi; // the batch entry A and B are read from
        uint steps = kend > kbegin ? (kend - kbegin + TILE - 1u) / TILE : 0u;
        float acc[RMAX][RMAX];
        for (uint i = 0u; i < R; i++)
          for (uint j = 0u; j < R; j++) acc[i][j] = 0.0;
        float ra[RMAX], rb[RMAX];
        if (steps > 0u) {
          fetch(entry, row0, col0, kbegin, kend, t, true, ra, rb);
          put(0u, t, ra, rb);
        }
        barrier();
        for (uint s = 0u; s < steps; s++) {
          uint cur = s & 1u;
          bool more = s + 1u < steps;
          if (more) fetch(entry, row0, col0, kbegin + (s + 1u) * TILE, kend, t, false, ra, rb);
          for (uint k = 0u; k < TILE; k++) {
            float a[RMAX], b[RMAX];
            for (uint i = 0u; i < R; i++) a[i] = As[cur][k * BS + ((ly + TILE * i + k) & (BS - 1u))];
            for (uint j = 0u; j < R; j++) b[j] = Bs[cur][k * BS + lx + TILE * j];
            for (uint i = 0u; i < R; i++)
              for (uint j = 0u; j < R; j++) acc[i][j] += a[i] * b[j];
          }
          if (more) put(cur ^ 1u, t, ra, rb);
          barrier();
        }
        for (uint i = 0u; i < R; i++)
          for (uint j = 0u; j < R; j++) store(bi, row0 + ly + TILE * i, col0 + lx + TILE * j, acc[i][j]);
      }
}
