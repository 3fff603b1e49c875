"""The per-trial width profile is a valid SVG with one bar per group, scaled to width / base."""

import xml.etree.ElementTree as ET

import pytest

from widthtune.analysis.profile_svg import width_profile_svg

SVG = "{http://www.w3.org/2000/svg}"


def test_one_bar_per_group_with_heights_proportional_to_the_ratio(tmp_path):
    path = width_profile_svg(["stem", "a<b", "head"], [0.5, 1.0, 2.0], tmp_path / "p.svg", title="t & u")
    root = ET.parse(path).getroot()
    bars = [r for r in root.iter(f"{SVG}rect") if r.find(f"{SVG}title") is not None]
    assert [b.find(f"{SVG}title").text for b in bars] == ["stem: 0.500", "a<b: 1.000", "head: 2.000"]
    heights = [float(b.get("height")) for b in bars]
    assert heights[1] == pytest.approx(2 * heights[0], rel=1e-2)
    assert heights[2] == pytest.approx(4 * heights[0], rel=1e-2)
    assert any(t.text == "t & u" for t in root.iter(f"{SVG}text"))


def test_names_and_ratios_must_pair_up(tmp_path):
    with pytest.raises(ValueError, match="2 group names but 1 ratios"):
        width_profile_svg(["a", "b"], [1.0], tmp_path / "p.svg")
