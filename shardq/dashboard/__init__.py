"""The job dashboard: a read-only local web app over the job table, the bucket and the queues.

``data`` is the one module that reads job records and result items and turns them into plain
JSON-ready dicts; ``server`` serves them (Starlette on uvicorn) with the static app in
``static/``; ``plot`` draws a job's metric curves to an image file (``shardq result --plot``).

Its packages (Starlette, uvicorn, matplotlib) are optional: ``make dashboard`` installs them
from requirements-dashboard.txt. Nothing here is part of the Lambda asset or the worker install.
"""
