"""Every architecture of the design documents (`shared/seeds/`), written as the seeds write them.

Each builder is Keras code with only the imports changed, so it can be held against its
seed line by line. Parameter counts with 7 classes at 48x48 (checked by the tests):
    cnn4           seed 000   4,478,727      cnn8    seed 001   1,328,199 (4 classes)
    mini_xception  seed 002      58,423      tflearn seed 003   56,883,015 (see its note)
    seq4..seq8     seed 004   4,589,318 (6 classes), 2,345,991, 1,914,951, 4,478,727, 4,478,214 (6)
Where a seed leaves something unsaid (dropout rates, an activation), the choice is marked.
"""
import inspect

from minicnn import (Activation, Add, BatchNormalization, Conv2D, Dense, Dropout, Flatten, GlobalAveragePooling2D,
                     Input, MaxPooling2D, Model, SeparableConv2D, Sequential)
from minicnn.regularizers import l2

from .data import CLASS_MAPS


def cnn4(num_classes=7, input_shape=(48, 48, 1)):
    """Seed 000: 4 conv blocks (conv, BN, ReLU, max pool, dropout) and 2 dense blocks.

    The seed prints only the layer table; the dropout rate 0.25 and the 'same' padding are
    those of seed 004's 7th model, which has this exact table.
    """
    model = Sequential()
    model.add(Conv2D(64, (3, 3), padding="same", input_shape=input_shape))
    model.add(BatchNormalization())
    model.add(Activation("relu"))
    model.add(MaxPooling2D(pool_size=(2, 2)))
    model.add(Dropout(0.25))

    model.add(Conv2D(128, (5, 5), padding="same"))
    model.add(BatchNormalization())
    model.add(Activation("relu"))
    model.add(MaxPooling2D(pool_size=(2, 2)))
    model.add(Dropout(0.25))

    model.add(Conv2D(512, (3, 3), padding="same"))
    model.add(BatchNormalization())
    model.add(Activation("relu"))
    model.add(MaxPooling2D(pool_size=(2, 2)))
    model.add(Dropout(0.25))

    model.add(Conv2D(512, (3, 3), padding="same"))
    model.add(BatchNormalization())
    model.add(Activation("relu"))
    model.add(MaxPooling2D(pool_size=(2, 2)))
    model.add(Dropout(0.25))

    model.add(Flatten())
    model.add(Dense(256))
    model.add(BatchNormalization())
    model.add(Activation("relu"))
    model.add(Dropout(0.25))

    model.add(Dense(512))
    model.add(BatchNormalization())
    model.add(Activation("relu"))
    model.add(Dropout(0.25))

    model.add(Dense(num_classes, activation="softmax"))
    return model


def cnn8(num_classes=4, input_shape=(48, 48, 1)):
    """Seed 001: 8 convs in pairs (conv, ReLU, BN), dense 64-64, then dense 7 and the 4-class head.

    Unsaid in the seed, chosen here: dropout 0.25 after conv blocks, 0.5 after dense blocks,
    and ReLU after the 7-unit dense layer (activation21). `num_classes` sets the final head.
    """
    model = Sequential()
    for i, filters in enumerate((32, 64, 128, 256)):
        first = {"input_shape": input_shape} if i == 0 else {}
        model.add(Conv2D(filters, (3, 3), padding="same", **first))
        model.add(Activation("relu"))
        model.add(BatchNormalization())
        model.add(Conv2D(filters, (3, 3), padding="same"))
        model.add(Activation("relu"))
        model.add(BatchNormalization())
        model.add(MaxPooling2D(pool_size=(2, 2)))
        model.add(Dropout(0.25))

    model.add(Flatten())
    for units in (64, 64):
        model.add(Dense(units))
        model.add(Activation("relu"))
        model.add(BatchNormalization())
        model.add(Dropout(0.5))
    model.add(Dense(7))
    model.add(Activation("relu"))
    model.add(Dense(num_classes))
    model.add(Activation("softmax"))
    return model


def mini_xception(num_classes=7, input_shape=(48, 48, 1), l2_regularization=0.01):
    """Seed 002: mini-Xception (Arriaga et al. 2017): two plain convs, four residual modules
    of separable convs with a strided 1x1 shortcut, a class-wise conv and global average pooling.
    Fully convolutional, so it builds for 48x48 or 64x64 input.
    """
    regularization = l2(l2_regularization)
    img_input = Input(input_shape)
    x = Conv2D(8, (3, 3), strides=(1, 1), kernel_regularizer=regularization, use_bias=False)(img_input)
    x = BatchNormalization()(x)
    x = Activation("relu")(x)
    x = Conv2D(8, (3, 3), strides=(1, 1), kernel_regularizer=regularization, use_bias=False)(x)
    x = BatchNormalization()(x)
    x = Activation("relu")(x)

    for filters in (16, 32, 64, 128):
        residual = Conv2D(filters, (1, 1), strides=(2, 2), padding="same", use_bias=False)(x)
        residual = BatchNormalization()(residual)

        # Arriaga's code also passes kernel_regularizer to these two; Keras 2 ignores it there
        # (a SeparableConv2D has no `kernel`), so, to train as the published model did, it is left out.
        x = SeparableConv2D(filters, (3, 3), padding="same", use_bias=False)(x)
        x = BatchNormalization()(x)
        x = Activation("relu")(x)
        x = SeparableConv2D(filters, (3, 3), padding="same", use_bias=False)(x)
        x = BatchNormalization()(x)

        x = MaxPooling2D((3, 3), strides=(2, 2), padding="same")(x)
        x = Add()([x, residual])

    x = Conv2D(num_classes, (3, 3), padding="same")(x)
    x = GlobalAveragePooling2D()(x)
    output = Activation("softmax", name="predictions")(x)
    return Model(img_input, output)


def tflearn(num_classes=7, input_shape=(48, 48, 1)):
    """Seed 003 (tflearn): conv 64-5, max pool 3/2, conv 64-5, max pool 3/2, conv 128-4,
    dropout, fc 3072, softmax. tflearn pads "same" by default, for convs and pools alike.

    tflearn's `dropout(x, 0.3)` takes the KEEP probability, so it drops 70%: Keras rate 0.7.
    The 12*12*128 -> 3072 dense layer holds 56.6M of the 56.95M parameters.
    """
    model = Sequential()
    model.add(Conv2D(64, 5, padding="same", activation="relu", input_shape=input_shape))
    model.add(MaxPooling2D(3, strides=2, padding="same"))
    model.add(Conv2D(64, 5, padding="same", activation="relu"))
    model.add(MaxPooling2D(3, strides=2, padding="same"))
    model.add(Conv2D(128, 4, padding="same", activation="relu"))
    model.add(Dropout(0.7))
    model.add(Flatten())
    model.add(Dense(3072, activation="relu"))
    model.add(Dense(num_classes, activation="softmax"))
    return model


def seq4(num_classes=6, input_shape=(48, 48, 1)):
    """Seed 004, 4th model (6 emotions)."""
    model = Sequential()
    model.add(Conv2D(32, kernel_size=(3, 3), activation="relu", input_shape=input_shape))
    model.add(Conv2D(64, kernel_size=(3, 3), activation="relu"))
    model.add(MaxPooling2D(pool_size=(2, 2)))
    model.add(Dropout(0.25))

    model.add(Conv2D(128, kernel_size=(3, 3), activation="relu"))
    model.add(MaxPooling2D(pool_size=(2, 2)))
    model.add(Conv2D(256, kernel_size=(3, 3), activation="relu"))
    model.add(MaxPooling2D(pool_size=(2, 2)))
    model.add(Dropout(0.25))

    model.add(Flatten())
    model.add(Dense(1024, activation="relu"))
    model.add(Dropout(0.5))
    model.add(Dense(num_classes, activation="softmax"))
    return model


def seq5(num_classes=7, input_shape=(48, 48, 1)):
    """Seed 004, 5th model (the seed's best)."""
    model = Sequential()
    model.add(Conv2D(32, kernel_size=(3, 3), activation="relu", input_shape=input_shape))
    model.add(BatchNormalization())
    model.add(Conv2D(64, kernel_size=(3, 3), activation="relu"))
    model.add(BatchNormalization())
    model.add(MaxPooling2D(pool_size=(2, 2)))
    model.add(Dropout(0.25))

    model.add(Conv2D(128, kernel_size=(3, 3), activation="relu"))
    model.add(MaxPooling2D(pool_size=(2, 2)))
    model.add(Conv2D(128, kernel_size=(3, 3), activation="relu"))
    model.add(MaxPooling2D(pool_size=(2, 2)))
    model.add(Dropout(0.25))

    model.add(Flatten())
    model.add(Dense(1024, activation="relu"))
    model.add(Dropout(0.5))
    model.add(Dense(num_classes, activation="softmax"))
    return model


def seq6(num_classes=7, input_shape=(48, 48, 1)):
    """Seed 004, 6th model: three conv pairs, two dense 1024 layers."""
    model = Sequential()
    model.add(Conv2D(64, kernel_size=(3, 3), activation="relu", input_shape=input_shape))
    model.add(Conv2D(64, kernel_size=(3, 3), activation="relu"))
    model.add(MaxPooling2D(pool_size=(2, 2), strides=(2, 2)))
    model.add(Dropout(0.5))

    model.add(Conv2D(64, (3, 3), activation="relu"))
    model.add(Conv2D(64, (3, 3), activation="relu"))
    model.add(MaxPooling2D(pool_size=(2, 2), strides=(2, 2)))
    model.add(Dropout(0.5))

    model.add(Conv2D(128, (3, 3), activation="relu"))
    model.add(Conv2D(128, (3, 3), activation="relu"))
    model.add(MaxPooling2D(pool_size=(2, 2), strides=(2, 2)))

    model.add(Flatten())
    model.add(Dense(1024, activation="relu"))
    model.add(Dropout(0.2))
    model.add(Dense(1024, activation="relu"))
    model.add(Dropout(0.2))
    model.add(Dense(num_classes, activation="softmax"))
    return model


def seq7(num_classes=7, input_shape=(48, 48, 1)):
    """Seed 004, 7th model: the same table as seed 000's cnn4."""
    return cnn4(num_classes, input_shape)


def seq8(num_classes=6, input_shape=(48, 48, 1)):
    """Seed 004, 8th model: the 7th with 6 emotions (Disgust dropped)."""
    return cnn4(num_classes, input_shape)


BUILDERS = {"cnn4": cnn4, "cnn8": cnn8, "mini_xception": mini_xception, "tflearn": tflearn,
            "seq4": seq4, "seq5": seq5, "seq6": seq6, "seq7": seq7, "seq8": seq8}

# What each seed trained with; scripts/train.py uses these as its defaults.
DEFAULTS = {
    "cnn4": dict(classes="fer7", input_size=48, scale="unit", optimizer="adam", lr=1e-3, batch_size=64, epochs=60),
    "cnn8": dict(classes="fer4", input_size=48, scale="unit", optimizer="adam", lr=1e-3, batch_size=64, epochs=50),
    "mini_xception": dict(classes="fer7", input_size=48, scale="symmetric", optimizer="adam", lr=1e-3,
                          batch_size=32, epochs=100),
    "tflearn": dict(classes="fer7", input_size=48, scale="standardize", optimizer="sgd", lr=1e-3, batch_size=50,
                    epochs=50),
    "seq4": dict(classes="fer6", input_size=48, scale="unit", optimizer="adam", lr=1e-3, batch_size=64, epochs=50),
    "seq5": dict(classes="fer7", input_size=48, scale="unit", optimizer="adam", lr=1e-3, batch_size=64, epochs=50),
    "seq6": dict(classes="fer7", input_size=48, scale="unit", optimizer="adam", lr=1e-3, batch_size=64, epochs=50),
    "seq7": dict(classes="fer7", input_size=48, scale="unit", optimizer="adam", lr=1e-3, batch_size=64, epochs=50),
    "seq8": dict(classes="fer6", input_size=48, scale="unit", optimizer="adam", lr=1e-3, batch_size=64, epochs=50),
}


def names():
    """The registered architecture names."""
    return sorted(BUILDERS)


def build(name, num_classes=None, input_shape=(48, 48, 1), l2_regularization=None):
    """Build architecture `name` for `num_classes` outputs (default: its seed's own classes,
    DEFAULTS[name]["classes"]) and inputs of `input_shape`; l2_regularization: the kernels' L2
    factor for an architecture that takes one (mini_xception), None for the seed's."""
    if name not in BUILDERS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(names())}")
    if num_classes is None:
        num_classes = len(CLASS_MAPS[DEFAULTS[name]["classes"]])
    options = {}
    if l2_regularization is not None:
        if name not in l2_regularized_names():
            raise ValueError(f"{name} has no kernel regularizer to set (l2_regularization={l2_regularization}); "
                             f"these have one: {', '.join(l2_regularized_names())}")
        options["l2_regularization"] = float(l2_regularization)
    return BUILDERS[name](num_classes=num_classes, input_shape=tuple(input_shape), **options)


def l2_regularized_names():
    """The architectures with kernel regularizers whose factor build(l2_regularization=) sets."""
    return [name for name in names() if "l2_regularization" in inspect.signature(BUILDERS[name]).parameters]
