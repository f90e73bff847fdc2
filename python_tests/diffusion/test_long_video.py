"""Long-video generation: frame count, clip order and what each clip is conditioned on."""
import pytest
import torch

from pvdm_fast.diffusion.long_video import iter_long_video, long_video, num_clips

B, C, L = 2, 4, 10
T, H, W = 3, 4, 6  # a clip: 3 frames of 4x6 (odd sizes, nothing square)


class Recorder:
    """Stub sampler/decoder/encoder: latents carry the clip index so we can trace the chain."""

    def __init__(self):
        self.conds: list[torch.Tensor | None] = []
        self.encoded: list[torch.Tensor] = []

    def sample(self, cond):
        self.conds.append(None if cond is None else cond.clone())
        return torch.full((B, C, L), float(len(self.conds)))  # clip k -> latent filled with k+1

    def decode(self, latent):
        # every pixel of clip k holds (k + 1) / 10, which stays inside [-1, 1] for these tests
        return (latent[:, :1, :1, None, None] / 10).expand(B, 3, T, H, W).clone()

    def encode(self, video):
        self.encoded.append(video.clone())
        return -video.mean() * torch.ones(B, C, L)  # distinct from the latent: shows which path ran


@pytest.mark.parametrize("clips", [1, 2, 5])
def test_frame_count_and_reencode_conditioning_order(clips):
    rec = Recorder()
    video = long_video(rec.sample, rec.decode, rec.encode, clips, condition="reencode")
    assert video.shape == (B, 3, clips * T, H, W)
    assert rec.conds[0] is None  # first clip: zero condition
    for k in range(1, clips):
        # clip k is conditioned on the re-encoding of decoded clip k-1, i.e. -(k)/10
        assert torch.allclose(rec.conds[k], torch.full((B, C, L), -k / 10)), k
        assert torch.allclose(video[:, :, (k - 1) * T:k * T], torch.full((B, 3, T, H, W), k / 10))
    assert len(rec.encoded) == clips - 1  # the last clip is never re-encoded


def test_latent_conditioning_uses_the_previous_latent_and_never_encodes():
    rec = Recorder()
    clips = list(iter_long_video(rec.sample, rec.decode, None, 4, condition="latent"))
    assert len(clips) == 4 and rec.encoded == []
    for k in range(1, 4):
        assert torch.equal(rec.conds[k], torch.full((B, C, L), float(k)))


def test_decoded_frames_are_clamped_before_reencoding():
    rec = Recorder()
    rec.decode = lambda latent: torch.full((B, 3, T, H, W), 5.0)
    video = long_video(rec.sample, rec.decode, rec.encode, 2)
    assert video.max() == 1.0 and rec.encoded[0].max() == 1.0


def test_num_clips_requires_a_multiple_of_the_clip_length():
    assert num_clips(128, 16) == 8 and num_clips(16, 16) == 1
    for bad in (0, 17, -16):
        with pytest.raises(ValueError, match="multiple"):
            num_clips(bad, 16)


def test_bad_condition_and_missing_encoder_raise():
    rec = Recorder()
    with pytest.raises(ValueError, match="condition"):
        list(iter_long_video(rec.sample, rec.decode, rec.encode, 2, condition="frames"))
    with pytest.raises(ValueError, match="encoder"):
        list(iter_long_video(rec.sample, rec.decode, None, 2, condition="reencode"))
