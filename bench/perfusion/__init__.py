"""Perfusion benchmarks: gate selectivity, defaults and covariance speed (see __main__)."""
