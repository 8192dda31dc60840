/* The built-in layers plugin's entry point: the one symbol layers.so exports. */
#include "layers.h"

static const lunet_layer_type *const layer_types[] = {
    &layers_dense,
    &layers_conv2d,
    &layers_max_pooling2d,
    &layers_average_pooling2d,
    &layers_global_average_pooling2d,
    &layers_flatten,
    &layers_dropout,
    &layers_batch_normalization,
    &layers_activation,
    &layers_add,
    &layers_subtract,
    &layers_multiply,
    &layers_average,
    &layers_maximum,
    &layers_minimum,
    &layers_concatenate,
    &layers_reshape,
    &layers_permute,
    &layers_lstm,
    &layers_embedding,
    &layers_gru,
    &layers_layer_normalization,
    &layers_simple_rnn,
    &layers_global_average_pooling1d,
    &layers_global_max_pooling1d,
    &layers_conv1d,
    &layers_max_pooling1d,
    &layers_position_embedding,
    &layers_sine_position_encoding,
    &layers_multi_head_attention,
    &layers_reverse,
    &layers_rescaling,
    &layers_normalization,
    &layers_center_crop,
    &layers_global_max_pooling2d,
    &layers_leaky_relu,
    &layers_relu,
    &layers_softmax,
    &layers_masking,
    &layers_zero_padding2d,
    &layers_cropping2d,
    &layers_up_sampling2d,
    &layers_prelu,
    &layers_spatial_dropout2d,
    &layers_transformer_encoder,
    &layers_transformer_decoder,
    &layers_random_flip,
    &layers_random_rotation,
    &layers_random_translation,
    &layers_random_zoom,
    &layers_random_crop,
    &layers_resizing,
    &layers_gaussian_noise,
    &layers_gaussian_dropout,
    &layers_conv2d_transpose,
    &layers_activity_regularization,
    &layers_depthwise_conv2d,
    &layers_separable_conv2d,
};

static const lunet_plugin_desc layers_plugin = {
    .abi_major = LUNET_PLUGIN_ABI_MAJOR,
    .abi_minor = LUNET_PLUGIN_ABI_MINOR,
    .struct_size = sizeof(lunet_plugin_desc),
    .name = "layers",
    .version = LUNET_VERSION_STRING,
    .types = layer_types,
    .ntypes = sizeof layer_types / sizeof layer_types[0],
};

__attribute__((visibility("default"))) const lunet_plugin_desc *lunet_plugin_entry(void) {
  return &layers_plugin;
}

lunet_status layers_drop_mask(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x, lunet_tensor **mask_out) {
  (void)l, (void)c, (void)nin, (void)x, (void)mask_out; /* the core starts every output without a mask */
  return LUNET_OK;
}
