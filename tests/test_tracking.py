"""IoU tracker: box overlap, stable ids, new and dropped tracks, probability smoothing."""
import numpy as np
import pytest

from fer.tracking import IoUTracker, iou


def test_iou_of_known_boxes():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0
    assert iou((0, 0, 10, 10), (10, 0, 10, 10)) == 0.0  # touching edges share no area
    # Half overlap: intersection 50, union 150.
    assert iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    # A box inside another: IoU is the area ratio.
    assert iou((0, 0, 10, 10), (2, 2, 5, 5)) == pytest.approx(25 / 100)
    assert iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


def test_iou_is_symmetric():
    rng = np.random.default_rng(0)
    for _ in range(50):
        a, b = (tuple(rng.integers(1, 50, 4)) for _ in range(2))
        assert iou(a, b) == pytest.approx(iou(b, a))
        assert 0.0 <= iou(a, b) <= 1.0


def moving_boxes(n_frames, step=6):
    """Two faces drifting in opposite directions, listed in a different order every other frame."""
    for t in range(n_frames):
        left = (40 + step * t, 100, 80, 80)
        right = (400 - step * t, 120, 90, 90)
        yield [left, right] if t % 2 == 0 else [right, left]


def test_ids_stay_with_moving_faces():
    tracker = IoUTracker()
    for boxes in moving_boxes(20):
        tracks = tracker.update(boxes)
        # Returned in the order of the boxes given, whatever that order is.
        assert [track.box for track in tracks] == boxes
        # The left face (y = 100) came first: id 0 on every frame; the right one (y = 120) keeps 1.
        assert {box[1]: track.track_id for box, track in zip(boxes, tracks)} == {100: 0, 120: 1}
    assert len(tracker.tracks) == 2


def test_new_face_gets_the_next_id_and_old_ids_are_kept():
    tracker = IoUTracker()
    assert [t.track_id for t in tracker.update([(0, 0, 50, 50)])] == [0]
    tracks = tracker.update([(2, 0, 50, 50), (200, 200, 50, 50)])
    assert [t.track_id for t in tracks] == [0, 1]
    tracks = tracker.update([(300, 0, 50, 50), (4, 0, 50, 50), (202, 200, 50, 50)])
    assert [t.track_id for t in tracks] == [2, 0, 1]
    assert [t.age for t in tracks] == [1, 3, 2]


def test_track_is_dropped_after_max_missed_updates():
    tracker = IoUTracker(max_missed=2)
    tracker.update([(0, 0, 50, 50)])
    tracker.update([])
    tracker.update([])  # missed twice: still kept, so it can come back
    assert [t.missed for t in tracker.tracks] == [2]
    assert tracker.update([(1, 0, 50, 50)])[0].track_id == 0
    for _ in range(3):  # missed three times: gone
        tracker.update([])
    assert tracker.tracks == []
    assert tracker.update([(1, 0, 50, 50)])[0].track_id == 1


def test_low_overlap_starts_a_new_track():
    tracker = IoUTracker(iou_threshold=0.3)
    tracker.update([(0, 0, 100, 100)])
    # IoU 0.25 < 0.3: a different face, even though the boxes overlap.
    assert tracker.update([(0, 60, 100, 100)])[0].track_id == 1


def test_greedy_matching_gives_each_track_its_best_box():
    tracker = IoUTracker(iou_threshold=0.1)
    tracker.update([(0, 0, 100, 100), (90, 0, 100, 100)])
    # Both boxes overlap both old tracks; the best pairs win.
    tracks = tracker.update([(85, 0, 100, 100), (5, 0, 100, 100)])
    assert [t.track_id for t in tracks] == [1, 0]


def test_smoothing_is_an_exponential_moving_average():
    tracker = IoUTracker(smooth=0.6)
    first, second = np.array([0.7, 0.2, 0.1]), np.array([0.1, 0.1, 0.8])
    np.testing.assert_allclose(tracker.update([(0, 0, 50, 50)], [first])[0].probs, first)
    probs = tracker.update([(1, 0, 50, 50)], [second])[0].probs
    np.testing.assert_allclose(probs, 0.6 * first + 0.4 * second)
    assert probs.sum() == pytest.approx(1.0)


def test_smoothing_renormalizes():
    tracker = IoUTracker(smooth=0.5)
    tracker.update([(0, 0, 50, 50)], [np.array([1.0, 1.0])])  # not normalized on input
    probs = tracker.update([(0, 0, 50, 50)], [np.array([0.0, 4.0])])[0].probs
    np.testing.assert_allclose(probs, [0.25, 0.75])


def test_smooth_zero_shows_exactly_the_current_probabilities():
    tracker = IoUTracker(smooth=0.0)
    rng = np.random.default_rng(1)
    for _ in range(5):
        current = rng.dirichlet(np.ones(7))
        np.testing.assert_allclose(tracker.update([(0, 0, 50, 50)], [current])[0].probs, current, rtol=1e-12)


def test_unclassified_frames_keep_the_smoothed_labels():
    tracker = IoUTracker(smooth=0.6)
    probs = np.array([[0.9, 0.1], [0.2, 0.8]])
    tracker.update([(0, 0, 50, 50), (200, 0, 50, 50)], probs)
    for step in range(1, 4):
        tracks = tracker.update([(step, 0, 50, 50), (200 + step, 0, 50, 50)])  # probs=None
        np.testing.assert_allclose([t.probs for t in tracks], probs)
    # A face first seen on an unclassified frame has no label until it is classified.
    tracks = tracker.update([(3, 0, 50, 50), (400, 0, 50, 50)])
    assert tracks[1].probs is None


def test_mismatched_probs_are_rejected():
    with pytest.raises(ValueError, match="2 boxes but 1 rows"):
        IoUTracker().update([(0, 0, 5, 5), (9, 9, 5, 5)], np.ones((1, 7)) / 7)
    with pytest.raises(ValueError, match="smooth"):
        IoUTracker(smooth=1.0)
