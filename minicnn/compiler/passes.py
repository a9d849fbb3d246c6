"""The graph pass: find the chains of a built model and run each as one FusedStep.

A chain starts at a Conv2D, SeparableConv2D, Dense or BatchNormalization and takes in each
following layer that alone reads the chain's output, while that layer is a BatchNormalization,
a ReLU, a MaxPooling2D, a Dropout or (last) an Add of two inputs, of the chain's dtype:
    Conv2D/SeparableConv2D/Dense -> [BatchNormalization] -> [ReLU] -> [MaxPooling2D] -> [Dropout] -> [Add]
(the chain takes the middle ones in any order; its epilogue fuses them in epilogues.PLACES order,
a ReLU before or after the BatchNormalization as cnn8 and mini-Xception put it, and runs any
other order layer by layer). The model's output
layer stays on its own (the loss reads its logits). The fused step runs where the chain's last
layer ran, reading what the chain's first layer read (and the Add's other input).
"""
from ..layers.conv import Conv2D, SeparableConv2D
from ..layers.core import Dense, Dropout
from ..layers.merge import Add
from ..layers.normalization import BatchNormalization
from ..layers.pooling import MaxPooling2D
from .buffers import Buffers
from .epilogues import EpilogueStage, epilogue_layers, is_relu
from .stages import BatchNormalizationReLUStage, ConvStage, DenseStage, LayerStage, SeparableStage
from .step import FusedStep

HEADS = (Conv2D, SeparableConv2D, Dense, BatchNormalization)
PRODUCT_STAGES = {Conv2D: ConvStage, SeparableConv2D: SeparableStage, Dense: DenseStage}


def joins_chain(layer, model, head):
    """Whether `layer` can follow in the chain started by `head`."""
    if layer is model.output_layer or layer.dtype != head.dtype:
        return False
    if isinstance(layer, Add):
        return len(model.inbound[layer]) == 2 and len(set(model.inbound[layer])) == 2
    return isinstance(layer, (BatchNormalization, MaxPooling2D, Dropout)) or is_relu(layer)


def chain_from(head, model, taken):
    """[head, the layers that follow it in one chain], ending at the first Add."""
    chain = [head]
    while not isinstance(chain[-1], Add):
        readers = model.consumers[chain[-1]]
        if len(readers) != 1 or readers[0] in taken or not joins_chain(readers[0], model, head):
            break
        chain.append(readers[0])
    return chain


def find_chains(model):
    """The chains of the model, in the order of their first layers; a lone Conv2D is a chain of one
    (the compiler still chooses its method), a lone layer of another kind is left alone."""
    chains, taken = [], set()
    for layer, _ in model.graph_steps():
        if layer in taken or not isinstance(layer, HEADS) or layer is model.output_layer:
            continue
        chain = chain_from(layer, model, taken)
        if len(chain) > 1 or isinstance(layer, Conv2D):
            chains.append(chain)
            taken.update(chain)
    return chains


def stages_of(layers, buffers):
    """The stages that run `layers` one by one (an Add excluded): a BatchNormalization followed by a
    ReLU as one stage, a product layer as its stage, any other layer as itself."""
    stages, i = [], 0
    while i < len(layers):
        layer, after = layers[i], layers[i + 1] if i + 1 < len(layers) else None
        if isinstance(layer, BatchNormalization) and after is not None and is_relu(after):
            stages.append(BatchNormalizationReLUStage(layer, after))
            i += 2
            continue
        product = PRODUCT_STAGES.get(type(layer))
        stages.append(product(layer, buffers) if product else LayerStage(layer))
        i += 1
    return stages


def fused_step(chain):
    """The FusedStep that runs `chain`, with its own buffer plan: the product, then its tail as one
    epilogue (ops/epilogue.py) where the tail is one such block, else layer by layer."""
    buffers, head, tail = Buffers(), chain[0], chain[1:]
    add = chain[-1] if isinstance(chain[-1], Add) else None
    parts = epilogue_layers(head, tail) if type(head) in PRODUCT_STAGES and tail else None
    if parts is None:
        return FusedStep(stages_of(chain[:-1] if add else chain, buffers), add)
    block = [layer for layer in tail if layer is not add]
    product = PRODUCT_STAGES[type(head)](head, buffers, activate=False)      # the epilogue applies its ReLU
    epilogue = EpilogueStage(parts, block, buffers, product=product)
    product.moments_floor = epilogue.moments_floor                          # moments from the product's pass
    return FusedStep([product, epilogue], add)


def chain_sources(model, chain):
    """What a chain's step reads: its first layer's input, and the residual when it ends in Add."""
    if not isinstance(chain[-1], Add):
        return list(model.inbound[chain[0]])
    return model.inbound[chain[0]] + [s for s in model.inbound[chain[-1]] if s is not chain[-2]]


def compile_model(model):
    """Run `model` (built) as fused steps: see the module docstring. Returns the model; its graph,
    layers, weights and names are unchanged, and compiling again starts from the graph."""
    if not model.steps:
        raise ValueError(f"{model.name}: compile_model needs a built model; give the first layer an "
                         f"input_shape or call the model on data first")
    steps_by_last = {}
    for chain in find_chains(model):
        steps_by_last[chain[-1]] = (fused_step(chain), chain)
    produced_by = {chain[-1]: step for step, chain in steps_by_last.values()}
    absorbed = {layer for _, chain in steps_by_last.values() for layer in chain[:-1]}
    steps = []
    for layer, sources in model.graph_steps():
        if layer in absorbed:
            continue
        if layer in steps_by_last:
            layer, sources = steps_by_last[layer][0], chain_sources(model, steps_by_last[layer][1])
        steps.append((layer, [produced_by.get(s, s) for s in sources]))
    model.set_steps(steps, compiled=True)
    return model
