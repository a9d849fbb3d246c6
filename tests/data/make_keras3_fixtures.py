"""Writes tests/data/keras3_{functional,sequential}.keras with real Keras 3 (jax backend) and each
file's input and Keras' own output in keras3_{...}_io.npz."""
import os; os.environ["KERAS_BACKEND"] = "jax"
import keras, numpy as np
from keras import layers
rng = np.random.default_rng(21)
inp = keras.Input((9, 9, 2))
x = layers.Conv2D(8, 3, strides=2, padding="same", kernel_regularizer=keras.regularizers.l2(0.01))(inp)
x = layers.BatchNormalization()(x)
x = layers.Activation("relu")(x)
y = layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2)(x)
y = layers.SeparableConv2D(8, 3, padding="same", activation="relu")(y)
y = layers.MaxPooling2D(3, strides=2, padding="same")(y)
z = layers.AveragePooling2D(2, padding="same")(x)
z = layers.Conv2D(8, 1, padding="same")(z)
x = layers.Add()([y, z])
x = layers.GlobalAveragePooling2D()(x)
x = layers.Dropout(0.3)(x)
out = layers.Dense(5, activation="softmax")(x)
functional = keras.Model(inp, out, name="small_functional")
sequential = keras.Sequential([keras.Input((8, 8, 1)), layers.Conv2D(4, 3, activation="relu"), layers.MaxPooling2D(),
                               layers.Flatten(), layers.Dense(6, activation="tanh"), layers.Dropout(0.5),
                               layers.Dense(3, activation="softmax")], name="small_sequential")
for name, model in (("functional", functional), ("sequential", sequential)):
    model.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") + (1.5 if "variance" in w.path else 0)
                       for w in model.weights])
    x = rng.random((4,) + model.input_shape[1:], dtype=np.float32)
    model.save(f"/work/main/tests/data/keras3_{name}.keras")
    np.savez(f"/work/main/tests/data/keras3_{name}_io.npz", x=x, y=np.asarray(model.predict(x, verbose=0)),
             keras_version=keras.__version__)
    print(name, np.asarray(model.predict(x, verbose=0)).round(3))
