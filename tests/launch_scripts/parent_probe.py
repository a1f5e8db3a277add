"""Reports on the process that started this one (``perfhints run``'s parent): is libtorch mapped, how big is it."""

import os

ppid = os.getppid()
with open(f"/proc/{ppid}/maps") as fh:
    libtorch = any("libtorch" in line for line in fh)
rss_kb = hwm_kb = 0
with open(f"/proc/{ppid}/status") as fh:
    for line in fh:
        if line.startswith("VmRSS:"):
            rss_kb = int(line.split()[1])
        elif line.startswith("VmHWM:"):
            hwm_kb = int(line.split()[1])
print(f"PARENT libtorch={libtorch} rss_mb={rss_kb // 1024} peak_mb={hwm_kb // 1024}", flush=True)
