"""Reading the settings: the profile's YAML files, environment overrides and secrets."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pipelines.config.base import ConfigError
from pipelines.config.settings import Profile, Settings

ENV_PREFIX = "LAKEHOUSE__"
SECRET_KEYS = frozenset({"sasl_password", "password", "postgres_password"})


def conf_dir(environ: dict[str, str] | None = None) -> Path:
    """`conf/` beside the packages, or `LAKEHOUSE_CONF_DIR`."""
    override = (os.environ if environ is None else environ).get("LAKEHOUSE_CONF_DIR")
    return Path(override) if override else Path(__file__).resolve().parents[2] / "conf"


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} not found") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    _reject_secrets(data, path.name, ())
    return data


def _reject_secrets(data: dict[str, Any], source: str, prefix: tuple[str, ...]) -> None:
    for key, value in data.items():
        if key in SECRET_KEYS and value is not None:
            dotted = ".".join((*prefix, key))
            raise ConfigError(f"{source}: {dotted} is a secret; set it in the environment instead")
        if isinstance(value, dict):
            _reject_secrets(value, source, (*prefix, key))


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    """`LAKEHOUSE__KAFKA__MAX_RECORDS_PER_TRIGGER=5` -> {"kafka": {"max_records_per_trigger": "5"}}.

    Values are parsed as YAML scalars/flow collections so lists and numbers work.
    """
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__") if part]
        if not path:
            continue
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"environment {name}: not a valid value: {exc}") from exc
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return tree


def load_settings(
    profile: str | None = None, environ: dict[str, str] | None = None
) -> Settings:
    """Load the settings for `profile` (default: `LAKEHOUSE_PROFILE`, else `local`)."""
    env = dict(os.environ if environ is None else environ)
    chosen = profile or env.get("LAKEHOUSE_PROFILE") or Profile.LOCAL.value
    try:
        chosen_profile = Profile(chosen)
    except ValueError as exc:
        known = ", ".join(p.value for p in Profile)
        raise ConfigError(f"profile: unknown profile {chosen!r} (known: {known})") from exc

    directory = conf_dir(env)
    data = _deep_merge(_read_yaml(directory / "base.yaml"),
                       _read_yaml(directory / f"{chosen_profile.value}.yaml"))
    data = _deep_merge(data, _env_overrides(env))
    data["profile"] = chosen_profile.value
    broker = data.get("broker", {})
    if broker.get("embedded"):
        # The embedded broker is the bootstrap server: one setting (broker.port) moves both.
        host, port = broker.get("host", "127.0.0.1"), broker.get("port", 19092)
        data.setdefault("kafka", {})["bootstrap_servers"] = f"{host}:{port}"
    if env.get("LAKEHOUSE_ROOT"):
        data.setdefault("storage", {})["root"] = env["LAKEHOUSE_ROOT"]
    if env.get("LAKEHOUSE_KAFKA_SASL_PASSWORD"):
        data.setdefault("kafka", {})["sasl_password"] = env["LAKEHOUSE_KAFKA_SASL_PASSWORD"]
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration ({chosen_profile.value}): {problems}") from exc
