"""The typed run configuration: defaults, YAML, overrides, validation messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import ConfigError, RunConfig, load_config, parse_override, to_yaml

REPO = Path(__file__).resolve().parents[2]


def test_defaults_are_valid_and_rate_is_20_hz() -> None:
    """The defaults build and describe a 20 Hz CPU run of models/default."""
    cfg = RunConfig()
    assert cfg.rate_hz == 20.0 and cfg.device == "cpu" and cfg.bundle == "models/default"


def test_yaml_then_overrides_later_wins(tmp_path: Path) -> None:
    """A YAML file sets fields, overrides replace them; untouched fields keep their defaults."""
    p = tmp_path / "c.yaml"
    p.write_text("rate_hz: 30\nlimits:\n  max_speed: 0.7\n  range_guard_m: 0.2\nlink:\n  port: /dev/edge-esp32\n")
    cfg = load_config(p, [parse_override("limits.max_speed=0.5"), {"device": "pi"}])
    assert cfg.rate_hz == 30.0 and cfg.limits.max_speed == 0.5 and cfg.limits.range_guard_m == 0.2
    assert cfg.link.port == "/dev/edge-esp32" and cfg.device == "pi"
    assert cfg.limits.max_accel == RunConfig().limits.max_accel


def test_print_config_round_trips(tmp_path: Path) -> None:
    """The YAML printed by --print-config loads back to the same configuration."""
    cfg = load_config(None, [{"sim": {"enabled": True, "seed": 3}, "goal": {"pose": [1.0, -0.5, 0.0]}}])
    p = tmp_path / "printed.yaml"
    p.write_text(to_yaml(cfg))
    assert load_config(p) == cfg
    assert cfg.goal.pose == (1.0, -0.5, 0.0)


def test_shipped_example_config_loads() -> None:
    """configs/edge-run.yaml is a valid configuration."""
    load_config(REPO / "configs" / "edge-run.yaml")


@pytest.mark.parametrize("over, field", [
    ({"device": "gpu"}, "device"),
    ({"rate_hz": 0}, "rate_hz"),
    ({"limits": {"max_speed": 1.5}}, "limits.max_speed"),
    ({"limits": {"max_accel": -1}}, "limits.max_accel"),
    ({"confidence": {"low_ticks": 0}}, "confidence.low_ticks"),
    ({"fallback": {"mode": "chatgpt"}}, "fallback.mode"),
    ({"recorder": {"flush_period_s": 5}}, "recorder.flush_period_s"),
    ({"goal": {"pose": [1, 2, 3]}}, "goal.pose"),  # pose without --sim
    ({"limits": {"max_speed": "fast"}}, "limits.max_speed"),
    ({"sim": {"goal_room": "kitchen"}}, "sim.goal_room"),
])
def test_invalid_values_name_the_field(over: dict, field: str) -> None:
    """Each invalid value raises ConfigError naming the offending field."""
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(None, [over])


def test_unknown_keys_are_refused(tmp_path: Path) -> None:
    """A typo in a key is an error listing the known keys, not silently ignored."""
    with pytest.raises(ConfigError, match="max_sped"):
        load_config(None, [{"limits": {"max_sped": 0.3}}])
    p = tmp_path / "bad.yaml"
    p.write_text("- not a mapping\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(p)


def test_override_syntax_errors() -> None:
    """An override without '=' explains the expected form."""
    with pytest.raises(ConfigError, match="section.field=value"):
        parse_override("limits.max_speed")
    assert parse_override("fallback.mode=http://localhost:8080/v1") == {
        "fallback": {"mode": "http://localhost:8080/v1"}}


def test_fallback_api_key_env_reaches_the_client_and_the_key_is_never_printed(monkeypatch, capsys) -> None:
    """fallback.api_key_env names the variable; edge-run's make_fallback passes the name into the
    factory's FallbackConfig (the ChatClient then reads and sends the key); --print-config shows
    the name only, never the key; a key pasted as the name is refused."""
    from edge import run as edge_run
    from edge.fallback import factory

    secret = "sk-test-SECRET-4242"
    monkeypatch.setenv("EDGE_TEST_LLM_KEY", secret)
    cfg = load_config(None, [parse_override("fallback.mode=https://llm.example.invalid/v1"),
                             parse_override("fallback.api_key_env=EDGE_TEST_LLM_KEY")])
    assert cfg.fallback.api_key_env == "EDGE_TEST_LLM_KEY"
    assert RunConfig().fallback.api_key_env is None
    seen = {}
    monkeypatch.setattr(factory, "make_fallback", lambda fc: seen.setdefault("cfg", fc))
    edge_run.make_fallback(cfg)
    assert seen["cfg"].api_key_env == "EDGE_TEST_LLM_KEY"
    from edge.fallback.client import ChatClient
    client = ChatClient(seen["cfg"].client_config(seen["cfg"].llm))
    assert client._api_key == secret and secret not in repr(client)
    assert edge_run.main(["--set", "fallback.api_key_env=EDGE_TEST_LLM_KEY", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "EDGE_TEST_LLM_KEY" in out and secret not in out
    with pytest.raises(ConfigError, match="fallback.api_key_env"):
        load_config(None, [{"fallback": {"api_key_env": "sk key with spaces"}}])
