/* The optimizer configurations the update_multi tests run (test_cpu_backend.c,
 * test_vulkan_backend.c): SGD plain, with momentum, Nesterov with weight
 * decay; Adam at step 3 and AdamW at step 1; RMSprop without and with
 * momentum. */
#ifndef LUNET_TEST_UPDATE_CASES_H
#define LUNET_TEST_UPDATE_CASES_H
#include "lunet/backend.h"

static const lunet_update_desc update_cases[] = {
    {.kind = LUNET_UPDATE_SGD, .lr = 0.05f},
    {.kind = LUNET_UPDATE_SGD, .lr = 0.05f, .momentum = 0.9f},
    {.kind = LUNET_UPDATE_SGD, .lr = 0.05f, .momentum = 0.9f, .nesterov = true, .weight_decay = 0.01f},
    {.kind = LUNET_UPDATE_ADAM, .lr = 0.01f, .beta1 = 0.9f, .beta2 = 0.999f, .epsilon = 1e-7f, .step = 3},
    {.kind = LUNET_UPDATE_ADAM, .lr = 0.01f, .beta1 = 0.9f, .beta2 = 0.999f, .epsilon = 1e-7f,
     .weight_decay = 0.004f, .step = 1},
    {.kind = LUNET_UPDATE_RMSPROP, .lr = 0.001f, .rho = 0.9f, .epsilon = 1e-7f},
    {.kind = LUNET_UPDATE_RMSPROP, .lr = 0.001f, .rho = 0.9f, .momentum = 0.5f, .epsilon = 1e-7f},
};
#define NUPDATE_CASES (sizeof update_cases / sizeof update_cases[0])
#endif
