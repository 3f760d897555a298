"Tests for diffula.analysis: the smoothed curve's ends (turning_point), and the two attribute counts of the 20-user study."
import numpy as np
import pytest
from diffula.analysis import moving_average, turning_point
from diffula.pipeline import attributes_right, attribute_score, sign_test


def trace(sim_own):
    "A trace as `trace_case` returns it, as far as `turning_point` reads it: one record per 10 steps, τ falling."
    n = len(sim_own)
    return dict(sim_own=list(sim_own), step=[10*(k + 1) for k in range(n)], tau=[1000 - 50*k for k in range(n)])


@pytest.mark.parametrize("window", [1, 2, 3, 4, 5])
def test_constant_curve_smooths_to_itself_including_the_ends(window):
    np.testing.assert_allclose(moving_average([0.4]*12, window), [0.4]*12)


def test_moving_average_is_the_convolution_away_from_the_ends():
    s = np.random.default_rng(1).normal(size=40)
    for w in (2, 3, 4, 5, 6):
        np.testing.assert_allclose(moving_average(s, w)[w:-w], np.convolve(s, np.ones(w)/w, mode="same")[w:-w])


def test_moving_average_ends_average_only_existing_records():
    sm = moving_average([1.0, 2.0, 3.0, 4.0, 5.0], 3)
    np.testing.assert_allclose(sm, [1.5, 2.0, 3.0, 4.0, 4.5])
    np.testing.assert_allclose(moving_average([2.0, 4.0], 5), [3.0, 3.0])         # shorter than the window
    np.testing.assert_allclose(moving_average([7.0], 3), [7.0])


def test_a_curve_that_rises_to_its_end_has_not_lost_anything():
    s = np.linspace(0.0, 0.8, 25)
    tp = turning_point(trace(s))
    end = (s[-2] + s[-1])/2                                                        # the smoothed end, window 3
    assert tp["final_similarity"] == pytest.approx(end, abs=1e-4)
    assert tp["final_similarity"] == tp["peak_similarity"]
    assert tp["peak_step"] == trace(s)["step"][-1]
    assert tp["loss_after_peak"] == pytest.approx(0.0, abs=1e-4)
    assert tp["diverges_late"] is False


def test_a_constant_curve_has_its_value_at_the_end():
    tp = turning_point(trace([-0.58]*20))
    assert tp["final_similarity"] == pytest.approx(-0.58) and tp["loss_after_peak"] == pytest.approx(0.0)
    assert tp["diverges_late"] is False


def test_a_curve_that_peaks_midway_and_falls_diverges_late():
    s = np.concatenate([np.linspace(0.0, 0.8, 12), np.linspace(0.8, 0.2, 12)])
    tp = turning_point(trace(s))
    assert tp["diverges_late"] is True
    assert 0 < tp["peak_step"] < trace(s)["step"][-1]
    assert tp["final_similarity"] == pytest.approx((s[-2] + s[-1])/2, abs=1e-4)
    assert tp["loss_after_peak"] == pytest.approx(tp["peak_similarity"] - tp["final_similarity"], abs=2e-4)


def test_turning_point_keeps_its_keys():
    assert set(turning_point(trace([0.1, 0.3, 0.2]))) == {"peak_step", "peak_tau", "peak_similarity",
                                                          "final_similarity", "loss_after_peak", "diverges_late"}


def row(gender, race, age, true=(1, 2, 30.0)):
    "A case result with the keys both attribute counts read."
    g, r, a = true
    return dict(true=dict(gender=g, race=r, age=a), inferred=dict(gender=gender, race=race, age=age),
                metrics=dict(gender_correct=float(gender == g), race_correct=float(race == r), age_error=abs(age - a)))


def test_attributes_right_counts_gender_race_and_age_within_ten_years():
    assert attributes_right(row(1, 2, 30.0)) == 3
    assert attributes_right(row(1, 2, 40.0)) == 3                                  # 10 years: right
    assert attributes_right(row(1, 2, 40.5)) == 2
    assert attributes_right(row(0, 1, 60.0)) == 0
    assert attributes_right(row(1, 2, 45.0), age_tolerance=20) == 3


def test_the_score_breaks_the_counts_ties_by_the_age_error():
    a, c = row(1, 0, 38.0), row(1, 1, 31.0)                                        # both: gender right, age within 10
    assert attributes_right(a) == attributes_right(c) == 2
    assert attribute_score(a) == pytest.approx(0.2) and attribute_score(c) == pytest.approx(0.9)


def test_sign_test():
    assert sign_test([3, 2, 1, 2], [1, 1, 1, 3]) == dict(wins=2, losses=1, ties=1, p_value=0.5)
    assert sign_test([1, 1], [1, 1]) == dict(wins=0, losses=0, ties=2, p_value=1.0)
    assert sign_test([1]*18 + [0]*2, [0]*18 + [1]*2)["p_value"] == pytest.approx(0.0002, abs=1e-5)


def test_steps_curve_runs_both_arms_per_budget_and_pairs_them(tmp_path):
    "steps_curve: one row per budget, each arm's leak summary at that budget, paired tests over the same users."
    import matplotlib
    matplotlib.use("Agg")
    from diffula.analysis import steps_curve, fig_steps
    from diffula.case import Case
    tiny = dict(t_star=5, denoise_method="ddim", snapshot_every=0)
    rows = steps_curve([0, 1], tmp_path, budgets=(2, 3), base=Case.demo(config=tiny), progress=False)
    assert [r["steps"] for r in rows] == [2, 3]
    for r in rows:
        assert r["attack"]["steps"] == r["steps"] == r["control"]["steps"] and r["attack"]["users"] == 2
        assert set(r["paired"]) == {"similarity_gap", "similarity_own", "attributes"}
        assert sum(r["paired"]["similarity_gap"][k] for k in ("wins", "losses", "ties")) == 2
    assert len(list(tmp_path.glob("*/*/metrics.json"))) == 8                      # 2 budgets x 2 arms x 2 users
    assert len(fig_steps(rows).axes) == 4


def test_paired_summary_rejects_unpaired_users():
    from diffula.pipeline import paired_summary
    row = lambda u: dict(user=u, similarity_to_batch=0.5, similarity_to_other_user=0.1, metrics={}, true={}, inferred={})
    with pytest.raises(ValueError, match="same users"):
        paired_summary([row("a"), row("b")], [row("b"), row("a")])
