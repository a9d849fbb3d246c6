"""Weight penalties with Keras semantics: `l2(0.01)` adds 0.01 * sum(W**2) to the loss."""
import numpy as np


class L2:
    """loss = l2 * sum(W**2);  dloss/dW = 2 * l2 * W."""

    def __init__(self, l2=0.01):
        self.l2 = float(l2)

    def loss(self, w):
        return self.l2 * float(np.sum(np.square(w)))

    def gradient(self, w):
        return (2 * self.l2) * w

    def get_config(self):
        return {"class_name": "L2", "l2": self.l2}


class L1:
    """loss = l1 * sum(|W|);  dloss/dW = l1 * sign(W)."""

    def __init__(self, l1=0.01):
        self.l1 = float(l1)

    def loss(self, w):
        return self.l1 * float(np.sum(np.abs(w)))

    def gradient(self, w):
        return self.l1 * np.sign(w)

    def get_config(self):
        return {"class_name": "L1", "l1": self.l1}


def l2(l2=0.01):
    return L2(l2)


def l1(l1=0.01):
    return L1(l1)


def get(identifier):
    """None, an L1/L2 object, or its config dict (as stored in model files)."""
    if identifier is None or isinstance(identifier, (L1, L2)):
        return identifier
    if isinstance(identifier, dict):
        config = dict(identifier)
        classes = {"L2": L2, "L1": L1}
        name = config.pop("class_name", None)
        if name not in classes:
            raise ValueError(f"unknown regularizer class_name {name!r} in {identifier}; known: L1, L2")
        return classes[name](**config)
    raise ValueError(f"unknown regularizer {identifier!r}")


def serialize(regularizer):
    return None if regularizer is None else regularizer.get_config()
