"""The documentation stays true: the example config is valid, every metric is documented."""

from __future__ import annotations

from pathlib import Path

from sidecar.cli import main
from sidecar.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent


def test_example_config_is_valid(capsys):
    assert main(["check-config", str(ROOT / "examples" / "sidecar.yaml")]) == 0
    assert "payments  team-payments  fail_closed" in capsys.readouterr().out


def test_every_metric_is_documented_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    names = set()
    for family in Metrics().registry.collect():
        name = family.name
        if family.type == "counter":
            name += "_total"
        elif family.type == "info":
            name += "_info"
        names.add(name)
    assert names, "no metrics collected"
    missing = sorted(n for n in names if f"`{n}`" not in readme)
    assert not missing, f"undocumented metrics: {missing}"


def test_readme_shows_the_two_setup_commands_and_ci_runs_make_test():
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
