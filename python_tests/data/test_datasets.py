"""Datasets of every format: what is found, skipped and decoded, splits, errors, determinism."""

import warnings

import numpy as np
import pytest
import torch

from pvdm_fast.data.dataset import open_dataset
from pvdm_fast.data.transforms import to_uint8_frames

from .conftest import coded_frames, frame_ids, truncate, write_coded, write_png_folder


def decoded_ids(item) -> list[int]:
    return frame_ids(to_uint8_frames(item["video"]).numpy())


def reasons(dataset) -> dict[str, str]:
    return {s["path"].rsplit("/", 1)[-1]: s["reason"] for s in dataset.skipped}


def test_ucf101_all_videos_with_bad_files_skipped_and_counted(ucf_tree):
    with pytest.warns(RuntimeWarning, match=r"skipped 4 videos \(3 unreadable or missing, 1 too short"):
        ds = open_dataset(f"ucf101:{ucf_tree}", resolution=16, frames=8, stride=2, mode="eval", verify=True)
    why = reasons(ds)
    assert set(why) == {"v_Biking_g03_c01.avi", "v_Biking_g04_c01.avi", "v_Biking_g05_c01.avi",
                        "v_ApplyLipstick_g03_c01.avi"}
    assert why["v_Biking_g05_c01.avi"].startswith("empty")
    assert why["v_Biking_g04_c01.avi"].startswith("unreadable")
    assert why["v_ApplyLipstick_g03_c01.avi"].startswith("truncated")
    assert why["v_Biking_g03_c01.avi"].startswith("too short: 5 frames")
    assert len(ds) == ds.num_videos == 4
    item = ds[0]
    assert item["video"].shape == (3, 8, 16, 16) and item["ok"] and item["cond_valid"]
    assert decoded_ids(item) == list(range(0, 16, 2))


def test_ucf101_split_files_inside_or_beside(ucf_tree, tmp_path):
    kwargs = dict(resolution=8, frames=4, mode="eval")
    with pytest.warns(RuntimeWarning):  # the missing listed video
        train = open_dataset(f"ucf101:{ucf_tree}", split="train", **kwargs)
    test = open_dataset(f"ucf101:{ucf_tree}", split="test", **kwargs)
    names = lambda ds: sorted(s.path.rsplit("/", 1)[-1] for s in ds.sources)  # noqa: E731
    # The upper-cased entry still matches: official lists and folders disagree on case.
    assert names(train) == ["v_ApplyLipstick_g01_c01.avi", "v_Biking_g01_c01.avi"]
    assert names(test) == ["v_ApplyLipstick_g02_c01.avi", "v_Biking_g02_c01.avi"]
    assert reasons(train) == {"v_Biking_g09_c01.avi": "listed in trainlist01.txt but not found"}
    (ucf_tree / "ucfTrainTestlist").rename(tmp_path / "ucfTrainTestlist")  # beside the dataset
    assert names(open_dataset(f"ucf101:{ucf_tree}", split="test", **kwargs)) == names(test)
    with pytest.raises(FileNotFoundError, match="testlist02.txt"):
        open_dataset(f"ucf101:{ucf_tree}", split="test", fold=2, **kwargs)
    with pytest.raises(ValueError, match="split must be one of"):
        open_dataset(f"ucf101:{ucf_tree}", split="val", **kwargs)


def test_sky_clip_folders_and_direct_frames(sky_tree):
    ds = open_dataset(f"sky:{sky_tree}", resolution=8, frames=6, stride=2, mode="eval")
    assert [s.path.split("train/")[1] for s in ds.sources] == ["video_a/clip_1", "video_a/clip_2", "video_b"]
    assert ds.sources[0].names[:3] == ("frame0.png", "frame1.png", "frame2.png")  # natural order
    assert ds.skipped == [] and len(ds) == 3
    with pytest.warns(RuntimeWarning, match="1 too short"):
        strided = open_dataset(f"sky:{sky_tree}", resolution=8, frames=6, stride=3, mode="eval")
    assert reasons(strided) == {"clip_1": "too short: 12 frames, a clip of 6 frames with stride 3 needs 16"}
    assert decoded_ids(ds[1]) == list(range(0, 12, 2))
    test = open_dataset(f"sky:{sky_tree}", split="val", resolution=8, frames=4)
    assert [s.path.split("test/")[1] for s in test.sources] == ["video_c/clip_1"]


def test_sky_official_archive_folders(tmp_path):
    root = tmp_path / "sky_timelapse"  # the official archive unpacks to sky_train/ and sky_test/
    write_png_folder(root / "sky_train/video_a/clip_1", 8)
    write_png_folder(root / "sky_test/video_b/clip_1", 6)
    train = open_dataset(f"sky:{root}", resolution=8, frames=4, mode="eval")
    assert [s.path for s in train.sources] == [str(root / "sky_train/video_a/clip_1")]
    test = open_dataset(f"sky:{root}", split="test", resolution=8, frames=4, mode="eval")
    assert [s.path for s in test.sources] == [str(root / "sky_test/video_b/clip_1")]
    with pytest.raises(FileNotFoundError, match=r"split 'train' needs one of the folders train, sky_train in .*"
                                                r"PATH/train \(or PATH/sky_train\) and PATH/test \(or PATH/val, "
                                                r"PATH/sky_test\)"):
        open_dataset(f"sky:{tmp_path / 'sky_timelapse/sky_test'}", resolution=8, frames=4)


def test_sky_conditional_left_padding(sky_tree):
    ds = open_dataset(f"sky:{sky_tree}", resolution=8, frames=8, cond=True, mode="eval")
    # 12 frames: enough for T=8, not for 2T=16 -> padded; 20 frames: a full 2T clip.
    padded, full = ds[0], ds[1]
    assert not padded["cond_valid"] and full["cond_valid"]
    assert padded["video"].shape == full["video"].shape == (3, 16, 8, 8)
    assert padded["video"][:, :8].eq(-1).all()
    assert decoded_ids({"video": padded["video"][:, 8:]}) == list(range(8))
    assert decoded_ids(full) == list(range(16))


def test_frames_and_videos_formats(tmp_path):
    write_png_folder(tmp_path / "frames/a/b", 10, ext="jpg")
    write_png_folder(tmp_path / "frames/c", 6)
    ds = open_dataset(f"frames:{tmp_path / 'frames'}", resolution=8, frames=5, mode="eval")
    assert [s.num_frames for s in ds.sources] == [10, 6]
    write_coded(tmp_path / "videos/x/one.mp4", 12)
    write_coded(tmp_path / "videos/two.avi", 12)
    (tmp_path / "videos/notes.txt").write_text("ignored")
    vids = open_dataset(f"videos:{tmp_path / 'videos'}", resolution=8, frames=4, mode="eval", clips_per_video=2)
    assert len(vids) == 4
    assert [decoded_ids(vids[i])[0] for i in range(4)] == [0, 8, 0, 8]


def test_hidden_files_and_folders_are_not_frames_or_videos(tmp_path):
    appledouble = b"\x00\x05\x16\x07" + b"\x00" * 60  # what macOS leaves beside each file on other disks
    write_png_folder(tmp_path / "frames/a", 6)
    (tmp_path / "frames/a/._frame0.png").write_bytes(appledouble)  # sorts before frame0.png
    write_png_folder(tmp_path / "frames/a/.thumbnails", 6)
    ds = open_dataset(f"frames:{tmp_path / 'frames'}", resolution=8, frames=4, mode="eval")
    assert [s.names for s in ds.sources] == [tuple(f"frame{i}.png" for i in range(6))]
    assert decoded_ids(ds[0]) == [0, 1, 2, 3]
    write_coded(tmp_path / "videos/one.avi", 8)
    (tmp_path / "videos/._one.avi").write_bytes(appledouble)
    write_coded(tmp_path / "videos/.Trash/two.avi", 8)
    vids = open_dataset(f"videos:{tmp_path / 'videos'}", resolution=8, frames=4, mode="eval")
    assert [s.path for s in vids.sources] == [str(tmp_path / "videos/one.avi")] and vids.skipped == []
    write_png_folder(tmp_path / "sky/train/v/clip", 6)
    (tmp_path / "sky/train/v/clip/._frame0.png").write_bytes(appledouble)
    write_png_folder(tmp_path / "sky/train/._v", 6)
    sky = open_dataset(f"sky:{tmp_path / 'sky'}", resolution=8, frames=4, mode="eval")
    assert [s.path for s in sky.sources] == [str(tmp_path / "sky/train/v/clip")] and len(sky.sources[0].names) == 6


def test_missing_path_and_empty_dataset_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist; expected class folders of \.avi"):
        open_dataset(f"ucf101:{tmp_path / 'nope'}", resolution=8, frames=4)
    with pytest.raises(FileNotFoundError, match="PATH/train"):
        open_dataset(f"sky:{tmp_path}", resolution=8, frames=4)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=f"no videos found in {tmp_path / 'empty'}; expected any folder tree"):
        open_dataset(f"videos:{tmp_path / 'empty'}", resolution=8, frames=4)
    write_coded(tmp_path / "short/a.avi", 3)
    with pytest.raises(ValueError, match="no usable clips.*1 skipped.*too short"):
        open_dataset(f"videos:{tmp_path / 'short'}", resolution=8, frames=4)
    with pytest.raises(ValueError, match="no splits"):
        open_dataset("synthetic:2", resolution=8, frames=4, split="train")


def test_unreadable_clip_is_replaced_in_training_and_flagged_otherwise(tmp_path):
    write_coded(tmp_path / "v/a.avi", 30)
    truncate(write_coded(tmp_path / "v/b.avi", 30), 0.9)  # header fine, frames missing
    write_coded(tmp_path / "v/c.avi", 30)
    train = open_dataset(f"videos:{tmp_path / 'v'}", resolution=8, frames=4, seed=0)
    assert len(train) == 3  # without verify, the header is trusted
    starts = [train.clip(1, e).start for e in range(40)]
    epoch = next(e for e, s in enumerate(starts) if s >= 24)  # a clip in the missing tail
    with pytest.warns(RuntimeWarning, match="b.avi: truncated"):
        item = train[(1, epoch)]
    assert item["ok"] and item["index"] == 2 and "b.avi" in next(iter(train.failures))
    evaluation = open_dataset(f"videos:{tmp_path / 'v'}", resolution=8, frames=4, mode="eval",
                              clips_per_video=8, substitute=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        items = [evaluation[i] for i in range(len(evaluation))]
    assert [it["ok"] for it in items].count(False) >= 1 and all(it["ok"] for it in items[:8])
    assert all(it["video"].eq(0).all() for it in items if not it["ok"])


def test_synthetic_is_deterministic_and_moves():
    a = open_dataset("synthetic:4", resolution=24, frames=6, seed=1)
    b = open_dataset("synthetic:4", resolution=24, frames=6, seed=1)
    c = open_dataset("synthetic:4", resolution=24, frames=6, seed=2)
    for i in range(4):
        torch.testing.assert_close(a[(i, 3)]["video"], b[(i, 3)]["video"], rtol=0, atol=0)
    assert not torch.equal(a[0]["video"], c[0]["video"])
    video = a[0]["video"]
    assert video.shape == (3, 6, 24, 24) and -1 <= video.min() and video.max() <= 1
    assert (video[:, 1:] - video[:, :-1]).abs().amax(dim=(0, 2, 3)).min() > 0.1  # something moves every frame
    long = open_dataset("synthetic:1", resolution=40, frames=4, synthetic_frames=500)
    assert long.sources[0].num_frames == 500 and long[0]["video"].shape == (3, 4, 40, 40)


@pytest.mark.parametrize("stride", [1, 3])
def test_synthetic_videos_hold_two_consecutive_windows_by_default(stride):
    ds = open_dataset("synthetic:2", resolution=8, frames=4, stride=stride, mode="windows", clips_per_video=0)
    assert ds.plan.items == [(0, 0), (0, 4 * stride), (1, 0), (1, 4 * stride)]
