"""WSGI entry point for gunicorn: ``gunicorn wsgi:app``."""

import gc

from service import create_app

app = create_app()
# What the app loaded (R4 definitions, terminology, compiled search parameters: about 190,000
# objects) lives as long as the process; outside the collector's generations, a full
# collection no longer walks it (it paused a request for 120-150 ms every few seconds).
gc.freeze()
