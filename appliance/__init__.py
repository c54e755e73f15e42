"""ollama-appliance: Ollama's HTTP API, CLI and model store, re-implemented in Python on Trio."""

__version__ = "0.1.0"

#: The Ollama release whose API this server speaks. Clients gate features on /api/version
#: (tools, thinking, structured output), so the server reports this, not our own version.
#: 0.14.2: thinking by default (0.12.4), truncate/shift (0.12.6), logprobs (0.12.11), /v1/messages
#: and /v1/responses (0.14.0) are all here; 0.14.3 adds image generation, which is not.
OLLAMA_COMPAT_VERSION = "0.14.2"

__all__ = ["OLLAMA_COMPAT_VERSION", "__version__"]
