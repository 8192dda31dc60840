/*
 * The optimizers written with the core's tensor ops, so they run on every
 * backend without a kernel of their own: Adagrad, Adadelta, Adamax, Nadam
 * and Lion, each as Keras 3 computes it (keras/src/optimizers/, one file each), t the
 * 1-based step, lr the learning rate, decoupled weight decay first
 * (p -= lr * weight_decay * p, Keras's base optimizer):
 *
 *   Adagrad   acc += g^2;                       p -= lr * g / sqrt(acc + eps)
 *   Adadelta  a = rho a + (1-rho) g^2;          d = -sqrt(D + eps) * g / sqrt(a + eps)
 *             D = rho D + (1-rho) d^2;          p += lr * d
 *   Adamax    m += (g - m)(1-b1);  u = max(b2 u, |g|);
 *             p -= lr m / ((1 - b1^t)(u + eps))
 *   Nadam     mu_s = b1 (1 - 0.5 * 0.96^s),  P_t = mu_1 ... mu_t
 *             m += (g - m)(1-b1);  v += (g^2 - v)(1-b2)
 *             m^ = mu_{t+1} m / (1 - P_t mu_{t+1}) + (1 - mu_t) g / (1 - P_t)
 *             p -= lr m^ / (sqrt(v / (1 - b2^t)) + eps)
 *   Lion      p -= lr sign(b1 m + (1-b1) g);   m = b2 m + (1-b2) g
 *   Adam with amsgrad (the fused kernel's Adam otherwise)
 *             m += (g - m)(1-b1);  v += (g^2 - v)(1-b2);  v^ = max(v^, v)
 *             p -= lr sqrt(1-b2^t)/(1-b1^t) m / (sqrt(v^) + eps)
 *   RMSprop centered, or with weight decay (the fused kernel's RMSprop has neither)
 *             v = rho v + (1-rho) g^2;  a = rho a + (1-rho) g
 *             i = lr g / sqrt(v - a^2 + eps)
 *             with momentum: mom = momentum mom + i; p -= mom;  else p -= i
 *
 * Every temporary is released on every path; the slots are updated in
 * place (their buffers are the optimizer's).
 */
#include <math.h>
#include <string.h>

#include "internal.h"
#include "lunet/model.h"

/* Temporaries of one update, released together. */
#define MAX_TEMPS 24
typedef struct temps {
  lunet_tensor *t[MAX_TEMPS];
  int n;
  lunet_ctx *ctx;
  bool failed;
} temps;

/* Keeps y for release; NULL (a failed op) marks the update failed. */
static lunet_tensor *keep(temps *T, lunet_tensor *y) {
  if (y && T->n == MAX_TEMPS) {
    lunet_tensor_release(y);
    y = NULL;
    lunet_error(T->ctx, LUNET_ERR_ARG, "optimizer: more than %d temporaries in one update", MAX_TEMPS);
  }
  if (!y) {
    T->failed = true;
    return NULL;
  }
  return T->t[T->n++] = y;
}

static lunet_tensor *affine(temps *T, const lunet_tensor *x, double a, double b) {
  return x && !T->failed ? keep(T, lunet_op_unary(T->ctx, LUNET_UNARY_AFFINE, x, (float)a, (float)b)) : NULL;
}

static lunet_tensor *unary(temps *T, lunet_unary_op op, const lunet_tensor *x) {
  return x && !T->failed ? keep(T, lunet_op_unary(T->ctx, op, x, 0, 0)) : NULL;
}

static lunet_tensor *binary(temps *T, lunet_binary_op op, const lunet_tensor *a, const lunet_tensor *b) {
  return a && b && !T->failed ? keep(T, lunet_op_binary(T->ctx, op, a, b)) : NULL;
}

/* dst += x in place. */
static void add_into(temps *T, lunet_tensor *dst, const lunet_tensor *x) {
  if (!x || T->failed) return;
  if (lunet_op_accumulate(T->ctx, dst, x)) T->failed = true;
}

/* dst = x in place, element for element. */
static void assign(temps *T, lunet_tensor *dst, const lunet_tensor *x) {
  if (!x || T->failed) return;
  int64_t start[LUNET_MAX_DIMS] = {0}, step[LUNET_MAX_DIMS];
  for (int i = 0; i < LUNET_MAX_DIMS; i++) step[i] = 1;
  if (lunet_op_assign_slice(T->ctx, dst, start, dst->shape, step, x)) T->failed = true;
}

static double nadam_mu(double b1, int64_t s) { return b1 * (1.0 - 0.5 * pow(0.96, (double)s)); }

/* mu_1 ... mu_t: past step 1000, 0.5 * 0.96^s is below double's
 * resolution next to 1, so each further factor is b1 exactly. */
static double nadam_product(double b1, int64_t t) {
  double prod = 1;
  for (int64_t s = 1; s <= t && s <= 1000; s++) prod *= nadam_mu(b1, s);
  return t > 1000 ? prod * pow(b1, (double)(t - 1000)) : prod;
}

lunet_status lunet_optimizer_update_by_ops(lunet_ctx *ctx, const lunet_optimizer_config *c, lunet_tensor *p,
                                           const lunet_tensor *g, lunet_tensor *const *slots, int64_t step) {
  temps T = {.ctx = ctx};
  double lr = c->learning_rate, eps = c->epsilon, b1 = c->beta_1, b2 = c->beta_2, t = (double)step;
  lunet_tensor *s1 = slots[0], *s2 = slots[1];
  if (c->weight_decay > 0) add_into(&T, p, affine(&T, p, -lr * c->weight_decay, 0));
  lunet_tensor *g2 = c->kind == LUNET_OPT_LION || c->kind == LUNET_OPT_ADAMAX ? NULL : unary(&T, LUNET_UNARY_SQUARE, g);
  switch (c->kind) {
  case LUNET_OPT_ADAGRAD: {
    add_into(&T, s1, g2);
    lunet_tensor *den = unary(&T, LUNET_UNARY_SQRT, affine(&T, s1, 1, eps));
    add_into(&T, p, affine(&T, binary(&T, LUNET_BINARY_DIV, affine(&T, g, lr, 0), den), -1, 0));
    break;
  }
  case LUNET_OPT_ADADELTA: {
    double rho = c->rho;
    assign(&T, s1, binary(&T, LUNET_BINARY_ADD, affine(&T, s1, rho, 0), affine(&T, g2, 1 - rho, 0)));
    lunet_tensor *rms_d = unary(&T, LUNET_UNARY_SQRT, affine(&T, s2, 1, eps));
    lunet_tensor *rms_a = unary(&T, LUNET_UNARY_SQRT, affine(&T, s1, 1, eps));
    lunet_tensor *d = affine(&T, binary(&T, LUNET_BINARY_DIV, binary(&T, LUNET_BINARY_MUL, rms_d, g), rms_a), -1, 0);
    assign(&T, s2, binary(&T, LUNET_BINARY_ADD, affine(&T, s2, rho, 0),
                          affine(&T, unary(&T, LUNET_UNARY_SQUARE, d), 1 - rho, 0)));
    add_into(&T, p, affine(&T, d, lr, 0));
    break;
  }
  case LUNET_OPT_ADAMAX: {
    add_into(&T, s1, affine(&T, binary(&T, LUNET_BINARY_SUB, g, s1), 1 - b1, 0));
    assign(&T, s2, binary(&T, LUNET_BINARY_MAX, affine(&T, s2, b2, 0), unary(&T, LUNET_UNARY_ABS, g)));
    lunet_tensor *den = affine(&T, affine(&T, s2, 1, eps), 1 - pow(b1, t), 0);
    add_into(&T, p, affine(&T, binary(&T, LUNET_BINARY_DIV, affine(&T, s1, lr, 0), den), -1, 0));
    break;
  }
  case LUNET_OPT_NADAM: {
    double mu_t = nadam_mu(b1, step), mu_next = nadam_mu(b1, step + 1), prod = nadam_product(b1, step);
    add_into(&T, s1, affine(&T, binary(&T, LUNET_BINARY_SUB, g, s1), 1 - b1, 0));
    add_into(&T, s2, affine(&T, binary(&T, LUNET_BINARY_SUB, g2, s2), 1 - b2, 0));
    lunet_tensor *m_hat = binary(&T, LUNET_BINARY_ADD, affine(&T, s1, mu_next / (1 - prod * mu_next), 0),
                                 affine(&T, g, (1 - mu_t) / (1 - prod), 0));
    lunet_tensor *den = affine(&T, unary(&T, LUNET_UNARY_SQRT, affine(&T, s2, 1 / (1 - pow(b2, t)), 0)), 1, eps);
    add_into(&T, p, affine(&T, binary(&T, LUNET_BINARY_DIV, affine(&T, m_hat, lr, 0), den), -1, 0));
    break;
  }
  case LUNET_OPT_ADAM: {
    add_into(&T, s1, affine(&T, binary(&T, LUNET_BINARY_SUB, g, s1), 1 - b1, 0));
    add_into(&T, s2, affine(&T, binary(&T, LUNET_BINARY_SUB, g2, s2), 1 - b2, 0));
    lunet_tensor *v = s2;
    if (c->amsgrad) {
      assign(&T, slots[2], binary(&T, LUNET_BINARY_MAX, slots[2], s2));
      v = slots[2];
    }
    double alpha = lr * sqrt(1 - pow(b2, t)) / (1 - pow(b1, t));
    lunet_tensor *den = affine(&T, unary(&T, LUNET_UNARY_SQRT, v), 1, eps);
    add_into(&T, p, binary(&T, LUNET_BINARY_DIV, affine(&T, s1, -alpha, 0), den));
    break;
  }
  case LUNET_OPT_RMSPROP: {
    double rho = c->rho;
    lunet_tensor *mom = c->momentum > 0 ? s2 : NULL, *avg = c->centered ? slots[mom ? 2 : 1] : NULL;
    assign(&T, s1, binary(&T, LUNET_BINARY_ADD, affine(&T, s1, rho, 0), affine(&T, g2, 1 - rho, 0)));
    lunet_tensor *den = s1;
    if (avg) {
      assign(&T, avg, binary(&T, LUNET_BINARY_ADD, affine(&T, avg, rho, 0), affine(&T, g, 1 - rho, 0)));
      den = binary(&T, LUNET_BINARY_SUB, s1, unary(&T, LUNET_UNARY_SQUARE, avg));
    }
    lunet_tensor *inc = binary(&T, LUNET_BINARY_DIV, affine(&T, g, lr, 0),
                               unary(&T, LUNET_UNARY_SQRT, affine(&T, den, 1, eps)));
    if (mom) {
      assign(&T, mom, binary(&T, LUNET_BINARY_ADD, affine(&T, mom, c->momentum, 0), inc));
      inc = mom;
    }
    add_into(&T, p, affine(&T, inc, -1, 0));
    break;
  }
  case LUNET_OPT_LION: {
    lunet_tensor *u = unary(&T, LUNET_UNARY_SIGN, binary(&T, LUNET_BINARY_ADD, affine(&T, s1, b1, 0), affine(&T, g, 1 - b1, 0)));
    add_into(&T, p, affine(&T, u, -lr, 0));
    assign(&T, s1, binary(&T, LUNET_BINARY_ADD, affine(&T, s1, b2, 0), affine(&T, g, 1 - b2, 0)));
    break;
  }
  default:
    lunet_error(ctx, LUNET_ERR_ARG, "optimizer: kind %d has no update written with ops", (int)c->kind);
    T.failed = true;
  }
  for (int i = 0; i < T.n; i++) lunet_tensor_release(T.t[i]);
  return T.failed ? (ctx->status ? ctx->status : lunet_error(ctx, LUNET_ERR_NOMEM, "optimizer: out of memory"))
                  : LUNET_OK;
}
