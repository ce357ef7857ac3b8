"""Live call state: which calls are active, on which node, at which step."""
