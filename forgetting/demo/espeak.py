"""eSpeak NG from the `espeakng-loader` wheel, driven through ctypes in synchronous mode: text to int16 samples for
a voice, rate and pitch. The demo corpus (`forgetting.demo.synth`) speaks its sentences with it."""

from __future__ import annotations

import ctypes
import functools

import espeakng_loader
import numpy as np

# speak_lib.h; with INITIALIZE_DONT_EXIT a wrong data folder is an error instead of exit()
_AUDIO_OUTPUT_SYNCHRONOUS, _INITIALIZE_DONT_EXIT = 2, 0x8000
_POS_CHARACTER, _CHARS_UTF8, _ENDPAUSE, _RATE, _PITCH = 1, 0x1, 0x1000, 1, 3
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class ESpeak:
    """eSpeak NG from the `espeakng-loader` wheel, driven through ctypes in synchronous mode.

    The library holds one global state per process (voice, parameters, callback): create it through
    `open_espeak()` and use it from one thread.
    """

    def __init__(self) -> None:
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        data_path = espeakng_loader.get_data_path()
        rate_hz = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, str(data_path).encode(), _INITIALIZE_DONT_EXIT)
        if rate_hz <= 0:
            raise RuntimeError(f"espeak_Initialize failed with data folder {data_path}: returned {rate_hz}")
        self._lib, self.sample_rate_hz = lib, rate_hz
        self._chunks: list[bytes] = []
        # The C side keeps only a pointer: this reference keeps the callback alive.
        self._callback = _SYNTH_CALLBACK(self._collect)
        lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav: ctypes._Pointer, samples: int, events: int | None) -> int:
        if samples > 0:
            self._chunks.append(ctypes.string_at(wav, samples * 2))
        return 0  # 0 = go on synthesising

    def synthesise(self, text: str, voice: str, rate_wpm: int, pitch: int, noise_seed: int = 0) -> np.ndarray:
        """`text` spoken by eSpeak voice `voice` (e.g. "nl+f3"): int16 samples at `sample_rate_hz`, shape (samples,).

        The breathy variants (f2, f3, f5) draw noise from eSpeak's own generator, whose state otherwise
        differs from process to process: it is seeded with `noise_seed` first.
        """
        error = self._lib.espeak_SetVoiceByName(voice.encode())
        if error:
            raise RuntimeError(f"eSpeak voice {voice!r}: espeak_SetVoiceByName returned {error}")
        self._lib.espeak_SetParameter(_RATE, rate_wpm, 0)
        self._lib.espeak_SetParameter(_PITCH, pitch, 0)
        self._lib.espeak_ng_SetRandSeed(noise_seed)
        self._chunks = []
        data = text.encode("utf-8")
        error = self._lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8 | _ENDPAUSE, None, None)
        if error:
            raise RuntimeError(f"eSpeak voice {voice!r}: espeak_Synth returned {error} for {text!r}")
        samples = np.frombuffer(b"".join(self._chunks), dtype=np.int16)
        if samples.size == 0:
            raise RuntimeError(f"eSpeak voice {voice!r}: no audio for {text!r}")
        return samples


@functools.cache
def open_espeak() -> ESpeak:
    """The process's one eSpeak instance (the library cannot hold two), initialised on first use."""
    return ESpeak()
