"""The async core: client setup and limiter, downloads, uploads, listings."""
