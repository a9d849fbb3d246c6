"""Eight float32 numbers in one vector register, as a value numba kernels can hold: `Lanes`.

LLVM vectorizes a long loop over one array by itself, but not a short loop over a pixel's
channels: there every iteration pays for its loads, index arithmetic and loop test. A kernel
that keeps a pixel's eight filters in one register says so here instead:

    acc = zeros(8)                                   # eight registers, eight pixels' outputs
    acc = broadcast_multiply_add(acc, x, p, C, k)    # acc[m] += x[p + m*C] * k[0:8], every m
    store_all(acc, z, q, 8)                          # z[q + m*8 : q + m*8 + 8] = acc[m]

A tuple of Lanes is a block of registers (LLVM keeps it out of memory while it fits in the
CPU's vector registers); its length is a constant the kernel is compiled for (`zeros(count)`
takes a literal). Each function below is a numba intrinsic: it compiles to the few LLVM
instructions its docstring names and runs only inside @njit code. Arrays are 1-D C-contiguous
float32 and indices and steps integers (anything else is a typing error); there are no bounds
checks (NUMBA_BOUNDSCHECK=1 does not see inside them either): the kernel's own loops keep every
index inside its arrays, and its tests run every edge of them. They have no plain-Python form,
so under NUMBA_DISABLE_JIT=1 the kernels written on them stand aside (ops.jit.lane_kernels_run).
numba checks a cached kernel against its own file only: after editing this file, touch the
files whose kernels use it (ops/pixel_conv.py, ops/separable_lanes.py, ops/panels.py).
"""
import os

from llvmlite import binding, ir
from numba import types
from numba.extending import intrinsic, models, register_model

from .jit import njit

WIDTH = 8                              # lanes: 256 bits of float32 (AVX2; an AVX-512 register holds two)
VECTOR = ir.VectorType(ir.FloatType(), WIDTH)
INDEX = ir.IntType(32)
FAST = {"contract", "reassoc"}     # the kernels' fastmath: LLVM may reorder additions (multiply-adds are fused here)


def vector_registers():
    """The vector registers numba's code can use here: 32 where the CPU has AVX-512 (its 256-bit
    instructions reach all of them too), else 16. Read from NUMBA_CPU_FEATURES when set."""
    features = os.environ.get("NUMBA_CPU_FEATURES") or binding.get_host_cpu_features().flatten()
    return 32 if "+avx512vl" in features.split(",") else 16


class Lanes(types.Type):
    """numba's type for eight float32 lanes."""

    def __init__(self):
        super().__init__(name="Lanes")


lanes = Lanes()


@register_model(Lanes)
class LanesModel(models.PrimitiveModel):
    """Stored as LLVM's <8 x float>: one register."""

    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, VECTOR)


def _flat_float32(array):
    """Whether `array` is a type the intrinsics accept: 1-D C-contiguous float32."""
    return isinstance(array, types.Array) and array.dtype == types.float32 and array.ndim == 1 and array.layout == "C"


def _block_and_array(block, array):
    """Whether `block` is a tuple of Lanes and `array` one the intrinsics accept."""
    return isinstance(block, types.UniTuple) and block.dtype == lanes and _flat_float32(array)


def _integers(*indices):
    """Whether every one of `indices` is an integer type (the intrinsics cast them to intp)."""
    return all(isinstance(index, types.Integer) for index in indices)


def _pointer(context, builder, array_type, array, index, to_vector=True):
    """The address of array[index], as a pointer to eight lanes (or to one float)."""
    address = builder.gep(context.make_array(array_type)(context, builder, array).data, [index])
    return builder.bitcast(address, VECTOR.as_pointer()) if to_vector else address


def _addresses(context, builder, array_type, array, first, step, count, per_row=1, to_vector=True):
    """The addresses of `count` runs of the array, run m at first + (m // per_row)*step + (m % per_row)*8:
    a block of registers laid out as rows of per_row Lanes, step numbers apart (per_row=1: run m at
    first + m*step). Pointers to eight lanes, or to one float."""
    addresses = []
    for m in range(count):
        row = builder.add(first, builder.mul(step, ir.Constant(step.type, m // per_row)))
        index = builder.add(row, ir.Constant(row.type, (m % per_row) * WIDTH))
        addresses.append(_pointer(context, builder, array_type, array, index, to_vector))
    return addresses


def _broadcast(builder, number):
    """<number, number, ..., number>."""
    first = builder.insert_element(ir.Constant(VECTOR, ir.Undefined), number, ir.Constant(INDEX, 0))
    return builder.shuffle_vector(first, ir.Constant(VECTOR, ir.Undefined), ir.Constant(ir.VectorType(INDEX, WIDTH),
                                                                                      [0] * WIDTH))


def _fma(builder):
    """LLVM's fused multiply-add on eight lanes, a * b + c, declared once per module."""
    module = builder.module
    return (module.globals.get("llvm.fma.v8f32")
            or ir.Function(module, ir.FunctionType(VECTOR, [VECTOR] * 3), name="llvm.fma.v8f32"))


@intrinsic(prefer_literal=True)
def zeros(typingctx, count):
    """A tuple of `count` Lanes, all zero (count: a literal integer)."""
    if not isinstance(count, types.IntegerLiteral):
        return None
    block = types.UniTuple(lanes, count.literal_value)

    def codegen(context, builder, signature, args):
        value = ir.Constant(context.get_value_type(block), ir.Undefined)
        for m in range(block.count):
            value = builder.insert_value(value, ir.Constant(VECTOR, [0.0] * WIDTH), m)
        return value
    return block(count), codegen


@intrinsic
def zero(typingctx):
    """One Lanes of zeros."""
    def codegen(context, builder, signature, args):
        return ir.Constant(VECTOR, [0.0] * WIDTH)
    return lanes(), codegen


@intrinsic
def load(typingctx, array, index):
    """array[index:index + 8] as Lanes (one unaligned vector load)."""
    if not (_flat_float32(array) and _integers(index)):
        return None

    def codegen(context, builder, signature, args):
        return builder.load(_pointer(context, builder, signature.args[0], *args), align=4)
    return lanes(array, types.intp), codegen


@intrinsic
def multiply_add_loads(typingctx, block, array, start, step, vector):
    """The block with block[m] + array[start + m*step : +8] * vector in each of its Lanes: one
    vector load and one fused multiply-add each."""
    if not (_block_and_array(block, array) and _integers(start, step) and vector == lanes):
        return None

    def codegen(context, builder, signature, args):
        value, array_value, first, step_value, factor = args
        fma = _fma(builder)
        addresses = _addresses(context, builder, signature.args[1], array_value, first, step_value, block.count)
        for m, address in enumerate(addresses):
            term = builder.load(address, align=4)
            value = builder.insert_value(value, builder.call(fma, [term, factor, builder.extract_value(value, m)]), m)
        return value
    return block(block, array, types.intp, types.intp, vector), codegen


@intrinsic
def outer_multiply_add(typingctx, block, array, start, step, vectors):
    """The block plus the outer product of array[start + r*step] (r = 0, 1, ...) and the Lanes of
    `vectors`: block[r*V + j] + array[start + r*step] * vectors[j], V = len(vectors), one broadcast
    load per r. A block of R*V registers: a matrix product's rank-one update, R rows by V*8 columns."""
    if not (_block_and_array(block, array) and _integers(start, step) and isinstance(vectors, types.UniTuple)
            and vectors.dtype == lanes and block.count % vectors.count == 0):
        return None

    def codegen(context, builder, signature, args):
        value, array_value, first, step_value, factors = args
        fma, width = _fma(builder), vectors.count
        addresses = _addresses(context, builder, signature.args[1], array_value, first, step_value,
                               block.count // width, to_vector=False)
        for r, address in enumerate(addresses):
            term = _broadcast(builder, builder.load(address))
            for j in range(width):
                m = r * width + j
                product = builder.call(fma, [term, builder.extract_value(factors, j), builder.extract_value(value, m)])
                value = builder.insert_value(value, product, m)
        return value
    return block(block, array, types.intp, types.intp, vectors), codegen


@njit(inline="always")
def broadcast_multiply_add(block, array, start, step, vector):
    """The block with block[m] + array[start + m*step] * vector in each of its Lanes: one
    broadcast load and one fused multiply-add each (outer_multiply_add with one vector)."""
    return outer_multiply_add(block, array, start, step, (vector,))


@intrinsic
def dot_loads(typingctx, block, array, start, step, total):
    """total + sum_m block[m] * array[start + m*step : +8]: a weighted sum of loads, in Lanes."""
    if not (_block_and_array(block, array) and _integers(start, step) and total == lanes):
        return None

    def codegen(context, builder, signature, args):
        value, array_value, first, step_value, result = args
        fma = _fma(builder)
        addresses = _addresses(context, builder, signature.args[1], array_value, first, step_value, block.count)
        for m, address in enumerate(addresses):
            result = builder.call(fma, [builder.extract_value(value, m), builder.load(address, align=4), result])
        return result
    return lanes(block, array, types.intp, types.intp, total), codegen


@intrinsic(prefer_literal=True)
def load_all(typingctx, array, start, step, count):
    """(array[start : +8], array[start + step : +8], ...): `count` Lanes (a literal integer)."""
    if not (_flat_float32(array) and _integers(start, step) and isinstance(count, types.IntegerLiteral)):
        return None
    block = types.UniTuple(lanes, count.literal_value)

    def codegen(context, builder, signature, args):
        array_value, first, step_value, _ = args
        value = ir.Constant(context.get_value_type(block), ir.Undefined)
        addresses = _addresses(context, builder, signature.args[0], array_value, first, step_value, block.count)
        for m, address in enumerate(addresses):
            value = builder.insert_value(value, builder.load(address, align=4), m)
        return value
    return block(array, types.intp, types.intp, count), codegen


@intrinsic
def add_squares(typingctx, sums, squares, block):
    """(sums + sum_m block[m], squares + sum_m block[m]**2): two Lanes of per-lane totals."""
    if not (sums == lanes and squares == lanes and isinstance(block, types.UniTuple) and block.dtype == lanes):
        return None
    pair = types.UniTuple(lanes, 2)

    def codegen(context, builder, signature, args):
        total, total_squares, value = args
        fma = _fma(builder)
        for m in range(block.count):
            vector = builder.extract_value(value, m)
            total = builder.fadd(total, vector)
            total_squares = builder.call(fma, [vector, vector, total_squares])
        return context.make_tuple(builder, pair, (total, total_squares))
    return pair(sums, squares, block), codegen


def _rows_codegen(add):
    """The codegen of store_rows (add=False) or add_rows (add=True)."""
    def codegen(context, builder, signature, args):
        value, array_value, first, step_value, _ = args
        count, per_row = signature.args[0].count, signature.args[4].literal_value
        addresses = _addresses(context, builder, signature.args[1], array_value, first, step_value, count, per_row)
        for m, address in enumerate(addresses):
            vector = builder.extract_value(value, m)
            if add:
                vector = builder.fadd(builder.load(address, align=4), vector)
            builder.store(vector, address, align=4)
        return context.get_dummy_value()
    return codegen


def _rows_signature(block, array, start, row_step, width):
    """store_rows' and add_rows' signature, or None where the arguments do not fit."""
    if not (_block_and_array(block, array) and _integers(start, row_step) and isinstance(width, types.IntegerLiteral)
            and block.count % width.literal_value == 0):
        return None
    return types.none(block, array, types.intp, types.intp, width)


@intrinsic(prefer_literal=True)
def store_rows(typingctx, block, array, start, row_step, width):
    """array[start + r*row_step + j*8 : +8] = block[r*width + j]: a block of registers, `width`
    Lanes a row (a literal integer), stored as rows of a matrix row_step numbers apart."""
    return _rows_signature(block, array, start, row_step, width), _rows_codegen(add=False)


@intrinsic(prefer_literal=True)
def add_rows(typingctx, block, array, start, row_step, width):
    """array[start + r*row_step + j*8 : +8] += block[r*width + j] (store_rows, adding)."""
    return _rows_signature(block, array, start, row_step, width), _rows_codegen(add=True)


@njit(inline="always")
def store_all(block, array, start, step):
    """array[start + m*step : start + m*step + 8] = block[m], for every m (store_rows, one Lanes a row)."""
    store_rows(block, array, start, step, 1)


@njit(inline="always")
def add_all_into(block, array, start, step):
    """array[start + m*step : start + m*step + 8] += block[m], for every m (add_rows, one Lanes a row)."""
    add_rows(block, array, start, step, 1)


@intrinsic
def add(typingctx, a, b):
    """a + b, lane by lane."""
    if not (a == lanes and b == lanes):
        return None

    def codegen(context, builder, signature, args):
        return builder.fadd(*args)
    return lanes(a, b), codegen


@intrinsic
def multiply_add(typingctx, a, b, c):
    """a * b + c, lane by lane: one fused multiply-add."""
    if not (a == lanes and b == lanes and c == lanes):
        return None

    def codegen(context, builder, signature, args):
        return builder.call(_fma(builder), list(args))
    return lanes(a, b, c), codegen


@intrinsic
def store(typingctx, vector, array, index):
    """array[index:index + 8] = vector."""
    if not (vector == lanes and _flat_float32(array) and _integers(index)):
        return None

    def codegen(context, builder, signature, args):
        builder.store(args[0], _pointer(context, builder, signature.args[1], args[1], args[2]), align=4)
        return context.get_dummy_value()
    return types.none(vector, array, types.intp), codegen
