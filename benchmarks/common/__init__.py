"""What run/, report/ and perf/ share: the Markdown table writer and the provenance record; imports nothing
else from benchmarks."""
