"""`llmcli bench`: llama-bench-style measurements of prompt processing and generation speed.

spec.py expands the command line into tests, runner.py times them on the engine, system.py records the
machine, report.py renders results (table, json, jsonl, csv, md) with llama-bench's field names, and
compare.py is the regression gate against a base JSON.
"""
