"""The web console: playground and label pages over the same engine as the HTTP API."""
