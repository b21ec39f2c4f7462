"""Models from elsewhere are untrusted code until checked: what is checked before one is loaded.

* A ``.keras`` file is a zip: its entries' sizes are checked before anything is read (a 1 MB file can
  hold a ``config.json`` of gigabytes), and then every entry is inflated once, in bounded steps, to prove
  it holds no more than it declares (a zip's declared sizes are the attacker's word: Python's reader
  inflates a whole compressed entry in one step before cutting it to the declared size). A model that
  holds code (a ``Lambda`` layer) is refused in words a user can act on. Keras's safe mode stays on
  underneath.
* A SavedModel is a TensorFlow graph, and a graph runs whatever ops it holds: ``tf.io.write_file``,
  ``tf.io.read_file``, ``tf.py_function``, a summary writer, a debug op that talks to the network. Its
  ops are held against an allow-list of what a classifier needs (what the six backbones' exports hold,
  and the arithmetic, control flow and image decoding such a model may use). The checkpoint ops that
  save and restore variables are allowed only in the functions the SavedModel's saver calls, never in a
  signature or anything it calls. ``--trust-model`` skips the check for a model the user vouches for.
"""

from __future__ import annotations

import json
import struct
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from scenecls.errors import ModelError
from scenecls.units import byte_size

# ------------------------------------------------------------------------------------------- .keras

MAX_JSON_BYTES = 64 * 1024**2  # config.json of the largest backbone here is a few MB
MAX_ENTRIES = 1000
MAX_RATIO = 100  # weights barely compress; text compresses well, but not a hundredfold at this size
RATIO_FLOOR = 64 * 1024**2


def check_keras_archive(path: Path) -> None:
    """Refuse a ``.keras`` zip whose entries would unpack to far more than it holds, or that holds code."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            if len(infos) > MAX_ENTRIES:
                raise ModelError(f"refused {path}: {len(infos)} entries, not a Keras model file")
            for info in infos:
                _check_entry(path, info)
            with open(path, "rb") as raw:
                for info in infos:
                    _check_inflated(path, raw, info)
            names = {info.filename for info in infos}
            if "config.json" in names:
                config = json.loads(archive.read("config.json"))
                layer = _code_layer(config)
                if layer is not None:
                    raise ModelError(
                        f"refused {path}: the model holds code (a {layer} layer), which scenecls never "
                        f"runs; rebuild it without that layer"
                    )
    except (zipfile.BadZipFile, OSError, ValueError, RecursionError, zlib.error) as exc:
        raise ModelError(f"{path} is not a Keras model file (damaged, truncated or another format)") from exc


def _check_entry(path: Path, info: zipfile.ZipInfo) -> None:
    if info.filename.endswith(".json") and info.file_size > MAX_JSON_BYTES:
        raise ModelError(
            f"refused {path}: its {info.filename} would unpack to {byte_size(info.file_size)}, more than "
            f"the {byte_size(MAX_JSON_BYTES)} a model's description takes"
        )
    if info.file_size > RATIO_FLOOR and info.file_size > MAX_RATIO * max(info.compress_size, 1):
        raise ModelError(
            f"refused {path}: {info.filename} would unpack from {byte_size(info.compress_size)} to "
            f"{byte_size(info.file_size)} (a zip bomb, not a model)"
        )


STEP = 1 << 20  # bytes inflated at a time while proving an entry's size


def _check_inflated(path: Path, raw, info: zipfile.ZipInfo) -> None:
    """Inflate ``info``'s compressed bytes, ``STEP`` at a time, and refuse the file unless they unpack to
    exactly the size it declares (which :func:`_check_entry` has bounded)."""
    raw.seek(info.header_offset)
    header = raw.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise ModelError(f"{path} is not a Keras model file (damaged, truncated or another format)")
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    raw.seek(info.header_offset + 30 + name_length + extra_length)
    left = info.compress_size
    if info.compress_type == zipfile.ZIP_STORED:
        inflated = info.compress_size
    elif info.compress_type == zipfile.ZIP_DEFLATED:
        inflater, inflated = zlib.decompressobj(-15), 0
        while left > 0 or inflater.unconsumed_tail:
            data = inflater.unconsumed_tail
            if not data:
                data = raw.read(min(STEP, left))
                if not data:
                    break
                left -= len(data)
            inflated += len(inflater.decompress(data, STEP))
            if inflated > info.file_size:
                break
    else:
        raise ModelError(f"refused {path}: {info.filename} is compressed in a way Keras never writes")
    if inflated != info.file_size:
        raise ModelError(
            f"refused {path}: {info.filename} unpacks to {'more' if inflated > info.file_size else 'less'} "
            f"than the {byte_size(info.file_size)} it declares (a zip bomb or a damaged file, not a model)"
        )


CODE_LAYERS = {"Lambda", "TFOpLambda"}


def _code_layer(config) -> str | None:
    """The class name of a layer in a Keras config that holds Python code, if any."""
    stack = [config]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("class_name") in CODE_LAYERS:
                return str(item["class_name"])
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


# ---------------------------------------------------------------------------------------- SavedModel

# What a classifier's graph needs: the ops of every backbone's export here, and the arithmetic, control
# flow and image decoding a classifier exported elsewhere may hold. No op that reads or writes files,
# runs Python, prints, writes summaries, or talks to the network.
_CLASSIFIER_OPS = """
    Abs Add AddN AddV2 ArgMax ArgMin Assert AssignAddVariableOp AssignSubVariableOp AssignVariableOp
    AvgPool BatchMatMul BatchMatMulV2 BatchMatMulV3 BiasAdd Bitcast BroadcastArgs BroadcastTo Cast Ceil
    CheckNumerics ClipByValue ConcatV2 Const Conv2D Cos DecodeBmp DecodeGif DecodeImage DecodeJpeg
    DecodePng DepthwiseConv2dNative DisableCopyOnRead DivNoNan Einsum Elu Enter Equal Erf Erfc Exit Exp
    ExpandDims Fill Floor FloorDiv FloorMod FusedBatchNorm FusedBatchNormV3 GatherNd GatherV2 Greater
    GreaterEqual Identity IdentityN If L2Loss LeakyRelu Less LessEqual Log Log1p LogSoftmax LogicalAnd
    LogicalNot LogicalOr LoopCond MatMul Max MaxPool Maximum Mean Merge Min Minimum MirrorPad Mul Neg
    NextIteration NoOp NotEqual OnesLike Pack Pad PadV2 PartitionedCall Placeholder PlaceholderWithDefault
    Pow PreventGradient Prod Range Rank ReadVariableOp RealDiv Reciprocal Relu Relu6 Reshape ResizeArea
    ResizeBicubic ResizeBilinear ResizeNearestNeighbor Round Rsqrt ScaleAndTranslate Select SelectV2 Selu
    Shape ShapeN Sigmoid Sign Sin Size Slice Softmax Softplus Softsign Split SplitV Sqrt Square
    SquaredDifference Squeeze StatefulPartitionedCall StatelessIf StatelessWhile StopGradient
    StridedSlice Sub Sum Switch Tanh TensorListElementShape TensorListFromTensor TensorListGetItem
    TensorListLength TensorListReserve TensorListSetItem TensorListStack Tile TopKV2 Transpose Unpack
    VarHandleOp VarIsInitializedOp While ZerosLike
"""
CLASSIFIER_OPS = frozenset(_CLASSIFIER_OPS.split())
# Allowed only where the SavedModel's own saver calls them (saving and restoring its variables).
SAVER_OPS = frozenset(
    {"MergeV2Checkpoints", "RestoreV2", "SaveV2", "ShardedFilename", "StaticRegexFullMatch", "StringJoin"}
)
MAX_GRAPH_BYTES = 2 * 1024**3  # protobuf's own limit


def check_savedmodel(path: Path) -> None:
    """Refuse a SavedModel whose graph holds an op a classifier does not need (see :data:`CLASSIFIER_OPS`)."""
    from tensorflow.core.protobuf import saved_model_pb2

    graph = Path(path) / "saved_model.pb"
    try:
        if graph.stat().st_size > MAX_GRAPH_BYTES:
            raise ModelError(f"refused {path}: saved_model.pb is larger than a graph can be")
        saved = saved_model_pb2.SavedModel()
        saved.ParseFromString(graph.read_bytes())
    except ModelError:
        raise
    except Exception as exc:  # protobuf's DecodeError and OSError
        raise ModelError(f"cannot load the SavedModel {path}: saved_model.pb is damaged") from exc
    for meta_graph in saved.meta_graphs:
        found = _foreign_ops(meta_graph)
        if found:
            shown = ", ".join(sorted(found)[:5]) + (" ..." if len(found) > 5 else "")
            raise ModelError(
                f"refused the SavedModel {path}: its graph holds ops a classifier does not need ({shown}), "
                f"which could read or write files or run code; load it only if you trust it (--trust-model)"
            )


def _foreign_ops(meta_graph) -> set[str]:
    functions = {f.signature.name: f for f in meta_graph.graph_def.library.function}
    saver = meta_graph.saver_def
    saver_nodes = {name.split(":")[0] for name in (saver.save_tensor_name, saver.restore_op_name) if name}
    top = list(meta_graph.graph_def.node)
    strict_roots = {n for node in top if node.name not in saver_nodes for n in _called(node)}
    for node in meta_graph.object_graph_def.nodes:
        kind = node.WhichOneof("kind")
        if kind == "function":
            strict_roots.update(node.function.concrete_functions)
        elif kind == "bare_concrete_function":
            strict_roots.add(node.bare_concrete_function.concrete_function_name)
    strict_roots.update(meta_graph.object_graph_def.concrete_functions.keys())
    saver_only = _closure(
        {n for node in top if node.name in saver_nodes for n in _called(node)}, functions
    ) - _closure(strict_roots, functions)
    found = {node.op for node in top if node.name not in saver_nodes} - CLASSIFIER_OPS
    for name, function in functions.items():
        allowed = CLASSIFIER_OPS | SAVER_OPS if name in saver_only else CLASSIFIER_OPS
        found |= {node.op for node in function.node_def if node.op not in functions} - allowed
    return found


def _called(node) -> Iterator[str]:
    """The functions a node calls: every ``func`` attribute (a call, a loop's body, a branch)."""
    for value in node.attr.values():
        if value.HasField("func"):
            yield value.func.name
        for func in value.list.func:
            yield func.name


def _closure(roots: set[str], functions: dict) -> set[str]:
    seen: set[str] = set()
    stack = list(roots)
    while stack:
        name = stack.pop()
        if name in seen or name not in functions:
            continue
        seen.add(name)
        for node in functions[name].node_def:
            if node.op in functions:  # a direct call of a library function
                stack.append(node.op)
            stack.extend(_called(node))
    return seen
