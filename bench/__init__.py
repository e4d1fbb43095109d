"""fusegrad benchmarks: ``python -m bench`` runs every bench_<op>.py and writes JSON + Markdown."""
