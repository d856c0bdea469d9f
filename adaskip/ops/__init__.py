"""Operations tools beside the library, not part of it: :mod:`.tracking_server` runs the project's MLflow tracking
server (PostgreSQL, TLS, basic auth) as ``python -m adaskip.ops.tracking_server``. Nothing in the library imports
them."""
