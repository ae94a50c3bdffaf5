"""The HTTP service: a FastAPI app built by ``create_app(settings)``."""
