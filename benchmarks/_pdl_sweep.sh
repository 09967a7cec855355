export PYTHONPATH=.
for cfg in "-1 0" "-1 1" "-1 2" "2 0" "1 0" "4 1"; do set -- $cfg
  echo "=== hint $1 release $2"
  AWQFLOW_PDL_HINT=$1 AWQFLOW_PDL_RELEASE=$2 timeout 90 python benchmarks/pdl_chain.py --passes 1 2>&1 | grep -v "ring of\|identical"
done
