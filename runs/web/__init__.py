"""The web dashboard: server-rendered pages (views, view models) over the same selectors and
services as the API. Live data comes from the API and the run websocket through small ES
modules in static/js/; see docs/dashboard.md."""
