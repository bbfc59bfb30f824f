"""ex_detect's detector on real photographs and synthetic images, and ex_alarm's rule (pure)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from ex_alarm.function import Alarm
from ex_alarm.rule import AlarmRule, InvalidDetections, parse_detections
from ex_detect.detector import (
    CLASSES,
    Detection,
    Detector,
    DetectorOptions,
    ModelUnavailable,
    View,
    haar_score,
    hog_score,
    non_max_suppression,
)
from ex_detect.function import Detect
from ex_preprocess.imaging import ImageOptions, normalise
from functions_fixtures import ASTRONAUT_FACE, astronaut, blank, chelsea, encode, noise, overlap, started
from skylark.state.errors import ConfigError


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector.load(DetectorOptions())


def views(data: bytes, options: ImageOptions = ImageOptions()) -> list[View]:
    """What detect builds from preprocess's output (overview first, then tiles)."""
    result = normalise(data, options)
    decode = lambda png: cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)  # noqa: E731
    out = [View(decode(result.png), result.scale)]
    out += [View(decode(t.png), result.tile_scale, (t.x, t.y)) for t in result.tiles]
    return out


def test_models_come_from_the_opencv_wheel(detector):
    assert detector.classes == CLASSES == ("face", "upper_body", "person")
    with pytest.raises(ModelUnavailable):
        Detector.load(DetectorOptions(classes=("face",)), cascade_dir="/nonexistent")


def test_astronaut_face_is_found_where_it_is(detector):
    found = detector.detect_views(views(encode(astronaut())))
    faces = [d for d in found if d.cls == "face"]
    assert len(faces) == 1
    face = faces[0]
    assert overlap(face.box, ASTRONAUT_FACE) > 0.8
    assert 60 <= face.box[2] <= 130  # a face-sized box, not the whole image
    assert face.score > 0.7 and face.detector == "haar:face"


def test_face_is_found_in_original_coordinates_through_the_tiles(detector):
    side = 2000
    big = np.asarray(Image.fromarray(astronaut()).resize((side, side), Image.Resampling.BICUBIC))
    tiled = views(encode(big, quality=92), ImageOptions(size=512, tile_max_side=1024))
    assert len(tiled) == 10  # the overview + 3 × 3 tiles
    faces = [d for d in detector.detect_views(tiled) if d.cls == "face" and d.score > 0.6]
    k = side / 512
    expected = tuple(round(v * k) for v in ASTRONAUT_FACE)
    assert len(faces) == 1 and overlap(faces[0].box, expected) > 0.8


@pytest.mark.parametrize("image", [chelsea(), blank(), noise()], ids=["chelsea-cat", "blank", "noise"])
def test_no_person_or_face_in_a_cat_a_blank_or_noise(detector, image):
    assert detector.detect_views(views(encode(image))) == []


def test_images_smaller_than_every_detector_window_give_nothing(detector):
    assert detector.detect(np.zeros((20, 20), np.uint8)) == []
    assert detector.detect(np.zeros((1, 512), np.uint8)) == []
    with pytest.raises(ValueError):
        detector.detect(np.zeros((64, 64, 3), np.uint8))


def test_scores_are_monotone_in_the_evidence_and_in_unit_range():
    assert haar_score(10, 10) == 0.5
    assert 0 < haar_score(1, 10) < haar_score(44, 10) < 1
    assert hog_score(0.0) == 0.0 and hog_score(-1.0) == 0.0
    assert hog_score(1.0) == pytest.approx(1 - np.exp(-1)) and hog_score(5.0) < 1


def test_non_max_suppression_merges_same_class_overlaps_only():
    a = Detection("face", (100, 100, 50, 50), 0.9, "haar:face")
    b = Detection("face", (105, 102, 50, 50), 0.6, "haar:face")   # the same face from a tile
    c = Detection("face", (300, 300, 50, 50), 0.5, "haar:face")   # another face
    d = Detection("person", (100, 100, 50, 100), 0.7, "hog:people")  # another class, same place
    assert non_max_suppression([b, a, c, d], 0.3) == [a, d, c]


def test_detection_round_trips_through_json_dicts():
    d = Detection("face", (1, 2, 3, 4), 0.123456, "haar:face")
    assert d.to_dict() == {"class": "face", "box": [1, 2, 3, 4], "score": 0.1235, "detector": "haar:face"}
    assert Detection.from_dict(d.to_dict()).box == (1, 2, 3, 4)


def test_detector_options_and_settings_validation():
    with pytest.raises(ValueError):
        DetectorOptions(classes=("face", "car"))
    with pytest.raises(ValueError):
        DetectorOptions(scale_factor=1.0)
    env = {"SKYLARK_DETECT_CLASSES": "face", "SKYLARK_DETECT_MIN_SCORE": "0.5", "SKYLARK_DETECT_TILES": "0"}
    with started(Detect(), env) as detect:
        options = detect.detector.options
        assert options.classes == ("face",) and options.min_score == 0.5 and detect.use_tiles is False
        assert detect.alive() and detect.ready()
    with started(Detect(), {}) as detect:
        assert detect.detector.options == DetectorOptions() and detect.use_tiles is True
    for bad in ({"SKYLARK_DETECT_CLASSES": "dog"}, {"SKYLARK_DETECT_MIN_SCORE": "2"},
                {"SKYLARK_DETECT_TILES": "maybe"}):
        with pytest.raises(ConfigError, match="detect"):
            with started(Detect(), bad):
                pass
    assert not Detect().alive()  # not started: no models


# -- the alarm rule ----------------------------------------------------------------------------

FACE = {"class": "face", "box": [1, 2, 3, 4], "score": 0.83}
WEAK_PERSON = {"class": "person", "box": [5, 5, 64, 128], "score": 0.29}
CAT = {"class": "cat", "box": [0, 0, 9, 9], "score": 0.99}


def test_rule_fires_on_enough_strong_detections_of_the_wanted_classes():
    rule = AlarmRule(frozenset({"face", "person"}), min_score=0.7, min_count=1)
    outcome = rule.evaluate([FACE, WEAK_PERSON, CAT])
    assert outcome.fired and outcome.matching == (FACE,)
    assert "1 of 3" in outcome.reason


@pytest.mark.parametrize(("rule", "fired"), [
    (AlarmRule(frozenset({"face"}), 0.9, 1), False),          # score too low
    (AlarmRule(frozenset({"face", "person"}), 0.2, 2), True),  # two of them above 0.2
    (AlarmRule(frozenset({"face", "person"}), 0.5, 2), False),  # only one above 0.5
    (AlarmRule(frozenset({"upper_body"}), 0.0, 1), False),    # class absent
    (AlarmRule(frozenset({"*"}), 0.95, 1), True),             # any class: the cat
])
def test_rule_thresholds(rule, fired):
    assert rule.evaluate([FACE, WEAK_PERSON, CAT]).fired is fired


def test_no_detections_is_a_clear_no_alarm():
    outcome = AlarmRule().evaluate([])
    assert not outcome.fired and outcome.matching == () and "0 of 0" in outcome.reason


@pytest.mark.parametrize("raw", [
    {"class": "face"}, [1], [{"box": [1, 2, 3, 4], "score": 0.5}], [{"class": "f", "box": [1, 2, 3], "score": 0.5}],
    [{"class": "f", "box": [1, 2, 3, 4], "score": 1.5}], [{"class": "f", "box": [1, 2, 3, 4], "score": True}],
])
def test_malformed_detections_are_rejected(raw):
    with pytest.raises(InvalidDetections):
        parse_detections(raw)


def test_alarm_settings_from_env():
    env = {"SKYLARK_ALARM_CLASSES": "face, person", "SKYLARK_ALARM_MIN_SCORE": "0.4",
           "SKYLARK_ALARM_MIN_COUNT": "2", "SKYLARK_ALARM_STREAM": "alarms:test",
           "SKYLARK_ALARM_STREAM_MAXLEN": "50"}
    with started(Alarm(), env) as alarm:
        assert alarm.rule == AlarmRule(frozenset({"face", "person"}), 0.4, 2)
        assert (alarm.stream, alarm.stream_maxlen) == ("alarms:test", 50)
    with started(Alarm(), {}) as alarm:
        assert alarm.rule == AlarmRule() and (alarm.stream, alarm.stream_maxlen) == ("skylark:alarms", 10_000)
    for bad in ({"SKYLARK_ALARM_MIN_SCORE": "1.5"}, {"SKYLARK_ALARM_MIN_COUNT": "0"},
                {"SKYLARK_ALARM_STREAM_MAXLEN": "0"}):
        with pytest.raises(ConfigError, match="alarm"):
            with started(Alarm(), bad):
                pass
