// A reduction across the workgroup, for the shaders that reduce a row or a
// channel with one workgroup: every invocation passes its partial value and
// every invocation gets the total.  op: 0 sum, 2 max (the codes of
// reduce.comp).  Included after the shader's layout declarations.
//
// Compiled twice (backends/vulkan/CMakeLists.txt): with SUBGROUPS, for
// devices whose compute shaders have subgroup arithmetic, each subgroup
// reduces in registers (subgroupAdd, subgroupMax), its first invocation
// writes the result to shared memory and, after one barrier, every
// invocation combines the subgroups' results in the same order (so all
// get the same bits): two barriers.  Without, a tree in shared memory:
// one barrier per halving, eight for 256 invocations.
shared float group_red[gl_WorkGroupSize.x];

float group_combine(float a, float b, uint op) { return op == 2u ? max(a, b) : a + b; }

float group_reduce(float v, uint op) {
#ifdef SUBGROUPS
  float s = op == 2u ? subgroupMax(v) : subgroupAdd(v);
  if (subgroupElect()) group_red[gl_SubgroupID] = s;
  barrier();
  float r = group_red[0];
  for (uint i = 1u; i < gl_NumSubgroups; i++) r = group_combine(r, group_red[i], op);
#else
  uint t = gl_LocalInvocationID.x;
  group_red[t] = v;
  barrier();
  for (uint s = gl_WorkGroupSize.x / 2u; s > 0u; s >>= 1) {
    if (t < s) group_red[t] = group_combine(group_red[t], group_red[t + s], op);
    barrier();
  }
  float r = group_red[0];
#endif
  barrier(); // group_red is free again
  return r;
}
