"""Text -> Piper phoneme ids, through the espeak-ng bridge bundled with `piper-tts`.

Only the bridge extension and its data are used: the bridge is loaded straight from the
installed `piper` package directory, so `piper/__init__.py` (which imports onnxruntime) never
runs. espeak-ng is a process-wide singleton, hence the lock.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import re
import sys
import threading
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Final

from ..base import EngineError

PAD, BOS, EOS = "_", "^", "$"
_LANG_SWITCH = re.compile(r"\([^)]+\)")  # "(fr)" ... "(en)" flags around foreign words
# The period of a title before a name ("Dr. Jones", "St. Mary's"): espeak-ng
# takes it for a sentence end (a falling tone and a pause in the middle of a phrase), so it is
# dropped before phonemizing; espeak reads "Dr Jones" the same. The segmenter has already
# decided that such a period does not end the sentence (duplexd._downlink.segment).
_TITLE_PERIOD = re.compile(
    r"\b(Mr|Mrs|Ms|Mx|Dr|Prof|St|Sr|Jr|Rev|Fr|Gen|Col|Capt|Lt|Sgt|Maj|Gov|Sen|Rep|Mt|Ft)\."
    r"(?=\s+[A-Z])"
)

# Phonemes in one id sequence at most: what ~300 characters of ordinary text give (a "Hello
# there." x 23 gives 276). The segmenter caps a piece at 300 characters, but espeak expands
# some text far beyond that ("$9" x 100: 1,299 phonemes), and a sequence's latent, audio and
# (on CUDA, decoded in one go) decoder memory grow with its phonemes: longer sentences are cut
# into sequences of at most this many, at the last word boundary before it when there is one.
MAX_SEQUENCE_PHONEMES: Final = 320

_lock = threading.Lock()
_bridge: ModuleType | None = None
_current_voice: str | None = None


class PhonemizerError(EngineError):
    """espeak-ng could not be loaded or does not know the voice's language."""


def _piper_dir() -> Path:
    spec = importlib.util.find_spec("piper")  # finds the package without executing it
    if spec is None or not spec.submodule_search_locations:
        raise PhonemizerError("the 'piper-tts' package (espeak-ng bridge) is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _load_bridge() -> ModuleType:
    global _bridge
    if _bridge is not None:
        return _bridge
    name = "piper.espeakbridge"
    module = sys.modules.get(name)
    if module is None:
        base = _piper_dir()
        candidates = sorted(base.glob("espeakbridge*.so")) + sorted(base.glob("espeakbridge*.pyd"))
        if not candidates:
            raise PhonemizerError(f"no espeakbridge extension in {base}")
        loader = importlib.machinery.ExtensionFileLoader(name, str(candidates[0]))
        spec = importlib.util.spec_from_file_location(name, candidates[0], loader=loader)
        if spec is None:
            raise PhonemizerError(f"cannot load {candidates[0]}")
        module = importlib.util.module_from_spec(spec)
        loader.exec_module(module)
    module.initialize(str(_piper_dir() / "espeak-ng-data"))
    _bridge = module
    return module


def phonemize(text: str, espeak_voice: str) -> list[list[str]]:
    """Text -> phonemes (NFD code points, with punctuation kept), one list per sentence."""
    global _current_voice
    with _lock:
        bridge = _load_bridge()
        if espeak_voice != _current_voice:
            try:
                bridge.set_voice(espeak_voice)
            except Exception as exc:
                raise PhonemizerError(f"espeak-ng voice {espeak_voice!r}: {exc}") from exc
            _current_voice = espeak_voice
        clauses = bridge.get_phonemes(_TITLE_PERIOD.sub(r"\1", text))
    sentences: list[list[str]] = []
    current: list[str] = []
    for phonemes, terminator, end_of_sentence in clauses:
        piece = _LANG_SWITCH.sub("", phonemes) + terminator
        if terminator in (",", ":", ";"):
            piece += " "
        current.extend(unicodedata.normalize("NFD", piece))
        if end_of_sentence:
            sentences.append(current)
            current = []
    if current:
        sentences.append(current)
    return [s for s in sentences if s]


def phonemes_to_ids(phonemes: Sequence[str], id_map: Mapping[str, Sequence[int]]) -> list[int]:
    """BOS, then each known phoneme followed by PAD, then EOS (Piper's id layout)."""
    ids: list[int] = [*id_map[BOS], *id_map[PAD]]
    for ph in phonemes:
        mapped = id_map.get(ph)
        if mapped is None:
            continue  # unknown symbol (e.g. a stray diacritic): skipped, as Piper does
        ids.extend(mapped)
        ids.extend(id_map[PAD])
    ids.extend(id_map[EOS])
    return ids


def text_to_ids(
    text: str, espeak_voice: str, id_map: Mapping[str, Sequence[int]]
) -> list[list[int]]:
    """Text -> one phoneme-id sequence per sentence; empty when there is nothing to say."""
    if all(unicodedata.category(ch)[0] in "PZC" for ch in text):
        return []  # punctuation/space only (espeak would read "!" as "exclamation")
    out: list[list[int]] = []
    for sentence in phonemize(text, espeak_voice):
        for part in split_phonemes(sentence):
            # Punctuation or spaces alone would still make a short burst of sound: skip them.
            if any(unicodedata.category(ph).startswith("L") for ph in part):
                out.append(phonemes_to_ids(part, id_map))
    return out


def split_phonemes(phonemes: list[str], most: int = MAX_SEQUENCE_PHONEMES) -> list[list[str]]:
    """`phonemes` in parts of at most `most`, each cut after the last space within its
    limit (in the second half of it), else at the limit itself."""
    parts: list[list[str]] = []
    rest = phonemes
    while len(rest) > most:
        cut = most
        for i in range(most, most // 2, -1):
            if rest[i - 1] == " ":
                cut = i
                break
        parts.append(rest[:cut])
        rest = rest[cut:]
    parts.append(rest)
    return parts
