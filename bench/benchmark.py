"""The benchmark as a script: ``python bench/benchmark.py ARGS`` is ``petrecon bench ARGS``.

Full run (about 77 min on a 2-core CPU in fp32): ``python bench/benchmark.py --out bench/results``;
CI's smoke run: ``python bench/benchmark.py --smoke --out /tmp/bench``. The table, the
figures and the machine of the latest full run are in ``docs/benchmark.md``.
"""

import sys

from pet_recon.cli import main

if __name__ == "__main__":
    sys.argv[1:1] = ["bench"]
    main()
