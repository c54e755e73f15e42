"""ollama-appliance: Ollama's HTTP API, CLI and model store, re-implemented in Python on Trio."""

__version__ = "0.1.0"

#: The Ollama release whose API this server speaks. Clients gate features on /api/version
#: (tools, thinking, structured output), so the server reports this, not our own version.
OLLAMA_COMPAT_VERSION = "0.12.3"

__all__ = ["OLLAMA_COMPAT_VERSION", "__version__"]
