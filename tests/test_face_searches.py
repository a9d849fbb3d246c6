"""FaceDetector's extra searches (a second cascade, tilted frames): which search runs when, and where
its boxes land. Spy cascades stand in for OpenCV's, so nothing here depends on which faces a cascade
happens to like."""
import cv2
import numpy as np

from fer.faces import FaceDetector, HogFaces, distinct, search

ALT2 = "haarcascade_frontalface_alt2.xml"


class SpyCascade:
    """Records each call (its name, the image's shape) and returns fixed boxes in the image's pixels."""

    def __init__(self, name, calls, boxes=()):
        self.name, self.calls, self.boxes = name, calls, boxes

    def detectMultiScale(self, image, **options):
        self.calls.append((self.name, image.shape))
        return np.array(self.boxes, dtype=np.int32).reshape(-1, 4)


class BrightSpotCascade:
    """Finds the one bright square of an image: a cascade whose 'face' is known wherever the image is turned."""

    def detectMultiScale(self, image, **options):
        ys, xs = np.nonzero(image > 128)
        side = 20
        return np.array([[xs.mean() - side / 2, ys.mean() - side / 2, side, side]])


def spied(detector, main_boxes=(), second_boxes=()):
    calls = []
    detector.cascade = SpyCascade("main", calls, main_boxes)
    if detector.second_cascade is not None:
        detector.second_cascade = SpyCascade("second", calls, second_boxes)
    if detector.hog is not None:
        detector.hog = SpyCascade("hog", calls)
    return calls


def test_video_detector_runs_one_search_per_pass_in_turn_and_photos_run_all():
    video = FaceDetector(second_cascade=ALT2, tilts=(-30, 30), detect_width=None)
    calls = spied(video)
    frame = np.zeros((120, 160), np.uint8)
    for _ in range(8):
        video.detect(frame)
    # the main cascade upright on every other pass; the second cascade, HOG, then main turned each way, between
    assert [name for name, _ in calls] == ["main", "second", "main", "hog", "main", "main", "main", "main"]
    assert [shape for _, shape in calls] == [(120, 160)] * 8
    assert [tilt for _, tilt, _ in video.searches()] == [0, 0, 0, -30, 30]

    photo = FaceDetector.for_photos(second_cascade=ALT2, tilts=(-30, 30))
    calls = spied(photo)
    photo.detect(frame)
    assert [name for name, _ in calls] == ["main", "second", "main", "main"]


def test_the_default_detector_takes_turns_upright_hog_and_tilted_each_way():
    detector = FaceDetector()
    calls = spied(detector)
    turns = []
    for _ in range(6):
        turns.append(detector.search_in_turn(detector.searches())[1])
        detector.detect(np.zeros((240, 320), np.uint8))
    assert [name for name, _ in calls] == ["main", "hog", "main", "main", "main", "main"]
    assert turns == [0, 0, 0, -30, 0, 30] and detector.second_cascade is None
    assert [tilt for _, tilt, _ in FaceDetector(tilts=(), hog=False).searches()] == [0]
    assert FaceDetector.for_photos().hog is None and FaceDetector.for_photos(hog=True).hog is not None


class FakeRectangle:
    def __init__(self, x, y, side):
        self.x, self.y, self.side = x, y, side

    def left(self):
        return self.x

    def top(self):
        return self.y

    def width(self):
        return self.side

    def height(self):
        return self.side


def test_hog_search_upsamples_for_small_faces_and_keeps_the_sizes_asked_for():
    hog, calls = HogFaces(), []

    def detector(image, upsample):
        calls.append((image.shape, upsample))
        return [FakeRectangle(5, 6, 40), FakeRectangle(50, 10, 90), FakeRectangle(0, 0, 200)]

    hog.detector = detector
    image = np.zeros((240, 400), np.uint8)
    found = hog.detectMultiScale(image, scaleFactor=1.1, minNeighbors=3, minSize=(24, 24), maxSize=(100, 100))
    np.testing.assert_array_equal(found, [[5, 6, 40, 40], [50, 10, 90, 90]])
    assert hog.detectMultiScale(image, minSize=(80, 80)).shape == (2, 4)
    assert calls == [((240, 400), 1), ((240, 400), 0)]     # the 80-px window sees 40-px faces upsampled once
    assert HogFaces().detectMultiScale(np.full((120, 160), 90, np.uint8), minSize=(24, 24)).shape == (0, 4)


def test_a_tilted_search_reports_the_face_where_it_is_in_the_upright_frame():
    image = np.zeros((200, 300), np.uint8)
    image[50:70, 200:220] = 255  # a bright 20 x 20 'face' centred at (210, 60)
    for tilt in (-30, 30, 45):
        (x, y, w, h), = search(BrightSpotCascade(), image, tilt)
        assert (w, h) == (20, 20)
        assert abs(x + w / 2 - 210) < 1.5 and abs(y + h / 2 - 60) < 1.5, (tilt, x, y)


def test_the_tilted_search_turns_the_image_by_minus_the_tilt():
    seen = []

    class Recorder:
        def detectMultiScale(self, image, **options):
            seen.append(image.copy())
            return ()

    image = np.zeros((101, 101), np.uint8)
    image[50, 80] = 255  # a dot right of the centre
    search(Recorder(), image, 90)
    ys, xs = np.nonzero(seen[0] > 64)
    # a head tilted by +90 degrees (counter-clockwise on screen) stands up when the frame is turned clockwise
    expected = cv2.warpAffine(image, cv2.getRotationMatrix2D((50.5, 50.5), -90, 1.0), (101, 101))
    assert ys.mean() > 70 and abs(xs.mean() - 50) < 2
    assert np.array_equal(seen[0] > 64, expected > 64)


def test_detect_near_tries_the_searches_in_order_and_stops_at_the_first_face():
    detector = FaceDetector(second_cascade=ALT2, tilts=(30,))
    gray = np.zeros((480, 640), np.uint8)
    box = (200, 150, 96, 96)   # window of 192 px, resized by 0.5 to 96 px: the track's box is 48 px
    calls = spied(detector, main_boxes=(), second_boxes=[(24, 24, 48, 48)])
    found = detector.detect_near(gray, box)
    assert [name for name, _ in calls] == ["main", "second"]       # the tilted search never ran
    assert found == (200, 150, 96, 96)
    calls = spied(detector, main_boxes=[(24, 24, 48, 48)], second_boxes=[(0, 0, 48, 48)])
    assert detector.detect_near(gray, box) == (200, 150, 96, 96) and [name for name, _ in calls] == ["main"]
    calls = spied(detector)
    assert detector.detect_near(gray, box) is None
    assert [name for name, _ in calls] == ["main", "second", "hog", "main"]


def test_one_face_found_by_two_searches_is_reported_once():
    assert distinct([(100, 100, 80, 80), (110, 95, 70, 70), (300, 100, 80, 80)]) == [(100, 100, 80, 80),
                                                                                     (300, 100, 80, 80)]
    photo = FaceDetector.for_photos(second_cascade=ALT2, tilts=())
    spied(photo, main_boxes=[(100, 100, 80, 80)], second_boxes=[(110, 95, 70, 70), (300, 100, 80, 80)])
    assert photo.detect(np.zeros((480, 640), np.uint8)) == [(100, 100, 80, 80), (300, 100, 80, 80)]


def test_each_cascade_gets_its_own_neighbours_in_the_whole_frame_pass_and_near_a_track():
    seen = []

    class Neighbours:
        def __init__(self, name):
            self.name = name

        def detectMultiScale(self, image, minNeighbors, **options):
            seen.append((self.name, minNeighbors))
            return ()

    detector = FaceDetector.for_photos(min_neighbors=3, second_cascade=ALT2, second_neighbors=5, tilts=(30,))
    detector.cascade, detector.second_cascade = Neighbours("main"), Neighbours("second")
    detector.detect(np.zeros((240, 320), np.uint8))
    detector.near_step = 1.05
    detector.detect_near(np.zeros((240, 320), np.uint8), (100, 80, 60, 60))
    assert seen == [("main", 3), ("second", 5), ("main", 3)] * 2


def test_every_search_but_the_main_upright_one_runs_on_the_narrower_copy_and_boxes_come_back_to_frame_pixels():
    detector = FaceDetector(detect_width=400, extra_width=320, tilts=(30,), second_cascade=ALT2, take_turns=False)
    calls = spied(detector, main_boxes=[(10, 20, 40, 40)])
    found = detector.detect(np.zeros((480, 640), np.uint8))
    # the main cascade upright on the 400-px copy; the second cascade, HOG and the turned search on the 320-px one
    assert calls == [("main", (300, 400)), ("second", (240, 320)), ("hog", (240, 320)), ("main", (240, 320))]
    assert (16, 32, 64, 64) in found                                      # the upright box, x 640/400
    # the narrower copy is never wider than the upright one; photos search all at full size
    assert FaceDetector(detect_width=240).extra_width == 240
    assert FaceDetector(detect_width=None).extra_width == 320
    assert FaceDetector.for_photos().extra_width is None
