"""Model files, the public entry: `load_model`, and every function a program that keeps its own
files (checkpoints, published weights) needs, each documented where it is defined.

    load_model(path)            a .npz written by model.save, or a Keras 3 .keras file
    save_model / save_weights / load_weights, load_keras_h5 (Keras 2 .hdf5), export_onnx
    write_npz / read_npz        an archive of named arrays and a JSON entry (files.py)
    weight_arrays, weights_meta, assign_weights, trainable_in_file_order: a model's weights in
                                such an archive, the way model files hold them (saving.py)
    named_weights, nonfinite    {name: array} of a model's weights; those holding inf or NaN
Everything loads without pickle; files are written atomically.
"""
from .files import FORMAT, META_KEY, NpzReader, atomic_write, read_npz, write_npz
from .keras3 import is_keras3_archive, is_keras3_file, load_keras3
from .keras_h5 import load_keras_h5
from .models import model_from_config
from .onnx import export_onnx
from .saving import (MODEL_FORMATS, WEIGHT_FORMATS, all_weights, assign_weights, file_layer_order, keep_initializers,
                     load_weights, named_weights, nonfinite, read_weights, restore_compile_state, save_model,
                     save_weights, stored_members, trainable_in_file_order, weight_arrays, weights_meta,
                     with_zeros_initializers, writer_for)

__all__ = ["FORMAT", "META_KEY", "MODEL_FORMATS", "WEIGHT_FORMATS", "NpzReader", "all_weights", "assign_weights",
           "atomic_write", "export_onnx", "file_layer_order", "is_keras3_file", "load_keras3", "load_keras_h5",
           "load_model", "load_weights", "named_weights", "nonfinite", "read_npz", "save_model", "save_weights",
           "trainable_in_file_order", "weight_arrays", "weights_meta", "write_npz", "writer_for"]


def load_model(path, compile=True):
    """Rebuild the architecture stored in `path`, load its weights and metadata, and (compile=True,
    as Keras) compile it with the optimizer, loss and metrics it was saved with. The archive is
    opened once; only the arrays its JSON names are read, after their stored shapes (from the .npy
    headers) are checked against the architecture, built without random initial values."""
    with NpzReader(path) as archive:
        if is_keras3_archive(archive.zip):       # a Keras 3 .keras archive (config.json, model.weights.h5)
            return load_keras3(path)
        meta = archive.meta
        model = model_from_meta(archive.path, meta)
        arrays = read_weights(model, archive, stored_members(meta, compile))
    model.metadata = meta.get("metadata") or {}
    if compile:
        restore_compile_state(model, meta, arrays, archive.path)
    return model


def model_from_meta(path, meta):
    """The architecture of a model file's JSON, its weights all zeros until the file's are read."""
    if "config" not in meta:
        raise ValueError(f"{path}: holds weights only (save_weights); build the model and call load_weights")
    try:
        model = model_from_config(with_zeros_initializers(meta["config"]))
    except (KeyError, TypeError, ValueError, AttributeError) as error:     # a config this version cannot build
        raise ValueError(f"{path}: the stored architecture does not build: {error}") from error
    keep_initializers(model, meta["config"])
    return model
