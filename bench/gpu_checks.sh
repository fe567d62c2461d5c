# The GPU issue's device checks (issue 20), as one prepared script for a lent GPU machine.
# Use: `bash ../shared/gpu/prepare.sh` here, `cp bench/gpu_checks.sh .gpu/checks.sh`, then the device tool's
# run with carry [".whl", ".gpu"] and `bash .gpu/run.sh` (it sources this file with $RD and step() defined).
# Budget: about 9 minutes of the 15; the JSON reports come back under $OUT: commit them to bench/results/
# with the commit they measured.
python3 -m pytest --version > /dev/null 2>&1 && \
  step cuda_tests 120 python3 -m pytest -q -p no:cacheprovider -m cuda tests/specialist/test_static_step.py
step bench_specialist 150 $RD bench specialist --device cuda --repeats 20 --train-batch 64 \
  --out "$OUT/bench_specialist.json"
step bench_generalist_7b 170 $RD bench generalist --size 7b --device cuda --repeats 5 --train-steps 0 \
  --out "$OUT/bench_generalist_7b.json"
step bench_runtime_7b 90 $RD bench runtime --synthetic 7b --device cuda --steps 300 \
  --out "$OUT/bench_runtime_7b.json"
step bench_loader 60 $RD bench loader --workers 0,2 --seconds 10 --out "$OUT/bench_loader.json"
