"""`ray start` for a node of a multi-node cluster that lives entirely on 127.0.0.1 (the cluster tests' nodes).

Run with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 in the environment, so that every Ray process the node starts takes
127.0.0.1 as its address and binds its servers there. The `ray start` command itself refuses to add a worker
node under that setting, and turns `--node-ip-address 127.0.0.1` into the machine's network address: those two
decisions are switched off here, in this process only.
"""

import sys

import ray._private.ray_constants as ray_constants
import ray._private.services as services
from ray.scripts.scripts import main

ray_constants.ENABLE_RAY_CLUSTER = (
    True  # only the CLI reads it after this point: the raylet's children read the variable
)
services.resolve_ip_for_localhost = lambda host: host

if __name__ == "__main__":
    sys.argv[0] = "ray"
    sys.exit(main())
