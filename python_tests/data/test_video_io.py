"""PyAV reading: frame-accurate seeking, decoding only what a clip needs, bad files, writing."""

import numpy as np
import pytest

from pvdm_fast.data import video_io
from pvdm_fast.data.video_io import VideoDecodeError, probe_video, read_all_frames, read_frames, write_video

from .conftest import coded_frames, frame_ids, truncate, write_coded


@pytest.mark.parametrize("suffix", [".avi", ".mp4"])
def test_seeking_is_frame_accurate(tmp_path, suffix):
    path = write_coded(tmp_path / f"v{suffix}", 40, gop=8)
    assert probe_video(path, verify=True).num_frames == 40
    rng = np.random.default_rng(0)
    # Starts inside a GOP, on a keyframe (16), the first and the last frames, strides 1-3, and an
    # unsorted request with repeats.
    requests = [[0, 1, 2], [16, 17, 18, 19], [37, 38, 39], [9, 12, 15, 18], [33, 5, 5, 20]]
    requests += [sorted(rng.choice(40, 4, replace=False).tolist()) for _ in range(4)]
    for wanted in requests:
        frames = read_frames(path, wanted)
        assert frames.shape == (len(wanted), 24, 32, 3)
        assert frame_ids(frames) == wanted
        # Codec error on flat colours is a few levels; a neighbour frame would be >= 6 off.
        assert np.abs(frames.astype(int) - coded_frames(40)[wanted].astype(int)).mean() < 3


@pytest.mark.parametrize("suffix", [".avi", ".mp4"])
def test_seek_decodes_one_gop_not_the_video(tmp_path, monkeypatch, suffix):
    path = write_coded(tmp_path / f"v{suffix}", 40, gop=8)
    seen = []
    original = video_io._collect

    def counting(frames, wanted, index_of, p):
        def spy():
            for f in frames:
                seen.append(index_of(f))
                yield f
        return original(spy(), wanted, index_of, p)

    monkeypatch.setattr(video_io, "_collect", counting)
    assert frame_ids(read_frames(path, [35, 36])) == [35, 36]
    # Decoding starts at the keyframe at or before 35 (32) and stops at 36.
    assert seen[0] >= 32 - 8 and seen[-1] == 36 and len(seen) <= 8 + 2


def test_sequential_fallback_matches_seeking(tmp_path):
    import av

    path = write_coded(tmp_path / "v.avi", 20, gop=4)
    wanted = [3, 7, 11]
    assert frame_ids(np.stack([f for _, f in sorted(video_io._read_sequential(av, str(path), wanted).items())])) \
        == wanted
    assert frame_ids(read_all_frames(path)) == list(range(20))


def test_read_past_the_end_is_a_decode_error(tmp_path):
    path = write_coded(tmp_path / "v.avi", 10)
    with pytest.raises(VideoDecodeError, match="truncated"):
        read_frames(path, [8, 9, 10])


def test_bad_files_raise_decode_errors(tmp_path):
    empty = tmp_path / "empty.avi"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x01 definitely not a video" * 20)
    # Cut at 90%: the header survives and announces 30 frames; at 40% the file does not even open.
    cut = truncate(write_coded(tmp_path / "cut.avi", 30), 0.9)
    torn = truncate(write_coded(tmp_path / "torn.avi", 30), 0.4)
    with pytest.raises(VideoDecodeError, match="empty"):
        probe_video(empty)
    with pytest.raises(VideoDecodeError, match="unreadable"):
        probe_video(junk)
    with pytest.raises(VideoDecodeError, match="unreadable"):
        probe_video(torn)
    assert probe_video(cut).num_frames == 30
    with pytest.raises(VideoDecodeError, match="truncated"):
        probe_video(cut, verify=True)
    with pytest.raises(VideoDecodeError):  # the header alone does not show it; reading does
        read_frames(cut, list(range(25, 30)))


def test_write_video_validates_input(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "a.mp4", np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "a.mp4", np.zeros((2, 7, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="non-negative"):
        read_frames(write_coded(tmp_path / "v.avi", 4), [-1])


def test_containers_without_a_frame_count_are_counted_by_demuxing(tmp_path):
    # Matroska headers carry no frame count: probing counts packets instead (no decoding).
    path = write_coded(tmp_path / "v.mkv", 20, gop=4)
    assert probe_video(path).num_frames == 20
    assert frame_ids(read_frames(path, [13, 14, 19])) == [13, 14, 19]
