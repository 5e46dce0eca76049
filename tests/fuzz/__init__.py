"""atheris fuzz targets (run by ``tests/integration/test_fuzz_receive.py`` and ``scripts/fuzz.sh``)."""
