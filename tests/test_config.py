"""Typed configuration: profiles, env overrides, secrets, and errors that name the key."""

from __future__ import annotations

import os

import pytest

from pipelines.config import (
    ConfigError,
    DeltaEngine,
    KafkaSourceKind,
    Profile,
    StateStore,
    load_settings,
)


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("LAKEHOUSE") or k == "LAKEHOUSE_CONF_DIR"}
    return {**base, **extra}


def test_local_is_the_default_profile_with_embedded_connectors() -> None:
    settings = load_settings(environ=env())
    assert settings.profile is Profile.LOCAL
    assert settings.kafka.source is KafkaSourceKind.PYTHON
    assert settings.delta.engine is DeltaEngine.DELTA_RS
    assert settings.silver.state_store is StateStore.MEMORY
    assert settings.kafka.bootstrap_servers == f"127.0.0.1:{settings.broker.port}"


def test_cluster_profile_switches_both_connectors() -> None:
    settings = load_settings(environ=env(LAKEHOUSE_PROFILE="cluster"))
    assert settings.kafka.source is KafkaSourceKind.JVM
    assert settings.delta.engine is DeltaEngine.DELTA_SPARK
    assert settings.silver.state_store is StateStore.ROCKSDB
    assert settings.silver.state_store.provider_class.endswith(".RocksDBStateStoreProvider")
    assert settings.table_path("bronze.events").startswith("s3a://")


def test_env_overrides_nested_values_and_root(tmp_path) -> None:
    settings = load_settings(environ=env(LAKEHOUSE_ROOT=str(tmp_path),
                                         LAKEHOUSE__KAFKA__MAX_RECORDS_PER_TRIGGER="1234",
                                         LAKEHOUSE__BROKER__PORT="29999"))
    assert settings.kafka.max_records_per_trigger == 1234
    assert settings.kafka.bootstrap_servers == "127.0.0.1:29999"
    assert settings.table_path("bronze.events") == str(tmp_path / "bronze" / "events")


def test_bad_value_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"kafka\.max_records_per_trigger"):
        load_settings(environ=env(LAKEHOUSE__KAFKA__MAX_RECORDS_PER_TRIGGER="-5"))


def test_quiet_confirm_must_span_more_than_one_client_sample() -> None:
    """At a 4 s sample cadence the default 3 s healthy span fits between two bad samples."""
    with pytest.raises(ConfigError, match=r"healthy_span_s \(3 s\) must exceed "
                                          r"simulator\.sample_interval_s \(4 s\)"):
        load_settings(environ=env(LAKEHOUSE__SIMULATOR__SAMPLE_INTERVAL_S="4"))
    settings = load_settings(environ=env(LAKEHOUSE__SIMULATOR__SAMPLE_INTERVAL_S="4",
                                         LAKEHOUSE__RESOLVER__HEALTHY_SPAN_S="5"))
    assert settings.resolver.healthy_span_s == 5


def test_the_relay_needs_the_help_window_processor() -> None:
    """The join engine has no processor to relay the resolver's evidence from."""
    assert load_settings(environ=env()).resolver.evidence.value == "topics"
    with pytest.raises(ConfigError, match=r"LAKEHOUSE__RESOLVER__EVIDENCE=topics"):
        load_settings(environ=env(LAKEHOUSE__HELP__ENGINE="join",
                                  LAKEHOUSE__RESOLVER__EVIDENCE="relay"))
    settings = load_settings(environ=env(LAKEHOUSE__HELP__ENGINE="join",
                                         LAKEHOUSE__RESOLVER__EVIDENCE="topics"))
    assert settings.resolver.evidence.value == "topics"


def test_unknown_key_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"kafka\.max_record_per_trigger"):
        load_settings(environ=env(LAKEHOUSE__KAFKA__MAX_RECORD_PER_TRIGGER="5"))


def test_unknown_profile_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown profile 'prod'"):
        load_settings("prod", environ=env())


def test_secret_in_a_file_is_refused(tmp_path) -> None:
    for name in ("base.yaml", "local.yaml"):
        (tmp_path / name).write_text("kafka:\n  sasl_password: hunter2\n" if name == "local.yaml"
                                     else "topics: []\nstreaming: {bronze_topics: []}\n")
    with pytest.raises(ConfigError, match=r"kafka\.sasl_password is a secret"):
        load_settings(environ=env(LAKEHOUSE_CONF_DIR=str(tmp_path)))


def test_secret_from_the_environment_is_used_but_not_shown() -> None:
    settings = load_settings(environ=env(LAKEHOUSE_KAFKA_SASL_PASSWORD="hunter2"))
    assert settings.kafka.client_options()["sasl.password"] == "hunter2"
    assert "hunter2" not in repr(settings)


def test_broken_yaml_names_the_file(tmp_path) -> None:
    (tmp_path / "base.yaml").write_text("kafka: [unclosed\n")
    (tmp_path / "local.yaml").write_text("{}\n")
    with pytest.raises(ConfigError, match=r"base\.yaml is not valid YAML"):
        load_settings(environ=env(LAKEHOUSE_CONF_DIR=str(tmp_path)))


def test_cli_reports_a_config_error_and_exits_2() -> None:
    from kafka_helpers import lakehouse_cli

    result = lakehouse_cli(["broker", "status"], {"LAKEHOUSE__BROKER__PORT": "not-a-port"})
    assert result.returncode == 2
    assert "broker.port" in result.stderr


def test_extra_java_options_add_to_the_jobs_own() -> None:
    from pipelines.spark import JAVA_OPTIONS, _java_options

    merged = _java_options({"spark.driver.extraJavaOptions": "-XX:+UseParallelGC"})
    assert merged["spark.driver.extraJavaOptions"].split() == [*JAVA_OPTIONS,
                                                               "-XX:+UseParallelGC"]
    assert merged["spark.executor.extraJavaOptions"].split() == list(JAVA_OPTIONS)


def test_the_session_jvm_runs_with_the_java_options(spark) -> None:
    """The options reach the driver JVM (local mode: the executors are in it too)."""
    from pipelines.spark import JAVA_OPTIONS

    runtime = spark.sparkContext._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean()
    assert set(JAVA_OPTIONS) <= set(runtime.getInputArguments())
