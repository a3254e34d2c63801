"""stats: an example Python tool (standard library only) for the microVM tier.

Input {"numbers": [...]} -> the numbers' count, mean, median, population standard deviation and
quartiles, and the Python that computed them. Reads /axocoatl/input.json, writes
/axocoatl/output.json; what it prints comes back apart as the envelope's stdout and stderr.
"""
import json
import platform
import statistics
import sys

with open("/axocoatl/input.json") as f:
    numbers = json.load(f)["numbers"]

print(f"stats: {len(numbers)} numbers", file=sys.stderr)
result = {
    "count": len(numbers),
    "mean": statistics.fmean(numbers),
    "median": statistics.median(numbers),
    "pstdev": statistics.pstdev(numbers),
    "quartiles": statistics.quantiles(numbers, n=4) if len(numbers) > 1 else [],
    "python": platform.python_version(),
}
with open("/axocoatl/output.json", "w") as f:
    json.dump(result, f)
print("stats: done")
