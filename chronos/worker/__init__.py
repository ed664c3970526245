"""Workers: pull jobs, run them with bounded concurrency, record the outcome."""
