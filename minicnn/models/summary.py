"""`model.summary()` in the Keras 2 layout the seeds print.

A chain prints three columns (65 characters wide); a graph with branches adds
"Connected to" (98 wide). Each field is cut to its column, as Keras does, which is why a
seed shows "batch_normalization_1 (Batch".
"""


def _row(fields, positions):
    line = ""
    for i, field in enumerate(fields):
        if i > 0:
            line = line[:-1] + " "
        line += str(field)
        line = line[:positions[i]]
        line += " " * (positions[i] - len(line))
    return line


def summary_lines(model, sequential_style):
    if sequential_style:
        width, positions = 65, [29, 55, 65]       # Keras: int(65 * [.45, .85, 1])
        header = ["Layer (type)", "Output Shape", "Param #"]
    else:
        width, positions = 98, [32, 53, 65, 98]   # Keras: int(98 * [.33, .55, .67, 1])
        header = ["Layer (type)", "Output Shape", "Param #", "Connected to"]
    lines = [f'Model: "{model.name}"', "_" * width, _row(header, positions), "=" * width]
    layers = model.layers
    for i, layer in enumerate(layers):
        fields = [f"{layer.name} ({type(layer).__name__})", layer.output_shape, layer.count_params()]
        if sequential_style:
            lines.append(_row(fields, positions))
        else:
            sources = [f"{s.name}[0][0]" for s in model.inbound[layer]] or [""]
            lines.append(_row(fields + [sources[0]], positions))
            lines += [_row(["", "", "", s], positions) for s in sources[1:]]
        lines.append(("=" if i == len(layers) - 1 else "_") * width)
    trainable = sum(w.value.size for w in model.trainable_weights)
    non_trainable = sum(w.value.size for w in model.non_trainable_weights)
    lines += [f"Total params: {trainable + non_trainable:,}", f"Trainable params: {trainable:,}",
              f"Non-trainable params: {non_trainable:,}", "_" * width]
    return lines
