"""Tests for llmcourse.audio: framing and STFT against torch.stft, mel filters against Hugging Face's
(librosa-compatible) filters, Whisper's log-mel against WhisperFeatureExtractor, the synthetic sounds,
noise at a given SNR, and the classifier's shapes."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llmcourse import audio

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


def test_frame_signal_by_hand():
    x = torch.arange(10.0)
    frames = audio.frame_signal(x, 4, 3)  # starts 0, 3, 6
    assert torch.equal(frames, torch.tensor([[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9.0]]))
    assert audio.frame_signal(torch.zeros(2, 5, 100), 10, 10).shape == (2, 5, 10, 10)
    with pytest.raises(ValueError, match="shorter than one frame"):
        audio.frame_signal(torch.zeros(3), 4, 1)
    with pytest.raises(ValueError, match="hop_length"):
        audio.frame_signal(torch.zeros(8), 4, 0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_fft,hop,center,S", [(256, 100, True, 3000), (400, 160, True, 1601), (64, 64, False, 500),
                                                (16, 1, True, 17)])
def test_stft_equals_torch_stft(n_fft, hop, center, S, dtype, device):
    x = torch.randn(3, S, dtype=dtype, generator=torch.Generator().manual_seed(0)).to(device)
    window = torch.hann_window(n_fft, dtype=dtype, device=device)
    ours = audio.stft(x, n_fft, hop, center=center)
    reference = torch.stft(x, n_fft, hop, window=window, center=center, return_complex=True)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ours, reference, **tol)
    # Extra leading dims and a custom window.
    window = torch.hamming_window(n_fft, dtype=dtype, device=device)
    torch.testing.assert_close(audio.stft(x.view(3, 1, S), n_fft, hop, window, center=center)[:, 0],
                               torch.stft(x, n_fft, hop, window=window, center=center, return_complex=True), **tol)


def test_stft_window_shape_error():
    with pytest.raises(ValueError, match=r"window must have shape \(64,\)"):
        audio.stft(torch.zeros(500), 64, 16, window=torch.ones(32))


def test_mel_scale_values_and_inverse():
    # HTK: 1000 Hz is ~1000 mel by construction; Slaney: linear up to 1 kHz at 3 mels per 200 Hz.
    assert audio.hz_to_mel(torch.tensor(1000.0), "htk").item() == pytest.approx(999.99, abs=0.01)
    assert audio.hz_to_mel(torch.tensor(1000.0), "slaney").item() == pytest.approx(15.0)
    assert audio.hz_to_mel(torch.tensor(200.0), "slaney").item() == pytest.approx(3.0)
    f = torch.tensor([0.0, 50.0, 999.0, 1000.0, 4000.0, 8000.0])
    for scale in ("htk", "slaney"):
        torch.testing.assert_close(audio.mel_to_hz(audio.hz_to_mel(f, scale), scale), f.double())
    with pytest.raises(ValueError, match="scale"):
        audio.hz_to_mel(f, "bark")


@pytest.mark.parametrize("n_freqs,n_mels,sr,f_min,f_max,scale,norm", [
    (201, 80, 16000, 0.0, 8000.0, "slaney", "slaney"),  # Whisper
    (129, 40, 8000, 0.0, 4000.0, "htk", None),
    (257, 64, 22050, 50.0, 9000.0, "slaney", None),
])
def test_mel_filterbank_equals_hugging_face(n_freqs, n_mels, sr, f_min, f_max, scale, norm):
    from transformers.audio_utils import mel_filter_bank

    reference = mel_filter_bank(n_freqs, n_mels, f_min, f_max, sr, norm=norm, mel_scale=scale)
    ours = audio.mel_filterbank(n_freqs, n_mels, sr, f_min, f_max, scale=scale, norm=norm)
    assert ours.shape == (n_freqs, n_mels) and ours.dtype == torch.float32
    np.testing.assert_allclose(ours.double().numpy(), reference, rtol=1e-5, atol=1e-7)


def test_mel_filterbank_errors():
    with pytest.raises(ValueError, match="f_max=9000"):
        audio.mel_filterbank(129, 40, 16000, 0.0, 9000.0)
    with pytest.raises(ValueError, match="norm"):
        audio.mel_filterbank(129, 40, 16000, norm="l2")


@pytest.mark.parametrize("seconds", [3.0, 31.0])
def test_whisper_log_mel_equals_feature_extractor(seconds):
    from transformers import WhisperFeatureExtractor

    g = torch.Generator().manual_seed(0)
    t = torch.arange(int(16000 * seconds)) / 16000
    wave = 0.3 * torch.sin(2 * math.pi * 440 * t) + 0.05 * torch.randn(len(t), generator=g)
    reference = WhisperFeatureExtractor()(wave.numpy(), sampling_rate=16000, return_tensors="np")["input_features"][0]
    ours = audio.whisper_log_mel(wave)
    assert ours.shape == (80, 3000) == reference.shape
    np.testing.assert_allclose(ours.numpy(), reference, rtol=1e-4, atol=1e-4)
    batch = audio.whisper_log_mel(torch.stack([wave, 0.5 * wave]))
    assert batch.shape == (2, 80, 3000)
    torch.testing.assert_close(batch[0], ours)


def test_log_mel_spectrogram_of_a_tone_peaks_at_its_band():
    sr, f = 8000, 1000.0
    t = torch.arange(sr // 2) / sr
    features = audio.log_mel_spectrogram(torch.sin(2 * math.pi * f * t), sr, n_mels=40)
    assert features.shape == (40, 32)
    fbank = audio.mel_filterbank(129, 40, sr)
    centre_bins = fbank.argmax(dim=0) * (sr / 2) / 128  # Hz at each band's peak
    peak_band = features.mean(dim=1).argmax().item()
    assert abs(centre_bins[peak_band].item() - f) < 100


def test_sound_dataset():
    data = audio.make_sound_dataset(n_per_class=5, seed=3)
    assert data.waveforms.shape == (40, 4000) and data.sample_rate == 8000
    assert torch.equal(torch.bincount(data.labels), torch.full((8,), 5))
    assert data.waveforms.abs().max() < 1.5 and data.names == audio.SOUND_CLASSES
    again = audio.make_sound_dataset(n_per_class=5, seed=3)
    assert torch.equal(again.waveforms, data.waveforms)
    assert not torch.equal(audio.make_sound_dataset(n_per_class=5, seed=4).waveforms, data.waveforms)
    with pytest.raises(ValueError, match="sample_rate"):
        audio.make_sound_dataset(sample_rate=100)


def test_sound_classes_differ_where_designed():
    """Chirps up and down have mirrored spectrograms over time; hiss is broadband, rumble low."""
    data = audio.make_sound_dataset(n_per_class=20, background_snr_db=60.0, seed=0)
    feats = audio.log_mel_spectrogram(data.waveforms, data.sample_rate)  # (N, 40, 32)
    band_energy = feats.exp().mean(dim=2)  # (N, 40)
    low_share = band_energy[:, :10].sum(1) / band_energy.sum(1)
    by_class = lambda name: low_share[data.labels == audio.SOUND_CLASSES.index(name)].mean()
    assert by_class("rumble") > 0.9 and by_class("hiss") < 0.5


@pytest.mark.parametrize("snr_db", [20.0, 0.0, -5.0])
def test_add_noise_reaches_the_requested_snr(snr_db):
    g = torch.Generator().manual_seed(0)
    clean = torch.sin(torch.linspace(0, 500, 20000)).repeat(4, 1) * torch.tensor([[0.1], [0.5], [1.0], [2.0]])
    noisy = audio.add_noise(clean, snr_db, generator=g)
    measured = 10 * torch.log10(clean.pow(2).mean(1) / (noisy - clean).pow(2).mean(1))
    torch.testing.assert_close(measured, torch.full((4,), snr_db), atol=0.2, rtol=0)
    assert audio.add_noise(clean, float("inf")) is clean


def test_normalize_features_removes_gain():
    data = audio.make_sound_dataset(n_per_class=2, seed=0)
    f1 = audio.normalize_features(audio.log_mel_spectrogram(data.waveforms, 8000, eps=1e-12))
    f2 = audio.normalize_features(audio.log_mel_spectrogram(4.0 * data.waveforms, 8000, eps=1e-12))
    torch.testing.assert_close(f1, f2, rtol=1e-3, atol=1e-3)
    assert torch.allclose(f1.mean(dim=(1, 2)), torch.zeros(16), atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("M", [7, 8, 32, 101])
def test_classifier_shapes_and_subsampling(M, device):
    torch.manual_seed(0)
    model = audio.AudioClassifier(audio.AudioConfig(n_mels=40, d_model=32, n_layer=1, conv_channels=4)).to(device)
    features = torch.randn(2, 40, M, device=device)
    out = model(features, torch.tensor([0, 7], device=device))
    T = audio.ConvSubsampling.output_length(M)
    assert T >= 1 and out.hidden.shape == (2, T, 32) and out.logits.shape == (2, 8) and out.loss.ndim == 0
    assert abs(T - M / 4) <= 2


def test_classifier_errors():
    model = audio.AudioClassifier(audio.AudioConfig(n_mels=40, d_model=32, n_layer=1))
    with pytest.raises(ValueError, match="n_mels=40"):
        model(torch.randn(2, 20, 32))
    with pytest.raises(ValueError, match="at least 7 frames"):
        model(torch.randn(2, 40, 5))
    with pytest.raises(ValueError, match="n_layer"):
        audio.AudioConfig(n_layer=0)
