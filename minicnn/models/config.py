"""Models rebuilt from `get_config()` output, as model files store them."""
from ..layers import LAYER_CLASSES
from ..layers.base import SymbolicTensor
from .model import Model
from .sequential import Sequential


def model_from_config(config):
    """Rebuild a Model or Sequential from `get_config()` output (as stored in model files)."""
    layers, tensors = {}, {}
    for spec in config["layers"]:
        cls = LAYER_CLASSES.get(spec["class_name"])
        if cls is None:
            raise ValueError(f"unknown layer class {spec['class_name']!r} in model config")
        layer = cls.from_config(dict(spec["config"]))
        layers[layer.name] = layer
        if spec["inbound"]:
            inputs = [tensors[name] for name in spec["inbound"]]
            tensors[layer.name] = layer(inputs if len(inputs) > 1 else inputs[0])
        else:
            tensors[layer.name] = SymbolicTensor(layer.output_shape, layer)
    inputs = [tensors[name] for name in config["input_layers"]]
    outputs = tensors[config["output_layer"]]
    if config["class_name"] == "Sequential":
        model = Sequential(name=config["name"])
        model.set_graph(inputs, outputs)
        return model
    return Model(inputs, outputs, name=config["name"])
