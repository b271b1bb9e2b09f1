import itertools

import numpy as np
import pytest

from ktae.reports.colours import DivergingScale, contrast_ratio, rdbu, relative_luminance


def _rgb(colour):
    return np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])


def test_buckets_round_to_the_nearest_step_and_saturate():
    scale = DivergingScale(top=1.0, steps=10)
    values = [-1.0, -0.96, -0.5, -0.04, 0.0, 0.04, 0.06, 0.5, 0.999, 1.0]
    assert scale.buckets(values).tolist() == [-10, -10, -5, 0, 0, 0, 1, 5, 10, 10]
    # Values are scaled by top: a bonus of 0.25 with top 0.5 is half way.
    assert DivergingScale(top=0.5).buckets([0.25, -0.5]).tolist() == [5, -10]


def test_buckets_are_antisymmetric_and_monotone():
    scale = DivergingScale(top=1.0, steps=7)
    values = np.linspace(-1, 1, 401)
    buckets = scale.buckets(values)
    assert np.array_equal(scale.buckets(-values), -buckets)
    assert np.all(np.diff(buckets) >= 0)
    assert set(buckets.tolist()) == set(range(-7, 8))


def test_colours_diverge_red_to_blue_and_darken_with_size():
    scale = DivergingScale()
    assert scale.background(0) is None  # weak values stay plain text
    for bucket in range(1, 11):
        blue, red = _rgb(scale.background(bucket)), _rgb(scale.background(-bucket))
        assert blue[2] > blue[0] and red[0] > red[2]
    luminance = [relative_luminance(scale.background(b)) for b in range(1, 11)]
    assert all(later < earlier for earlier, later in itertools.pairwise(luminance))
    assert scale.legend()[0] == (-1.0, scale.background(-10)) and scale.legend()[10] == (0.0, None)


def test_text_stays_readable_on_every_bucket():
    scale = DivergingScale()
    for bucket in range(-10, 11):
        background = scale.background(bucket) or "#ffffff"
        assert contrast_ratio(scale.foreground(bucket), background) > 4.4  # about WCAG AA (4.5)
    assert scale.foreground(10) == "#ffffff" and scale.foreground(1) == "#111111"


def test_css_has_one_rule_per_coloured_bucket():
    scale = DivergingScale(steps=4)
    css = scale.css()
    assert css.count("{") == 8
    assert f".n4{{background:{scale.background(-4)};" in css and ".p1{" in css
    assert [scale.css_class(b) for b in (-2, 0, 3)] == ["n2", "", "p3"]


def test_bad_scales_and_values_are_rejected():
    with pytest.raises(ValueError, match="top"):
        DivergingScale(top=0)
    with pytest.raises(ValueError, match="steps"):
        DivergingScale(steps=0)
    with pytest.raises(ValueError, match="finite"):
        DivergingScale().buckets([float("nan")])
    with pytest.raises(ValueError, match="bucket"):
        DivergingScale(steps=2).background(3)


def test_the_scale_is_matplotlibs_rdbu_at_every_level():
    # The scale is computed here, without matplotlib (only the `reports` extra installs it); it must give
    # the colours matplotlib's "RdBu" gives, which the released report pages show.
    matplotlib = pytest.importorskip("matplotlib")
    from matplotlib.colors import to_hex

    colormap = matplotlib.colormaps["RdBu"]
    for x in [*np.linspace(0, 1, 1025), 0.5 + 0.5 * 3 / 7]:
        assert rdbu(x) == to_hex(colormap(x)), x
