"""SQL migrations, applied by db.migrations; this package only carries the files."""
