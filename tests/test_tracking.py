"""IoU tracker: box overlap, stable ids, confirmation, carrying through misses, probability smoothing."""
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


def ids_by_y(tracks):
    return {track.box[1]: track.track_id for track in tracks}


def test_ids_stay_with_moving_faces():
    tracker = IoUTracker()
    for t, boxes in enumerate(moving_boxes(20)):
        tracks = tracker.update(boxes)
        if t == 0:
            assert tracks == []          # one detection is not yet a face
            continue
        assert sorted(track.box for track in tracks) == sorted(boxes)
        assert all(track.detected for track in tracks)
        # The left face (y = 100) was confirmed first: id 0 on every frame; the right one (y = 120) keeps 1.
        assert ids_by_y(tracks) == {100: 0, 120: 1}
    assert len(tracker.tracks) == 2


def test_a_single_stray_detection_is_never_shown_and_takes_no_id():
    tracker = IoUTracker(min_hits=2)
    tracker.update([(0, 0, 50, 50), (300, 300, 40, 40)])       # the second box is a one-frame false face
    for step in range(1, 6):
        tracks = tracker.update([(step, 0, 50, 50)])
        assert [track.track_id for track in tracks] == [0]
    # A new real face gets the next id: the stray detection used none.
    tracker.update([(5, 0, 50, 50), (200, 200, 60, 60)])
    tracks = tracker.update([(5, 0, 50, 50), (200, 200, 60, 60)])
    assert sorted(track.track_id for track in tracks) == [0, 1]


def test_min_hits_one_shows_every_detection_at_once():
    tracker = IoUTracker(min_hits=1)
    assert [t.track_id for t in tracker.update([(0, 0, 50, 50)])] == [0]
    tracks = tracker.update([(2, 0, 50, 50), (200, 200, 50, 50)])
    assert sorted(t.track_id for t in tracks) == [0, 1]


def test_a_missed_face_is_carried_on_its_motion_and_keeps_its_id():
    tracker = IoUTracker(max_missed=5, motion=1.0)
    for t in range(4):                                      # moving right at 10 px per frame
        tracker.update([(100 + 10 * t, 50, 60, 60)])
    xs = []
    for _ in range(4, 8):                                   # four frames without a detection
        (track,) = tracker.update([])
        assert not track.detected and track.track_id == 0
        xs.append(track.box[0])
        assert track.box[1:] == (50, 60, 60)
    # Predicted on its way, slowing down (COAST): each step shorter, none past the straight line.
    steps = np.diff([130] + xs)
    assert steps[0] == 10 and all(0 < later <= earlier for earlier, later in zip(steps, steps[1:]))
    assert xs[-1] < 130 + 10 * len(xs)
    (track,) = tracker.update([(165, 50, 60, 60)])        # found again, near where it was carried
    assert track.detected and track.track_id == 0 and track.missed == 0


def test_carried_tracks_hold_their_probabilities():
    tracker = IoUTracker(smooth=0.0)
    probs = np.array([[0.2, 0.8]])
    tracker.update([(0, 0, 50, 50)], probs)
    tracker.update([(0, 0, 50, 50)], probs)
    (track,) = tracker.update([], np.zeros((0, 2)))
    assert not track.detected
    np.testing.assert_allclose(track.probs, probs[0])


def test_track_is_dropped_after_max_missed_updates_and_its_id_is_never_reused():
    tracker = IoUTracker(max_missed=2)
    tracker.update([(0, 0, 50, 50)])
    tracker.update([(0, 0, 50, 50)])
    assert len(tracker.update([])) == 1
    assert len(tracker.update([])) == 1   # missed twice: still shown, so it can come back
    assert tracker.update([(1, 0, 50, 50)])[0].track_id == 0
    for _ in range(3):                    # missed three times: gone
        tracker.update([])
    assert tracker.tracks == []
    tracker.update([(1, 0, 50, 50)])
    assert tracker.update([(1, 0, 50, 50)])[0].track_id == 1


def test_a_track_leaving_the_frame_is_dropped_not_carried_off_screen():
    tracker = IoUTracker(max_missed=20, motion=1.0)
    for t in range(5):                                      # moving left at 20 px per frame
        tracker.update([(100 - 20 * t, 50, 60, 60)], frame_size=(640, 480))
    shown = [[track.box for track in tracker.update([], frame_size=(640, 480))] for _ in range(5)]
    # Predicted x, slowing by COAST = 0.8: 20 - 20 * (1, 1.8, 2.44, 2.95) = 0, -16, -29, -39; kept
    # (clipped to the frame) while at least half inside, so 60, 44 and 31 of its 60 px are shown.
    assert shown == [[(0, 50, 60, 60)], [(0, 50, 44, 60)], [(0, 50, 31, 60)], [], []]
    assert tracker.tracks == []


def test_two_boxes_on_one_face_keep_the_older_track_only():
    tracker = IoUTracker()
    tracker.update([(100, 100, 80, 80)])
    tracker.update([(102, 100, 80, 80)])
    # The face is now reported twice (say, by the whole-frame pass and by the look near its track).
    for step in range(3):
        tracks = tracker.update([(104 + step, 100, 80, 80), (98 + step, 96, 84, 84)])
        assert [t.track_id for t in tracks] == [0]
    assert len(tracker.tracks) == 1
    # Two faces side by side, overlapping a little, stay two.
    tracker.update([(104, 100, 80, 80), (170, 100, 80, 80)])
    assert len(tracker.update([(104, 100, 80, 80), (170, 100, 80, 80)])) == 2


def test_unmatched_lists_tracks_no_box_overlaps():
    tracker = IoUTracker(min_hits=1)
    tracker.update([(0, 0, 50, 50), (200, 0, 50, 50)])
    assert [t.box for t in tracker.unmatched([(2, 0, 50, 50)])] == [(200, 0, 50, 50)]
    assert len(tracker.unmatched([])) == 2


def test_a_shown_face_detected_last_frame_is_carried_once_before_a_closer_look():
    tracker = IoUTracker(min_hits=2)
    tracker.update([(0, 0, 50, 50)])                      # tentative: looked for at once
    assert len(tracker.to_look_for([])) == 1
    tracker.update([(1, 0, 50, 50)])                      # shown, detected this update: carried first
    assert tracker.to_look_for([]) == []
    tracker.update([])                                    # missed once: now worth the look
    assert [t.track_id for t in tracker.to_look_for([])] == [0]
    eager = IoUTracker(min_hits=1, carry_before_look=0)
    eager.update([(0, 0, 50, 50)])
    assert len(eager.to_look_for([])) == 1 and eager.to_look_for([(1, 0, 50, 50)]) == []


def test_low_overlap_starts_a_new_track():
    tracker = IoUTracker(iou_threshold=0.3, min_hits=1)
    tracker.update([(0, 0, 100, 100)])
    # IoU 0.25 < 0.3: a different face, even though the boxes overlap.
    ids = sorted(t.track_id for t in tracker.update([(0, 60, 100, 100)]))
    assert ids == [0, 1]  # the old one carried, the new one shown at once (min_hits=1)


def test_greedy_matching_gives_each_track_its_best_box():
    tracker = IoUTracker(iou_threshold=0.1, min_hits=1)
    tracker.update([(0, 0, 100, 100), (90, 0, 100, 100)])
    # Both boxes overlap both old tracks; the best pairs win.
    tracks = tracker.update([(85, 0, 100, 100), (5, 0, 100, 100)])
    assert {t.box: t.track_id for t in tracks} == {(5, 0, 100, 100): 0, (85, 0, 100, 100): 1}


def test_smoothing_is_an_exponential_moving_average():
    tracker = IoUTracker(smooth=0.6, min_hits=1)
    first, second = np.array([0.7, 0.2, 0.1]), np.array([0.1, 0.1, 0.8])
    np.testing.assert_allclose(tracker.update([(0, 0, 50, 50)], [first])[0].probs, first)
    probs = tracker.update([(1, 0, 50, 50)], [second])[0].probs
    np.testing.assert_allclose(probs, 0.6 * first + 0.4 * second)
    assert probs.sum() == pytest.approx(1.0)


def test_smoothing_renormalizes():
    tracker = IoUTracker(smooth=0.5, min_hits=1)
    tracker.update([(0, 0, 50, 50)], [np.array([1.0, 1.0])])  # not normalized on input
    probs = tracker.update([(0, 0, 50, 50)], [np.array([0.0, 4.0])])[0].probs
    np.testing.assert_allclose(probs, [0.25, 0.75])


def test_smooth_zero_shows_exactly_the_current_probabilities():
    tracker = IoUTracker(smooth=0.0, min_hits=1)
    rng = np.random.default_rng(1)
    for _ in range(5):
        current = rng.dirichlet(np.ones(7))
        np.testing.assert_allclose(tracker.update([(0, 0, 50, 50)], [current])[0].probs, current, rtol=1e-12)


def test_unclassified_frames_keep_the_smoothed_labels():
    tracker = IoUTracker(smooth=0.6, min_hits=1)
    probs = np.array([[0.9, 0.1], [0.2, 0.8]])
    tracker.update([(0, 0, 50, 50), (200, 0, 50, 50)], probs)
    for step in range(1, 4):
        tracks = tracker.update([(step, 0, 50, 50), (200 + step, 0, 50, 50)])  # probs=None
        np.testing.assert_allclose([t.probs for t in sorted(tracks, key=lambda t: t.track_id)], probs)
    # A face first seen on an unclassified frame has no label until it is classified.
    tracks = tracker.update([(3, 0, 50, 50), (400, 0, 50, 50)])
    assert [t.probs is None for t in sorted(tracks, key=lambda t: t.track_id)] == [False, False, True]


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="2 boxes but 1 rows"):
        IoUTracker().update([(0, 0, 5, 5), (9, 9, 5, 5)], np.ones((1, 7)) / 7)
    with pytest.raises(ValueError, match="smooth"):
        IoUTracker(smooth=1.0)
    with pytest.raises(ValueError, match="min_hits"):
        IoUTracker(min_hits=0)


FRAME = (640, 480)


def seen_for(tracker, box, frames):
    """A still face detected on `frames` updates in a row; returns its track."""
    for _ in range(frames):
        tracks = tracker.update([box], frame_size=FRAME)
    (track,) = tracks
    return track


def test_a_long_seen_face_keeps_its_id_through_an_occlusion_longer_than_a_few_frames():
    tracker = IoUTracker()
    face = (200, 150, 120, 120)
    assert seen_for(tracker, face, 60).track_id == 0
    for _ in range(40):                                   # hidden (a hand, a bar) for 40 frames, in view
        (track,) = tracker.update([], frame_size=FRAME)
        assert track.track_id == 0 and not track.detected and track.box == face
    (track,) = tracker.update([(204, 152, 120, 120)], frame_size=FRAME)
    assert track.track_id == 0 and track.detected


def test_a_briefly_seen_face_is_carried_only_a_few_frames():
    tracker = IoUTracker()
    seen_for(tracker, (200, 150, 120, 120), 2)            # shown from its second detection
    shown = [len(tracker.update([], frame_size=FRAME)) for _ in range(12)]
    assert shown[0] == 1 and shown[-1] == 0 and sum(shown) <= tracker.short_missed
    assert tracker.tracks == []


def test_a_face_cut_by_the_frame_edge_ends_within_a_few_frames_of_its_last_detection():
    tracker = IoUTracker()
    seen_for(tracker, (-30, 150, 120, 120), 60)           # a long-seen face, a quarter past the left edge
    shown = [len(tracker.update([], frame_size=FRAME)) for _ in range(12)]
    assert sum(shown) <= tracker.short_missed and tracker.tracks == []


def test_a_box_on_part_of_a_shown_face_is_not_a_new_face():
    tracker = IoUTracker()
    face, part = (200, 150, 120, 120), (250, 200, 45, 45)  # the part: centre inside the face, IoU 0.14
    seen_for(tracker, face, 5)
    for _ in range(5):                                    # found with the face
        assert [t.track_id for t in tracker.update([face, part], frame_size=FRAME)] == [0]
    for _ in range(5):                                    # found alone while the face is missed
        (track,) = tracker.update([part], frame_size=FRAME)
        assert track.track_id == 0 and track.box == face
    assert len(tracker.tracks) == 1


def test_a_carried_face_found_again_off_its_box_is_the_same_face():
    tracker = IoUTracker()
    seen_for(tracker, (200, 150, 100, 100), 20)
    for _ in range(10):
        tracker.update([], frame_size=FRAME)
    # Found again shifted and smaller (IoU 0.27, below the match threshold), each centre inside the other's box.
    (track,) = tracker.update([(245, 180, 90, 90)], frame_size=FRAME)
    assert track.track_id == 0 and track.detected and track.box == (245, 180, 90, 90)
    assert len(tracker.tracks) == 1


def test_a_box_where_a_face_just_left_the_frame_is_a_part_of_it_not_a_new_face():
    tracker = IoUTracker()
    seen_for(tracker, (-30, 150, 120, 120), 60)           # going out through the left edge
    for _ in range(8):                                    # lost by the detector, ended
        tracker.update([], frame_size=FRAME)
    assert tracker.tracks == []
    for _ in range(5):                                    # the detector finds an eye of what is left in view
        assert tracker.update([(0, 200, 40, 40)], frame_size=FRAME) == []
    tracker.update([(300, 200, 100, 100)], frame_size=FRAME)
    assert [t.track_id for t in tracker.update([(300, 200, 100, 100)], frame_size=FRAME)] == [1]
