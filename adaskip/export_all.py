"""Every depth in one exported graph: the skip is an input, and a call runs only the blocks of the depth it asks.

:class:`AllDepths` is an AdaptiveDepthNet's forward with its control flow on a ``skip`` input (a bool tensor, one
flag per stage, first stage first, True = skip that stage's skippable sub-path): each stage is a ``torch.cond`` of
two branches, its mandatory blocks with their skip-aware norm set (skipped) or its mandatory blocks with the regular
set and then its skippable blocks (run). Both branches call the same modules' parameters, so every weight is held
once, the mandatory blocks' second norm set beside it (not 2^S copies).

Formats (:func:`export_all_depths`):
  ``onnx``  ``torch.onnx.export`` (the torch.export-based exporter): one ``If`` node per stage whose two branches read
            the outer graph's initializers; inputs ``input`` (N, C, H, W) float32 and ``skip`` bool[S], output
            ``logits``. Its metadata (key ``adaskip``, JSON) holds each depth's MACs and parameters, the grid's top-1
            when one is given, and a latency table measured in ONNX Runtime when the file is written.
  ``pt2``   ``torch.export.save`` of the ExportedProgram: ``torch.export.load(path).module()(x, skip)`` runs it with
            torch alone (no adaskip, no timm); the same JSON in its extra file ``adaskip.json``.

Each depth of the written file is checked against ``model(x, skip=...)`` before the file is kept (written
atomically: a failed check leaves nothing).
"""

from __future__ import annotations

import copy
import io
import json
import logging
import os
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from .console import si
from .evaluation.complexity import device_name
from .evaluation.latency import LONG_COLUMNS, interleaved
from .export import ATOL, ExportError, ExportVerificationError, compare, first_line, ort_session, prepared, require_onnx
from .files import atomic_path
from .models import AdaptiveDepthNet, SkipAwareNorm, count_macs, count_params
from .select import checked, read_grid

log = logging.getLogger(__name__)

FORMATS = ("onnx", "pt2")
FILE_FORMAT = "adaskip-all-depths-v1"
META_KEY, PT2_EXTRA = "adaskip", "adaskip.json"  # where the JSON lives: ONNX metadata_props key / pt2 extra file
DEFAULT_OPSET = 18  # the torch.export-based exporter's lowest
LATENCY_BATCHES = (1, 32)
_VERIFY_BATCH = 3


class AllDepths(nn.Module):
    """Every sub-network of ``net`` in one module: ``forward(x, skip)`` with ``skip`` a bool tensor of one flag per
    stage. Shares ``net``'s parameters and buffers (nothing is copied but module objects)."""

    def __init__(self, net: AdaptiveDepthNet) -> None:
        super().__init__()
        self.backbone = net.backbone  # the stem and head run timm's own modules, through the family's functions
        self._family = net._family
        stages = range(net.num_stages)
        self.pre = nn.ModuleList(net.stage_pre(i) or nn.Identity() for i in stages)
        self.skipped = nn.ModuleList(nn.Sequential(*_with_norms(net.mandatory_blocks(i), True)) for i in stages)
        self.run = nn.ModuleList(
            nn.Sequential(*_with_norms(net.mandatory_blocks(i), False), *net.skippable_blocks(i)) for i in stages
        )

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        h = self._family.stem(self.backbone, x)
        for i, (pre, skipped, run) in enumerate(zip(self.pre, self.skipped, self.run)):
            h = torch.cond(skip[i], skipped, run, (pre(h),))
        return self._family.head(self.backbone, h)


def _with_norms(blocks: Sequence[nn.Module], skipped: bool) -> list[nn.Module]:
    """``blocks`` with each SkipAwareNorm replaced by the set a ``skipped`` stage (or a run one) uses: new module
    objects around the same parameters and buffers (a block without skip-aware norms is itself)."""
    out = []
    for block in blocks:
        if not any(isinstance(m, SkipAwareNorm) for m in block.modules()):
            out.append(block)
            continue
        shared = {id(t): t for t in [*block.parameters(), *block.buffers()]}
        new = copy.deepcopy(block, shared)
        for name, mod in list(new.named_modules()):
            if isinstance(mod, SkipAwareNorm):
                parent, _, attr = name.rpartition(".")
                setattr(new.get_submodule(parent) if parent else new, attr, mod.skipped if skipped else mod.full)
        out.append(new)
    return out


def skip_flags(skip: str) -> np.ndarray:
    """The ``skip`` input for a skip string: ``"TTFF"`` -> ``[True, True, False, False]``."""
    return np.array([c == "T" for c in skip.upper()], dtype=bool)


@dataclass(frozen=True)
class AllDepthsResult:
    path: Path
    fmt: str
    image_size: int
    depths: pd.DataFrame  # skip, macs, params (and acc1 / acc5 from the grid)
    latency: Optional[pd.DataFrame]  # long form (LONG_COLUMNS) in ONNX Runtime; None: not measured
    max_abs_diff: float  # the largest over every depth
    tolerance: float

    def line(self) -> str:
        n, size = len(self.depths), self.path.stat().st_size
        lat = ""
        if self.latency is not None:
            first = self.latency[self.latency["batch_size"] == self.latency["batch_size"].iloc[0]].set_index("skip")
            b, t = int(first["batch_size"].iloc[0]), int(first["threads"].iloc[0])
            ends = ", ".join(f"{s} {first.loc[s, 'p50_ms']:.3g} ms" for s in (self.depths["skip"].iloc[[0, -1]]))
            batches = ", ".join(map(str, dict.fromkeys(self.latency["batch_size"])))
            lat = f"; ONNX Runtime p50 at batch {b}, {t} thread(s): {ends} (table at batch {batches} in the metadata)"
        acc = "" if "acc1" in self.depths.columns else "; no grid: the metadata has no top-1 (pass --grid)"
        return (
            f"exported all {n} depths ({self.fmt}) -> {self.path}: {size / 1e6:.2f} MB, {self.image_size} px; max "
            f"|diff| {self.max_abs_diff:.2e} vs model(x, skip) over the {n} depths (tolerance {self.tolerance:.1e})"
            f"{lat}{acc}"
        )


def export_all_depths(
    model_path_or_net: str | os.PathLike | AdaptiveDepthNet,
    out: str | os.PathLike,
    fmt: str = "onnx",
    image_size: Optional[int] = None,
    grid: pd.DataFrame | str | os.PathLike | None = None,
    latency_batches: Sequence[int] = LATENCY_BATCHES,
    latency_seconds: float = 20.0,
    threads: int = 1,
    opset: int = DEFAULT_OPSET,
    atol: float = ATOL,
) -> AllDepthsResult:
    """Write every depth of a model file (or an AdaptiveDepthNet) as one graph in ``fmt`` (onnx | pt2), check each
    depth against the model, and keep the file with its metadata: every depth's MACs and parameters at
    ``image_size`` (default: the model's own), top-1 from ``grid`` (an evaluate grid, CSV path or DataFrame), and
    for onnx the p50/p90 ms per batch in ONNX Runtime with ``threads`` threads at ``latency_batches``, measured in
    about ``latency_seconds`` (0: no table)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown all-depths format {fmt!r}: use one of {', '.join(FORMATS)}")
    _check_args(opset, latency_batches, latency_seconds, threads)
    if fmt == "onnx":
        require_onnx()
    with prepared(model_path_or_net, image_size) as (net, file, size, in_chans):
        depths = depth_table(net, file, (in_chans, size, size), _read_grid(grid))
        module, configs = AllDepths(net).eval(), [str(c) for c in net.configs()]
        example = (torch.randn(2, in_chans, size, size), torch.ones(net.num_stages, dtype=torch.bool))
        x = torch.randn(_VERIFY_BATCH, in_chans, size, size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            refs = {s: net(x, skip=s) for s in configs}
        meta = {"format": FILE_FORMAT, "skip_input": _SKIP_DOC, "model": {**(file.get("spec") or {})}}
        meta |= {"image_size": size, "in_chans": in_chans, "split": list(net.split), "grid_source": _source(grid)}
        out = Path(out)
        with atomic_path(out) as tmp:
            if fmt == "onnx":
                proto = _to_onnx(module, example, opset)
                session = ort_session(proto.SerializeToString(), threads)
                run = lambda s: session.run(["logits"], {"input": x.numpy(), "skip": skip_flags(s)})[0]  # noqa: E731
                diff, tol = _verify(run, refs, atol, fmt, out)
                latency = _ort_latency(session, configs, (in_chans, size, size), latency_batches, latency_seconds)
                _write_onnx(proto, tmp, _metadata(meta, depths, latency))
            else:
                latency = None
                buffer = io.BytesIO()  # torch.export.save wants a name ending in .pt2, the temporary file's is not
                torch.export.save(
                    _to_program(module, example), buffer, extra_files={PT2_EXTRA: _metadata(meta, depths)}
                )
                tmp.write_bytes(buffer.getvalue())
                loaded = torch.export.load(io.BytesIO(tmp.read_bytes())).module()
                with torch.no_grad():
                    diff, tol = _verify(lambda s: loaded(x, torch.from_numpy(skip_flags(s))), refs, atol, fmt, out)
    result = AllDepthsResult(out, fmt, size, depths, latency, diff, tol)
    log.info("%s", result.line())
    return result


_SKIP_DOC = (
    "bool[S]: one flag per stage, first stage first; true skips that stage's skippable sub-path "
    "(skip string 'TTFF' -> [true, true, false, false]; all false: the super-net)"
)


def _check_args(opset: int, batches: Sequence[int], seconds: float, threads: int) -> None:
    if not isinstance(opset, int) or opset < DEFAULT_OPSET:
        raise ExportError(f"ONNX opset {opset!r}: the all-depths export needs {DEFAULT_OPSET} or later")
    if not batches or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in batches):
        raise ExportError(f"latency batch sizes must be integers >= 1, got {list(batches)!r}")
    if not seconds >= 0 or not isinstance(threads, int) or threads < 1:
        raise ExportError(f"need latency seconds >= 0 and threads >= 1, got {seconds!r} and {threads!r}")


def _read_grid(grid: pd.DataFrame | str | os.PathLike | None) -> Optional[pd.DataFrame]:
    if grid is None:
        return None
    return checked(grid, "the grid") if isinstance(grid, pd.DataFrame) else read_grid(grid, "or leave --grid out")


def _source(grid: Any) -> Optional[str]:
    return None if grid is None else "a DataFrame" if isinstance(grid, pd.DataFrame) else str(grid)


def depth_table(
    net: AdaptiveDepthNet, file: dict[str, Any], input_size: tuple[int, int, int], grid: Optional[pd.DataFrame]
) -> pd.DataFrame:
    """``skip``, ``macs`` and ``params`` of every depth at ``input_size``, with the ``acc1``/``acc5`` of ``grid`` (a
    grid ``select.checked`` passed); a grid whose sub-networks or MACs are not this model's is an ExportError."""
    rows = [
        {"skip": str(c), "macs": count_macs(net, c, input_size), "params": count_params(net, c)} for c in net.configs()
    ]
    table = pd.DataFrame(rows)
    if grid is None:
        return table
    grid = grid.drop_duplicates("skip")  # a grid may hold several devices' rows
    if sorted(grid["skip"]) != sorted(table["skip"]):
        raise ExportError(
            f"the grid's sub-networks ({len(grid)}, e.g. {grid['skip'].iloc[0]}) are not this {net.num_stages}-stage "
            f"model's {len(table)}: a grid of another model?"
        )
    recorded = file.get("macs") or dict(zip(table["skip"], table["macs"]))  # the model file's: at its training size
    wrong = [(s, m) for s, m in zip(grid["skip"], grid["macs"]) if int(m) != recorded.get(s)]
    if wrong:
        s, m = wrong[0]
        raise ExportError(f"the grid is not this model's: {s} has {si(m)}MACs in it, {si(recorded[s])}MACs here")
    return table.merge(grid[["skip", *(c for c in ("acc1", "acc5") if c in grid.columns)]], on="skip")


def _verify(
    run: Callable[[str], Any], refs: dict[str, Tensor], atol: float, fmt: str, out: Path
) -> tuple[float, float]:
    """The largest difference over every depth and its bound; an ExportVerificationError for the first depth out."""
    worst = (0.0, 0.0)
    for skip, ref in refs.items():
        try:
            got = torch.as_tensor(run(skip))
        except Exception as e:
            raise ExportVerificationError(f"the {fmt} all-depths export cannot run {skip}: {first_line(e)}") from e
        diff, tol = compare(got, ref, atol)
        if not diff <= tol:  # also NaN
            raise ExportVerificationError(
                f"the {fmt} all-depths export differs from model(x, skip={skip!r}): max |diff| {diff:.3g} > tolerance "
                f"{tol:.3g}; nothing written to {out}"
            )
        worst = max(worst, (diff, tol))
    return worst


def _to_onnx(module: AllDepths, example: tuple[Tensor, Tensor], opset: int) -> Any:
    quiet = logging.getLogger("onnx_ir")  # one INFO line per initializer its deduplication pass merges
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                module,
                example,
                dynamo=True,
                opset_version=opset,
                input_names=["input", "skip"],
                output_names=["logits"],
                dynamic_shapes={"x": {0: "batch"}, "skip": None},
                verbose=False,
            )
        except Exception as e:
            raise ExportError(f"torch.onnx.export (dynamo, opset {opset}) failed: {first_line(e)}") from e
        finally:
            quiet.setLevel(level)
    proto = program.model_proto
    for node in _nodes(proto.graph):  # the exporter's per-node notes (stack traces, FX names): a quarter of the file
        del node.metadata_props[:]
    _into_branches(proto.graph)
    return proto


def _into_branches(graph: Any) -> None:
    """Move each initializer that one If branch alone reads (a skippable block's weights) into that branch; those
    both branches of a stage read (the mandatory blocks' convolutions) stay in the outer graph; drop those no node
    reads. Each weight is still
    stored once, and ONNX Runtime lays out (NCHWc) only a branch's own initializers: a convolution whose weights
    sit in the outer graph and that it cannot fuse with a norm of the branch ran about 4x slower at batch 32."""
    outer = {name for node in graph.node for name in node.input}
    readers: dict[str, list[Any]] = {}
    for branch in _branches(graph):
        for name in {name for node in _nodes(branch) for name in node.input}:
            readers.setdefault(name, []).append(branch)
    kept = []
    for init in graph.initializer:
        where = readers.get(init.name, [])
        if init.name in outer or len(where) > 1:
            kept.append(init)
        elif where:
            where[0].initializer.append(init)
        # else: read by no node (the exporter leaves a few behind)
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _branches(graph: Any) -> Iterator[Any]:
    """The subgraphs (If branches) of ``graph``'s own nodes."""
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield attr.g


def _nodes(graph: Any) -> Iterator[Any]:
    """Every node of an ONNX graph, those of its subgraphs (the If branches) included."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _nodes(attr.g)


def _to_program(module: AllDepths, example: tuple[Tensor, Tensor]) -> torch.export.ExportedProgram:
    batch = torch.export.Dim("batch", min=1)
    try:
        return torch.export.export(module, example, dynamic_shapes={"x": {0: batch}, "skip": None})
    except Exception as e:
        raise ExportError(f"torch.export failed: {first_line(e)}") from e


def _ort_latency(
    session: Any, configs: list[str], input_size: tuple[int, int, int], batches: Sequence[int], seconds: float
) -> Optional[pd.DataFrame]:
    """p50 / p90 ms per batch of every depth in ``session``, each batch size timed in ``seconds / len(batches)``,
    the depths interleaved."""
    if seconds == 0:
        return None
    import onnxruntime

    threads = session.get_session_options().intra_op_num_threads
    device = f"{device_name('cpu')} (onnxruntime {onnxruntime.__version__})"
    rows = []
    for b in batches:
        x = np.random.default_rng(0).standard_normal((b, *input_size), dtype=np.float32)
        calls = {s: partial(session.run, ["logits"], {"input": x, "skip": skip_flags(s)}) for s in configs}
        for skip, ms in interleaved(calls, seconds / len(batches)).items():
            rows.append([skip, device, b, threads, float(np.median(ms)), float(np.percentile(ms, 90))])
    return pd.DataFrame(rows, columns=LONG_COLUMNS)


def _metadata(meta: dict[str, Any], depths: pd.DataFrame, latency: Optional[pd.DataFrame] = None) -> str:
    tables = {"depths": depths.to_dict("records")}
    if latency is not None:
        tables["latency"] = latency.to_dict("records")
    return json.dumps(meta | tables)


def _write_onnx(proto: Any, path: Path, metadata: str) -> None:
    import onnx

    onnx.helper.set_model_props(proto, {META_KEY: metadata})
    onnx.save(proto, str(path))


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``adaskip`` metadata of an all-depths export (onnx or pt2); an ExportError when the file has none."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"no file at {path}")
    try:
        if path.suffix == ".pt2":
            extra = {PT2_EXTRA: ""}
            torch.export.load(io.BytesIO(path.read_bytes()), extra_files=extra)
            text = extra[PT2_EXTRA]
        else:
            import onnx

            props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
            text = props.get(META_KEY, "")
        meta = json.loads(text) if text else {}
    except Exception as e:
        raise ExportError(f"{path} cannot be read as an all-depths export: {first_line(e)}") from None
    if meta.get("format") != FILE_FORMAT:
        raise ExportError(f"{path} is not an adaskip all-depths export (no {FILE_FORMAT!r} metadata)")
    return meta


def as_grid(meta: dict[str, Any]) -> pd.DataFrame:
    """The metadata's depths with its latency table's wide columns (what ``adaskip select`` reads)."""
    from .evaluation.latency import latency_wide

    depths = pd.DataFrame(meta["depths"])
    if not meta.get("latency"):
        return depths
    return depths.merge(latency_wide(pd.DataFrame(meta["latency"], columns=LONG_COLUMNS)), on="skip")
