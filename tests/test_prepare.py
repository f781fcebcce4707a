"""Input preparation follows upstream's resampling and sampling rules, vectorised and reproducibly."""

from __future__ import annotations

import numpy as np

from tessera_pipeline.encode import prepare


def test_bucket_lengths_are_next_multiple_of_8_capped_at_256_and_8_for_empty() -> None:
    n = np.array([0, 1, 8, 9, 16, 17, 255, 256, 257, 300])
    assert prepare.bucket_lengths(n).tolist() == [8, 8, 8, 16, 16, 24, 256, 256, 256, 256]


def test_resample_keeps_order_and_appends_extras_at_the_end() -> None:
    assert prepare.build_resample_indices(5, 5).tolist() == [0, 1, 2, 3, 4]
    idx = prepare.build_resample_indices(5, 8)
    assert idx[:5].tolist() == [0, 1, 2, 3, 4]
    assert idx[5:].tolist() == np.rint(np.linspace(0, 4, 5)[1:-1]).astype(int).tolist()
    down = prepare.build_resample_indices(300, 256)
    assert len(down) == 256 and np.all(np.diff(down) > 0) and down[0] == 1 and down[-1] == 299


def test_v1_0_sampling_is_reproducible_and_independent_of_chunking() -> None:
    rng = np.random.default_rng(0)
    valid = rng.random((50, 90)) < 0.6
    idx = np.arange(1000, 1050)
    whole = prepare.sample_positions(valid, idx, seed=7, stream=2)
    parts = np.concatenate([prepare.sample_positions(valid[:20], idx[:20], 7, 2), prepare.sample_positions(valid[20:], idx[20:], 7, 2)])
    assert np.array_equal(whole, parts)
    assert not np.array_equal(whole, prepare.sample_positions(valid, idx, seed=8, stream=2))
    assert np.all(np.diff(whole, axis=1) >= 0)
    assert np.all(np.take_along_axis(valid, whole, axis=1))


def test_v1_0_sampling_without_replacement_when_enough_and_with_it_when_few() -> None:
    valid = np.zeros((3, 60), dtype=bool)
    valid[0, :55] = True  # 55 >= 40: 40 distinct frames
    valid[1, 10:50] = True  # exactly 40: all of them, in order
    valid[2, [3, 7]] = True  # 2 < 40: with replacement, only those frames
    pos = prepare.sample_positions(valid, np.arange(3), seed=1, stream=1)
    assert len(np.unique(pos[0])) == 40
    assert pos[1].tolist() == list(range(10, 50))
    assert set(pos[2].tolist()) <= {3, 7} and len(set(pos[2].tolist())) == 2


def test_v1_0_pixel_without_valid_frames_samples_from_all_frames() -> None:
    valid = np.zeros((1, 30), dtype=bool)
    pos = prepare.sample_positions(valid, np.arange(1), seed=3, stream=2)
    assert pos.shape == (1, 40) and pos.max() < 30
