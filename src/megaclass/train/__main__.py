"""``python -m megaclass.train ARGS`` = ``megaclass train ARGS``: what torchrun starts on every rank.

    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m megaclass.train glyphs:0-2000000 -m out/ --head partial_fc --checkpoint-dir ckpt/
"""

import sys

from megaclass.cli import main

if __name__ == "__main__":
    sys.argv = ["megaclass", "train", *sys.argv[1:]]
    main()
