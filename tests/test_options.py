"""Every job option, tried as a hostile caller would (property-based, hypothesis): a value of a wrong type, out of
range or not finite is refused at construction with a ValueError that names the option; any value accepted runs the
job to its end on the tiny model, or ends with a reported problem, never with an error from inside the job."""

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lrm
from lrm.options import LIMITS, MESH_FORMATS, JobOptions
from lrm.pipeline import FieldError, TooLargeError

from conftest import REFCHECK

INTEGERS = ("mesh_resolution", "faces", "texture_size", "n_views", "fps", "video_size")
NUMBERS = ("foreground_ratio", "source_distance", "threshold")
FLAGS = ("remove_background", "keep_floaters", "video")
CHOICES = {"mode": ("fast", "reference"), "precision": ("fp32", "bf16", "fp16")}
# Values of no option's type: strings, containers, None where None means nothing, objects
FOREIGN = st.one_of(st.text(max_size=5), st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2),
                    st.integers(), max_size=1), st.just(object()), st.binary(max_size=3))
NON_FINITE = st.sampled_from([math.inf, -math.inf, math.nan, np.float32("nan"), np.float64("inf")])


def refused(name, value):
    with pytest.raises(ValueError) as info:
        JobOptions(**{name: value})
    assert name in str(info.value), (name, value, str(info.value))


@given(name=st.sampled_from(INTEGERS + NUMBERS + FLAGS + tuple(CHOICES)), value=FOREIGN)
def test_a_value_of_another_type_is_refused_by_name(name, value):
    refused(name, value)


@given(name=st.sampled_from(INTEGERS + NUMBERS), value=NON_FINITE)
def test_non_finite_numbers_are_refused(name, value):
    refused(name, value)


@given(name=st.sampled_from(INTEGERS), value=st.floats(allow_nan=False, allow_infinity=False).filter(
    lambda v: not float(v).is_integer()))
def test_integer_options_take_no_fractions(name, value):
    refused(name, value)


@given(name=st.sampled_from(INTEGERS + FLAGS), value=st.booleans())
def test_flags_and_integers_do_not_mix(name, value):
    if name in FLAGS:
        assert JobOptions(**{name: value}) is not None  # a bool is a flag's value
        refused(name, int(value) + 0.5)  # a number is not
        refused(name, "no")  # nor a word: "no" is not false
    else:
        refused(name, value)  # True is not the integer 1 here


@given(name=st.sampled_from(sorted(LIMITS)), excess=st.integers(min_value=1, max_value=10 ** 12))
def test_sizes_above_their_limit_are_refused_before_any_allocation(name, excess):
    value = LIMITS[name] + excess
    value += name == "video_size" and value % 2  # (odd frame sizes are refused for being odd)
    refused(name, value)


@given(name=st.sampled_from(INTEGERS + NUMBERS), value=st.floats(max_value=0, allow_nan=False))
def test_negative_sizes_and_numbers_are_refused(name, value):
    if name in ("faces", "texture_size", "mesh_resolution") and value == 0:
        return  # 0 means "every triangle", "vertex colours", "no mesh"
    refused(name, value)


@given(value=st.one_of(st.none(), st.integers(), st.just(["glb", 3]), st.text(min_size=1).filter(
    lambda t: all(f.strip().lower().lstrip(".") not in MESH_FORMATS for f in t.split(",") if f.strip()) and
    t.strip(", "))))
def test_formats_must_name_mesh_formats(value):
    refused("formats", value)


def test_formats_and_numbers_in_their_accepted_forms():
    assert JobOptions(formats="glb").formats == ("glb",)  # one name, not its letters
    assert JobOptions(formats=["PLY", ".obj"]).formats == ("ply", "obj")
    job = JobOptions(mesh_resolution=64.0, texture_size=np.int64(512), video_size=np.float32(96), threshold=3)
    assert (job.mesh_resolution, job.texture_size, job.video_size, job.threshold) == (64, 512, 96, 3.0)
    assert type(job.mesh_resolution) is int and type(job.threshold) is float


@pytest.fixture(scope="module")
def tiny():
    return lrm.load_model(REFCHECK / "refcheck-tiny-1.1" / "model")


JOBS = st.builds(
    JobOptions, remove_background=st.booleans(), foreground_ratio=st.floats(0.1, 1.0),
    source_distance=st.floats(0.05, 50.0), mesh_resolution=st.one_of(st.just(0), st.integers(2, 40)),
    threshold=st.floats(1e-6, 1e6), formats=st.lists(st.sampled_from(MESH_FORMATS), max_size=3),
    faces=st.one_of(st.just(0), st.integers(100, 3000)), texture_size=st.sampled_from([0, 1, 2, 8, 64]),
    keep_floaters=st.booleans(), video=st.booleans(), n_views=st.integers(1, 3), fps=st.integers(1, 120),
    video_size=st.integers(1, 16).map(lambda n: 2 * n), mode=st.sampled_from(["fast", "reference"]))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(job=JOBS)
def test_any_job_accepted_runs_to_its_end_or_says_what_went_wrong(tiny, job, tmp_path_factory):
    out = tmp_path_factory.mktemp("job")
    try:
        result = lrm.reconstruct(tiny, Path(__file__).parents[1] / "examples" / "cone.png", out, job, name="cone")
    except (FieldError, TooLargeError) as err:  # said to the user, as it is
        assert str(err)
        return
    assert result.planes is not None and ("png" in result.files)
    made = {k for k in result.files if k in ("glb", "obj", "ply", "mp4")}
    if job.video:
        assert "mp4" in made
    if result.mesh is None:
        assert job.mesh_resolution == 0 or result.problems  # no mesh: none asked for, or the reason is given
    else:
        assert set(job.formats) <= made
    assert all(p.is_file() and p.stat().st_size > 0 for p in result.files.values())
