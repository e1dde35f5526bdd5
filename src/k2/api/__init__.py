"""The REST query API and web dashboard (`k2 serve`): FastAPI over the query engine. See docs/api.md.

``k2.api.app.create_app(settings)`` builds the application; :mod:`k2.services.serve` runs it.
"""
