"""Local web application: upload studies, follow analysis jobs, view and download results.

Start it with ``cardioseg serve``; build it in Python with :func:`create_app`. See
``docs/webapp.md``.
"""

from cardioseg.app.config import AppConfig
from cardioseg.app.server import create_app, serve

__all__ = ["AppConfig", "create_app", "serve"]
