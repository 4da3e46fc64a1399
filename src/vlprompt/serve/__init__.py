"""Using trained artifacts: multi-task serving (one backbone pass for many prompt folders) and classifier export."""
