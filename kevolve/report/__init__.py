"""What a user looks at: the HTML page of a tuning run, the suite bench's tables and plots, and
KernelBench's fast_p figures."""
