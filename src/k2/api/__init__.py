"""The REST query API and web dashboard (`k2 serve`): FastAPI over the query engine. See docs/api.md."""

from k2.api.app import create_app

__all__ = ["create_app"]
