"""scripts/plot.py: metrics.jsonl files of several runs into one PNG."""

import json
import os
import runpy

import pytest

plot = runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "scripts", "plot.py"))


def write_run(directory, records):
  os.makedirs(directory)
  with open(os.path.join(directory, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
    f.write('{"step": 9, "train/lo')  # a line cut short by a kill


def test_plot_writes_a_png_of_several_runs(tmp_path):
  # Run a resumed at step 2: the steps 3-4 it logged before stopping were logged again.
  write_run(tmp_path / "a", [{"step": s, "train/loss": 5.0 - s} for s in (1, 2, 3, 4)]
            + [{"step": s, "train/loss": 9.0 - s} for s in (3, 4)] + [{"step": 4, "eval/loss": 4.5}])
  write_run(tmp_path / "b", [{"step": s, "train/loss": 6.0 - s} for s in (1, 2, 3, 4)])

  curves = plot["read_curves"](str(tmp_path / "a"))
  assert curves["train/loss"] == {1: 4.0, 2: 3.0, 3: 6.0, 4: 5.0}  # the later value of a step wins
  assert curves["eval/loss"] == {4: 4.5}

  out = str(tmp_path / "curves.png")
  plot["main"]([str(tmp_path / "a"), str(tmp_path / "b"), "--metrics", "train/loss",
                "eval/loss", "--out", out])
  with open(out, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert os.path.getsize(out) > 10_000  # two panels of lines, not an empty figure


def test_plot_names_the_metrics_that_exist(tmp_path):
  write_run(tmp_path / "a", [{"step": 1, "train/loss": 1.0}])
  with pytest.raises(SystemExit, match="no run logged eval/los; these are logged: train/loss"):
    plot["main"]([str(tmp_path / "a"), "--metrics", "eval/los", "--out", str(tmp_path / "x.png")])
  with pytest.raises(SystemExit, match="has no metrics.jsonl"):
    plot["main"]([str(tmp_path), "--out", str(tmp_path / "x.png")])
