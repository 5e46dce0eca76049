"""One module per page; each holds the page (HTML) and its JSON twin under ``/api/``."""
