"""The admin web app and JSON API (``dicom-node web``): FastAPI, server-rendered Jinja2 pages, assets shipped here.

- :mod:`.app`: the app factory; :mod:`.auth`: sessions, API tokens, roles and CSRF; :mod:`.credentials`:
  password hashes and tokens; :mod:`.ratelimit`: the login limit; :mod:`.phi`: masking for viewers
- :mod:`.routes`: one module per page, each with its JSON API twin under ``/api/``
"""
