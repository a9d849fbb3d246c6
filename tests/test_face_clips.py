"""The benchmark's clip generator and scorer (benchmarks/face_clips.py), on synthetic faces."""
import numpy as np

from benchmarks.face_clips import Clip, FaceTruth, Path, score


def truth(face, x, in_view=True, size=50):
    box = (x, 0, size, size)
    visible = (max(x, 0), 0, size + min(x, 0), size)
    return FaceTruth(face, box, in_view, visible)


def test_score_counts_recall_false_faces_switches_and_latency():
    truths = [[truth(0, 0), truth(1, 100)] for _ in range(5)]
    reports = [
        [],                                           # face 0 not yet found
        [(0, (2, 0, 50, 50))],                        # found, id 0
        [],                                           # a gap
        [(0, (0, 0, 50, 50)), (5, (300, 0, 50, 50))],  # back, plus a box on no face
        [(1, (0, 0, 50, 50))],                        # the same face under another id
    ]
    result = score(truths, reports)
    assert (result.face_frames, result.reported, result.false_faces, result.id_switches) == (10, 3, 1, 1)
    assert (result.never_found, result.never_found_frames, result.before_found) == (1, 5, 1)
    assert result.recall == 3 / 10 and result.found_recall == 3 / 5 and result.kept_recall == 3 / 4
    assert result.false_per_frame == 1 / 5


def test_a_face_partly_out_of_frame_is_neither_required_nor_a_false_face():
    truths = [[truth(0, -30, in_view=False)]]
    assert score(truths, [[(0, (0, 0, 20, 50))]]).false_faces == 0   # on its visible part
    assert score(truths, [[]]).face_frames == 0


def test_clip_truth_follows_the_paths_and_the_frame_edges():
    faces = [np.full((48, 48), 200, np.uint8), np.full((48, 48), 100, np.uint8)]
    paths = [Path(0, 9, (10, 10, 80), (100, 10, 80)), Path(0, 9, (600, 300, 100), (500, 300, 100))]
    clip = Clip(faces, paths, frames=10, dim=(2, 6), dim_gain=0.5)
    frame, (first, second) = clip.render(0)
    assert frame.shape == (480, 640, 3) and frame.dtype == np.uint8
    assert first.box == (10, 10, 80, 80) and first.in_view and (frame[10:90, 10:90] == 200).all()
    assert second.box == (600, 300, 100, 100) and not second.in_view and second.visible == (600, 300, 40, 100)
    _, (first, second) = clip.render(9)
    assert first.box == (100, 10, 80, 80) and second.in_view
    assert [clip.gain(t) for t in (0, 2, 4, 6, 7)] == [1.0, 1.0, 0.5, 1.0, 1.0]
    dimmed, _ = clip.render(4)
    assert abs(int(dimmed[50, 50, 0]) - 100) <= 1    # 200 at half brightness
