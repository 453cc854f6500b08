"""Audio for transformers, in pure PyTorch: framing, the short-time Fourier transform (STFT), mel filter
banks, log-mel spectrograms (Whisper's recipe included), a synthetic offline sound set made by code, and
a Speech-Transformer-style classifier (convolutional subsampling, then a transformer encoder).

    X[m, k] = sum_n x[n + m*hop] w[n] exp(-2 pi i k n / n_fft)          (STFT: frame m, frequency bin k)
    S_mel   = F^T |X|^2,   features = log(S_mel)                        (F: triangular mel filters)
    mel(f)  = 2595 log10(1 + f / 700) (HTK),  or Slaney's: linear below 1 kHz, logarithmic above

- :func:`frame_signal`, :func:`stft` (equal to ``torch.stft``), :func:`mel_filterbank` (equal to
  librosa/Whisper's Slaney filters and to HTK filters), :func:`log_mel_spectrogram`;
- :func:`whisper_log_mel`: Whisper's exact input, 30 s of 16 kHz audio -> (80, 3000), equal to
  Hugging Face's ``WhisperFeatureExtractor``;
- :func:`make_sound_dataset` (+ data card ``data/synthetic_sounds.md``) and :func:`add_noise` at a given
  signal-to-noise ratio;
- :class:`ConvSubsampling` and :class:`AudioClassifier`.

torchaudio is deliberately not used: every step is a few lines of tensor code.

Taught in ``modules/04_multimodal/02_audio.py``. References: Dong et al. 2018, "Speech-Transformer: a
no-recurrence sequence-to-sequence model for speech recognition" (ICASSP); Radford et al. 2022, "Robust
Speech Recognition via Large-Scale Weak Supervision" (Whisper), https://arxiv.org/abs/2212.04356 ;
Slaney 1998, "Auditory Toolbox" (the mel filters librosa and Whisper use).

Shape legend: B batch, S samples, M frames, L frame length (= n_fft), K frequency bins (n_fft/2 + 1),
F mel bands, T encoder frames (after subsampling), D model width.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .positional import sinusoidal_encoding
from .transformer import BlockConfig, TransformerBlock
from .vit import ClassifierOutput

__all__ = [
    "frame_signal",
    "stft",
    "hz_to_mel",
    "mel_to_hz",
    "mel_filterbank",
    "log_mel_spectrogram",
    "WHISPER",
    "whisper_log_mel",
    "SOUND_CLASSES",
    "SoundSet",
    "make_sound_dataset",
    "add_noise",
    "normalize_features",
    "clip_features",
    "sound_batch_fn",
    "ConvSubsampling",
    "AudioConfig",
    "AudioClassifier",
]

MelScale = Literal["slaney", "htk"]


# ----------------------------------------------------------------------------------------------------
# Framing and the short-time Fourier transform
# ----------------------------------------------------------------------------------------------------
def frame_signal(x: torch.Tensor, frame_length: int, hop_length: int) -> torch.Tensor:
    """Overlapping frames of a signal: (..., S) -> (..., M, L) with M = 1 + (S - L) // hop.

    Frame ``m`` is ``x[..., m*hop : m*hop + L]``; a view (no copy) thanks to ``Tensor.unfold``.
    """
    if frame_length < 1 or hop_length < 1:
        raise ValueError(f"frame_length ({frame_length}) and hop_length ({hop_length}) must be >= 1")
    if x.shape[-1] < frame_length:
        raise ValueError(f"signal of {x.shape[-1]} samples is shorter than one frame ({frame_length})")
    return x.unfold(-1, frame_length, hop_length)  # (..., M, L)


def stft(x: torch.Tensor, n_fft: int, hop_length: int, window: torch.Tensor | None = None,
         center: bool = True, pad_mode: str = "reflect") -> torch.Tensor:
    """Short-time Fourier transform: (..., S) real -> (..., K, M) complex, K = n_fft // 2 + 1.

    Same result and layout as ``torch.stft(x, n_fft, hop_length, window=window, center=center,
    pad_mode=pad_mode, return_complex=True)``: frames of ``n_fft`` samples every ``hop_length``, each
    multiplied by ``window`` (default: a periodic Hann window) and Fourier-transformed with ``rfft``.
    ``center=True`` pads ``n_fft // 2`` samples on both sides, so frame ``m`` is centred on sample
    ``m * hop_length``.
    """
    if window is None:
        window = torch.hann_window(n_fft, periodic=True, device=x.device, dtype=x.dtype)
    if window.shape != (n_fft,):
        raise ValueError(f"window must have shape ({n_fft},), got {tuple(window.shape)}")
    if center:
        lead = x.shape[:-1]
        x = F.pad(x.reshape(-1, 1, x.shape[-1]), (n_fft // 2, n_fft // 2), mode=pad_mode)  # (N, 1, S + n_fft)
        x = x.reshape(*lead, x.shape[-1])
    frames = frame_signal(x, n_fft, hop_length) * window  # (..., M, L)
    return torch.fft.rfft(frames, dim=-1).transpose(-2, -1)  # (..., K, M)


# ----------------------------------------------------------------------------------------------------
# Mel scale and filter banks
# ----------------------------------------------------------------------------------------------------
_SLANEY_F_SP = 200.0 / 3  # Hz per mel below 1 kHz (linear part)
_SLANEY_MIN_LOG_HZ = 1000.0
_SLANEY_LOGSTEP = math.log(6.4) / 27.0  # log-spaced above 1 kHz


def hz_to_mel(f: torch.Tensor, scale: MelScale = "slaney") -> torch.Tensor:
    """Frequency in Hz -> mels. HTK: ``2595 log10(1 + f/700)``; Slaney (librosa's default, Whisper):
    linear below 1 kHz (3 mels per 200 Hz), logarithmic above."""
    f = torch.as_tensor(f, dtype=torch.float64)
    if scale == "htk":
        return 2595.0 * torch.log10(1.0 + f / 700.0)
    if scale != "slaney":
        raise ValueError(f"scale must be 'slaney' or 'htk', got {scale!r}")
    min_log_mel = _SLANEY_MIN_LOG_HZ / _SLANEY_F_SP
    log_part = min_log_mel + torch.log(torch.clamp(f, min=1e-10) / _SLANEY_MIN_LOG_HZ) / _SLANEY_LOGSTEP
    return torch.where(f >= _SLANEY_MIN_LOG_HZ, log_part, f / _SLANEY_F_SP)


def mel_to_hz(m: torch.Tensor, scale: MelScale = "slaney") -> torch.Tensor:
    """Inverse of :func:`hz_to_mel`."""
    m = torch.as_tensor(m, dtype=torch.float64)
    if scale == "htk":
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    if scale != "slaney":
        raise ValueError(f"scale must be 'slaney' or 'htk', got {scale!r}")
    min_log_mel = _SLANEY_MIN_LOG_HZ / _SLANEY_F_SP
    return torch.where(m >= min_log_mel, _SLANEY_MIN_LOG_HZ * torch.exp(_SLANEY_LOGSTEP * (m - min_log_mel)),
                       m * _SLANEY_F_SP)


def mel_filterbank(n_freqs: int, n_mels: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None,
                   scale: MelScale = "slaney", norm: Literal["slaney"] | None = "slaney") -> torch.Tensor:
    """Triangular mel filters as a matrix (K, F): ``power_spectrum (..., K, M)`` -> mel ``F^T @ P``.

    ``n_mels`` triangles with centres equally spaced on the mel scale between ``f_min`` and ``f_max``
    (default: Nyquist). ``norm="slaney"`` divides each triangle by its width in Hz so that every band
    has the same area (librosa's default, used by Whisper). Returns float32.
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    if n_freqs < 2 or n_mels < 1 or not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"need n_freqs >= 2, n_mels >= 1 and 0 <= f_min < f_max <= sample_rate/2; got "
                         f"n_freqs={n_freqs}, n_mels={n_mels}, f_min={f_min}, f_max={f_max}, sample_rate={sample_rate}")
    if norm not in ("slaney", None):
        raise ValueError(f"norm must be 'slaney' or None, got {norm!r}")
    fft_freqs = torch.linspace(0, sample_rate / 2, n_freqs, dtype=torch.float64)  # (K,)
    mels = torch.linspace(float(hz_to_mel(f_min, scale)), float(hz_to_mel(f_max, scale)), n_mels + 2,
                          dtype=torch.float64)
    edges = mel_to_hz(mels, scale)  # (F + 2,): left edge, centre, right edge of each triangle
    left, centre, right = edges[:-2], edges[1:-1], edges[2:]  # (F,) each
    up = (fft_freqs[:, None] - left) / (centre - left)  # (K, F): rising slope
    down = (right - fft_freqs[:, None]) / (right - centre)  # (K, F): falling slope
    filters = torch.clamp(torch.minimum(up, down), min=0.0)  # (K, F)
    if norm == "slaney":
        filters = filters * (2.0 / (right - left))  # equal area per band
    return filters.float()


def log_mel_spectrogram(x: torch.Tensor, sample_rate: int, n_fft: int = 256, hop_length: int = 128,
                        n_mels: int = 40, eps: float = 1e-6, scale: MelScale = "slaney") -> torch.Tensor:
    """Log-mel spectrogram (..., S) -> (..., F, M): ``log(F^T |STFT(x)|^2 + eps)`` (natural log)."""
    power = stft(x, n_fft, hop_length).abs() ** 2  # (..., K, M)
    fbank = mel_filterbank(n_fft // 2 + 1, n_mels, sample_rate, scale=scale).to(x.device)  # (K, F)
    mel = (fbank.T.to(power.dtype) @ power)  # (..., F, M)
    return torch.log(mel + eps)


@dataclass(frozen=True)
class _WhisperAudio:
    """Whisper's front-end constants (Radford et al. 2022, section 2.2)."""

    sample_rate: int = 16_000  # Hz
    n_fft: int = 400  # 25 ms windows
    hop_length: int = 160  # 10 ms stride -> 100 frames per second
    n_mels: int = 80  # (large-v3: 128)
    chunk_seconds: int = 30  # every input is padded or trimmed to 30 s

    @property
    def n_samples(self) -> int:
        return self.sample_rate * self.chunk_seconds  # 480,000

    @property
    def n_frames(self) -> int:
        return self.n_samples // self.hop_length  # 3,000


WHISPER = _WhisperAudio()


def whisper_log_mel(audio: torch.Tensor) -> torch.Tensor:
    """Whisper's input features: 16 kHz audio (..., S) -> (..., 80, 3000).

    Pad with zeros (or trim) to 30 s, power STFT (25 ms Hann windows every 10 ms, last frame dropped),
    80 Slaney mel bands up to 8 kHz, ``log10`` clamped at 1e-10, dynamic range limited to 8 (80 dB below
    the clip's maximum), then ``(x + 4) / 4`` to bring values near [-1, 1].
    """
    w = WHISPER
    S = audio.shape[-1]
    audio = F.pad(audio, (0, w.n_samples - S)) if S < w.n_samples else audio[..., :w.n_samples]
    power = stft(audio.float(), w.n_fft, w.hop_length)[..., :-1].abs() ** 2  # (..., 201, 3000)
    fbank = mel_filterbank(w.n_fft // 2 + 1, w.n_mels, w.sample_rate, 0.0, 8000.0).to(audio.device)  # (201, 80)
    log_spec = torch.clamp(fbank.T @ power, min=1e-10).log10()  # (..., 80, 3000)
    peak = log_spec.amax(dim=(-2, -1), keepdim=True)  # per clip
    return (torch.maximum(log_spec, peak - 8.0) + 4.0) / 4.0


# ----------------------------------------------------------------------------------------------------
# A synthetic sound set, made by code (data card: data/synthetic_sounds.md)
# ----------------------------------------------------------------------------------------------------
SOUND_CLASSES = ("tone", "buzz", "chirp up", "chirp down", "beeps", "hiss", "rumble", "clicks")


class SoundSet(NamedTuple):
    """``waveforms`` (N, S) float32 in about [-1, 1], ``labels`` (N,), class ``names`` and ``sample_rate``."""

    waveforms: torch.Tensor
    labels: torch.Tensor
    names: tuple[str, ...]
    sample_rate: int


def _uniform(lo: float, hi: float, g: torch.Generator) -> float:
    return lo + (hi - lo) * torch.rand((), generator=g, dtype=torch.float64).item()


def _lowpass_noise(n: int, cutoff_hz: float, sample_rate: int, g: torch.Generator) -> torch.Tensor:
    """White noise with every FFT bin above ``cutoff_hz`` zeroed (a brick-wall low-pass)."""
    spectrum = torch.fft.rfft(torch.randn(n, generator=g, dtype=torch.float64))
    freqs = torch.fft.rfftfreq(n, 1.0 / sample_rate, dtype=torch.float64)
    return torch.fft.irfft(spectrum * (freqs <= cutoff_hz), n=n)


def _sound(kind: int, n: int, sr: int, g: torch.Generator) -> torch.Tensor:
    """One clip of class ``kind`` (index into SOUND_CLASSES), length n samples, float64."""
    t = torch.arange(n, dtype=torch.float64) / sr
    phase = _uniform(0, 2 * math.pi, g)
    if kind == 0:  # tone: one steady sine
        y = torch.sin(2 * math.pi * _uniform(300, 1500, g) * t + phase)
    elif kind == 1:  # buzz: a low note rich in harmonics (amplitudes 1/k)
        f0 = _uniform(120, 300, g)
        y = sum(torch.sin(2 * math.pi * k * f0 * t + phase * k) / k for k in range(1, 9))
    elif kind in (2, 3):  # chirps: frequency sweeps linearly up or down
        lo, hi = _uniform(200, 600, g), _uniform(1500, 3000, g)
        f_start, f_end = (lo, hi) if kind == 2 else (hi, lo)
        duration = n / sr
        y = torch.sin(2 * math.pi * (f_start * t + (f_end - f_start) * t ** 2 / (2 * duration)) + phase)
    elif kind == 4:  # beeps: a tone switched on and off a few times per second
        rate = _uniform(5, 12, g)
        gate = (torch.sin(2 * math.pi * rate * t + phase) > 0).double()
        y = torch.sin(2 * math.pi * _uniform(500, 2000, g) * t) * gate
    elif kind == 5:  # hiss: white noise (flat spectrum)
        y = torch.randn(n, generator=g, dtype=torch.float64)
    elif kind == 6:  # rumble: noise below a few hundred Hz
        y = _lowpass_noise(n, _uniform(150, 400, g), sr, g)
    elif kind == 7:  # clicks: short decaying pulses at a steady rate
        period = int(sr / _uniform(15, 40, g))
        y = torch.zeros(n, dtype=torch.float64)
        for start in range(int(_uniform(0, period, g)), n, period):
            length = min(40, n - start)
            y[start:start + length] = torch.exp(-torch.arange(length, dtype=torch.float64) / 6.0)
    else:
        raise ValueError(f"unknown sound class {kind}")
    return y / y.abs().max().clamp(min=1e-12)


def make_sound_dataset(n_per_class: int = 100, sample_rate: int = 8000, seconds: float = 0.5,
                       background_snr_db: float = 30.0, seed: int = 0) -> SoundSet:
    """``n_per_class`` clips of each of the 8 :data:`SOUND_CLASSES`, made by code (no download).

    Each clip: the sound (random frequencies, rates, phases) occupies a random 50-100% stretch of the
    clip with 10 ms fades, at a random gain between 0.2 and 1, over faint white noise at
    ``background_snr_db``. Deterministic for a given ``seed``; rows are shuffled.
    """
    if n_per_class < 1 or sample_rate < 1000 or seconds <= 0:
        raise ValueError(f"need n_per_class >= 1, sample_rate >= 1000 and seconds > 0; got {n_per_class}, "
                         f"{sample_rate}, {seconds}")
    g = torch.Generator().manual_seed(seed)
    n = int(sample_rate * seconds)
    fade = max(1, int(0.01 * sample_rate))
    waves, labels = [], []
    for kind in range(len(SOUND_CLASSES)):
        for _ in range(n_per_class):
            length = int(n * _uniform(0.5, 1.0, g))
            start = int(_uniform(0, n - length, g))
            sound = _sound(kind, length, sample_rate, g)
            envelope = torch.ones(length, dtype=torch.float64)
            ramp = torch.linspace(0, 1, min(fade, length // 2), dtype=torch.float64)
            envelope[:len(ramp)] = ramp
            envelope[length - len(ramp):] = ramp.flip(0)
            clip = torch.zeros(n, dtype=torch.float64)
            clip[start:start + length] = sound * envelope * _uniform(0.2, 1.0, g)
            waves.append(clip)
            labels.append(kind)
    waveforms = torch.stack(waves)  # (N, S)
    waveforms = add_noise(waveforms, background_snr_db, generator=g)
    order = torch.randperm(len(labels), generator=g)
    return SoundSet(waveforms[order].float(), torch.tensor(labels)[order], SOUND_CLASSES, sample_rate)


def add_noise(waveforms: torch.Tensor, snr_db: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Add white Gaussian noise at a signal-to-noise ratio of ``snr_db`` decibels per clip (..., S):
    noise power = signal power / 10^(snr_db / 10). ``snr_db = inf`` returns the input."""
    if math.isinf(snr_db) and snr_db > 0:
        return waveforms
    power = waveforms.pow(2).mean(dim=-1, keepdim=True)  # (..., 1)
    noise = torch.randn(waveforms.shape, generator=generator, dtype=waveforms.dtype).to(waveforms.device)
    return waveforms + noise * torch.sqrt(power / 10 ** (snr_db / 10))


def normalize_features(features: torch.Tensor) -> torch.Tensor:
    """Standardise each clip's log-mel features (..., F, M) to zero mean and unit variance over all
    bins: a louder copy of a sound (a constant added to the log) gives the same features."""
    mean = features.mean(dim=(-2, -1), keepdim=True)
    std = features.std(dim=(-2, -1), keepdim=True).clamp(min=1e-5)
    return (features - mean) / std


def clip_features(waveforms: torch.Tensor, sample_rate: int, n_mels: int = 40, n_fft: int = 256,
                  hop_length: int = 128) -> torch.Tensor:
    """The classifier's input: per-clip standardised log-mel spectrograms, (..., S) -> (..., F, M).
    At 8 kHz the defaults give 32 ms windows every 16 ms: a 0.5 s clip becomes 40 x 32."""
    return normalize_features(log_mel_spectrogram(waveforms, sample_rate, n_fft, hop_length, n_mels))


def sound_batch_fn(data: SoundSet, train_idx: torch.Tensor, test_idx: torch.Tensor, batch_size: int = 64,
                   noise_snr_db: tuple[float, float] | None = None, n_mels: int = 40):
    """A ``batch_fn(split, generator)`` for :func:`llmcourse.train.train`: random (features, labels)
    batches of the clips ``train_idx`` ("train") or ``test_idx`` ("val"). With ``noise_snr_db=(lo, hi)``,
    training batches get white noise at an SNR drawn uniformly in [lo, hi] dB per batch (augmentation)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if noise_snr_db is not None and noise_snr_db[0] > noise_snr_db[1]:
        raise ValueError(f"noise_snr_db must be (low, high), got {noise_snr_db}")
    clean_test = clip_features(data.waveforms[test_idx], data.sample_rate, n_mels)
    clean_train = clip_features(data.waveforms[train_idx], data.sample_rate, n_mels) if noise_snr_db is None else None

    def batch_fn(split: str, generator: torch.Generator):
        pool = train_idx if split == "train" else test_idx
        i = torch.randint(0, len(pool), (batch_size,), generator=generator)
        if split != "train":
            return clean_test[i], data.labels[test_idx[i]]
        if noise_snr_db is None:
            return clean_train[i], data.labels[train_idx[i]]
        lo, hi = noise_snr_db
        snr = lo + (hi - lo) * torch.rand((), generator=generator).item()
        noisy = add_noise(data.waveforms[train_idx[i]], snr, generator=generator)
        return clip_features(noisy, data.sample_rate, n_mels), data.labels[train_idx[i]]

    return batch_fn


# ----------------------------------------------------------------------------------------------------
# Model: convolutional subsampling + transformer encoder
# ----------------------------------------------------------------------------------------------------
class ConvSubsampling(nn.Module):
    """Two 3x3 convolutions with stride 2 over (time, frequency), as in Speech-Transformer and ESPnet:
    (B, F, M) log-mel -> (B, T, D) with T = ((M - 1) // 2 - 1) // 2 (about M / 4).

    Spectrogram frames are short (10-30 ms) and strongly correlated; subsampling by 4 shortens the
    sequence the attention layers see 4x (16x fewer attention scores) while the convolutions pick up local
    time-frequency patterns. (Whisper uses two 1-D convolutions, the second with stride 2.)"""

    def __init__(self, n_mels: int, d_model: int, channels: int = 32):
        super().__init__()
        if min(n_mels, d_model, channels) < 1 or n_mels < 7:
            raise ValueError(f"need n_mels >= 7 and positive d_model/channels, got {n_mels}, {d_model}, {channels}")
        self.conv = nn.Sequential(nn.Conv2d(1, channels, 3, stride=2), nn.ReLU(),
                                  nn.Conv2d(channels, channels, 3, stride=2), nn.ReLU())
        freq_out = ((n_mels - 1) // 2 - 1) // 2
        self.proj = nn.Linear(channels * freq_out, d_model)

    @staticmethod
    def output_length(n_frames: int) -> int:
        return ((n_frames - 1) // 2 - 1) // 2

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.conv(features.transpose(1, 2).unsqueeze(1))  # (B, 1, M, F) -> (B, channels, T, F')
        B, Ch, T, Fp = x.shape
        return self.proj(x.permute(0, 2, 1, 3).reshape(B, T, Ch * Fp))  # (B, T, D)


@dataclass
class AudioConfig:
    """Configuration of :class:`AudioClassifier`."""

    n_mels: int = 40  # F: mel bands of the input features
    n_classes: int = len(SOUND_CLASSES)  # classifier outputs
    d_model: int = 64  # D
    n_layer: int = 2  # encoder blocks
    n_head: int = 4  # attention heads
    conv_channels: int = 32  # channels of the subsampling convolutions
    dropout: float = 0.0  # dropout in the blocks

    def __post_init__(self) -> None:
        for name in ("n_mels", "n_classes", "d_model", "n_layer", "n_head", "conv_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        self.block_config()

    def block_config(self) -> BlockConfig:
        return BlockConfig(d_model=self.d_model, n_heads=self.n_head, dropout=self.dropout, causal=False,
                           norm="pre", activation="gelu")


class AudioClassifier(nn.Module):
    """Log-mel features (B, F, M) -> class logits: :class:`ConvSubsampling`, sinusoidal positions,
    pre-norm transformer encoder blocks, a final LayerNorm, mean pooling over time, a linear head."""

    def __init__(self, config: AudioConfig):
        super().__init__()
        self.config = c = config
        self.subsample = ConvSubsampling(c.n_mels, c.d_model, c.conv_channels)
        self.blocks = nn.ModuleList(TransformerBlock(c.block_config()) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.d_model)
        self.head = nn.Linear(c.d_model, c.n_classes)

    def forward(self, features: torch.Tensor, targets: torch.Tensor | None = None) -> ClassifierOutput:
        if features.ndim != 3 or features.shape[1] != self.config.n_mels:
            raise ValueError(f"features must be (B, n_mels={self.config.n_mels}, M), got {tuple(features.shape)}")
        if features.shape[-1] < 7:
            raise ValueError(f"need at least 7 frames for the subsampling, got {features.shape[-1]}")
        x = self.subsample(features)  # (B, T, D)
        x = x + sinusoidal_encoding(x.shape[1], x.shape[2], device=x.device, dtype=x.dtype)
        for block in self.blocks:
            x = block(x)
        hidden = self.ln_f(x)  # (B, T, D)
        pooled = hidden.mean(dim=1)  # (B, D)
        logits = self.head(pooled)
        loss = F.cross_entropy(logits.float(), targets) if targets is not None else None
        return ClassifierOutput(logits, loss, pooled, hidden)
