"""esi-worker: keeps EVE SSO tokens alive and pulls ESI data into PostgreSQL."""

__version__ = "0.1.0"
