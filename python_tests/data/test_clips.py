"""Clip planning: lengths, strides, skips, conditional padding, fixed and random starts."""

import pytest

from pvdm_fast.data.clips import Clip, ClipConfig, ClipPlan


def test_span_and_skips():
    config = ClipConfig(frames=4, stride=3)
    plan = ClipPlan(config, [10, 9, 30])  # 4 frames at stride 3 need (4 - 1) * 3 + 1 = 10
    assert [v for v, _ in plan.items] == [0, 2]
    assert plan.skipped == [(1, "too short: 9 frames, a clip of 4 frames with stride 3 needs 10")]
    for epoch in range(20):
        clip = plan.clip(1, seed=3, epoch=epoch)
        assert 0 <= clip.start <= 30 - 10
        assert clip.indices(config) == [clip.start + 3 * k for k in range(4)]
    assert plan.clip(0, seed=3, epoch=5).start == 0  # exactly long enough: one possible start


def test_random_starts_depend_on_seed_epoch_item_only():
    plan = ClipPlan(ClipConfig(frames=2), [100] * 3)
    starts = [plan.clip(i, seed=1, epoch=e).start for e in range(5) for i in range(3)]
    assert starts == [ClipPlan(ClipConfig(frames=2), [100] * 3).clip(i, 1, e).start for e in range(5) for i in range(3)]
    assert len(set(starts)) > 5
    assert starts != [plan.clip(i, seed=2, epoch=e).start for e in range(5) for i in range(3)]


def test_conditional_clips_and_left_padding():
    config = ClipConfig(frames=4, cond=True)
    plan = ClipPlan(config, [8, 5, 3])
    assert config.length == 8
    assert plan.skipped == [(2, "too short: 3 frames, a clip of 8 frames with stride 1 needs 8")]
    full, short = plan.clip(0), plan.clip(1, epoch=1)
    assert not full.padded and full.indices(config) == list(range(8))
    assert short.padded and len(short.indices(config)) == 4 and short.start in (0, 1)


def test_eval_starts_are_fixed_and_spread():
    config = ClipConfig(frames=4, mode="eval", clips_per_video=3)
    plan = ClipPlan(config, [12, 4])
    assert plan.items == [(0, 0), (0, 4), (0, 8), (1, 0)]  # a video with one possible start gives one clip
    assert plan.clip(1, seed=0, epoch=0) == plan.clip(1, seed=9, epoch=9) == Clip(0, 4)


def test_windows_tile_each_video_at_each_offset():
    config = ClipConfig(frames=4, stride=2, mode="windows", offsets=(0, 4), clips_per_video=0)
    assert config.hop == 8
    plan = ClipPlan(config, [24, 7, 12])  # a window covers 7 frames
    assert plan.items == [(0, 0), (0, 4), (0, 8), (0, 12), (0, 16), (1, 0), (2, 0), (2, 4)]
    capped = ClipPlan(ClipConfig(frames=4, mode="windows", clips_per_video=2), [40])
    assert capped.items == [(0, 0), (0, 4)]


@pytest.mark.parametrize("kwargs, message", [
    ({"frames": 0}, "frames and stride"), ({"frames": 4, "mode": "test"}, "mode"),
    ({"frames": 4, "mode": "windows", "offsets": (4,)}, "offsets"),
    ({"frames": 4, "mode": "windows", "cond": True}, "windows"),
    ({"frames": 4, "mode": "eval", "clips_per_video": 0}, "clips_per_video")])
def test_bad_configs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ClipConfig(**kwargs)
