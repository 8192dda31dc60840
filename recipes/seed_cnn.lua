-- The seed CNN shared by the recipes: the classic Keras CIFAR-10 network.
-- Rescaling 1/255 (the model takes 8-bit images as the datasets give them,
-- and a saved model takes raw pictures), then
-- Conv2D 32/64/128 (3x3, relu, "valid"), each followed by MaxPooling2D 2,
-- Flatten, Dense 512 relu, Dense 10 softmax; Adam 1e-3 and sparse
-- categorical cross-entropy.
return function(nn, input_shape)
  local model = nn.Sequential{
    nn.Rescaling{1 / 255, input_shape = input_shape},
    nn.Conv2D{32, 3, activation = "relu"},
    nn.MaxPooling2D(2),
    nn.Conv2D{64, 3, activation = "relu"},
    nn.MaxPooling2D(2),
    nn.Conv2D{128, 3, activation = "relu"},
    nn.MaxPooling2D(2),
    nn.Flatten(),
    nn.Dense{512, activation = "relu"},
    nn.Dense{10, activation = "softmax"},
  }
  model:compile{optimizer = nn.optimizers.Adam{learning_rate = 1e-3}, loss = "sparse_categorical_crossentropy",
    metrics = {"accuracy"}}
  return model
end
