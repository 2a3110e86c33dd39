"""Settings from the environment (prefix WA_); every one is documented in .env.example."""

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WA_", env_file=".env", extra="ignore")

    database_url: str | None = Field(
        default=None, description="PostgreSQL URL; the poller connects as the wa_poller role."
    )
    log_level: str = Field(default="INFO", description="Python logging level.")
