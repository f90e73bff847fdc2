"""Sample folders: .npz / video files / PNG folders, one entry per video, lossless format preferred."""

import numpy as np
import pytest

from pvdm_fast.metrics.sample_reader import iter_sample_batches, list_samples, read_sample


def _video(seed: int, t: int = 6, h: int = 16, w: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def test_formats_priority_and_stride(tmp_path):
    from PIL import Image

    from pvdm_fast.data.video_io import write_video

    np.savez(tmp_path / "video_000000.npz", video=_video(0))
    write_video(tmp_path / "video_000000.mp4", _video(9))  # same name: the lossless npz wins
    np.savez(tmp_path / "video_000001.npz", _video(1))  # the only array, unnamed
    (tmp_path / "video_000002").mkdir()
    for t, frame in enumerate(_video(2)):
        Image.fromarray(frame).save(tmp_path / "video_000002" / f"frame_{t:04d}.png")
    write_video(tmp_path / "video_000003.mp4", np.full((6, 16, 16, 3), 128, np.uint8))
    (tmp_path / ".video_000004.tmp.npz").write_bytes(b"partial")  # unfinished write: ignored
    (tmp_path / "sample_settings.json").write_text("{}")
    paths = list_samples(tmp_path)
    assert [p.name for p in paths] == ["video_000000.npz", "video_000001.npz", "video_000002", "video_000003.mp4"]
    np.testing.assert_array_equal(read_sample(paths[0], 3, stride=2), _video(0)[[0, 2, 4]])
    np.testing.assert_array_equal(read_sample(paths[1], 2), _video(1)[:2])
    np.testing.assert_array_equal(read_sample(paths[2], 3, stride=2), _video(2)[[0, 2, 4]])
    assert np.abs(read_sample(paths[3], 4).astype(int) - 128).max() <= 3  # lossy but close
    batches = list(iter_sample_batches(tmp_path, batch_size=3, frames=4))
    assert [b.shape for b in batches] == [(3, 4, 16, 16, 3), (1, 4, 16, 16, 3)]
    ranks = [list(iter_sample_batches(tmp_path, 8, 4, num=3, rank=r, world_size=2))[0] for r in (0, 1)]
    assert len(ranks[0]) == 2 and len(ranks[1]) == 1  # videos 0, 2 and 1


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="pvdm sample"):
        list_samples(tmp_path / "missing")
    with pytest.raises(ValueError, match="no videos"):
        list_samples(tmp_path)
    np.savez(tmp_path / "a.npz", video=_video(0))
    with pytest.raises(ValueError, match="need 11"):
        read_sample(tmp_path / "a.npz", 6, stride=2)
    with pytest.raises(ValueError, match="fewer than the 2 requested"):
        list(iter_sample_batches(tmp_path, 1, 2, num=2))
    np.savez(tmp_path / "b.npz", x=_video(0), y=_video(1))
    with pytest.raises(ValueError, match="none is named 'video'"):
        read_sample(tmp_path / "b.npz", 2)


def test_unreadable_and_short_videos_are_value_errors_naming_the_file(tmp_path):
    """Every format: a short or undecodable video is a ValueError naming it and what to do (the CLI exits 2),
    never PyAV's / Pillow's RuntimeError."""
    from PIL import Image

    from pvdm_fast.data.video_io import write_video

    video = _video(0, t=4)
    write_video(tmp_path / "short.mp4", video)
    frames = [Image.fromarray(f) for f in video]
    frames[0].save(tmp_path / "short.gif", save_all=True, append_images=frames[1:], duration=100)
    for name in ("short.mp4", "short.gif"):
        with pytest.raises(ValueError, match=f"{name}: cannot read 8 frames.*lower --frames"):
            read_sample(tmp_path / name, 8)
        assert read_sample(tmp_path / name, 4).shape == (4, 16, 16, 3)
    (tmp_path / "garbage.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match="garbage.mp4: cannot read 2 frames.*re-generate the video"):
        read_sample(tmp_path / "garbage.mp4", 2)
    np.savez(tmp_path / "whole.npz", video=video)
    data = (tmp_path / "whole.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[:len(data) // 2])  # an interrupted copy
    with pytest.raises(ValueError, match="cut.npz is not a readable .npz video.*re-generate"):
        read_sample(tmp_path / "cut.npz", 2)
    (tmp_path / "frames").mkdir()
    for t, frame in enumerate(video):
        Image.fromarray(frame).save(tmp_path / "frames" / f"{t}.png")
    (tmp_path / "frames" / "1.png").write_bytes(b"broken")
    with pytest.raises(ValueError, match="1.png: unreadable image.*re-generate"):
        read_sample(tmp_path / "frames", 3)


def test_sizes_must_agree_across_batches(tmp_path):
    from pvdm_fast.metrics.sample_reader import sample_size

    for i, size in enumerate((16, 16, 8)):
        np.savez(tmp_path / f"video_{i}.npz", video=_video(i, h=size, w=size))
    assert sample_size(tmp_path, 2) == (16, 16)
    with pytest.raises(ValueError, match="video_2.npz is 8x8, video_0.npz is 16x16"):
        list(iter_sample_batches(tmp_path, batch_size=2, frames=2))  # the odd one is alone in its batch
    with pytest.raises(ValueError, match="batch size must be a positive integer"):
        list(iter_sample_batches(tmp_path, batch_size=0, frames=2))
