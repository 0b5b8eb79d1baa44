"""The deployment files stay valid: railway.toml uses only keys of Railway's config-as-code
reference, with the documented types, and gives a start-up the time it may take; the compose file
and the image rely on the service's own wait for the database, not on health conditions."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml

from wallet.settings import Settings

ROOT = Path(__file__).resolve().parent.parent

# Railway's config-as-code reference (docs.railway.com, "Config as Code"): the build and deploy
# keys it documents and their types (every one may also be null).
RAILWAY_BUILD = {
    "builder": str,
    "watchPatterns": list,
    "buildCommand": str,
    "dockerfilePath": str,
    "nixpacksConfigPath": str,
    "nixpacksPlan": dict,
    "nixpacksVersion": str,
}
RAILWAY_DEPLOY = {
    "startCommand": str,
    "preDeployCommand": list,
    "multiRegionConfig": dict,
    "numReplicas": int,
    "healthcheckPath": str,
    "healthcheckTimeout": int,
    "restartPolicyType": str,
    "restartPolicyMaxRetries": int,
    "cronSchedule": str,
    "overlapSeconds": int,
    "drainingSeconds": int,
    "sleepApplication": bool,
}
GRACEFUL_SHUTDOWN_S = 10  # wallet serve's uvicorn timeout_graceful_shutdown


def test_railway_toml_uses_documented_keys_and_types():
    config = tomllib.loads((ROOT / "railway.toml").read_text())
    assert set(config) <= {"$schema", "build", "deploy", "environments"}
    for section, documented in (("build", RAILWAY_BUILD), ("deploy", RAILWAY_DEPLOY)):
        for key, value in config.get(section, {}).items():
            assert key in documented, f"{section}.{key} is not in Railway's reference"
            assert isinstance(value, documented[key]), f"{section}.{key} should be {documented[key].__name__}"
    assert config["build"]["builder"] in {"DOCKERFILE", "RAILPACK", "NIXPACKS"}
    assert (ROOT / config["build"]["dockerfilePath"]).is_file()
    assert config["deploy"]["restartPolicyType"] in {"ON_FAILURE", "ALWAYS", "NEVER"}


def test_railway_health_check_tolerates_start_up_and_shutdown_drains():
    deploy = tomllib.loads((ROOT / "railway.toml").read_text())["deploy"]
    assert deploy["healthcheckPath"] == "/health"
    # Waiting for the database, then migrating, must fit well inside the health check's window.
    assert deploy["healthcheckTimeout"] >= Settings().db_startup_wait_ms / 1000 + 120
    assert deploy["drainingSeconds"] > GRACEFUL_SHUTDOWN_S


def test_compose_and_image_wait_for_the_database_themselves():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    depends = compose["services"]["api"].get("depends_on", [])
    assert "service_healthy" not in str(depends)
    assert "WALLET_DATABASE_URL" in compose["services"]["api"]["environment"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "--start-period=" in dockerfile
    assert "pgserver" not in dockerfile and "[embedded]" not in dockerfile
