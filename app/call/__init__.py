"""The per-call core: frames in, frames out. Free of PJSIP, SQLAlchemy and Redis."""
