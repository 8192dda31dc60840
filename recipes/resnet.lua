-- A small residual network (He et al., 2016) for 32x32 or 28x28 images,
-- shared by the ResNet recipes: a 3x3 convolution stem with 2x2 max
-- pooling, then three stages of residual blocks (32, 64, 128 filters; one
-- block each by default; the first block of stages 2 and 3 halves the
-- resolution with stride 2 and a 1x1 projection shortcut), each block
-- conv-BN-ReLU-conv-BN + shortcut, then ReLU; global average pooling and
-- Dense 10 softmax.  Rescaling 1/255 first (8-bit images in).  Adam 1e-3,
-- sparse categorical cross-entropy, as the seed CNN.
return function(nn, input_shape, opts)
  opts = opts or {}
  local widths = opts.widths or {32, 64, 128}
  local blocks = opts.blocks or 1

  local function conv_bn(x, filters, strides, relu)
    local y = nn.Conv2D{filters, 3, strides = strides, padding = "same", use_bias = false}(x)
    y = nn.BatchNormalization()(y)
    if relu then y = nn.Activation("relu")(y) end
    return y
  end

  local function block(x, filters, strides, project)
    local y = conv_bn(x, filters, strides, true)
    y = conv_bn(y, filters, 1, false)
    local shortcut = x
    if project then
      shortcut = nn.Conv2D{filters, 1, strides = strides, use_bias = false}(x)
      shortcut = nn.BatchNormalization()(shortcut)
    end
    return nn.Activation("relu")(nn.Add()({y, shortcut}))
  end

  local inputs = nn.Input{shape = input_shape, name = "image"}
  local scaled = nn.Rescaling{1 / 255}(inputs)
  local x = nn.MaxPooling2D(2)(conv_bn(scaled, widths[1], 1, true))
  for stage, filters in ipairs(widths) do
    for b = 1, blocks do
      local down = stage > 1 and b == 1
      x = block(x, filters, down and 2 or 1, down)
    end
  end
  x = nn.GlobalAveragePooling2D()(x)
  local outputs = nn.Dense{10, activation = "softmax"}(x)
  local model = nn.Model{inputs = inputs, outputs = outputs, name = "resnet"}
  model:compile{optimizer = nn.optimizers.Adam{learning_rate = 1e-3}, loss = "sparse_categorical_crossentropy",
    metrics = {"accuracy"}}
  return model
end
