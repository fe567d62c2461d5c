"""The demo's report shows intervals: Wilson intervals in the table and as error bars, the legend off the bars."""

from robodual_cli.commands import report


def res(succ, eps):
    tasks = {f"t{i}": {"success_rate": s / e, "successes": s, "episodes": e, "mean_episode_length": 10.0}
             for i, (s, e) in enumerate(zip(succ, eps, strict=True))}
    return {"success_rate": sum(succ) / sum(eps), "tasks": tasks, "mean_episode_length": 10.0, "policy_rate_hz": 5.0}


def test_table_gives_wilson_intervals():
    rows = {"dual system": res([5, 10], [10, 10]), "specialist only": res([10, 10], [10, 10])}
    md = report._markdown(rows)
    assert "overall [95% Wilson interval]" in md
    assert "**75% [53%, 89%]**" in md  # 15/20
    assert "50% [24%, 76%]" in md and "100% [72%, 100%]" in md  # 5/10 and 10/10 per task


def test_success_plot_has_error_bars_and_a_legend_outside(tmp_path, monkeypatch):
    rows = {"dual system": res([5, 10], [10, 10]), "specialist only": res([10, 9], [10, 10])}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    captured = {}
    real_savefig = plt.Figure.savefig

    def spy(fig, *a, **k):
        captured.setdefault("figs", []).append(fig)
        return real_savefig(fig, *a, **k)

    monkeypatch.setattr(plt.Figure, "savefig", spy)
    report._plots(tmp_path, tmp_path, rows)
    fig = captured["figs"][0]
    ax = fig.axes[0]
    assert len(ax.containers) >= 2 and any(type(c).__name__ == "ErrorbarContainer" for c in ax.containers)
    legend = ax.get_legend()
    fig.canvas.draw()
    box, axes_box = legend.get_window_extent(), ax.get_window_extent()
    assert box.y1 <= axes_box.y0 + 1  # entirely below the axes: it covers no bar
