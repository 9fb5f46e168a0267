"""What an ONNX graph from a bundle refers to outside itself, read from its bytes without the onnx package
(the device does not have it). edgecl exports every graph whole; a graph whose tensors live in external
files would make onnxruntime read files named by the graph (relative to the current folder when the
graph is loaded from bytes), so such a graph is refused."""

from __future__ import annotations

# protobuf field numbers of onnx.proto that lead to a TensorProto
_MODEL_GRAPH, _MODEL_FUNCTIONS = 7, 25
_GRAPH_NODES, _GRAPH_INITIALIZERS, _GRAPH_SPARSE = 1, 5, 15
_FUNCTION_NODES = 7
_NODE_ATTRIBUTES = 5
_ATTRIBUTE_TENSOR, _ATTRIBUTE_GRAPH, _ATTRIBUTE_TENSORS, _ATTRIBUTE_GRAPHS = 5, 6, 10, 11
_ATTRIBUTE_SPARSE, _ATTRIBUTE_SPARSES = 22, 23
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION, _EXTERNAL = 13, 14, 1
MAX_DEPTH = 32


class MalformedGraph(ValueError):
    """Bytes that are not a protobuf message."""


def _varint(data: memoryview, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if at >= len(data) or shift > 63:
            raise MalformedGraph("a truncated varint")
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at, shift = at + 1, shift + 7
        if not byte & 0x80:
            return value, at


def _fields(data: memoryview):
    """(field number, wire type, value): an int for varints, a memoryview for length-delimited fields."""
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _varint(data, at)
        elif wire == 2:
            length, at = _varint(data, at)
            if at + length > len(data):
                raise MalformedGraph("a field longer than the message")
            value, at = data[at : at + length], at + length
        elif wire in (1, 5):
            value, at = None, at + (8 if wire == 1 else 4)
        else:
            raise MalformedGraph(f"wire type {wire}")
        yield number, wire, value


# which fields of which message lead where
_CHILDREN = {
    "model": {_MODEL_GRAPH: "graph", _MODEL_FUNCTIONS: "function"},
    "graph": {_GRAPH_NODES: "node", _GRAPH_INITIALIZERS: "tensor", _GRAPH_SPARSE: "sparse"},
    "function": {_FUNCTION_NODES: "node"},
    "node": {_NODE_ATTRIBUTES: "attribute"},
    "attribute": {
        _ATTRIBUTE_TENSOR: "tensor",
        _ATTRIBUTE_GRAPH: "graph",
        _ATTRIBUTE_TENSORS: "tensor",
        _ATTRIBUTE_GRAPHS: "graph",
        _ATTRIBUTE_SPARSE: "sparse",
        _ATTRIBUTE_SPARSES: "sparse",
    },
    "sparse": {_SPARSE_VALUES: "tensor", _SPARSE_INDICES: "tensor"},
}


def _external(data: memoryview, kind: str, depth: int) -> bool:
    if depth > MAX_DEPTH:
        raise MalformedGraph("nested too deep")
    for number, wire, value in _fields(data):
        if kind == "tensor":
            if number == _TENSOR_EXTERNAL_DATA or (
                number == _TENSOR_DATA_LOCATION and wire == 0 and value == _EXTERNAL
            ):
                return True
        elif wire == 2 and number in _CHILDREN[kind] and _external(value, _CHILDREN[kind][number], depth + 1):
            return True
    return False


def references_external_data(model: bytes) -> bool:
    """Whether any tensor of the graph (initializers, constants, subgraphs, functions) lives in an external file."""
    return _external(memoryview(model), "model", 0)
