"""Live label edits: the editor (service.labels.editor) and its request bodies (bodies)."""
