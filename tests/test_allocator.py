"""tune_glibc_malloc: after it, freeing and reallocating a large tensor reuses memory instead of page-faulting."""

import json
import platform
import subprocess
import sys

import pytest

# Allocates and frees a 64 MiB tensor (above glibc's largest mmap threshold) 8 times, before and after the tuning,
# and prints the minor page faults of each phase.
SCRIPT = """
import json, resource, torch
from transformers_pem import tune_glibc_malloc

def faults_of_allocations():
    torch.empty(16 * 2**20).fill_(1.0)  # a first allocation, so that both phases start alike
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(8):
        torch.empty(16 * 2**20).fill_(1.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

before = faults_of_allocations()
applied = tune_glibc_malloc()
print(json.dumps({"before": before, "applied": applied, "after": faults_of_allocations()}))
"""


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="tunes glibc's malloc only"
)
def test_tuned_malloc_reuses_freed_memory_instead_of_page_faulting():
    # A fresh process, so that this test process keeps glibc's defaults.
    completed = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True)
    counts = json.loads(completed.stdout.strip().splitlines()[-1])
    assert counts["applied"] is True
    pages = 8 * 64 * 2**20 // 4096
    assert counts["before"] >= pages * 0.9  # every fresh 64 MiB map faults on each of its 4 KiB pages
    # Reused memory does not fault; the kernel may still reclaim idle pages now and then (seen: one tensor's worth).
    assert counts["after"] < pages * 0.25
