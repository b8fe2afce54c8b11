"""Tools around the engines: the command line, the load generator, --workers, compare."""
