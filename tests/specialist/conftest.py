import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

# Tiny models on a shared 2-core machine: one intra-op thread is several times faster than two
# contending threads, and keeps these tests within their time budget.
torch.set_num_threads(1)
