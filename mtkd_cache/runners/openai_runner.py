"""The openai backend: a teacher behind an OpenAI-compatible HTTP endpoint (`--backend openai`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mtkd_cache.errors import ConfigError


@dataclass(frozen=True)
class EndpointOptions:
    """How an endpoint teacher is called; the key itself never enters a config, a record or a message."""

    api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": (
        "Environment variable holding the endpoint's API key (read at run time, never written anywhere).")})
    concurrency: int = field(default=8, metadata={"help": "Requests in flight at once to an openai endpoint."})
    timeout: float = field(default=60.0, metadata={"help": "Seconds before an endpoint request is retried."})
    retries: int = field(default=6, metadata={"help": (
        "Retries of a request that got 429, 5xx or a timeout, with exponential backoff.")})

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ConfigError(f"--concurrency must be positive, not {self.concurrency}.")
        if self.timeout <= 0:
            raise ConfigError(f"--request-timeout must be positive, not {self.timeout}.")
        if self.retries < 0:
            raise ConfigError(f"--retries must be 0 or more, not {self.retries}.")
