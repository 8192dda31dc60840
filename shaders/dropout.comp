#version 450
// dropout_mask: mask (n), element i = scale when
// philox_uniform(seed, counter + i) >= rate, else 0.  Philox4x32-10 exactly as
// lunet_philox_uniform() in lunet/backend.h, so masks equal the CPU's.
layout(local_size_x_id = 0) in;
layout(std430, binding = 0) writeonly buffer M { float mask[]; };
layout(push_constant, std430) uniform PC {
  uint n, seed_lo, seed_hi, ctr_lo, ctr_hi;
  float rate, scale;
} pc;

float philox_uniform(uint i) {
  uint carry;
  uint c0 = uaddCarry(pc.ctr_lo, i, carry), c1 = pc.ctr_hi + carry, c2 = 0u, c3 = 0u;
  uint k0 = pc.seed_lo, k1 = pc.seed_hi;
  for (int r = 0; r < 10; r++) {
    uint hi0, lo0, hi1, lo1;
    umulExtended(0xD2511F53u, c0, hi0, lo0);
    umulExtended(0xCD9E8D57u, c2, hi1, lo1);
    uint n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c1 = lo1;
    c3 = lo0;
    c0 = n0;
    c2 = n2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return float(c0 >> 8) * (1.0 / 16777216.0);
}

void main() {
  uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;
  for (uint i = gl_GlobalInvocationID.x; i < pc.n; i += stride)
    mask[i] = philox_uniform(i) >= pc.rate ? pc.scale : 0.0;
}
