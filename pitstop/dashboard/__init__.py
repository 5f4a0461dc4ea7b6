"""`pitstop dashboard`: a read-only web page of the fleet and each model (Starlette, served by uvicorn).

Two pages, the fleet and a model, each filled and refreshed in place from documented JSON endpoints (docs/dashboard.md)
every few seconds; charts are Plotly's, whose JavaScript ships inside the installed ``plotly`` package and is served
from here, so the page works offline. Nothing on it changes state: every endpoint is a GET that reads the store.
An unknown model answers 404 with one sentence; a database that is down answers 503 with one sentence, which the
page shows in place of its figures.
"""
