"""Running Switchboard in production: service-manager integration and operations."""
