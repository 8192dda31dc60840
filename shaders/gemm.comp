#version 450
// Matrix products, tiled through shared memory: C (M, N) = A (M, K) B (K, N).
// A workgroup of TILE x TILE invocations computes a BM x BN block of C,
// BM = TILE * RM, BN = TILE * RN, each invocation an RM x RN set of outputs
// held in registers (rows ly RM + i, columns lx RN + j), so a step over
// TILE values of K reads RM + RN values from shared memory per RM RN
// multiply-adds, each invocation's RM (RN) of a k lying side by side and
// aligned (a compiler can read them as one vec4; lavapipe reads them as
// scalars, where vec4 arrays' component selects cost it 5-10%).  The slices of
// K are double-buffered: while the block multiplies one slice out of shared
// memory, each invocation holds its part of the next in registers and
// stores it into the other buffer after, one barrier per slice.  Both
// slices are kept k-major, each k's row rotated by RM (k / RM) (RN for B),
// a multiple of RM so that a read's RM values stay aligned: As[k][(m + RM
// (k / RM)) % BM]; that spreads the stores of an invocation group's ks
// over the banks, though up to R of them still meet in one (stores are a
// TILE-th of the shared traffic).  Global
// reads run along each operand's contiguous dimension, RM (A) or RN (B)
// elements an invocation, as one vec4 (vec2) load where aligned (see lane).
// The MODE constant carries the op OP = MODE % 4, RM = 1 << (MODE / 4 % 4)
// and RN = 1 << (MODE / 16 % 4), each 1, 2 or 4, and whether A's (MODE /
// 64 bit 0) and B's (bit 1) fetches are vector loads (see lane; constants,
// so that a device that runs both sides of a branch, as lavapipe's SIMD
// code does, compiles only one): the host picks the blocks
// that waste the least work while still filling the device (a product 32
// wide runs 64 x 32 blocks, not half-empty 64 x 64 ones), see
// backends/vulkan/ops.c.
// OP 0 GEMM: c (batch, M, N) = alpha op(a) op(b) + beta c, a (M,K) or (K,M)
//        when ta, b (K,N) or (N,K) when tb, batch strides sa, sb, sc (0 reuses);
//        then + bias (has_bias) and the ReLU (relu): the linear op; or
//        zeroed where mask <= 0 (relu_mask): gemm_relu_mask, a data
//        gradient through the ReLU that made the layer's input.
// Convolutions are the same product with A read through an implicit im2col:
// OP 1 conv2d: y (N*OH*OW, F) = x patches (N*OH*OW, KH*KW*C) w (KH*KW*C, F)
//        + bias.
// OP 2 backward data: dx (N*H*W, C) = dy taps (N*H*W, KH*KW*F) w^T.
// OP 3 backward filter: dw (KH*KW*C, F) = x patches^T (KH*KW*C, N*OH*OW) dy.
// Split-K (OP 3, and OP 0 with one batch entry, alpha 1, beta 0): with
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
const uint RM = 1u << uint(MODE / 4 % 4);
const uint RN = 1u << uint(MODE / 16 % 4);
const bool AVEC = (MODE / 64) % 2 != 0, BVEC = (MODE / 128) % 2 != 0;
const uint BM = TILE * RM, BN = TILE * RN;
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
  uint relu;   // OP 0 (linear): the ReLU after the bias
  uint relu_mask; // OP 0 (gemm_relu_mask): then mask > 0 ? v : 0
} pc;

shared float As[2][TILE * RMAX * TILE];
shared float Bs[2][TILE * RMAX * TILE];

// Element w (row of A, column of B) of k's row in a slice, rotated.
uint a_at(uint k, uint w) { return k * BM + ((w + k / RM * RM) & (BM - 1u)); }
uint b_at(uint k, uint w) { return k * BN + ((w + k / RN * RN) & (BN - 1u)); }

// RM (RN) consecutive elements of A (B) from element i, a multiple of
// them: one load (vec4 or vec2) where the operand's contiguous dimension
// allows it.
layout(std430, binding = 1) readonly buffer A2 { vec2 av2[]; };
layout(std430, binding = 1) readonly buffer A4 { vec4 av4[]; };
layout(std430, binding = 2) readonly buffer B2 { vec2 bv2[]; };
layout(std430, binding = 2) readonly buffer B4 { vec4 bv4[]; };
vec4 a_vec(int i) { return RM == 4u ? av4[i >> 2] : RM == 2u ? vec4(av2[i >> 1], 0.0, 0.0) : vec4(av[i], 0.0, 0.0, 0.0); }
vec4 b_vec(int i) { return RN == 4u ? bv4[i >> 2] : RN == 2u ? vec4(bv2[i >> 1], 0.0, 0.0) : vec4(bv[i], 0.0, 0.0, 0.0); }

// ---- who fetches what ----
// Each invocation fetches R consecutive elements of each operand's slice
// (R = RM for A, RN for B; a slice is BM or BN of the wide dimension -- m
// for A, n for B -- by TILE ks) along the operand's contiguous dimension,
// so neighbouring invocations read neighbouring addresses: along k ("kc": A not transposed, B transposed,
// the data gradient's dy taps and w^T, whose channels run along k), else
// along the wide dimension (A transposed, B not, the filter gradient's
// patches, whose channels run along m).  With AVEC (BVEC) set (the host
// checked that the contiguous extent and the batch stride are multiples of
// R) the R elements are one vector load, and wholly inside or outside the
// operand; else R scalar loads, each bounds-checked.
bool a_kc() { return OP == 0 ? pc.ta == 0u : OP != 3; }
bool b_kc() { return OP == 0 ? pc.tb != 0u : OP == 2; }

// Invocation t's first element of an operand's slice as (w, k): its r
// elements (r = RM or RN) are (w, k + j) when kc, else (w + j, k).
uvec2 lane(bool kc, uint t, uint r) { return kc ? uvec2(t / (TILE / r), t % (TILE / r) * r) : uvec2(t % TILE * r, t / TILE); }

// Plain matrices: OP 0's A and B, OP 1's and 3's B (w and dy, (K, N)).
// (one load each: the transposes pick the index, not the load)
int a_index(uint bi, uint r, uint k) { return int(bi) * pc.sa + int(pc.ta != 0u ? k * pc.M + r : r * pc.K + k); }
int b_index(uint bi, uint k, uint col) { return int(bi) * pc.sb + int(pc.tb != 0u ? col * pc.K + k : k * pc.N + col); }

float load_a(uint bi, uint r, uint k, uint kend) { return r >= pc.M || k >= kend ? 0.0 : av[a_index(bi, r, k)]; }
float load_b(uint bi, uint k, uint col, uint kend) { return k >= kend || col >= pc.N ? 0.0 : bv[b_index(bi, k, col)]; }

void plain_a(uint bi, uint r, uint k, uint kend, out float v[RMAX]) {
  bool kc = a_kc();
  if (AVEC) {
    vec4 q = r < pc.M && k < kend ? a_vec(a_index(bi, r, k)) : vec4(0.0);
    for (uint j = 0u; j < RM; j++) v[j] = q[j];
  } else {
    for (uint j = 0u; j < RM; j++) v[j] = load_a(bi, kc ? r : r + j, kc ? k + j : k, kend);
  }
}

void plain_b(uint bi, uint col, uint k, uint kend, out float v[RMAX]) {
  bool kc = b_kc();
  if (BVEC) {
    vec4 q = col < pc.N && k < kend ? b_vec(b_index(bi, k, col)) : vec4(0.0);
    for (uint j = 0u; j < RN; j++) v[j] = q[j];
  } else {
    for (uint j = 0u; j < RN; j++) v[j] = load_b(bi, kc ? k + j : k, kc ? col : col + j, kend);
  }
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
    if (pc.relu != 0u) v = v > 0.0 || isnan(v) ? v : 0.0;
    if (pc.relu_mask != 0u) v = mask[i] > 0.0 ? v : 0.0; // as the ReLU's gradient
    cv[i] = v;
  }
}

// ---- the im2col walk (convolutions, OP 1 to 3) ----
// The rows an invocation fetches (one for OP 1 and 2, whose elements run
// along k; RM for OP 3, whose run along m) stay the same through the K
// loop, and its k lane moves TILE per slice.  What the rows and the lane's k
// decompose into (pixel and tap coordinates) is worked out once per block
// (walk_start) and moved along K per slice (walk_next), with a division
// only where a coordinate wraps: the K loop reads x, dy and w with
// multiplies and adds, not six divisions per element.  The data
// gradient's w^T runs along k too, in its own lane (RN elements).
ivec3 wrow[RMAX]; // OP 1: the output pixel's (n, oy sh - pt, ox sw - pl); OP 2: the input
                  // pixel's (n, iy + pt, ix + pl); OP 3: row j's tap (ky, kx, ch)
bool wrok[RMAX];  // the row is inside M
ivec3 wk;         // the lane's first k: OP 1 tap (ky, kx, ch), OP 2 tap (ky, kx, fi), OP 3 pixel (n, oy, ox)
uint wkk;         // and that k
ivec3 wkb;        // OP 2's w^T: its lane's first k as (ky, kx, fi)
uint wkbk;        // and that k

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

// A lane's k (OP 1 or 2) moved one along: a carry at most once per place.
ivec3 wk_inc(ivec3 k) {
  int lo = OP == 1 ? pc.c : pc.f;
  k.z++;
  if (k.z == lo) {
    k.z = 0;
    k.y++;
    if (k.y == pc.kw) {
      k.y = 0;
      k.x++;
    }
  }
  return k;
}

void walk_start(uint row0, uint k0, uint t) {
  uvec2 la = lane(a_kc(), t, RM);
  for (uint i = 0u; i < (OP == 3 ? RM : 1u); i++) {
    uint r = row0 + la.x + i;
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
  }
  wkk = k0 + la.y;
  int k = int(wkk);
  wk = OP == 1 ? split3(k, pc.kw, pc.c) : OP == 2 ? split3(k, pc.kw, pc.f) : split3(k, pc.oh, pc.ow);
  if (OP == 2) {
    wkbk = k0 + lane(true, t, RN).y;
    wkb = split3(int(wkbk), pc.kw, pc.f);
  }
}

void walk_next() {
  int step = int(TILE);
  wkk += TILE;
  wk = OP == 1 ? carry3(wk, step, pc.kw, pc.c) : OP == 2 ? carry3(wk, step, pc.kw, pc.f)
                                                          : carry3(wk, step, pc.oh, pc.ow);
  if (OP == 2) {
    wkbk += TILE;
    wkb = carry3(wkb, step, pc.kw, pc.f);
  }
}

// x's index under OP 1's row 0 at tap kk, or -1 in the padding.
int x_fwd(ivec3 kk) {
  ivec3 r = wrow[0];
  int iy = r.y + kk.x, ix = r.z + kk.y;
  if (iy < 0 || iy >= pc.h || ix < 0 || ix >= pc.w) return -1;
  return ((r.x * pc.h + iy) * pc.w + ix) * pc.c + kk.z;
}

// dy's index at the output whose tap kk = (ky, kx, fi) reads OP 2's row 0
// (an input pixel), or -1 where no output does.
int dy_tap(ivec3 kk) {
  ivec3 r = wrow[0];
  int ty = r.y - kk.x, tx = r.z - kk.y;
  if (ty < 0 || tx < 0) return -1;
  int oy = ty, ox = tx;
  if (pc.sh != 1) {
    if (ty % pc.sh != 0) return -1;
    oy = ty / pc.sh;
  }
  if (pc.sw != 1) {
    if (tx % pc.sw != 0) return -1;
    ox = tx / pc.sw;
  }
  if (oy >= pc.oh || ox >= pc.ow) return -1;
  return ((r.x * pc.oh + oy) * pc.ow + ox) * pc.f + kk.z;
}

// w's index (KH, KW, C, F) at tap kk = (ky, kx, fi), channel col: w^T's
// element (k, col) in OP 2.
int w_t(ivec3 kk, uint col) { return ((kk.x * pc.kw + kk.y) * pc.c + int(col)) * pc.f + kk.z; }

// x's index for the filter gradient: OP 3's row j (tap) at the lane's pixel.
int x_patch(uint j) {
  ivec3 r = wrow[j];
  int iy = wk.y * pc.sh - pc.pt + r.x, ix = wk.z * pc.sw - pc.pl + r.y;
  if (iy < 0 || iy >= pc.h || ix < 0 || ix >= pc.w) return -1;
  return ((wk.x * pc.h + iy) * pc.w + ix) * pc.c + r.z;
}

// The convolutions' A elements of this slice (B too in OP 2).
void walk_fetch(uint col0, uint kend, uint t, out float ra[RMAX], out float rb[RMAX]) {
  if (OP == 3) {
    bool kin = wkk < kend;
    if (AVEC) {
      int i = kin && wrok[0] ? x_patch(0u) : -1;
      vec4 q = i >= 0 ? a_vec(i) : vec4(0.0);
      for (uint j = 0u; j < RM; j++) ra[j] = q[j];
    } else {
      for (uint j = 0u; j < RM; j++) {
        int i = kin && wrok[j] ? x_patch(j) : -1;
        ra[j] = i >= 0 ? av[i] : 0.0;
      }
    }
    return;
  }
  if (AVEC) { // the lane's RM ks in one tap: C (OP 1) or F (OP 2) a multiple of RM
    int i = wrok[0] && wkk < kend ? (OP == 1 ? x_fwd(wk) : dy_tap(wk)) : -1;
    vec4 q = i >= 0 ? a_vec(i) : vec4(0.0);
    for (uint j = 0u; j < RM; j++) ra[j] = q[j];
  } else {
    ivec3 kk = wk;
    for (uint j = 0u; j < RM; j++) {
      if (j > 0u) kk = wk_inc(kk);
      int i = wrok[0] && wkk + j < kend ? (OP == 1 ? x_fwd(kk) : dy_tap(kk)) : -1;
      ra[j] = i >= 0 ? av[i] : 0.0;
    }
  }
  if (OP == 2) { // w^T along its lane's ks; F a multiple of RN for vec
    uint col = col0 + lane(true, t, RN).x;
    if (BVEC) {
      vec4 q = col < pc.N && wkbk < kend ? b_vec(w_t(wkb, col)) : vec4(0.0);
      for (uint j = 0u; j < RN; j++) rb[j] = q[j];
    } else {
      ivec3 kk = wkb;
      for (uint j = 0u; j < RN; j++) {
        if (j > 0u) kk = wk_inc(kk);
        rb[j] = col < pc.N && wkbk + j < kend ? bv[w_t(kk, col)] : 0.0;
      }
    }
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

// Invocation t's elements of the slice from k0 (see lane).  first: the
// block's first slice (each later call is TILE on).
void fetch(uint entry, uint row0, uint col0, uint k0, uint kend, uint t, bool first, out float ra[RMAX],
           out float rb[RMAX]) {
  uvec2 la = lane(a_kc(), t, RM), lb = lane(b_kc(), t, RN);
  if (OP == 0) {
    plain_a(entry, row0 + la.x, k0 + la.y, kend, ra);
  } else {
    if (first) walk_start(row0, k0, t);
    else walk_next();
    walk_fetch(col0, kend, t, ra, rb);
  }
  if (OP != 2) plain_b(entry, col0 + lb.x, k0 + lb.y, kend, rb);
  if (pc.bf16 != 0u) {
    for (uint j = 0u; j < RM; j++) ra[j] = bf16_round(ra[j]);
    for (uint j = 0u; j < RN; j++) rb[j] = bf16_round(rb[j]);
  }
}

// Into the slice's shared buffers (a_at, b_at).
void put(uint buf, uint t, float ra[RMAX], float rb[RMAX]) {
  bool akc = a_kc(), bkc = b_kc();
  uvec2 la = lane(akc, t, RM), lb = lane(bkc, t, RN);
  for (uint j = 0u; j < RM; j++) {
    uint i = akc ? a_at(la.y + j, la.x) : a_at(la.y, la.x + j);
    As[buf][i] = ra[j];
  }
  for (uint j = 0u; j < RN; j++) {
    uint i = bkc ? b_at(lb.y + j, lb.x) : b_at(lb.y, lb.x + j);
    Bs[buf][i] = rb[j];
  }
}

void main() {
  uint lx = gl_LocalInvocationID.x, ly = gl_LocalInvocationID.y, t = ly * TILE + lx;
  uint splits = OP == 0 || OP == 3 ? max(pc.splits, 1u) : 1u;
  uint batch = OP == 0 && splits == 1u ? pc.batch : splits;
  // each slice of K a whole number of tiles
  uint kslice = ((pc.K + splits - 1u) / splits + TILE - 1u) / TILE * TILE;
  for (uint bi = gl_WorkGroupID.z; bi < batch; bi += gl_NumWorkGroups.z)
    for (uint by = gl_WorkGroupID.y; by * BM < pc.M; by += gl_NumWorkGroups.y)
      for (uint bx = gl_WorkGroupID.x; bx * BN < pc.N; bx += gl_NumWorkGroups.x) {
        uint row0 = by * BM, col0 = bx * BN;
        uint kbegin = splits > 1u ? bi * kslice : 0u;
        uint kend = splits > 1u ? min(pc.K, kbegin + kslice) : pc.K;
        uint entry = splits > 1u ? 0u : bi; // the batch entry A and B are read from
        uint steps = kend > kbegin ? (kend - kbegin + TILE - 1u) / TILE : 0u;
        float acc[RMAX][RMAX];
        for (uint i = 0u; i < RM; i++)
          for (uint j = 0u; j < RN; j++) acc[i][j] = 0.0;
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
            uint ia = a_at(k, ly * RM), ib = b_at(k, lx * RN); // multiples of RM, RN
            for (uint i = 0u; i < RM; i++) a[i] = As[cur][ia + i];
            for (uint j = 0u; j < RN; j++) b[j] = Bs[cur][ib + j];
            for (uint i = 0u; i < RM; i++)
              for (uint j = 0u; j < RN; j++) acc[i][j] += a[i] * b[j];
          }
          if (more) put(cur ^ 1u, t, ra, rb);
          barrier();
        }
        for (uint i = 0u; i < RM; i++)
          for (uint j = 0u; j < RN; j++) store(bi, row0 + ly * RM + i, col0 + lx * RN + j, acc[i][j]);
      }
}
