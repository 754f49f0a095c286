"""Settings only the dev stack reads. They are not the product's: a deployment has no
state directory of local servers."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from coprocessor.settings import load_settings


class DevSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FHE_", extra="ignore", frozen=True)

    state_dir: Path | None = Field(
        None, description="Dev stack data and pid files; default <FHE_CACHE_DIR>/dev."
    )


def default_state_dir() -> Path:
    """FHE_STATE_DIR, else ``dev`` under the product's cache directory."""
    return DevSettings().state_dir or (load_settings().cache_dir / "dev")
