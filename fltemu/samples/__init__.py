"""Built-in sample filters, loadable by short name with ``fltemu serve --filter NAME``."""
