"""Tools beside the product: the benchmark and the bank (crash) test. Not in the service image."""
