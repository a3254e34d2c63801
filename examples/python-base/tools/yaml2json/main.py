import json

import yaml  # python3-yaml, from the base image

with open("/axocoatl/input.json") as f:
    doc = yaml.safe_load(json.load(f)["yaml"])
with open("/axocoatl/output.json", "w") as f:
    json.dump({"json": doc, "pyyaml": yaml.__version__, "libyaml": yaml.__with_libyaml__}, f)
