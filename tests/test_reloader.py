"""Live reload of the rules file: a new file is in force whole, or refused whole with the old rules kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from webhook import metrics, reloader
from webhook.app import AppState
from webhook.config import load_config_text

OLD = "rules: [{registry: ghcr.io, secrets: [ghcr]}]\n"


def sample(name: str, **labels: str) -> float:
    """A metric as a scrape shows it."""
    return metrics.REGISTRY.get_sample_value(f"pullsecrets_webhook_{name}", labels) or 0.0


def failures() -> float:
    return sample("config_reloads_total", result="failure")


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(OLD)
    return path


@pytest.mark.parametrize(
    ("new", "outcome", "rules_after", "valid_after"),
    [
        pytest.param(OLD, None, 1, 1, id="unchanged"),
        pytest.param(OLD + "# a comment\n", True, 1, 1, id="same-rules-new-bytes"),
        pytest.param(
            "rules: [{registry: a.io, secrets: [a]}, {registry: b.io, secrets: [b]}]\n", True, 2, 1, id="valid"
        ),
        pytest.param("rules: [{registry: ghcr.io, secrets: []}]\n", False, 1, 0, id="empty-secrets"),
        pytest.param("rules: [{registry: '[z-a]cr.io', secrets: [x]}]\n", False, 1, 0, id="reversed-glob-range"),
        pytest.param("rules: [\n", False, 1, 0, id="broken-yaml"),
    ],
)
def test_a_change_is_taken_whole_or_refused_with_the_old_rules_kept(rules_file, new, outcome, rules_after, valid_after):
    state = AppState(config=load_config_text(OLD))
    watcher = reloader.ConfigReloader(rules_file, state)
    before = failures()
    rules_file.write_text(new)
    assert watcher.reload_if_changed() is outcome
    assert len(state.config.rules) == rules_after
    assert sample("rules") == rules_after
    assert sample("config_last_reload_successful") == valid_after
    assert failures() == before + (outcome is False)
    assert watcher.reload_if_changed() is None, "a refused or applied version is not re-read until it changes"


def test_a_loader_bug_refuses_the_file_like_an_invalid_one(rules_file, monkeypatch):
    state = AppState(config=load_config_text(OLD))
    watcher = reloader.ConfigReloader(rules_file, state)

    def broken(*_args, **_kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(reloader, "load_config_text", broken)
    before = failures()
    rules_file.write_text("rules: []\n")
    assert watcher.reload_if_changed() is False
    assert failures() == before + 1
    assert sample("config_last_reload_successful") == 0
    assert state.config.rules.rules[0].secrets == ("ghcr",)


def test_a_missing_file_keeps_the_rules(rules_file):
    state = AppState(config=load_config_text(OLD))
    watcher = reloader.ConfigReloader(rules_file, state)
    rules_file.unlink()
    assert watcher.reload_if_changed() is None
    assert len(state.config.rules) == 1
