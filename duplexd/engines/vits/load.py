"""Build a torch `Vits` from a Piper ONNX export, mapping initializers to parameters by name.

Most initializers keep their training-time module path as name. The exceptions:

* the phoneme embedding is stored as `sid` (consumed by the encoder's Gather);
* weight-normalised convolutions of the coupling flow were folded by the exporter into fresh
  tensors named `onnx::Conv_<n>`; the Conv node that consumes one tells which module it is;
* `dp.flows.0.logs` was constant-folded into `exp(-logs)` feeding a Mul.

Every parameter of the module must be found exactly once, and every initializer that looks
like a parameter must be used; anything else is a `VoiceLoadError`.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from ..base import EngineError
from .config import VitsConfig
from .model import Vits

Array = npt.NDArray[Any]
_PARAM_NAME = re.compile(r"^[A-Za-z_][\w]*(\.[\w]+)+$")
_AFFINE_EXP = "/dp/flows.0/"


class VoiceLoadError(EngineError):
    """The voice file is not a VITS graph this module understands."""


def _module_path(node_name: str) -> str:
    """'/flow/flows.0/enc/in_layers.1/Conv' -> 'flow.flows.0.enc.in_layers.1'."""
    parts = node_name.strip("/").split("/")
    return ".".join(parts[:-1])


class _Graph:
    """What we need of the ONNX graph: initializers, conv attributes, consumers."""

    def __init__(self, path: Path) -> None:
        import onnx
        from onnx import helper, numpy_helper

        model = onnx.load(str(path))
        g = model.graph
        self.inits: dict[str, Array] = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        self.conv_attrs: dict[str, dict[str, Any]] = {}
        self.consumers: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
        for node in g.node:
            for idx, name in enumerate(node.input):
                if name in self.inits:
                    self.consumers[name].append((node.op_type, node.name, idx))
            if node.op_type in ("Conv", "ConvTranspose"):
                attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
                self.conv_attrs[_module_path(node.name)] = attrs


def _named_parameters(graph: _Graph) -> dict[str, Array]:
    """Initializers keyed by the state-dict name they belong to."""
    out: dict[str, Array] = {}
    for name, arr in graph.inits.items():
        uses = graph.consumers.get(name, [])
        if name == "sid":
            if not any(op == "Gather" and "/enc_p/emb/" in n for op, n, _ in uses):
                raise VoiceLoadError("initializer 'sid' is not the phoneme embedding")
            out["enc_p.emb.weight"] = arr
        elif name.startswith("onnx::Conv_"):
            convs = [(n, i) for op, n, i in uses if op in ("Conv", "ConvTranspose")]
            if len(convs) != 1 or convs[0][1] not in (1, 2):
                raise VoiceLoadError(f"cannot tell which module owns {name!r}: {uses}")
            node, idx = convs[0]
            key = f"{_module_path(node)}.{'weight' if idx == 1 else 'bias'}"
            if key in out:
                raise VoiceLoadError(f"two initializers for {key}")
            out[key] = arr
        elif name.startswith(_AFFINE_EXP) and name.endswith("Exp_output_0"):
            if not any(op == "Mul" and n.startswith(_AFFINE_EXP) for op, n, _ in uses):
                raise VoiceLoadError(f"unexpected use of folded constant {name!r}")
            out["dp.flows.0.logs"] = -np.log(arr.astype(np.float64)).astype(np.float32)
        elif _PARAM_NAME.match(name):
            out[name] = arr
    return out


def _count(params: dict[str, Array], pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in params if (m := rx.fullmatch(k))})


def _config(params: dict[str, Array], graph: _Graph) -> VitsConfig:
    def shape(key: str) -> tuple[int, ...]:
        if key not in params:
            raise VoiceLoadError(f"missing parameter {key}")
        return tuple(int(d) for d in params[key].shape)

    def dilation(module: str) -> int:
        return int(graph.conv_attrs.get(module, {}).get("dilations", [1])[0])

    n_vocab, hidden = shape("enc_p.emb.weight")
    _, n_rel, k_ch = shape("enc_p.encoder.attn_layers.0.emb_rel_k")
    ffn_ch, _, ffn_k = shape("enc_p.encoder.ffn_layers.0.conv_1.weight")
    dp_flow_ids = tuple(_count(params, r"dp\.flows\.(\d+)\.pre\.weight"))
    flow_ids = tuple(_count(params, r"flow\.flows\.(\d+)\.pre\.weight"))
    f0 = f"flow.flows.{flow_ids[0]}.enc"
    wn_layers = len(_count(params, rf"{re.escape(f0)}\.in_layers\.(\d+)\.bias"))
    n_ups = len(_count(params, r"dec\.ups\.(\d+)\.weight"))
    n_blocks = len(_count(params, r"dec\.resblocks\.(\d+)\.\w+\.0\.weight"))
    rtype = "1" if "dec.resblocks.0.convs1.0.weight" in params else "2"
    conv = "convs1" if rtype == "1" else "convs"
    nk = n_blocks // max(n_ups, 1)
    dil_counts = [
        len(_count(params, rf"dec\.resblocks\.{j}\.{conv}\.(\d+)\.weight")) for j in range(nk)
    ]
    return VitsConfig(
        n_vocab=n_vocab,
        hidden=hidden,
        n_heads=hidden // k_ch,
        n_layers=len(_count(params, r"enc_p\.encoder\.attn_layers\.(\d+)\.conv_q\.weight")),
        window_size=(n_rel - 1) // 2,
        ffn_channels=ffn_ch,
        ffn_kernel=ffn_k,
        dp_channels=shape("dp.pre.weight")[0],
        dp_kernel=shape("dp.convs.convs_sep.0.weight")[2],
        dp_layers=len(_count(params, r"dp\.convs\.convs_sep\.(\d+)\.weight")),
        dp_flow_ids=dp_flow_ids,
        dp_num_bins=(shape(f"dp.flows.{dp_flow_ids[0]}.proj.weight")[0] + 1) // 3,
        flow_ids=flow_ids,
        flow_hidden=shape(f"flow.flows.{flow_ids[0]}.pre.weight")[0],
        flow_kernel=shape(f"{f0}.in_layers.0.weight")[2],
        flow_dilation_rate=dilation(f"{f0}.in_layers.1") if wn_layers > 1 else 1,
        flow_wn_layers=wn_layers,
        upsample_initial=shape("dec.conv_pre.weight")[0],
        upsample_rates=tuple(
            int(graph.conv_attrs[f"dec.ups.{i}"]["strides"][0]) for i in range(n_ups)
        ),
        upsample_kernels=tuple(shape(f"dec.ups.{i}.weight")[2] for i in range(n_ups)),
        resblock_type=rtype,
        resblock_kernels=tuple(shape(f"dec.resblocks.{j}.{conv}.0.weight")[2] for j in range(nk)),
        resblock_dilations=tuple(
            tuple(dilation(f"dec.resblocks.{j}.{conv}.{k}") for k in range(dil_counts[j]))
            for j in range(nk)
        ),
        pre_kernel=shape("dec.conv_pre.weight")[2],
        post_kernel=shape("dec.conv_post.weight")[2],
    )


def load_vits(onnx_path: str | Path) -> Vits:
    """Read a Piper VITS ONNX file into a `Vits` module in eval mode, on the CPU, in fp32."""
    path = Path(onnx_path)
    if not path.is_file():
        raise VoiceLoadError(f"voice model not found: {path}")
    graph = _Graph(path)
    params = _named_parameters(graph)
    if "enc_p.emb.weight" not in params:
        raise VoiceLoadError(f"{path.name}: no phoneme embedding ('sid'); not a Piper VITS voice")
    try:
        cfg = _config(params, graph)
    except (KeyError, IndexError, ValueError) as exc:
        raise VoiceLoadError(f"{path.name}: unexpected graph layout ({exc!r})") from exc
    model = Vits(cfg)
    state = model.state_dict()
    missing = sorted(set(state) - set(params))
    unused = sorted(set(params) - set(state))
    if missing or unused:
        raise VoiceLoadError(
            f"{path.name}: parameters missing from the file: {missing or 'none'}; "
            f"initializers left unused: {unused or 'none'}"
        )
    new_state: dict[str, torch.Tensor] = {}
    for key, ref in state.items():
        arr = np.array(params[key], dtype=np.float32, copy=True)
        if tuple(arr.shape) != tuple(ref.shape):
            raise VoiceLoadError(
                f"{path.name}: {key} has shape {arr.shape}, expected {tuple(ref.shape)}"
            )
        new_state[key] = torch.from_numpy(arr)
    model.load_state_dict(new_state, strict=True)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
