"""The report figures are readable on their own: a title, labelled axes, a y-range that shows the differences,
the legend outside the data, a visible mark for a zero difference and "n/a" for a missing one."""

from __future__ import annotations

import polars as pl
import pytest

from mtkd_cache.report.plots import (
    ZERO_MARK,
    difference_limits,
    per_class_accuracy_figure,
    per_class_differences_figure,
    robustness_figure,
    run_comparison_figure,
    score_limits,
)

LABELS = ("business", "politics", "sports")


def legend_is_outside_the_data(figure) -> bool:
    figure.canvas.draw()
    axis = figure.axes[0]
    legend = axis.get_legend()
    return legend is not None and legend.get_window_extent().x0 >= axis.get_window_extent().x1


def zero_marks(axis) -> list[float]:
    return [line.get_xdata()[0] for line in axis.lines if line.get_marker() == ZERO_MARK]


def test_score_limits_show_a_few_points_apart_and_stay_inside_zero_to_one():
    low, high = score_limits([0.91, 0.93, 0.95])
    assert 0.85 < low < 0.91 and 0.95 < high <= 1.005
    assert score_limits([0.0, 1.0]) == (0.0, 1.005)
    assert score_limits([None, None]) == (0.0, 1.0)
    low, high = score_limits([0.5, 0.5])  # one value: still a visible range around it
    assert low < 0.5 < high


def test_difference_limits_always_include_zero_and_every_value():
    low, high = difference_limits([0.02, 0.05])
    assert low < 0 < 0.05 < high
    low, high = difference_limits([-0.3, None, 0.1])
    assert low < -0.3 and high > 0.1


def test_per_class_differences_have_a_title_zero_marks_and_n_a():
    per_class = {"student": [0.9, 0.8, None], "bert": [0.9, 0.7, 0.5], "distil": [0.85, 0.8, 0.5]}
    figure = per_class_differences_figure(LABELS, per_class, "expert → bert-2: student − teacher per class (test)")
    axis = figure.axes[0]
    assert "expert" in axis.get_title()
    assert axis.get_xlabel() == "class" and "student − teacher" in axis.get_ylabel()
    width = 0.8 / 2
    # bert: class 0 is an exact zero; distil: class 1 is; class 2 has no student value for either teacher
    assert zero_marks(axis) == pytest.approx([0.0, 1 + width])
    assert [t.get_text() for t in axis.texts] == ["n/a", "n/a"]
    low, high = axis.get_ylim()
    assert low < 0 and 0.1 < high < 0.2  # fitted to the differences, not -1..1
    assert legend_is_outside_the_data(figure)


def test_run_comparison_is_titled_labelled_and_fitted_to_the_scores():
    figure = run_comparison_figure(["expert", "average", "none"], [0.93, 0.92, 0.9], [0.92, 0.91, 0.89])
    axis = figure.axes[0]
    assert "3 runs" in axis.get_title() and axis.get_xlabel() == "run" and "score" in axis.get_ylabel()
    assert axis.get_ylim()[0] > 0.8
    assert legend_is_outside_the_data(figure)


def test_robustness_is_titled_and_fitted_to_its_bands():
    frame = pl.DataFrame({"strategy": ["expert", "expert"], "alpha": [0.5, 0.5], "temperature": [2.0, 2.0],
                          "num_teachers": [1, 2], "worst": [0.85, 0.88], "mean": [0.87, 0.9], "best": [0.9, 0.92]})
    figure = robustness_figure(frame, "accuracy", ["strategy", "alpha", "temperature"])
    axis = figure.axes[0]
    assert "accuracy" in axis.get_title() and axis.get_xlabel() == "number of teachers"
    assert 0.75 < axis.get_ylim()[0] < 0.85
    assert legend_is_outside_the_data(figure)


def test_per_class_accuracy_of_every_model_marks_a_zero_and_fits_the_range():
    models = [("bert", "teacher", [0.95, 0.9, 0.0]), ("expert", "student", [0.93, 0.91, None])]
    figure = per_class_accuracy_figure(LABELS, models, "demo: per-class accuracy")
    axis = figure.axes[0]
    assert axis.get_title() == "demo: per-class accuracy" and axis.get_ylabel() == "per-class accuracy"
    assert zero_marks(axis) == pytest.approx([2.0])
    assert [t.get_text() for t in axis.texts] == ["n/a"]
    assert axis.get_ylim()[0] == 0.0  # a class at 0 accuracy keeps 0 in range
    figure = per_class_accuracy_figure(LABELS, [("bert", "teacher", [0.95, 0.9, 0.92])], "t")
    assert figure.axes[0].get_ylim()[0] > 0.8
    assert legend_is_outside_the_data(figure)
