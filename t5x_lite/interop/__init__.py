"""Weight import/export with other frameworks."""
