"""Looking inside a trained network: intermediate activations and input gradients (saliency).

    get_activations(model, x, names)   what chosen layers output for x (one forward pass)
    input_gradient(model, x)           dS/dx, S = one class score per sample (Simonyan et al. 2014)
    smoothgrad(model, x)               (dS/dx)^2 averaged over noisy copies of x (Smilkov et al. 2017)

The gradient comes from the backward pass training uses (`Network.backward`), not from a
second implementation: the upstream gradient is a one-hot row per sample, 1 at the chosen
class. Everything runs in inference mode (training=False): dropout is off and
BatchNormalization uses its moving statistics, so samples never interact and one backward
pass of the batch gives each sample the gradient of its own score.

Which score, `of=`:
    "probability"  S = p_c = softmax(z)_c, the number the model outputs. Its gradient
                   dp_c/dx = p_c * (dz_c/dx - sum_k p_k dz_k/dx) also grows when the OTHER
                   classes' scores fall, and vanishes when p_c is near 0 or 1.
    "logit"        S = z_c, the score before the output layer's softmax (Simonyan's "class
                   score"): only evidence for class c. Computed by `backward(..., from_logits=True)`,
                   which skips that softmax. For a model whose output has no softmax, z is
                   the output and both modes agree.
"""
import numpy as np

SCORES = ("probability", "logit")


def get_activations(model, x, layer_names):
    """{name: the output of layer `name` for x}, from one inference forward pass.

    x: (N, H, W, C) -> each value (N, *layer.output_shape[1:]), in the order of layer_names
    (a list of names, or one name). Unknown names: ValueError listing the model's layers.
    Named as in keract; `minicnn.activations` is already the module of activation functions.
    """
    names = [layer_names] if isinstance(layer_names, str) else list(layer_names)
    by_name = {layer.name: layer for layer in model.nodes}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise ValueError(f"{model.name}: no layer named {', '.join(map(repr, unknown))}; "
                         f"layers: {', '.join(by_name)}")
    outputs = model.layer_outputs(x, training=False)      # every layer on its own, as predict() runs them
    return {name: outputs[by_name[name]] for name in names}


def input_gradient(model, x, class_index=None, of="probability"):
    """dS/dx for S[n] = score of class c_n of sample n, by the model's own backward pass.

    S[n] = output[n, c_n] (of="probability") or the pre-softmax z[n, c_n] (of="logit").
    x: (N, H, W, C) -> dS/dx: (N, H, W, C). class_index: an int for every sample, one int
    per sample, or None for each sample's top class. Sets every weight's .grad as a side
    effect (as any backward pass does; the next training step overwrites them).
    """
    if of not in SCORES:
        raise ValueError(f"input_gradient: of must be one of {', '.join(SCORES)}, received {of!r}")
    probs = model.forward(x, training=False)      # (N, K); caches what backward needs
    classes = class_indices(class_index, probs)
    onehot = np.zeros_like(probs)                 # dS/d(output): 1 at each sample's class
    onehot[np.arange(len(probs)), classes] = 1
    # `logits` is set by an output layer with a softmax; without one, the output is the score
    ends_in_softmax = getattr(model.output_layer, "logits", None) is not None
    return model.backward(onehot, from_logits=(of == "logit" and ends_in_softmax))


def smoothgrad(model, x, class_index=None, n=25, noise=0.15, seed=0, of="probability", magnitude=True,
               batch_size=32):
    """Input gradients averaged over n noisy copies of x (SmoothGrad): less speckled maps.

    magnitude=True:  mean_k (dS/dx at x + e_k)**2     (the default of the authors' `saliency` library)
    magnitude=False: mean_k  dS/dx at x + e_k         (the paper's formula)
    e_k ~ Normal(0, sigma^2), sigma = noise * (max(x_n) - min(x_n)) per sample n (Smilkov et al.
    2017 use 10-20% of the input range). x: (N, H, W, C) -> (N, H, W, C).
    Squaring first matters for CNNs: neighbouring pixels' gradients often alternate in sign,
    and a signed mean cancels them into noise. The class is chosen once, on the clean x, so
    every copy differentiates the same score.
    """
    if n < 1 or noise < 0:
        raise ValueError(f"smoothgrad: needs n >= 1 and noise >= 0, received n={n}, noise={noise}")
    x = np.asarray(x)
    classes = np.repeat(class_indices(class_index, model.forward(x, training=False)), n)   # (N*n,)
    sample_axes = tuple(range(1, x.ndim))
    spread = x.max(axis=sample_axes, keepdims=True) - x.min(axis=sample_axes, keepdims=True)  # (N, 1, 1, 1)
    copies = np.repeat(x, n, axis=0)                                        # (N*n, H, W, C): x_n n times
    rng = np.random.default_rng(seed)
    copies = (copies + rng.standard_normal(copies.shape) * noise * np.repeat(spread, n, axis=0)).astype(x.dtype)
    # batches of copies, not one copy at a time: each layer's fixed cost is paid once a batch
    grads = np.concatenate([input_gradient(model, copies[i:i + batch_size], classes[i:i + batch_size], of)
                            for i in range(0, len(copies), batch_size)])
    if magnitude:
        grads = grads * grads
    return grads.reshape((len(x), n) + x.shape[1:]).mean(axis=1)           # (N, H, W, C)


def class_indices(class_index, probs):
    """(N,) int class per sample: argmax of each row of probs (None), one int for all, or one each."""
    n, k = probs.shape
    if class_index is None:
        return probs.argmax(axis=1)
    classes = np.asarray(class_index)
    if classes.ndim == 0:
        classes = np.full(n, classes)
    if classes.shape != (n,) or classes.dtype.kind not in "iu" or np.any((classes < 0) | (classes >= k)):
        raise ValueError(f"class_index must be an int in 0..{k - 1} or {n} of them, received {class_index!r}")
    return classes
