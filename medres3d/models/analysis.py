"""``analyze(net)``: MATLAB's ``analyzeNetwork`` for a medres3d network, derived from the module.

The layer graph is recorded by running the network once with forward hooks on every leaf
module, on the ``meta`` device (shapes only, no memory, no arithmetic), so ResNet-101 at
224x224x64 takes a fraction of a second. Each hook records which layer produced each of the
module's inputs, which gives the graph's edges. Nothing is computed from formulas: a network
with a block removed or replaced is analyzed as it is.

Conventions:
    * Layer names are MATLAB's: the module path with dots replaced by underscores.
    * MATLAB's ``softmax`` and classification ``output`` layers are not modules (``forward``
      returns logits, the loss applies the softmax); they are appended after the network's
      output so that ``num_layers`` and ``num_connections`` count what MATLAB counts.
    * Activation sizes are MATLAB's ``h x w x d x c`` for one observation.
    * ``macs`` counts the multiply-accumulates of convolutions and fully connected layers;
      ``flops = 2 * macs`` (one multiply and one add each). BN, ReLU, pooling, additions are
      not counted (a few percent).
    * ``depth`` is the number of conv and fc layers on the longest path through the graph,
      which skips the 1x1x1 shortcut convolutions; ``name`` is ``f"ResNet-{depth}"``.

Example:
    >>> from medres3d.models.resnet3d import resnet3d
    >>> a = analyze(resnet3d((224, 224, 64, 3), 10))
    >>> a.num_layers, a.num_connections, a.name
    (177, 192, 'ResNet-50')
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from medres3d.errors import MedRes3DError
from medres3d.models.layers import (
    Add,
    GlobalAvgPool3d,
    SameAvgPool3d,
    SameConv3d,
    SameMaxPool3d,
    same_padding,
)
from medres3d.models.normalization import InputNormalization

_KINDS: tuple[tuple[type[nn.Module], str], ...] = (
    (InputNormalization, "input"),
    (nn.Conv3d, "conv"),
    (nn.BatchNorm3d, "batchnorm"),
    (nn.ReLU, "relu"),
    (nn.MaxPool3d, "maxpool"),
    (nn.AvgPool3d, "avgpool"),
    (Add, "add"),
    (GlobalAvgPool3d, "gap"),
    (nn.Linear, "fc"),
)


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """One layer of the graph.

    ``output_size`` is ``(h, w, d, c)`` of one observation; ``module`` is the PyTorch module path
    (empty for ``softmax``/``output``, which are not modules).
    """

    name: str
    kind: str
    output_size: tuple[int, int, int, int]
    num_params: int
    macs: int
    description: str
    module: str


@dataclasses.dataclass(frozen=True)
class NetworkAnalysis:
    """The result of :func:`analyze`; ``print()`` it for a table like MATLAB's ``analyzeNetwork``."""

    layers: list[LayerInfo]
    connections: list[tuple[str, str]]
    input_size: tuple[int, int, int, int]
    depth: int
    total_params: int
    macs: int

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def num_connections(self) -> int:
        return len(self.connections)

    @property
    def name(self) -> str:
        return f"ResNet-{self.depth}"

    @property
    def flops(self) -> int:
        """Floating-point operations of one forward pass of one observation (2 x multiply-adds)."""
        return 2 * self.macs

    def layer(self, name: str) -> LayerInfo:
        """The :class:`LayerInfo` of a MATLAB layer name."""
        for info in self.layers:
            if info.name == name:
                return info
        raise KeyError(f"no layer named {name!r}")

    def __str__(self) -> str:
        size = "x".join(map(str, self.input_size))
        header = (f"{self.name}: {self.num_layers} layers, {self.num_connections} connections, "
                  f"{self.total_params:,} learnables, {self.flops / 1e9:.2f} GFLOPs per {size} input")
        rows = [("#", "Name", "Type", "Activations", "Learnables", "Description")]
        for i, info in enumerate(self.layers, start=1):
            rows.append((str(i), info.name, info.kind, "x".join(map(str, info.output_size)),
                         f"{info.num_params:,}" if info.num_params else "-", info.description))
        widths = [max(len(row[c]) for row in rows) for c in range(5)]
        lines = [header, ""]
        for j, row in enumerate(rows):
            cells = [row[0].rjust(widths[0]), *(row[c].ljust(widths[c]) for c in (1, 2, 3)),
                     row[4].rjust(widths[4]), row[5]]
            lines.append("  ".join(cells).rstrip())
            if j == 0:
                lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 11)
        return "\n".join(lines)


def _kind(module: nn.Module) -> str:
    for cls, kind in _KINDS:
        if isinstance(module, cls):
            return kind
    return type(module).__name__.lower()


def _activation_size(shape: Sequence[int]) -> tuple[int, int, int, int]:
    # (1, C, H, W, D) -> (H, W, D, C); (1, C) -> (1, 1, 1, C), MATLAB's activation of gap and fc.
    if len(shape) == 5:
        return (shape[2], shape[3], shape[4], shape[1])
    return (1, 1, 1, math.prod(shape[1:]))


def _macs(module: nn.Module, out_shape: Sequence[int]) -> int:
    per_observation = math.prod(out_shape[1:])
    if isinstance(module, nn.Conv3d):
        return per_observation * (module.in_channels // module.groups) * math.prod(module.kernel_size)
    if isinstance(module, nn.Linear):
        return per_observation * module.in_features
    return 0


def _vec(values: Sequence[int]) -> str:
    return str(values[0]) if len(set(values)) == 1 else "x".join(map(str, values))


def _describe(module: nn.Module, kind: str, in_shape: Sequence[int], out_shape: Sequence[int]) -> str:
    if kind == "input":
        return f"input, normalization {module.mode!r}"
    if kind in ("conv", "maxpool", "avgpool"):
        kernel, stride = tuple(module.kernel_size), tuple(module.stride)
        if isinstance(module, (SameConv3d, SameMaxPool3d, SameAvgPool3d)):
            pads = [same_padding(n, k, s) for n, k, s in zip(in_shape[2:], kernel, stride, strict=True)]
        else:
            padding = module.padding if isinstance(module.padding, tuple) else (module.padding,) * 3
            pads = [(p, p) for p in padding]
        pad = "x".join(f"{a}" if a == b else f"({a},{b})" for a, b in pads)
        what = f"conv, {module.out_channels} filters" if kind == "conv" else kind.replace("pool", " pooling")
        return f"{'x'.join(map(str, kernel))} {what}, stride {_vec(stride)}, pad {pad}"
    if kind == "batchnorm":
        return f"batch normalization, {module.num_features} channels"
    if kind == "add":
        return "addition"
    if kind == "gap":
        return "global average pooling"
    if kind == "fc":
        return f"fully connected, {module.out_features} outputs"
    return kind


@dataclasses.dataclass
class _Node:
    module_path: str
    module: nn.Module
    inputs: list[str | None]  # producing layers; None = the network's input tensor
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]


def _run_hooked(net: nn.Module, input_shape: Sequence[int], strict: bool) -> tuple[list[_Node], str | None]:
    """Run ``net`` on a meta tensor, recording every leaf module call in execution order.

    Returns the nodes and the name of the layer that produced the network's output. With
    ``strict``, an input that no leaf module produced (a functional op between layers) is an
    error, because the graph would silently miss an edge.
    """
    leaves = {name: m for name, m in net.named_modules() if next(m.children(), None) is None}
    x = torch.empty(tuple(input_shape), device="meta")
    producers: dict[int, str] = {}
    keep: list[torch.Tensor] = [x]  # keeps ids unique while the run lasts
    nodes: list[_Node] = []
    current: dict[str, _Node] = {}

    def pre_hook(path: str) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            if strict and path in current:
                raise MedRes3DError(f"module {path!r} is called twice; each MATLAB layer must be its own "
                                    "module")
            sources: list[str | None] = []
            for arg in args:
                if not isinstance(arg, torch.Tensor):
                    continue
                if arg is x:
                    sources.append(None)
                elif id(arg) in producers:
                    sources.append(producers[id(arg)])
                elif strict:
                    raise MedRes3DError(f"the input of layer {path!r} was computed outside a module, so the "
                                        "layer graph cannot be traced")
            first = next(a for a in args if isinstance(a, torch.Tensor))
            current[path] = _Node(path, module, sources, tuple(first.shape), ())
            nodes.append(current[path])
        return hook

    def post_hook(path: str) -> Callable:
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            producers[id(out)] = path.replace(".", "_")
            keep.append(out)
            current[path].out_shape = tuple(out.shape)
        return hook

    handles = []
    for path, module in leaves.items():
        handles.append(module.register_forward_pre_hook(pre_hook(path)))
        handles.append(module.register_forward_hook(post_hook(path)))
    meta_state = {name: torch.empty_like(t, device="meta")
                  for name, t in [*net.named_parameters(), *net.named_buffers()]}
    try:
        with torch.no_grad():
            out = torch.func.functional_call(net, meta_state, (x,))
    finally:
        for handle in handles:
            handle.remove()
    return nodes, producers.get(id(out))


def analyze(net: nn.Module, input_size: Sequence[int] | None = None) -> NetworkAnalysis:
    """Trace ``net`` into MATLAB's layer graph: layers, connections, sizes, learnables, depth, FLOPs.

    Args:
        net: a :class:`~medres3d.models.resnet3d.ResNet3D` (or a module built from the same
            layer types, every layer its own module).
        input_size: ``(h, w, d, c)`` to analyze at; default the network's ``config.input_size``.

    Example:
        >>> from medres3d.models.resnet3d import resnet3d
        >>> a = analyze(resnet3d((224, 224, 64, 3), 10, stack_depth=(3, 4, 23, 3)))
        >>> a.num_layers, a.num_connections, a.depth
        (347, 379, 101)
        >>> [a.layer(n).output_size[0] for n in ("input", "conv1", "maxpool1", "stack1_block3_relu3",
        ...  "stack2_block1_relu3", "stack3_block1_relu3", "stack4_block1_relu3")]
        [224, 112, 56, 56, 28, 14, 7]
    """
    if input_size is None:
        config = getattr(net, "config", None)
        if config is None:
            raise MedRes3DError("analyze needs input_size=(h, w, d, c) for a module without a config")
        input_size = config.input_size
    h, w, d, c = tuple(input_size)
    nodes, output = _run_hooked(net, (1, c, h, w, d), strict=True)
    layers: list[LayerInfo] = []
    connections: list[tuple[str, str]] = []
    longest: dict[str, int] = {}
    for node in nodes:
        name = node.module_path.replace(".", "_")
        kind = _kind(node.module)
        layers.append(LayerInfo(
            name=name, kind=kind, output_size=_activation_size(node.out_shape),
            num_params=sum(p.numel() for p in node.module.parameters()),
            macs=_macs(node.module, node.out_shape),
            description=_describe(node.module, kind, node.in_shape, node.out_shape),
            module=node.module_path,
        ))
        sources = [s for s in node.inputs if s is not None]
        connections.extend((source, name) for source in sources)
        # Execution order is a topological order, so predecessors are final already.
        longest[name] = int(kind in ("conv", "fc")) + max((longest[s] for s in sources), default=0)
    if output is None:
        raise MedRes3DError("the network's output was not produced by a module; cannot trace the graph")
    head_size = next(info.output_size for info in layers if info.name == output)
    for name, kind, description, source in (("softmax", "softmax", "softmax", output),
                                            ("output", "output", "classification output (cross-entropy)",
                                             "softmax")):
        layers.append(LayerInfo(name, kind, head_size, 0, 0, description, ""))
        connections.append((source, name))
    return NetworkAnalysis(
        layers=layers, connections=connections, input_size=(h, w, d, c), depth=longest[output],
        total_params=sum(p.numel() for p in net.parameters()), macs=sum(info.macs for info in layers),
    )


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of the conv and linear layers of any module for one ``input_shape`` batch.

    Runs on the meta device (no compute); used to compare networks of other libraries per FLOP.

    Example:
        >>> count_macs(nn.Conv3d(1, 2, 3), (1, 1, 5, 5, 5))   # 27 * 2 outputs * 27 weights
        1458
    """
    nodes, _ = _run_hooked(model, tuple(input_shape), strict=False)
    return sum(_macs(node.module, node.out_shape) * node.out_shape[0] for node in nodes)
