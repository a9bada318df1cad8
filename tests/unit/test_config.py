"""Unit tests for ``grandhotel.config``: defaults, ``GRANDHOTEL_*`` variables, overrides."""

from __future__ import annotations

import dataclasses

import pytest

from grandhotel import config


def test_defaults_without_environment() -> None:
    settings = config.HotelConfig.from_env(env={})
    assert (settings.port, settings.butler_restart_limit) == (8000, 3)
    assert settings.queue_limits == {"default": 1000}
    assert settings.node_name


def test_env_none_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRANDHOTEL_PORT", "9123")
    assert config.HotelConfig.from_env().port == 9123


def test_ints_and_floats_are_parsed() -> None:
    env = {"GRANDHOTEL_PORT": "9000", "GRANDHOTEL_HEARTBEAT_SECONDS": "2.5"}
    settings = config.HotelConfig.from_env(env=env)
    assert settings.port == 9000
    assert isinstance(settings.port, int)
    assert settings.heartbeat_seconds == 2.5


def test_a_whole_number_is_a_float_for_a_float_setting() -> None:
    settings = config.HotelConfig.from_env(env={"GRANDHOTEL_HEARTBEAT_SECONDS": "3"})
    assert settings.heartbeat_seconds == 3.0
    assert isinstance(settings.heartbeat_seconds, float)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", True), ("true", True), ("YES", True), ("0", False), ("False", False), ("no", False)],
)
def test_booleans(raw: str, expected: bool) -> None:
    env = {"GRANDHOTEL_MIGRATE_ON_START": raw}
    assert config.HotelConfig.from_env(env=env).migrate_on_start is expected


def test_queue_limits_mapping() -> None:
    env = {"GRANDHOTEL_QUEUE_LIMITS": "default=5, mail = 2,"}
    assert config.HotelConfig.from_env(env=env).queue_limits == {"default": 5, "mail": 2}


def test_strings_are_kept_as_given() -> None:
    settings = config.HotelConfig.from_env(env={"GRANDHOTEL_HOST": "hotel.example"})
    assert settings.host == "hotel.example"


def test_an_empty_variable_means_the_default() -> None:
    assert config.HotelConfig.from_env(env={"GRANDHOTEL_PORT": ""}).port == 8000


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("GRANDHOTEL_PORT", "eighty"),
        ("GRANDHOTEL_PORT", "80.5"),
        ("GRANDHOTEL_HEARTBEAT_SECONDS", "soon"),
        ("GRANDHOTEL_MIGRATE_ON_START", "maybe"),
        ("GRANDHOTEL_QUEUE_LIMITS", "mail"),
        ("GRANDHOTEL_QUEUE_LIMITS", "mail=many"),
    ],
)
def test_a_bad_value_names_its_variable(name: str, raw: str) -> None:
    with pytest.raises(ValueError, match=f"^{name}: cannot parse {raw!r}$"):
        config.HotelConfig.from_env(env={name: raw})


def test_overrides_win_over_the_environment() -> None:
    settings = config.HotelConfig.from_env(env={"GRANDHOTEL_PORT": "9000"}, port=9001)
    assert settings.port == 9001


def test_a_none_override_leaves_the_environment_value() -> None:
    settings = config.HotelConfig.from_env(env={"GRANDHOTEL_PORT": "9000"}, port=None)
    assert settings.port == 9000


def test_unrelated_variables_are_ignored() -> None:
    settings = config.HotelConfig.from_env(env={"PORT": "1", "GRANDHOTEL_NOPE": "x"})
    assert settings.port == 8000


@pytest.mark.parametrize(
    "field",
    [
        f
        for f in dataclasses.fields(config.HotelConfig)
        if isinstance(f.default, int | float) and f.name != "node_name"
    ],
    ids=lambda f: f.name,
)
def test_every_number_and_flag_reads_back_its_default(field: dataclasses.Field[object]) -> None:
    env = {"GRANDHOTEL_" + field.name.upper(): str(field.default)}
    assert getattr(config.HotelConfig.from_env(env=env), field.name) == field.default


def test_queue_limit_of_a_listed_queue() -> None:
    settings = config.HotelConfig.from_env(env={}, queue_limits={"default": 7, "mail": 2})
    assert settings.queue_limit("mail") == 2
    assert settings.queue_limit("laundry") == 7


def test_queue_limit_without_a_default_is_one() -> None:
    settings = config.HotelConfig.from_env(env={}, queue_limits={"mail": 2})
    assert settings.queue_limit("laundry") == 1


def test_settings_are_frozen() -> None:
    settings = config.HotelConfig.from_env(env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"pool_size": 0}, "pool_size must be at least 1"),
        ({"butler_restart_limit": 0}, "butler_restart_limit must be at least 1"),
        ({"watcher_buffer_events": -1}, "watcher_buffer_events must be at least 1"),
        ({"chaos_butler_crash_rate": 1.5}, "chaos_butler_crash_rate must be within 0..1"),
        ({"chaos_exit_at": "lunch"}, "chaos_exit_at must be one of"),
        ({"live_lag_target_ms": -1.0}, "live_lag_target_ms must not be negative"),
        ({"gc_gen1_threshold": -1}, "gc_gen1_threshold must not be negative"),
        ({"pace_backoff": 1.0}, "pace_backoff must be between 0 and 1"),
        ({"pace_backoff": 0.0}, "pace_backoff must be between 0 and 1"),
        ({"intake_wait_seconds": 0.0}, "intake_wait_seconds must be above 0"),
        ({"pace_tick_seconds": 0.0}, "pace_tick_seconds must be above 0"),
        ({"pace_min_rate": 0.0}, "pace_min_rate must be above 0"),
        ({"door_min_rate": 0.0}, "door_min_rate must be above 0"),
        ({"pace_recovery_per_second": 0.0}, "pace_recovery_per_second must be above 0"),
        ({"gc_young_pause_target_ms": 0.0}, "gc_young_pause_target_ms must be above 0"),
        (
            {"gc_young_interval_seconds": 2.0},
            "gc_young_longest_interval_seconds must not be below gc_young_interval_seconds",
        ),
    ],
)
def test_out_of_range_settings_are_refused(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config.HotelConfig.from_env(env={}, **overrides)


def test_out_of_range_values_from_the_environment_are_refused() -> None:
    with pytest.raises(ValueError, match="pool_size"):
        config.HotelConfig.from_env(env={"GRANDHOTEL_POOL_SIZE": "0"})


def test_a_known_chaos_exit_point_is_accepted() -> None:
    settings = config.HotelConfig.from_env(env={"GRANDHOTEL_CHAOS_EXIT_AT": "after_claim"})
    assert settings.chaos_exit_at == "after_claim"


def test_zero_turns_the_pace_and_middle_collections_off() -> None:
    settings = config.HotelConfig.from_env(
        env={"GRANDHOTEL_LIVE_LAG_TARGET_MS": "0", "GRANDHOTEL_GC_GEN1_THRESHOLD": "0"}
    )
    assert settings.live_lag_target_ms == 0.0
    assert settings.gc_gen1_threshold == 0
