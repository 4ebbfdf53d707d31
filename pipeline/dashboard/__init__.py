"""The live dashboard (`/dashboard`): static page + one server-sent event stream.

The page is plain HTML, CSS and JavaScript shipped in the package (no build step). It
opens `/dashboard/events`, which pushes a snapshot of the read model whenever it
changes: snapshot.py builds it from the same Redis keys as the JSON endpoints.
"""
